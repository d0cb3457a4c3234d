#!/usr/bin/env bash
# CPU cost per proxied request, side by side in one run: one or more weir
# binaries (labelled), a bare Pingora proxy (benches/pingora_plain.rs) and nginx
# (2 workers), each in front of the same nginx upstream answering a static chat
# completion. Each target gets a fixed-rate run (hey -q); the CPU it used over
# the run (utime+stime from /proc, master and workers for nginx) divided by the
# 200s it served is the figure. Each weir runs four times: no plugins; the
# chain api_key, rate_limit, circuit_breaker, least_connections (limits never
# bind); a cache hit (a cache plugin answering every request but the first);
# and a refusal (a provider whose one slot a held request keeps, no queue:
# every request is refused 503 queue_full, and its 503s are what it served).
# Each bare Pingora runs twice: proxying, and answering every request itself
# (`+answer`: what a cache hit or a refusal costs at the least on Pingora).
#
# Usage: benches/cpu.sh [seconds per target (default 10)]
#   WEIR_BINS="before=/path/to/weir after=target/release/weir"  labelled binaries
#     (unset: builds and measures weir=target/release/weir)
#   PLAIN_BINS="label=/path ..."  labelled bare Pingora proxies (unset:
#              pingora_plain=target/perf/examples/pingora_plain)
#   PROFILE    the cargo profile built when WEIR_BINS or PLAIN_BINS is unset
#              (default perf: release with whole-program LTO, for weir and
#              Pingora alike; PROFILE=release for the quicker build)
#   RATE       request rate of the fixed-rate runs (default 5000/s)
#   ROUNDS     runs every target this many times, interleaved (default 1);
#              the figure is over all rounds, each round's in parentheses
#   MAX=1      adds a max-throughput pass (wrk -t2 -c64) per target and round,
#              right after its fixed-rate run; the figure is the mean over
#              the rounds, each round's in parentheses
#   TARGETS="now now+chain …"  runs only these targets (names as in the
#              table), e.g. many interleaved rounds of two of them
#   RESULT=F   also writes the table to F and its chart to F's name with
#              .png (benches/plot_cpu.py; matplotlib in target/py-bench)
# Exits 1 when a target answers mostly non-200.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}; RATE=${RATE:-5000}; ROUNDS=${ROUNDS:-1}
cmdline="WEIR_BINS=\"${WEIR_BINS:-}\" PLAIN_BINS=\"${PLAIN_BINS:-}\" PROFILE=${PROFILE:-} RATE=$RATE ROUNDS=$ROUNDS MAX=${MAX:-}${TARGETS:+ TARGETS=\"$TARGETS\"} RESULT=${RESULT:-} benches/cpu.sh $DUR"
source benches/common.sh
# Pingora (weir, pingora_plain) takes SIGINT as fast shutdown; on SIGTERM it
# drains for up to 5 minutes (so no SIGTERM until SIGINT had time to act).
trap 'kill -INT "${pids[@]}" 2>/dev/null; sleep 1; cleanup' EXIT
need hey wrk nginx curl
PROFILE=${PROFILE:-perf}
if [ -z "${WEIR_BINS:-}" ] || [ -z "${PLAIN_BINS:-}" ]; then
  cargo build --profile "$PROFILE" --bin weir --example pingora_plain >&2
fi
WEIR_BINS=${WEIR_BINS:-weir=target/$PROFILE/weir}
PLAIN_BINS=${PLAIN_BINS:-pingora_plain=target/$PROFILE/examples/pingora_plain}

UP=19700; NGINX=19701; PLAINP=19702; MOCKP=19703   # weir binary i: 19710+4i .. 19713+4i,
                                                   # and 19760+4i .. 19763+4i

upstream_conf $UP >"$work/upstream.conf"
proxy_conf $UP $NGINX >"$work/proxy.conf"
nginx_run upstream; uppid=$!
nginx_run proxy; nginxpid=$!
# bare Pingora binary j listens on $PLAINP+100+j (the first on $PLAINP), and
# again in answer mode (it reads the body and answers the upstream's reply
# itself: the floor of a cache hit or a refusal) on $PLAINP+200+j.
plain_targets=(); answer_targets=(); j=0
for lb in $PLAIN_BINS; do
  pp=$PLAINP; [ $j = 0 ] || pp=$((PLAINP + 100 + j))
  ${lb#*=} 127.0.0.1:$pp 127.0.0.1:$UP 2 >"$work/plain-$j.log" 2>&1 & pids+=($!)
  plain_targets+=("${lb%%=*} $pp $! -")
  ${lb#*=} 127.0.0.1:$((PLAINP + 200 + j)) 127.0.0.1:$UP 2 answer >"$work/plain-answer-$j.log" 2>&1 & pids+=($!)
  answer_targets+=("${lb%%=*}+answer $((PLAINP + 200 + j)) $! -"); j=$((j + 1))
done

bench_keys
# weir_conf PORT MODE: MODE 0 or 1 (no plugins, the chain: see bench_routes),
# cache (a cache plugin before the upstream) or refusal (one slot, no queue,
# on a `weir mock` that holds a request whose header asks it to).
weir_conf() {
  echo "server: { listen: [\"127.0.0.1:$1\"], threads: 2 }"
  echo "admin: { listen: \"127.0.0.1:$(($1 + 1))\" }"
  case $2 in
    cache) cat <<YAML
providers:
  up: { url: "http://127.0.0.1:$UP/v1", models: [bench-model] }
plugins:
  cache: { type: cache, ttl: 1h }
routes: [ { name: chat, plugins: [cache], providers: [up] } ]
YAML
    ;;
    refusal) cat <<YAML
providers:
  held: { url: "http://127.0.0.1:$MOCKP/v1", models: [bench-model],
          bulkhead: { max_concurrent: 1, queue: 0 }, timeouts: { first_token: 1h, idle: 1h } }
routes: [ { name: chat, providers: [held] } ]
YAML
    ;;
    *) bench_routes "http://127.0.0.1:$UP/v1" "$2" ;;
  esac
}
# targets: "name port pid api-key [status]" rows, in table order.
plain_rows=(); chain_rows=(); local_rows=(); notes=(); i=0
first_bin=${WEIR_BINS%% *}; first_bin=${first_bin#*=}
$first_bin mock --listen 127.0.0.1:$MOCKP --fault-header x-hold >"$work/mock.log" 2>&1 & pids+=($!)
wait_port $MOCKP
echo '{"model":"bench-model","messages":[{"role":"user","content":"hello"}],"max_tokens":16}' >"$work/body.json"
for lb in $WEIR_BINS; do
  label=${lb%%=*}; bin=${lb#*=}; port=$((19710 + 4 * i)); i=$((i + 1))
  for mode in cache refusal; do
    p=$((port + 50)); [ $mode = refusal ] && p=$((port + 52))
    weir_conf $p $mode >"$work/$label-$mode.yaml"
    RUST_LOG=error $bin serve -c "$work/$label-$mode.yaml" >"$work/$label-$mode.log" 2>&1 & wpid=$!; pids+=($!)
    wait_port $p
    if [ $mode = refusal ]; then
      # One request holds the only slot for the whole run; every other is
      # refused. It must be in place before anything else is sent: a probe
      # racing it can take the slot, get the held request refused, and leave
      # the slot free for the run (the refusal row then counted 200s).
      held=
      for _ in $(seq 20); do
        curl -s -m 3600 -H 'x-hold: hang' -H 'content-type: application/json' -d @"$work/body.json" \
          "http://127.0.0.1:$p/v1/chat/completions" >/dev/null & hold=$!
        sleep 0.3
        if kill -0 "$hold" 2>/dev/null && [ "$(curl -s -o /dev/null -w '%{http_code}' -H 'content-type: application/json' \
          -d @"$work/body.json" "http://127.0.0.1:$p/v1/chat/completions")" = 503 ]; then
          held=$hold; pids+=($hold); break
        fi
        kill "$hold" 2>/dev/null || true
      done
      [ -n "$held" ] || { echo "cpu.sh: $label+refusal: no request would hold the slot" >&2; exit 1; }
      local_rows+=("$label+refusal $p $wpid - 503")
    else
      local_rows+=("$label+cache-hit $p $wpid -")
    fi
  done
  for chain in 0 1; do
    p=$((port + 2 * chain)); weir_conf $p $chain >"$work/$label-$chain.yaml"
    RUST_LOG=error $bin serve -c "$work/$label-$chain.yaml" >"$work/$label-$chain.log" 2>&1 & wpid=$!; pids+=($!)
    if [ $chain = 0 ]; then wait_port $p; plain_rows+=("$label $p $wpid -")
    elif (wait_port $p) 2>/dev/null; then chain_rows+=("$label+chain $p $wpid sk-bench")
    else notes+=("$label+chain skipped: did not start ($(grep -m1 . "$work/$label-$chain.log" || echo 'no log'))"); fi
  done
done
wait_port $UP; wait_port $NGINX
for t in "${plain_targets[@]}" "${answer_targets[@]}"; do read -r _ pp _ <<<"$t"; wait_port "$pp"; done
rows=("${plain_rows[@]}" "${chain_rows[@]}" "${local_rows[@]}" "${plain_targets[@]}" "${answer_targets[@]}"
      "nginx $NGINX $nginxpid -" "upstream-direct $UP $uppid -")
if [ -n "${TARGETS:-}" ]; then
  kept=()
  for row in "${rows[@]}"; do
    read -r name _ <<<"$row"
    [[ " $TARGETS " == *" $name "* ]] && kept+=("$row")
  done
  [ ${#kept[@]} -gt 0 ] || { echo "cpu.sh: TARGETS=\"$TARGETS\" names no target" >&2; exit 1; }
  rows=("${kept[@]}")
fi

BODY='{"model":"bench-model","messages":[{"role":"user","content":"hello"}],"max_tokens":16}'
echo "$BODY" >"$work/body.json"
printf 'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = %s\n' "'$BODY'" >"$work/post.lua"
sed '1a wrk.headers["Authorization"] = "Bearer sk-bench"' "$work/post.lua" >"$work/post-auth.lua"

# ROUNDS rounds, each running every target once in turn, so that a change in
# the machine's background load spreads over all targets instead of hitting one.
declare -A cpu served non200 rate rounds maxsum maxrounds
for r in $(seq "$ROUNDS"); do
  for row in "${rows[@]}"; do
    read -r name port pid key want <<<"$row"
    [ "$key" = - ] && key=
    url=http://127.0.0.1:$port/v1/chat/completions
    h=(-m POST -T application/json -D "$work/body.json" ${key:+-H "Authorization: Bearer $key"})
    echo "round $r/$ROUNDS: $name" >&2
    # warm-up: connection pools, lazy initialisation
    if [ "$r" = 1 ]; then hey -n 2000 -c 10 "${h[@]}" "$url" >/dev/null; fi
    OK=${want:-200} run_measured "$name" "$pid" "$RATE" "$url" "${h[@]}"
    # What the other answers were (statuses, client errors), for the notes:
    # a figure over fewer served answers than asked for says so.
    read -r _ bad _ < <(hey_counts "$work/hey-$name.txt" "${want:-200}")
    if [ "$bad" -gt 0 ]; then
      what=$(grep -E '^ *\[[0-9]+\]' "$work/hey-$name.txt" | grep -v "\[${want:-200}\]" | head -4 | tr -s ' \t' ' ' | paste -sd ';' -)
      notes+=("$name, round $r: $bad other answers:$what")
    fi
    if [ -n "${MAX:-}" ]; then
      echo "round $r/$ROUNDS: max throughput: $name" >&2
      top=$(wrk -t2 -c64 -d"${DUR}s" -s "$work/post${key:+-auth}.lua" "$url" | awk '/Requests\/sec/ {printf "%.0f", $2}')
      maxsum[$name]=$((${maxsum[$name]:-0} + top)); maxrounds[$name]+=" $top"
    fi
  done
done

table="| target | req/s | other answers | CPU µs/request |${MAX:+ max req/s (wrk) |}"
table+=$'\n'"|---|---:|---:|---:|${MAX:+---:|}"
failed=()
for row in "${rows[@]}"; do
  read -r name port pid key _ <<<"$row"
  [ "$key" = - ] && key=
  ok=${served[$name]}; bad=${non200[$name]}
  [ $((2 * ok)) -gt $((ok + bad)) ] || failed+=("$name: $ok x 200, $bad non-200; in hey's last run:")
  cell="$(us "${cpu[$name]}" "$ok")"
  [ "$ROUNDS" = 1 ] || cell+=" (rounds:${rounds[$name]})"
  table+=$'\n'"| $name | $((${rate[$name]} / ROUNDS)) | $bad | $cell |"
  if [ -n "${MAX:-}" ]; then
    cell="$((${maxsum[$name]} / ROUNDS))"
    [ "$ROUNDS" = 1 ] || cell+=" (rounds:${maxrounds[$name]})"
    table+=" $cell |"
  fi
done

report() {
  echo
  echo "CPU per proxied request: $(date -u '+%Y-%m-%d %H:%M UTC'), nproc $(nproc)," \
    "$ROUNDS x ${DUR}s per target at $RATE req/s (hey -c 50 -q $((RATE / 50)))"
  echo "command: $cmdline"
  echo
  echo "$table"
  for n in "${notes[@]}"; do echo "note: $n"; done
}
report
if [ -n "${RESULT:-}" ]; then
  report >"$RESULT"
  venv=target/py-bench
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import matplotlib' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r benches/requirements.txt
  fi
  "$venv/bin/python" benches/plot_cpu.py "$RESULT" "${RESULT%.md}.png"
fi
[ ${#failed[@]} = 0 ] && exit 0
for f in "${failed[@]}"; do echo "FAILED $f" >&2; sed -n '/Status code distribution/,$p' "$work/hey-${f%%:*}.txt" >&2; done
exit 1
