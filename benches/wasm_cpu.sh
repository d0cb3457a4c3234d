#!/usr/bin/env bash
# CPU a wasm no-op filter adds per request: each weir binary (labelled) serves
# a route with no plugin and a route with the `noop` filter, in front of the
# same `weir mock`; each route gets a fixed-rate run (hey -q) and the CPU the
# gateway used over it (utime+stime from /proc) divided by the requests it
# served is the figure. Added = noop - none, in µs per request.
#
# Usage: benches/wasm_cpu.sh [seconds per run (default 10)]
#   WEIR_BINS="before=/path/to/weir after=target/release/weir"  labelled binaries
#     (unset: builds and measures weir=target/release/weir)
#   RATE   request rate (default 1000/s); ROUNDS  interleaved rounds (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}; RATE=${RATE:-1000}; ROUNDS=${ROUNDS:-2}
source benches/common.sh
need hey curl
bash plugins/build.sh >&2
if [ -z "${WEIR_BINS:-}" ]; then
  cargo build --release --bin weir >&2
  WEIR_BINS=weir=${CARGO_TARGET_DIR:-target}/release/weir
fi
MOCK=19410; GW=19411; ADMIN=19412
first_bin=${WEIR_BINS%% *}; first_bin=${first_bin#*=}
$first_bin mock --listen 127.0.0.1:$MOCK --models bench-model >/dev/null & pids+=($!)
cat >"$work/weir.yaml" <<YAML
server: { listen: ["127.0.0.1:$GW"], threads: 2 }
admin: { listen: "127.0.0.1:$ADMIN" }
providers:
  mock: { url: "http://127.0.0.1:$MOCK/v1", models: [bench-model],
          bulkhead: { max_concurrent: 1024, queue: 1024, queue_timeout: 5s } }
plugins:
  noop: { type: wasm, module: $PWD/plugins/noop/noop.wasm, bulkhead: { max_concurrent: 1024, queue: 1024, queue_timeout: 5s } }
routes:
  - { name: none, match: { path_prefix: /none/ }, providers: [mock] }
  - { name: noop, match: { path_prefix: /noop/ }, plugins: [noop], providers: [mock] }
YAML
printf '{"model":"bench-model","messages":[{"role":"user","content":"hello"}]}' >"$work/body.json"
hz=$(getconf CLK_TCK)
wait_port $MOCK
printf "%-8s %-6s %6s %10s %12s\n" binary route round requests cpu_us_per_req
declare -A sum_ticks sum_reqs
for round in $(seq 1 "$ROUNDS"); do
  for pair in $WEIR_BINS; do
    label=${pair%%=*}; bin=${pair#*=}
    RUST_LOG=error $bin serve -c "$work/weir.yaml" & gw=$!
    wait_port $GW
    for r in none noop; do
      hey -n 200 -c 10 -m POST -T application/json -D "$work/body.json" http://127.0.0.1:$GW/$r/v1/chat/completions >/dev/null
      t0=$(ticks $gw)
      hey -z ${DUR}s -c 10 -q $((RATE / 10)) -m POST -T application/json -D "$work/body.json" \
        http://127.0.0.1:$GW/$r/v1/chat/completions >"$work/hey.txt"
      t1=$(ticks $gw)
      n=$(awk '/\[200\]/ {print $2}' "$work/hey.txt")
      us=$(us $((t1 - t0)) "${n:-0}")
      printf "%-8s %-6s %6s %10s %12s\n" "$label" $r "$round" "${n:-0}" "$us"
      sum_ticks[$label.$r]=$(( ${sum_ticks[$label.$r]:-0} + t1 - t0 ))
      sum_reqs[$label.$r]=$(( ${sum_reqs[$label.$r]:-0} + ${n:-0} ))
    done
    kill -INT $gw; wait $gw 2>/dev/null || true
  done
done
echo
printf "%-8s %12s %12s %12s\n" binary none_us noop_us added_us
for pair in $WEIR_BINS; do
  label=${pair%%=*}
  awk -v hz=$hz -v tn=${sum_ticks[$label.none]} -v nn=${sum_reqs[$label.none]} \
      -v to=${sum_ticks[$label.noop]} -v no=${sum_reqs[$label.noop]} -v l=$label \
      'BEGIN {a = tn / hz * 1e6 / nn; b = to / hz * 1e6 / no; printf "%-8s %12.1f %12.1f %12.1f\n", l, a, b, b - a}'
done
