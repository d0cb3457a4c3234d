#!/usr/bin/env bash
# Cache benchmark, one run: max req/s and latency percentiles (wrk --latency)
# on the hit path vs the miss path vs nginx serving the same answer bytes as a
# static file (the practical ceiling).
#
# Usage: benches/cache.sh [seconds-per-step (default 10)]
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
source benches/common.sh
need wrk nginx curl
# WEIR_BIN skips the build and measures a binary you already have.
[ -n "${WEIR_BIN:-}" ] || cargo build --profile perf --bin weir >&2
WEIR=${WEIR_BIN:-target/perf/weir}
MOCK=19300; GW=19301; ADMIN=19302; NGINX=19303

$WEIR mock --listen 127.0.0.1:$MOCK --models bench-model --completion-tokens 64 >/dev/null & pids+=($!)
cat >"$work/weir.yaml" <<YAML
server: { listen: ["127.0.0.1:$GW"], threads: 2 }
admin: { listen: "127.0.0.1:$ADMIN" }
providers:
  mock: { url: "http://127.0.0.1:$MOCK/v1", models: [bench-model],
          bulkhead: { max_concurrent: 1024, queue: 1024, queue_timeout: 5s } }
plugins:
  cache: { type: cache, max_bytes: 512MiB }
routes:
  - { name: chat, plugins: [cache], providers: [mock] }
YAML
RUST_LOG=error $WEIR serve -c "$work/weir.yaml" & pids+=($!)
wait_port $MOCK; wait_port $GW
BODY='{"model":"bench-model","messages":[{"role":"user","content":"hello there"}],"temperature":0}'
curl -s -H 'Content-Type: application/json' -d "$BODY" http://127.0.0.1:$GW/v1/chat/completions >"$work/answer.json"
mkdir -p "$work/www" && cp "$work/answer.json" "$work/www/answer.json"
cat >"$work/nginx.conf" <<NGX
worker_processes 2;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 4096; }
http { access_log off; server { listen 127.0.0.1:$NGINX; root $work/www; default_type application/json; } }
NGX
nginx -c "$work/nginx.conf" -p "$work"
wait_port $NGINX
cat >"$work/hit.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '$BODY'
LUA
cat >"$work/miss.lua" <<'LUA'
local n = 0
request = function()
  n = n + 1
  local body = '{"model":"bench-model","messages":[{"role":"user","content":"q' .. n .. '-' .. math.random(1, 1e9) .. '"}]}'
  return wrk.format("POST", "/v1/chat/completions", {["Content-Type"] = "application/json"}, body)
end
LUA
run() { wrk -t2 -c64 -d${DUR}s --latency "$@" | awk '/Requests\/sec/ {rps=$2} /^ +50%/ {p50=$2} /^ +99%/ {p99=$2} END {printf "%10s req/s  p50 %8s  p99 %8s\n", rps, p50, p99}'; }
echo "answer size: $(wc -c <"$work/answer.json") bytes"
printf "  %-22s" "weir cache hit";   run -s "$work/hit.lua"  http://127.0.0.1:$GW/v1/chat/completions
printf "  %-22s" "weir cache miss";  run -s "$work/miss.lua" http://127.0.0.1:$GW/v1/chat/completions
printf "  %-22s" "nginx static (GET)";  run http://127.0.0.1:$NGINX/answer.json
curl -s http://127.0.0.1:$ADMIN/metrics | grep -E '^weir_cache_(lookups_total|entries|bytes)' | sed 's/^/  /'
