#!/usr/bin/env bash
# Budget plugin, one run: added latency (p50/p99, microseconds) at a fixed
# 1000 req/s (hey -q) for weir with no plugins, with the budget plugin on
# the memory store, and with it on Redis, all in front of the same mock.
#
# Usage: benches/budget.sh [seconds per target (default 10)]
#   WEIR_BIN  a weir binary to measure (default: builds the perf profile)
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
source benches/common.sh
need hey curl redis-server
[ -n "${WEIR_BIN:-}" ] || cargo build --profile perf --bin weir >&2
WEIR=${WEIR_BIN:-target/perf/weir}
MOCK=19400; REDIS=19401; PLAIN=19410; MEM=19412; RED=19414

$WEIR mock --listen 127.0.0.1:$MOCK --completion-tokens 16 >/dev/null & pids+=($!)
redis-server --port $REDIS --bind 127.0.0.1 --save "" --appendonly no >/dev/null & pids+=($!)
conf() { # conf NAME PORT PLUGIN_YAML ROUTE_PLUGINS
  cat >"$work/$1.yaml" <<YAML
server: { listen: ["127.0.0.1:$2"], threads: 2 }
admin: { listen: "127.0.0.1:$(($2 + 1))" }
providers:
  mock: { url: "http://127.0.0.1:$MOCK/v1", models: [bench-model],
          prices: { bench-model: { input: 2.5, output: 10 } },
          bulkhead: { max_concurrent: 1024, queue: 1024, queue_timeout: 5s } }
plugins:
  $3
routes:
  - { name: chat, plugins: [$4], providers: [mock] }
YAML
}
LIMITS='limits: [ { name: all, per: global, window: 1d, tokens: 1000000000000, cost: 1000000000 } ]'
conf plain $PLAIN "{}" ""
conf memory $MEM "budget: { type: budget, store: memory, $LIMITS }" budget
conf redis $RED "budget: { type: budget, store: \"redis://127.0.0.1:$REDIS/0\", $LIMITS }" budget
for t in plain memory redis; do RUST_LOG=error $WEIR serve -c "$work/$t.yaml" & pids+=($!); done
wait_port $MOCK; wait_port $REDIS; wait_port $PLAIN; wait_port $MEM; wait_port $RED
echo '{"model":"bench-model","max_tokens":16,"messages":[{"role":"user","content":"hello there"}]}' >"$work/body.json"

echo "== budget plugin: latency at 1000 req/s over ${DUR}s (microseconds) =="
printf "  %-14s %8s %8s %8s\n" target p50 p99 "200s"
for target in none:$PLAIN memory:$MEM redis:$RED; do
  name=${target%%:*}; port=${target##*:}
  hey -z 2s -c 20 -q 50 -m POST -T application/json -D "$work/body.json" \
    http://127.0.0.1:$port/v1/chat/completions >/dev/null   # warm up
  hey -z ${DUR}s -c 20 -q 50 -m POST -T application/json -D "$work/body.json" \
    http://127.0.0.1:$port/v1/chat/completions >"$work/hey-$name.txt"
  ok=$(awk '/\[200\]/ {print $2}' "$work/hey-$name.txt")
  printf "  %-14s %8s %8s %8s\n" "$name" "$(pct "$work/hey-$name.txt" 50)" "$(pct "$work/hey-$name.txt" 99)" "${ok:-0}"
done
