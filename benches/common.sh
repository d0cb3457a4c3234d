# Shared by the benchmark scripts (sourced, not run): a scratch folder and
# background processes cleaned up on exit, tools installed when missing, port
# waiting and reading percentiles out of hey's report.

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# need TOOL... : install the missing ones through apt-get.
need() {
  local missing=()
  for t in "$@"; do command -v "$t" >/dev/null 2>&1 || missing+=("$t"); done
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

wait_port() {
  for _ in $(seq 1 200); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done
  echo "port $1 not up" >&2
  exit 1
}

# pct FILE P: hey's "  P% in S secs" line, in microseconds.
pct() { awk -v p="$2%" '$1==p && $2=="in" {printf "%d", $3*1000000}' "$1"; }

# ticks PID: CPU clock ticks (utime+stime) of PID and its children (nginx's workers).
ticks() {
  local t=0 p
  for p in $1 $(pgrep -P "$1" || true); do t=$((t + $(sed 's/.*) //' /proc/$p/stat | awk '{print $12 + $13}'))); done
  echo $t
}

# us TICKS N: CPU microseconds per item of TICKS clock ticks spent on N items.
us() { awk -v t="$1" -v hz="$(getconf CLK_TCK)" -v n="$2" 'BEGIN {if (n) printf "%.1f", t / hz * 1e6 / n; else print "n/a"}'; }

# hey_counts FILE [STATUS]: "<answers with STATUS (default 200)> <other
# answers and errors> <req/s>" from hey's report.
hey_counts() {
  awk -v want="${2:-200}" '/Requests\/sec/ {r = $2} /^ *\[[0-9]+\]/ {n = $1; gsub(/[][]/, "", n)
    if ($3 == "responses") { if (n == want) ok = $2; else bad += $2 } else bad += n }
    END {printf "%d %d %.0f\n", ok, bad, r}' "$1"
}

# run_measured NAME PID QPS URL HEY_ARGS...: one fixed-rate hey run (DUR
# seconds, 50 clients, QPS in all) against URL; PID's CPU ticks and hey's
# counts are added to the caller's cpu, served, non200, rate and rounds
# arrays (declare -A) under NAME, the run's own µs/request to rounds.
# Served answers have status $OK (default 200; 503 for a refusal's cost).
run_measured() {
  local name=$1 pid=$2 q=$3 url=$4 t0 t1 ok bad rps
  shift 4
  t0=$(ticks "$pid")
  hey -z "${DUR}s" -c 50 -q $((q / 50)) "$@" "$url" >"$work/hey-$name.txt"
  t1=$(ticks "$pid")
  read -r ok bad rps < <(hey_counts "$work/hey-$name.txt" "${OK:-200}")
  cpu[$name]=$((${cpu[$name]:-0} + t1 - t0)); served[$name]=$((${served[$name]:-0} + ok))
  non200[$name]=$((${non200[$name]:-0} + bad)); rate[$name]=$((${rate[$name]:-0} + rps))
  rounds[$name]+=" $(us $((t1 - t0)) "$ok")"
}

# The CPU benchmarks' upstream: an nginx (one worker) answering this static
# chat completion on every path.
BENCH_ANSWER='{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"bench-model","choices":[{"index":0,"message":{"role":"assistant","content":"hello hello hello hello hello hello hello hello"},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":16,"total_tokens":25}}'
# upstream_conf PORT: that nginx's config.
upstream_conf() {
  cat <<NGX
worker_processes 1;
pid nginx.pid; error_log error.log;
events { worker_connections 4096; }
http {
  access_log off;
  server { listen 127.0.0.1:$1; keepalive_requests 1000000;
           location / { default_type application/json; return 200 '$BENCH_ANSWER'; } }
}
NGX
}

# nginx_run NAME: runs $work/NAME.conf in the foreground of a background job
# (its pid, the master's, is $! afterwards and cleaned up on exit).
nginx_run() { mkdir -p "$work/$1"; nginx -p "$work/$1" -c "$work/$1.conf" -g 'daemon off;' & pids+=($!); }

# proxy_conf UPSTREAM_PORT PORT: the CPU benchmarks' nginx reverse proxy (2
# workers, keep-alive to the upstream, no buffering) on PORT.
proxy_conf() {
  cat <<NGX
worker_processes 2;
pid nginx.pid; error_log error.log;
events { worker_connections 4096; }
http {
  access_log off;
  upstream up { server 127.0.0.1:$1; keepalive 256; keepalive_requests 1000000; }
  server { listen 127.0.0.1:$2; keepalive_requests 1000000;
           location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";
                        proxy_buffering off; } }
}
NGX
}

# bench_keys: $work/keys.yaml, an api_key keys file with the key sk-bench.
bench_keys() {
  printf 'keys:\n  - name: bench\n    sha256: %s\n' "$(printf %s sk-bench | sha256sum | cut -d' ' -f1)" >"$work/keys.yaml"
}

# bench_routes UPSTREAM_URL CHAIN(0|1|2): weir's providers, plugins and route
# as YAML: one provider and no plugins, or two providers behind the traffic
# chain api_key, rate_limit, circuit_breaker, least_connections (limits never
# bind; the key is sk-bench, see bench_keys); 2: the chain with a token
# budget after the rate limit (both reserve the prompt's tokens).
bench_routes() {
  local bh='bulkhead: { max_concurrent: 1024, queue: 1024, queue_timeout: 5s }'
  echo "providers:"
  echo "  up: { url: \"$1\", models: [bench-model], $bh }"
  [ "$2" = 0 ] && { echo "routes: [ { name: chat, providers: [up] } ]"; return; }
  echo "  up2: { url: \"$1\", models: [bench-model], $bh }"
  cat <<YAML
plugins:
  keys: { type: api_key, keys_file: $work/keys.yaml }
  limits: { type: rate_limit, key: api_key, requests: { per_second: 1000000, burst: 1000000 },
            tokens: { per_minute: 1000000000, burst: 1000000000 } }
  breaker: { type: circuit_breaker }
  balance: { type: least_connections }
YAML
  if [ "$2" = 2 ]; then
    echo "  budget: { type: budget, limits: [ { name: month, per: key, window: 30d, tokens: 1000000000000 } ] }"
    echo "routes: [ { name: chat, plugins: [keys, limits, budget, breaker, balance], providers: [up, up2] } ]"
  else
    echo "routes: [ { name: chat, plugins: [keys, limits, breaker, balance], providers: [up, up2] } ]"
  fi
}
