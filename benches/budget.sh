#!/usr/bin/env bash
# The budget plugin's added latency at a fixed rate: weir with api_key only,
# with api_key + budget on the memory store, and with api_key + budget on a
# local Redis (one round trip to reserve on the request path; settling is off
# it). Every request is admitted (the limits are never reached), so this is
# the cost of a decision, not of a refusal.
#
# Usage: benches/budget.sh [seconds-per-step (default 10)] [rate (default 1000)]
# Needs: hey, redis-server, curl (installed through apt-get when missing).
# WEIR_BIN=path skips the build and measures that binary.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
RATE=${2:-1000}
source benches/common.sh
need hey redis-server curl
[ -n "${WEIR_BIN:-}" ] || cargo build --release --bin weir >&2
WEIR=${WEIR_BIN:-${CARGO_TARGET_DIR:-target}/release/weir}

MOCK=19200; REDIS=19201; KEYS=19202; MEM=19203; RED=19204; A1=19205; A2=19206; A3=19207
$WEIR mock --listen 127.0.0.1:$MOCK --models bench-model --completion-tokens 16 --threads 1 >/dev/null & pids+=($!)
redis-server --port $REDIS --bind 127.0.0.1 --save "" --appendonly no >/dev/null & pids+=($!)
printf 'keys:\n  - { name: bench, sha256: %s, group: team }\n' "$(printf %s sk-bench | sha256sum | cut -d' ' -f1)" >"$work/keys.yaml"

# gateway PORT ADMIN PLUGINS BUDGET_STORE: a config file path.
gateway() {
  local budget=""
  if [ -n "$4" ]; then
    budget="  budget: { type: budget, store: \"$4\", limits: [
      { name: key-daily, per: key, window: 1d, tokens: 1000000000000, cost: 1000000 },
      { name: team-monthly, per: group, window: 30d, cost: 1000000 },
      { name: everyone-minute, per: global, window: 1m, tokens: 1000000000000 } ] }"
  fi
  cat >"$work/$1.yaml" <<YAML
server: { listen: ["127.0.0.1:$1"], threads: 2 }
admin: { listen: "127.0.0.1:$2" }
providers:
  mock: { url: "http://127.0.0.1:$MOCK/v1", models: [bench-model],
          bulkhead: { max_concurrent: 1024, queue: 1024, queue_timeout: 5s },
          prices: { bench-model: { input: 2.5, output: 10 } } }
plugins:
  keys: { type: api_key, keys_file: $work/keys.yaml }
$budget
routes:
  - { name: chat, plugins: [$3], providers: [mock] }
YAML
  echo "$work/$1.yaml"
}
wait_port $REDIS
RUST_LOG=error $WEIR serve -c "$(gateway $KEYS $A1 keys "")" & pids+=($!)
RUST_LOG=error $WEIR serve -c "$(gateway $MEM $A2 "keys, budget" memory)" & pids+=($!)
RUST_LOG=error $WEIR serve -c "$(gateway $RED $A3 "keys, budget" "redis://127.0.0.1:$REDIS/0")" & pids+=($!)
wait_port $MOCK; wait_port $KEYS; wait_port $MEM; wait_port $RED

BODY='{"model":"bench-model","messages":[{"role":"user","content":"hello there"}],"max_tokens":16}'
echo "$BODY" >"$work/body.json"
c=20; q=$((RATE / c))
echo "== budget: latency at $RATE req/s (${DUR}s each; microseconds) =="
printf "%-16s %8s %8s %8s\n" target p50 p99 ok
for target in keys:$KEYS memory:$MEM redis:$RED; do
  name=${target%%:*}; port=${target##*:}
  # Warm up (connections, the tokenizer, the Redis connection), then measure.
  hey -n 200 -c 10 -m POST -T application/json -D "$work/body.json" -H "Authorization: Bearer sk-bench" \
    http://127.0.0.1:$port/v1/chat/completions >/dev/null
  hey -z ${DUR}s -c $c -q $q -m POST -T application/json -D "$work/body.json" -H "Authorization: Bearer sk-bench" \
    http://127.0.0.1:$port/v1/chat/completions >"$work/hey-$name.txt"
  ok=$(awk '/\[200\]/ {print $2}' "$work/hey-$name.txt")
  printf "%-16s %8s %8s %8s\n" "$name" "$(pct "$work/hey-$name.txt" 50)" "$(pct "$work/hey-$name.txt" 99)" "${ok:-0}"
done
k50=$(pct "$work/hey-keys.txt" 50); k99=$(pct "$work/hey-keys.txt" 99)
for name in memory redis; do
  echo "  budget ($name) added: p50 $(( $(pct "$work/hey-$name.txt" 50) - k50 ))us, p99 $(( $(pct "$work/hey-$name.txt" 99) - k99 ))us"
done
echo "  spend the redis ledger recorded (key-daily, bench):"
curl -s http://127.0.0.1:$A3/status | tr -d '\n ' | grep -o '"name":"key-daily"[^]]*' | head -c 300; echo
