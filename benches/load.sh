#!/usr/bin/env bash
# weir's load benchmark: one run, one machine, figures side by side.
#
#  (a) latency at fixed request rates (hey -q) and max throughput (wrk),
#      for: the mock directly, weir in front of it, a bare Pingora proxy
#      (benches/pingora_plain.rs: what Pingora alone costs here) and nginx.
#  (b) overload: 10x more concurrent clients than the provider's bulkhead
#      admits; goodput, refusals by type, p99 latency of refusals (probed
#      with curl while the overload runs), weir's RSS over the run.
#
# Usage: benches/load.sh [seconds-per-step (default 10)]
# Needs: hey, wrk, nginx, curl (installed through apt-get when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
source benches/common.sh
need hey wrk nginx curl redis-server
# WEIR_BIN / PLAIN_BIN skip the build and measure binaries you already have.
[ -n "${WEIR_BIN:-}" ] || cargo build --profile perf --bin weir --example pingora_plain >&2
WEIR=${WEIR_BIN:-target/perf/weir}
PLAIN=${PLAIN_BIN:-target/perf/examples/pingora_plain}

MOCK=19100; WEIRP=19101; ADMIN=19102; NGINX=19103; SLOW=19104; WEIR2=19105; ADMIN2=19106; PLAINP=19112

$WEIR mock --listen 127.0.0.1:$MOCK --models bench-model --completion-tokens 16 --threads 1 >/dev/null & pids+=($!)
cat >"$work/weir.yaml" <<YAML
server: { listen: ["127.0.0.1:$WEIRP"], threads: 2 }
admin: { listen: "127.0.0.1:$ADMIN" }
providers:
  mock: { url: "http://127.0.0.1:$MOCK/v1", models: [bench-model],
          bulkhead: { max_concurrent: 1024, queue: 1024, queue_timeout: 5s } }
routes:
  - { name: chat, providers: [mock] }
YAML
RUST_LOG=error $WEIR serve -c "$work/weir.yaml" & pids+=($!)
$PLAIN 127.0.0.1:$PLAINP 127.0.0.1:$MOCK 2 >/dev/null 2>&1 & pids+=($!)
cat >"$work/nginx.conf" <<NGX
worker_processes 2;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  upstream mock { server 127.0.0.1:$MOCK; keepalive 256; }
  server {
    listen 127.0.0.1:$NGINX;
    client_max_body_size 8m;
    location / { proxy_pass http://mock; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off; }
  }
}
NGX
nginx -c "$work/nginx.conf" -p "$work"
wait_port $MOCK; wait_port $WEIRP; wait_port $NGINX; wait_port $PLAINP

BODY='{"model":"bench-model","messages":[{"role":"user","content":"hello there"}],"max_tokens":16}'
echo "$BODY" >"$work/body.json"
cat >"$work/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '$BODY'
LUA


echo
echo "== (a) latency at fixed rates (${DUR}s each; microseconds) =="
printf "%-7s %-7s %10s %10s %10s\n" rate target p50 p99 ok
for rate in 1000 5000; do
  c=50; q=$((rate / c))
  for target in direct:$MOCK weir:$WEIRP pingora:$PLAINP nginx:$NGINX; do
    name=${target%%:*}; port=${target##*:}
    hey -z ${DUR}s -c $c -q $q -m POST -T application/json -D "$work/body.json" \
      http://127.0.0.1:$port/v1/chat/completions >"$work/hey-$name-$rate.txt"
    ok=$(awk '/\[200\]/ {print $2}' "$work/hey-$name-$rate.txt")
    printf "%-7s %-7s %10s %10s %10s\n" $rate $name "$(pct "$work/hey-$name-$rate.txt" 50)" "$(pct "$work/hey-$name-$rate.txt" 99)" "${ok:-0}"
  done
  d50=$(pct "$work/hey-direct-$rate.txt" 50); w50=$(pct "$work/hey-weir-$rate.txt" 50)
  d99=$(pct "$work/hey-direct-$rate.txt" 99); w99=$(pct "$work/hey-weir-$rate.txt" 99)
  echo "  weir added at $rate req/s: p50 $((w50 - d50))us, p99 $((w99 - d99))us"
done

echo
echo "== (a) max throughput (wrk -t2 -c64, ${DUR}s) =="
for target in direct:$MOCK weir:$WEIRP pingora:$PLAINP nginx:$NGINX; do
  name=${target%%:*}; port=${target##*:}
  rps=$(wrk -t2 -c64 -d${DUR}s -s "$work/post.lua" http://127.0.0.1:$port/v1/chat/completions | awk '/Requests\/sec/ {print $2}')
  printf "  %-7s %12s req/s\n" $name "$rps"
done

echo
echo "== traffic control: chain api_key, rate_limit, circuit_breaker, least_connections vs none (wrk -t2 -c64, ${DUR}s) =="
REDIS=19107; CHAIN=19108; ADMIN3=19109; RL=19110; ADMIN4=19111
redis-server --port $REDIS --bind 127.0.0.1 --save "" --appendonly no >/dev/null & pids+=($!)
printf 'keys:\n  - name: bench\n    sha256: %s\n' "$(printf %s sk-bench | sha256sum | cut -d' ' -f1)" >"$work/keys.yaml"
cat >"$work/chain.yaml" <<YAML
server: { listen: ["127.0.0.1:$CHAIN"], threads: 2 }
admin: { listen: "127.0.0.1:$ADMIN3" }
providers:
  mock: { url: "http://127.0.0.1:$MOCK/v1", models: [bench-model],
          bulkhead: { max_concurrent: 1024, queue: 1024, queue_timeout: 5s } }
  mock2: { url: "http://127.0.0.1:$MOCK/v1", models: [bench-model],
          bulkhead: { max_concurrent: 1024, queue: 1024, queue_timeout: 5s } }
plugins:
  keys: { type: api_key, keys_file: $work/keys.yaml }
  limits: { type: rate_limit, key: api_key, requests: { per_second: 1000000, burst: 1000000 },
            tokens: { per_minute: 1000000000, burst: 1000000000 } }
  breaker: { type: circuit_breaker }
  balance: { type: least_connections }
routes:
  - { name: chat, plugins: [keys, limits, breaker, balance], providers: [mock, mock2] }
YAML
cat >"$work/rl.yaml" <<YAML
server: { listen: ["127.0.0.1:$RL"], threads: 2 }
admin: { listen: "127.0.0.1:$ADMIN4" }
providers:
  mock: { url: "http://127.0.0.1:$MOCK/v1", models: [bench-model],
          bulkhead: { max_concurrent: 1024, queue: 1024, queue_timeout: 5s } }
plugins:
  limits: { type: rate_limit, key: global, requests: { per_second: 1000000, burst: 1000000 },
            store: "redis://127.0.0.1:$REDIS/0" }
routes:
  - { name: chat, plugins: [limits], providers: [mock] }
YAML
RUST_LOG=error $WEIR serve -c "$work/chain.yaml" & pids+=($!)
RUST_LOG=error $WEIR serve -c "$work/rl.yaml" & pids+=($!)
wait_port $CHAIN; wait_port $RL
sed 's/^wrk.body/wrk.headers["Authorization"] = "Bearer sk-bench"\nwrk.body/' "$work/post.lua" >"$work/post-auth.lua"
for target in none:$WEIRP:post chain:$CHAIN:post-auth; do
  IFS=: read -r name port script <<<"$target"
  rps=$(wrk -t2 -c64 -d${DUR}s -s "$work/$script.lua" http://127.0.0.1:$port/v1/chat/completions | awk '/Requests\/sec/ {print $2}')
  printf "  %-7s %12s req/s\n" $name "$rps"
done
echo
echo "== redis-backed rate limit: added latency at 1000 req/s (microseconds) =="
for target in memory:$WEIRP redis:$RL; do
  name=${target%%:*}; port=${target##*:}
  hey -z ${DUR}s -c 20 -q 50 -m POST -T application/json -D "$work/body.json" \
    http://127.0.0.1:$port/v1/chat/completions >"$work/hey-rl-$name.txt"
done
printf "  %-10s p50 %6s p99 %6s\n" "no limit" "$(pct "$work/hey-rl-memory.txt" 50)" "$(pct "$work/hey-rl-memory.txt" 99)"
printf "  %-10s p50 %6s p99 %6s\n" "redis" "$(pct "$work/hey-rl-redis.txt" 50)" "$(pct "$work/hey-rl-redis.txt" 99)"

echo
echo "== (b) overload: bulkhead max_concurrent 20, queue 20; 200 clients; mock ttft 200ms =="
$WEIR mock --listen 127.0.0.1:$SLOW --models bench-model --ttft 200ms --threads 1 >/dev/null & pids+=($!)
cat >"$work/weir2.yaml" <<YAML
server: { listen: ["127.0.0.1:$WEIR2"], threads: 2 }
admin: { listen: "127.0.0.1:$ADMIN2" }
providers:
  slow: { url: "http://127.0.0.1:$SLOW/v1", models: [bench-model],
          bulkhead: { max_concurrent: 20, queue: 20, queue_timeout: 1s } }
routes:
  - { name: chat, providers: [slow] }
YAML
RUST_LOG=error $WEIR serve -c "$work/weir2.yaml" & wpid=$!; pids+=($wpid)
wait_port $SLOW; wait_port $WEIR2
rss() { awk '/VmRSS/ {print $2}' /proc/$wpid/status; }
rss_start=$(rss)
( while kill -0 $wpid 2>/dev/null; do rss >>"$work/rss.txt"; sleep 0.5; done ) & pids+=($!)
hey -z ${DUR}s -c 200 -m POST -T application/json -D "$work/body.json" \
  http://127.0.0.1:$WEIR2/v1/chat/completions >"$work/hey-overload.txt" &
heypid=$!
sleep 1
# Probe refusal latency from a separate client while the overload runs.
touch "$work/probe.txt"
end=$((SECONDS + DUR - 2))
while [ $SECONDS -lt $end ]; do
  curl -s -o /dev/null -w '%{http_code} %{time_total}\n' -H 'Content-Type: application/json' \
    -d "$BODY" http://127.0.0.1:$WEIR2/v1/chat/completions >>"$work/probe.txt" || true
done
wait $heypid
rss_end=$(rss)
rss_peak=$(sort -n "$work/rss.txt" | tail -1)
ok=$(awk '/\[200\]/ {print $2}' "$work/hey-overload.txt"); ok=${ok:-0}
refused=$(awk '/\[503\]/ {print $2}' "$work/hey-overload.txt"); refused=${refused:-0}
metrics=$(curl -s http://127.0.0.1:$ADMIN2/metrics)
full=$(echo "$metrics" | awk -F' ' '/^weir_queue_rejected_total\{queue="provider:slow",reason="full"\}/ {print $2}')
tmo=$(echo "$metrics" | awk -F' ' '/^weir_queue_rejected_total\{queue="provider:slow",reason="timeout"\}/ {print $2}')
p99=$(awk '$1==503 {print $2}' "$work/probe.txt" | sort -n | awk '{a[NR]=$1} END {i=int(NR*0.99+0.5); if (i<1) i=1; if (NR) printf "%.3f", a[i]*1000; else print "n/a"}')
n503=$(awk '$1==503' "$work/probe.txt" | wc -l)
echo "  goodput:            $(awk -v n=$ok -v d=$DUR 'BEGIN {printf "%.1f", n/d}') req/s (ideal: 20 slots / 0.2s = 100 req/s)"
echo "  refusals (503):     $refused; queue_full $full, queue_timeout ${tmo:-0} (weir metrics, probe included)"
echo "  refusal p99:        ${p99} ms over $n503 probed refusals"
echo "  weir RSS (KiB):     start $rss_start, peak $rss_peak, end $rss_end"
