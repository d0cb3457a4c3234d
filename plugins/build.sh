#!/usr/bin/env bash
# Builds every example Proxy-Wasm filter for wasm32-wasip1 (release) and puts
# each module at plugins/<crate>/<crate>.wasm, the path weir configs use.
# Works from any directory:   plugins/build.sh  [extra cargo args, e.g. --offline]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
target=wasm32-wasip1
target_dir="$here/target"

if command -v rustup >/dev/null 2>&1; then
    if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
        rustup target add "$target"
    fi
fi

# An outer `cargo test` may export these; they must not redirect this build.
unset CARGO_TARGET_DIR CARGO_BUILD_TARGET CARGO_BUILD_TARGET_DIR

cargo build --release --target "$target" \
    --manifest-path "$here/Cargo.toml" --target-dir "$target_dir" "$@"

# Members of the workspace, in order: the quoted names in `members = [...]`.
crates=$(sed -n '/^members *= *\[/,/\]/p' "$here/Cargo.toml" | grep -o '"[^"]*"' | tr -d '"')

for crate in $crates; do
    src="$target_dir/$target/release/${crate//-/_}.wasm"
    dst="$here/$crate/$crate.wasm"
    if [[ ! -f "$src" ]]; then
        echo "build.sh: missing $src" >&2
        exit 1
    fi
    # Copy then rename, so a concurrent reader never sees a half-written module.
    cp "$src" "$dst.tmp.$$"
    mv -f "$dst.tmp.$$" "$dst"
    echo "$dst ($(wc -c <"$dst") bytes)"
done

# Filters built with another language's SDK: AssemblyScript (the proxy-wasm
# SDK and compiler come from npm, pinned by package-lock.json). `./dev`
# installs npm; without it these are skipped and the tests that use them fail.
as_dir="$here/as-stamp"
if command -v npm >/dev/null 2>&1; then
    (cd "$as_dir" && npm ci --no-audit --no-fund --silent >&2 \
        && npx asc assembly/index.ts -b "as-stamp.wasm.tmp.$$" --use abort=abort_proc_exit --optimize 2>/dev/null)
    mv -f "$as_dir/as-stamp.wasm.tmp.$$" "$as_dir/as-stamp.wasm"
    echo "$as_dir/as-stamp.wasm ($(wc -c <"$as_dir/as-stamp.wasm") bytes)"
else
    echo "build.sh: npm not found: plugins/as-stamp not built (./dev installs npm)" >&2
fi
