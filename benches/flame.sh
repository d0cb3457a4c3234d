#!/usr/bin/env bash
# A CPU flame graph of weir under load: weir (release build, debug info on)
# in front of the same static nginx answer as benches/cpu.sh, wrk at max
# throughput, `perf record` with DWARF call graphs on weir's process, folded
# and drawn by inferno (cargo install inferno, if missing).
#
# Usage: benches/flame.sh [seconds (default 5)] [mode: 0 no plugins (default),
#        1 the chain api_key, rate_limit, circuit_breaker, least_connections]
#   WEIR_BIN  the weir binary (default: builds target/release/weir)
#   OUT       the SVG (default target/bench/flame-MODE.svg); the folded
#             stacks are written beside it (.folded) for diffing two runs
#             with inferno-diff-folded.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-5}; MODE=${2:-0}
source benches/common.sh
trap 'kill -INT "${pids[@]}" 2>/dev/null; sleep 1; cleanup' EXIT
need perf wrk nginx
command -v inferno-flamegraph >/dev/null || cargo install --locked inferno >&2
if [ -z "${WEIR_BIN:-}" ]; then cargo build --release --bin weir >&2; WEIR_BIN=target/release/weir; fi
OUT=${OUT:-target/bench/flame-$MODE.svg}; mkdir -p "$(dirname "$OUT")"

UP=19780; P=19781
upstream_conf $UP >"$work/upstream.conf"; mkdir -p "$work/upstream"
nginx -p "$work/upstream" -c "$work/upstream.conf" -g 'daemon off;' & pids+=($!)
bench_keys
{ echo "server: { listen: [\"127.0.0.1:$P\"], threads: 2 }"; bench_routes "http://127.0.0.1:$UP/v1" "$MODE"; } >"$work/weir.yaml"
RUST_LOG=error $WEIR_BIN serve -c "$work/weir.yaml" >"$work/weir.log" 2>&1 & wpid=$!; pids+=($!)
wait_port $UP; wait_port $P
BODY='{"model":"bench-model","messages":[{"role":"user","content":"hello"}],"max_tokens":16}'
printf 'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.headers["Authorization"] = "Bearer sk-bench"\nwrk.body = %s\n' "'$BODY'" >"$work/post.lua"
url=http://127.0.0.1:$P/v1/chat/completions
wrk -t2 -c64 -d2s -s "$work/post.lua" "$url" >/dev/null   # warm: pools, lazy state
perf record -F 999 -g --call-graph dwarf,32768 -o "$work/perf.data" -p $wpid -- sleep "$DUR" 2>"$work/perf.err" &
rec=$!
wrk -t2 -c64 -d"${DUR}s" -s "$work/post.lua" "$url" | grep -E 'Requests/sec|Non-2xx' >&2
wait $rec || { cat "$work/perf.err" >&2; exit 1; }
perf script -i "$work/perf.data" 2>/dev/null | inferno-collapse-perf >"${OUT%.svg}.folded"
inferno-flamegraph --title "weir, mode $MODE, wrk -c64 ${DUR}s" <"${OUT%.svg}.folded" >"$OUT"
echo "$OUT"
