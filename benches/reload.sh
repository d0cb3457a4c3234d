#!/usr/bin/env bash
# Reload cost, one run: time from POST /reload to the new generation serving,
# for the demo config and for one with three wasm filters; and request latency
# p50/p99 (hey, 500 req/s) without reloads vs during a reload every 250 ms.
#
# Usage: benches/reload.sh [seconds (default 10)]   (WEIR_BIN=... to skip the build)
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
source benches/common.sh
need hey curl
bash plugins/build.sh >&2
[ -n "${WEIR_BIN:-}" ] || cargo build --release --bin weir >&2
WEIR=${WEIR_BIN:-target/release/weir}
MOCK=19600; GW=19601; ADMIN=19602
$WEIR mock --listen 127.0.0.1:$MOCK --models alpha-large,alpha-small,beta-large,m >/dev/null & pids+=($!)

# The demo config on this bench's ports (both demo providers point at one mock).
sed -e "s/127.0.0.1:8080/127.0.0.1:$GW/; s/127.0.0.1:9901/127.0.0.1:$ADMIN/; s/127.0.0.1:900[12]/127.0.0.1:$MOCK/" \
  conf/demo.yaml >"$work/demo.yaml"
cp conf/demo-keys.yaml "$work/"
cat >"$work/wasm3.yaml" <<YAML
server: { listen: ["127.0.0.1:$GW"], threads: 2 }
admin: { listen: "127.0.0.1:$ADMIN" }
providers:
  mock: { url: "http://127.0.0.1:$MOCK/v1", models: [m] }
plugins:
  guard:  { type: wasm, module: $PWD/plugins/prompt-guard/prompt-guard.wasm, config: { patterns: ["forbidden"] } }
  redact: { type: wasm, module: $PWD/plugins/pii-redactor/pii-redactor.wasm }
  noop:   { type: wasm, module: $PWD/plugins/noop/noop.wasm }
routes:
  - { name: chat, plugins: [guard, redact, noop], providers: [mock] }
YAML
measure_reload() {
  local conf=$1 name=$2
  RUST_LOG=error $WEIR serve -c "$conf" & local pid=$!
  wait_port $GW; wait_port $ADMIN
  local times=()
  for i in 1 2 3 4 5; do
    touch "$conf"   # a change that forces a rebuild of file-backed plugins
    times+=("$(curl -s -o /dev/null -w '%{time_total}' -X POST http://127.0.0.1:$ADMIN/reload)")
  done
  printf "  %-22s reload (POST /reload -> new generation serving): %s s\n" "$name" "$(printf '%s\n' "${times[@]}" | sort -n | sed -n 3p)"
  kill $pid; wait $pid 2>/dev/null || true
}
echo "== reload latency (median of 5) =="
measure_reload "$work/demo.yaml" "demo config"
measure_reload "$work/wasm3.yaml" "three wasm filters"

echo "== request latency without vs during reloads (hey -c 10 -q 50, ${DUR}s; microseconds) =="
RUST_LOG=error $WEIR serve -c "$work/wasm3.yaml" & pid=$!; pids+=($pid)
wait_port $GW; wait_port $ADMIN
BODY='{"model":"m","messages":[{"role":"user","content":"hello there"}]}'
echo "$BODY" >"$work/body.json"
hey -z ${DUR}s -c 10 -q 50 -m POST -T application/json -D "$work/body.json" http://127.0.0.1:$GW/v1/chat/completions >"$work/quiet.txt"
( end=$((SECONDS + DUR)); while [ $SECONDS -lt $end ]; do curl -s -o /dev/null -X POST http://127.0.0.1:$ADMIN/reload; sleep 0.25; done ) &
rl=$!
hey -z ${DUR}s -c 10 -q 50 -m POST -T application/json -D "$work/body.json" http://127.0.0.1:$GW/v1/chat/completions >"$work/busy.txt"
wait $rl
gen=$(curl -s http://127.0.0.1:$ADMIN/status | awk -F': ' '/"generation"/ {gsub(/,/,"",$2); print $2; exit}')
printf "  without reloads: p50 %s p99 %s   non-200: %s\n" "$(pct "$work/quiet.txt" 50)" "$(pct "$work/quiet.txt" 99)" "$(awk '/\[[0-9]+\]/ && !/\[200\]/ {n+=$2} END {print n+0}' "$work/quiet.txt")"
printf "  during reloads:  p50 %s p99 %s   non-200: %s   (generation now %s)\n" "$(pct "$work/busy.txt" 50)" "$(pct "$work/busy.txt" 99)" "$(awk '/\[[0-9]+\]/ && !/\[200\]/ {n+=$2} END {print n+0}' "$work/busy.txt")" "$gen"
