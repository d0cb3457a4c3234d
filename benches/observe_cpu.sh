#!/usr/bin/env bash
# CPU weir spends per request on observability, side by side in one run: the
# same weir binary with nothing on, with traces sampled at 100% and at 1%
# (exported over OTLP/HTTP to benches/otlp_sink.rs, which decodes and counts
# every span), and with the JSON access log on (to a file). Each runs with no
# plugins and with the chain api_key, rate_limit, circuit_breaker,
# least_connections, in front of an nginx answering a static chat completion.
# Each target gets a fixed-rate run (hey -q); weir's CPU over the run
# (utime+stime from /proc: its exporter and log-writer threads included)
# divided by the 200s it served is the figure. The sink's span count says
# whether any span was dropped (a full export queue drops, never waits).
#
# Usage: benches/observe_cpu.sh [seconds per target (default 10)]
#   WEIR_BIN  weir binary (unset: builds target/release/weir and the sink)
#   RATE      request rate of the fixed-rate runs (default 5000/s)
#   ROUNDS    runs every target this many times, interleaved (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}; RATE=${RATE:-5000}; ROUNDS=${ROUNDS:-2}
cmdline="WEIR_BIN=${WEIR_BIN:-} RATE=$RATE ROUNDS=$ROUNDS benches/observe_cpu.sh $DUR"
source benches/common.sh
trap 'kill -INT "${pids[@]}" 2>/dev/null; sleep 1; cleanup' EXIT
need hey nginx curl
if [ -z "${WEIR_BIN:-}" ]; then
  cargo build --release --bin weir --example otlp_sink >&2
  WEIR_BIN=target/release/weir
fi
SINK_BIN=${SINK_BIN:-target/release/examples/otlp_sink}

UP=19900; SINK=19901   # weir target i: 19910+2i (admin +1)
mkdir -p "$work/up"
upstream_conf $UP >"$work/up.conf"
nginx -p "$work/up" -c "$work/up.conf" -g 'daemon off;' & pids+=($!)
$SINK_BIN 127.0.0.1:$SINK >"$work/sink.log" 2>&1 & pids+=($!)
bench_keys

# weir_conf PORT CHAIN(0|1) MODE(off|trace-100|trace-1|access-log)
weir_conf() {
  echo "server: { listen: [\"127.0.0.1:$1\"], threads: 2 }"
  echo "admin: { listen: \"127.0.0.1:$(($1 + 1))\" }"
  case $3 in
    trace-100) echo "tracing: { endpoint: \"http://127.0.0.1:$SINK\", sample: 1.0, interval: 1s, queue: 65536 }" ;;
    trace-1) echo "tracing: { endpoint: \"http://127.0.0.1:$SINK\", sample: 0.01, interval: 1s, queue: 65536 }" ;;
    access-log) echo "access_log: { to: \"$work/access-$1.log\" }" ;;
  esac
  bench_routes "http://127.0.0.1:$UP/v1" "$2"
}
rows=(); i=0
for chain in 0 1; do
  for mode in off trace-100 trace-1 access-log; do
    port=$((19910 + 2 * i)); i=$((i + 1))
    name=$mode; [ $chain = 1 ] && name="$mode+chain"
    weir_conf $port $chain $mode >"$work/$i.yaml"
    RUST_LOG=error $WEIR_BIN serve -c "$work/$i.yaml" >"$work/$i.log" 2>&1 & pids+=($!)
    rows+=("$name $port $! $([ $chain = 1 ] && echo sk-bench || echo -)")
  done
done
wait_port $UP; wait_port $SINK
for row in "${rows[@]}"; do read -r _ port _ _ <<<"$row"; wait_port "$port"; done

echo '{"model":"bench-model","messages":[{"role":"user","content":"hello"}],"max_tokens":16}' >"$work/body.json"
sink_spans() { sleep 2; curl -s "http://127.0.0.1:$SINK/count" | cut -d' ' -f1; }
declare -A cpu served non200 rate rounds spans
for r in $(seq "$ROUNDS"); do
  for row in "${rows[@]}"; do
    read -r name port pid key <<<"$row"
    [ "$key" = - ] && key=
    url=http://127.0.0.1:$port/v1/chat/completions
    h=(-m POST -T application/json -D "$work/body.json" ${key:+-H "Authorization: Bearer $key"})
    echo "round $r/$ROUNDS: $name" >&2
    if [ "$r" = 1 ]; then hey -n 2000 -c 10 "${h[@]}" "$url" >/dev/null; fi
    s0=$(sink_spans)
    run_measured "$name" "$pid" "$RATE" "$url" "${h[@]}"
    s1=$(sink_spans)   # after the last export of the run (interval 1 s)
    spans[$name]=$((${spans[$name]:-0} + s1 - s0))
  done
done

base() { awk -v a="$1" -v b="$2" 'BEGIN {if (a == "n/a" || b == "n/a") print "n/a"; else printf "%+.1f", a - b}'; }
table="| target | req/s | non-200 | CPU µs/request | vs off | spans received per request |"
table+=$'\n'"|---|---:|---:|---:|---:|---:|"
failed=()
for row in "${rows[@]}"; do
  read -r name _ _ _ <<<"$row"
  ok=${served[$name]}; bad=${non200[$name]}
  [ $((2 * ok)) -gt $((ok + bad)) ] || failed+=("$name: $ok x 200, $bad non-200")
  off=off; [[ $name == *+chain ]] && off=off+chain
  mine=$(us "${cpu[$name]}" "$ok"); theirs=$(us "${cpu[$off]}" "${served[$off]}")
  per=$(awk -v s="${spans[$name]}" -v n="$ok" 'BEGIN {if (n) printf "%.2f", s / n; else print "n/a"}')
  table+=$'\n'"| $name | $((${rate[$name]} / ROUNDS)) | $bad | $mine (rounds:${rounds[$name]}) | $(base "$mine" "$theirs") | $per |"
done
echo
echo "CPU per request with observability on: $(date -u '+%Y-%m-%d %H:%M UTC'), nproc $(nproc)," \
  "$ROUNDS x ${DUR}s per target at $RATE req/s (hey -c 50 -q $((RATE / 50)))"
echo "command: $cmdline"
echo
echo "$table"
[ ${#failed[@]} = 0 ] && exit 0
for f in "${failed[@]}"; do echo "FAILED $f" >&2; done
exit 1
