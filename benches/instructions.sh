#!/usr/bin/env bash
# Instructions per request, counted by valgrind's callgrind: repeatable for
# the same binary and inputs whatever else the machine is doing (unlike CPU
# time on a noisy 2-core VM), so a change of a few percent shows. For each
# mode: weir under callgrind in front of the CPU benchmarks' nginx upstream,
# 300 warm-up requests (hey -c 8), the counters zeroed, N requests, a dump;
# the figure is the dump's total ÷ N (background tasks included, and small).
# Modes as benches/cpu.sh: 0 (no plugins), 1 (the chain api_key, rate_limit,
# circuit_breaker, least_connections), cache (every request a hit) and
# refusal (503 queue_full: a held request keeps the one slot); and, when
# named in MODES, 2 (the chain with a token budget after the rate limit).
#
# Usage: benches/instructions.sh [N (default 2000)]
#   WEIR_BINS="before=/path after=/path"  labelled binaries (unset: builds
#             and counts weir=target/perf/weir)
#   MODES="0 1 cache refusal"             which modes (2 also known)
#   OUT=DIR   keeps the callgrind files there (callgrind_annotate reads them)
# Caveats: valgrind offers no SHA extensions (sha2 runs its software rounds
# there, counted higher than they run) and counts each byte of a `rep movsb`
# copy as an instruction (a 16 KB future copy reads as ~16k).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-2000}; MODES=${MODES:-"0 1 cache refusal"}
source benches/common.sh
trap 'kill -INT "${pids[@]}" 2>/dev/null; sleep 1; cleanup' EXIT
need hey nginx curl valgrind
if [ -z "${WEIR_BINS:-}" ]; then cargo build --profile perf --bin weir >&2; fi
WEIR_BINS=${WEIR_BINS:-weir=target/perf/weir}
out=${OUT:-$work/cg}; mkdir -p "$out"
UP=19950; MOCKP=19951
bench_keys
upstream_conf $UP >"$work/upstream.conf"; mkdir -p "$work/upstream"
nginx -p "$work/upstream" -c "$work/upstream.conf" -g 'daemon off;' & pids+=($!)
first=${WEIR_BINS%% *}; first=${first#*=}
$first mock --listen 127.0.0.1:$MOCKP --fault-header x-hold >"$work/mock.log" 2>&1 & pids+=($!)
wait_port $UP; wait_port $MOCKP
echo '{"model":"bench-model","messages":[{"role":"user","content":"hello"}],"max_tokens":16}' >"$work/body.json"
h=(-m POST -T application/json -D "$work/body.json" -H "Authorization: Bearer sk-bench")

table="| mode |"; sep="|---|"
for lb in $WEIR_BINS; do table+=" ${lb%%=*} |"; sep+="---:|"; done
table+=$'\n'"$sep"
port=19960
for mode in $MODES; do
  row="| $mode |"
  for lb in $WEIR_BINS; do
    label=${lb%%=*}; bin=${lb#*=}; port=$((port + 2))
    {
      echo "server: { listen: [\"127.0.0.1:$port\"], threads: 2 }"
      echo "admin: { listen: \"127.0.0.1:$((port + 1))\" }"
      case $mode in
        cache) printf 'providers:\n  up: { url: "http://127.0.0.1:%s/v1", models: [bench-model] }\nplugins:\n  cache: { type: cache, ttl: 1h }\nroutes: [ { name: chat, plugins: [cache], providers: [up] } ]\n' $UP ;;
        refusal) printf 'providers:\n  held: { url: "http://127.0.0.1:%s/v1", models: [bench-model], bulkhead: { max_concurrent: 1, queue: 0 }, timeouts: { first_token: 1h, idle: 1h } }\nroutes: [ { name: chat, providers: [held] } ]\n' $MOCKP ;;
        *) bench_routes "http://127.0.0.1:$UP/v1" "$mode" ;;
      esac
    } >"$work/$label-$mode.yaml"
    f="$out/$label-$mode.out"
    RUST_LOG=error valgrind --tool=callgrind --callgrind-out-file="$f" "$bin" serve -c "$work/$label-$mode.yaml" \
      >"$work/$label-$mode.log" 2>&1 & vpid=$!; pids+=($vpid)
    for _ in $(seq 600); do (echo >/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
    want=200
    url=http://127.0.0.1:$port/v1/chat/completions
    if [ "$mode" = refusal ]; then
      curl -s -m 3600 -H 'x-hold: hang' -H 'content-type: application/json' -d @"$work/body.json" "$url" >/dev/null & pids+=($!)
      sleep 2; want=503
    fi
    hey -n 300 -c 8 "${h[@]}" "$url" >/dev/null
    callgrind_control -z $vpid >/dev/null
    hey -n "$N" -c 8 "${h[@]}" "$url" >"$work/hey.txt"
    callgrind_control -d $vpid >/dev/null
    read -r ok bad _ < <(hey_counts "$work/hey.txt" $want)
    [ "$ok" = "$N" ] || { echo "instructions.sh: $label $mode: $ok of $N answered $want, $bad others" >&2; exit 1; }
    kill -INT $vpid; wait $vpid 2>/dev/null || true
    dump=$(ls -t "$f".* | head -1)
    total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}')
    row+=" $(awk -v t="$total" -v n="$N" 'BEGIN {printf "%.1fk", t / n / 1000}') |"
    echo "$label $mode: $((total / N)) instructions per request" >&2
  done
  table+=$'\n'"$row"
done
echo
echo "Instructions per request (callgrind): $(date -u '+%Y-%m-%d %H:%M UTC'), $N requests per mode"
echo "command: WEIR_BINS=\"$WEIR_BINS\" MODES=\"$MODES\" benches/instructions.sh $N"
echo
echo "$table"
