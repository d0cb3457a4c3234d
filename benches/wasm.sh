#!/usr/bin/env bash
# Wasm filter cost, one run: added latency p50/p99 (hey, fixed rate) and max
# req/s (wrk) for no filter vs the no-op filter vs the PII redactor, all with a
# 100 KiB request body.
#
# Usage: benches/wasm.sh [seconds-per-step (default 10)]   (WEIR_BIN=... to skip the build)
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
source benches/common.sh
need hey wrk curl
bash plugins/build.sh >&2
[ -n "${WEIR_BIN:-}" ] || cargo build --profile perf --bin weir >&2
WEIR=${WEIR_BIN:-target/perf/weir}
MOCK=19400; GW=19401; ADMIN=19402
$WEIR mock --listen 127.0.0.1:$MOCK --models bench-model >/dev/null & pids+=($!)
cat >"$work/weir.yaml" <<YAML
server: { listen: ["127.0.0.1:$GW"], threads: 2, max_request_body: 1MiB }
admin: { listen: "127.0.0.1:$ADMIN" }
providers:
  mock: { url: "http://127.0.0.1:$MOCK/v1", models: [bench-model],
          bulkhead: { max_concurrent: 1024, queue: 1024, queue_timeout: 5s } }
plugins:
  noop:   { type: wasm, module: $PWD/plugins/noop/noop.wasm, bulkhead: { max_concurrent: 1024, queue: 1024, queue_timeout: 5s } }
  redact: { type: wasm, module: $PWD/plugins/pii-redactor/pii-redactor.wasm, config: { email: true, phone: true },
            limits: { callback_time: 50ms }, bulkhead: { max_concurrent: 1024, queue: 1024, queue_timeout: 5s } }
routes:
  - { name: none,   match: { path_prefix: /none/ },   providers: [mock] }
  - { name: noop,   match: { path_prefix: /noop/ },   plugins: [noop], providers: [mock] }
  - { name: redact, match: { path_prefix: /redact/ }, plugins: [redact], providers: [mock] }
YAML
RUST_LOG=error $WEIR serve -c "$work/weir.yaml" & pids+=($!)
wait_port $MOCK; wait_port $GW
# A 100 KiB chat body with an e-mail address and a phone number in it.
python3 - "$work/body.json" <<'PY'
import json, sys
text = ("lorem ipsum dolor sit amet " * 3800)[:100 * 1024 - 200] + " write to jane@example.com or +1 415-555-0100"
json.dump({"model": "bench-model", "messages": [{"role": "user", "content": text}]}, open(sys.argv[1], "w"))
PY
echo "body: $(wc -c <"$work/body.json") bytes"
cat >"$work/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("$work/body.json", "rb"); wrk.body = f:read("*a"); f:close()
LUA
printf "%-8s %10s %10s %14s\n" filter p50_us p99_us max_req_s
for r in none noop redact; do
  hey -z ${DUR}s -c 10 -q 50 -m POST -T application/json -D "$work/body.json" http://127.0.0.1:$GW/$r/v1/chat/completions >"$work/hey-$r.txt"
  rps=$(wrk -t2 -c32 -d${DUR}s -s "$work/post.lua" http://127.0.0.1:$GW/$r/v1/chat/completions | awk '/Requests\/sec/ {print $2}')
  printf "%-8s %10s %10s %14s\n" $r "$(pct "$work/hey-$r.txt" 50)" "$(pct "$work/hey-$r.txt" 99)" "$rps"
done
