#!/usr/bin/env bash
# CPU weir spends per request translating between OpenAI's and Anthropic's wire
# formats, against passing a request through in the client's own format. One
# weir in front of two `weir mock` providers (--flavor openai and --flavor
# anthropic); the model in the body picks the provider, the path the client
# format. Four paths (client->provider): openai->openai and
# anthropic->anthropic (pass-through), openai->anthropic and anthropic->openai
# (translated), each non-streamed (16 tokens) and streamed (64 token events).
# Each target gets a fixed-rate run (hey -q); weir's CPU over the run
# (utime+stime from /proc; the mocks' is not counted) divided by the 200s it
# served is the figure. Per chunk = stream figure / 64; the translation's added
# cost = translated - pass-through of the same client format.
#
# Usage: benches/anthropic_cpu.sh [seconds per target (default 10)]
#   WEIR_BIN     weir binary (unset: builds and measures target/release/weir)
#   RATE         non-stream request rate (default 1000/s)
#   STREAM_RATE  stream rate (default 200/s, 64 events each)
#   ROUNDS       runs every target this many times, interleaved (default 2);
#                the figure is over all rounds, each round's in parentheses
# Exits 1 when a target answers mostly non-200.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}; RATE=${RATE:-1000}; STREAM_RATE=${STREAM_RATE:-200}; ROUNDS=${ROUNDS:-2}
cmdline="WEIR_BIN=${WEIR_BIN:-} RATE=$RATE STREAM_RATE=$STREAM_RATE ROUNDS=$ROUNDS benches/anthropic_cpu.sh $DUR"
source benches/common.sh
# Pingora takes SIGINT as fast shutdown; on SIGTERM it drains for up to 5 minutes.
trap 'kill -INT "${pids[@]}" 2>/dev/null; sleep 1; cleanup' EXIT
need hey
if [ -z "${WEIR_BIN:-}" ]; then
  cargo build --release --bin weir >&2
  WEIR_BIN=target/release/weir
fi
TOKENS=64   # events per stream: the per-chunk divisor

MOCK_OA=19800; MOCK_AN=19801; WEIR=19802   # admin: 19803
for f in openai anthropic; do
  port=$MOCK_OA; [ $f = anthropic ] && port=$MOCK_AN
  $WEIR_BIN mock --listen 127.0.0.1:$port --flavor $f --completion-tokens $TOKENS --threads 2 \
    >"$work/mock-$f.log" 2>&1 & pids+=($!)
done
bh='bulkhead: { max_concurrent: 1024, queue: 1024, queue_timeout: 5s }'
cat >"$work/weir.yaml" <<YAML
server: { listen: ["127.0.0.1:$WEIR"], threads: 2 }
admin: { listen: "127.0.0.1:$((WEIR + 1))" }
providers:
  oa: { url: "http://127.0.0.1:$MOCK_OA/v1", models: [gpt], $bh }
  an: { url: "http://127.0.0.1:$MOCK_AN/v1", kind: anthropic, api_key: sk-ant, models: [claude], $bh }
routes: [ { name: chat, providers: [oa, an] } ]
YAML
RUST_LOG=error $WEIR_BIN serve -c "$work/weir.yaml" >"$work/weir.log" 2>&1 & wpid=$!; pids+=($!)
wait_port $MOCK_OA; wait_port $MOCK_AN; wait_port $WEIR

# body FORMAT MODEL STREAM(0|1): a request in the client's format.
body() {
  local max=16 s=; [ "$3" = 1 ] && { max=$TOKENS; s=',"stream":true'; }
  if [ "$1" = openai ]; then
    echo "{\"model\":\"$2\",\"messages\":[{\"role\":\"user\",\"content\":\"hello\"}],\"max_tokens\":$max$s}"
  else
    echo "{\"model\":\"$2\",\"max_tokens\":$max,\"messages\":[{\"role\":\"user\",\"content\":\"hello\"}]$s}"
  fi
}
# targets: "name client-format model stream", in table order.
rows=()
for s in 0 1; do
  for p in openai:openai openai:anthropic anthropic:anthropic anthropic:openai; do
    model=gpt; [ "${p#*:}" = anthropic ] && model=claude
    name="${p%:*}->${p#*:}"; [ $s = 0 ] || name+=_stream
    rows+=("$name ${p%:*} $model $s")
    body "${p%:*}" $model $s >"$work/body-$name.json"
  done
done

# ROUNDS rounds, each running every target once in turn, so that a change in
# the machine's background load spreads over all targets instead of hitting one.
declare -A cpu served non200 rate rounds
for r in $(seq "$ROUNDS"); do
  for row in "${rows[@]}"; do
    read -r name fmt model s <<<"$row"
    path=/v1/chat/completions; [ "$fmt" = anthropic ] && path=/v1/messages
    q=$RATE; [ "$s" = 1 ] && q=$STREAM_RATE
    url=http://127.0.0.1:$WEIR$path
    h=(-m POST -T application/json -D "$work/body-$name.json")
    echo "round $r/$ROUNDS: $name" >&2
    # warm-up: connection pools, lazy initialisation
    if [ "$r" = 1 ]; then hey -n 1000 -c 10 "${h[@]}" "$url" >/dev/null; fi
    run_measured "$name" "$wpid" "$q" "$url" "${h[@]}"
  done
done

table="| path (client->provider) | req/s | non-200 | CPU µs/request | CPU µs/chunk |"
table+=$'\n'"|---|---:|---:|---:|---:|"
failed=(); declare -A fig
for row in "${rows[@]}"; do
  read -r name fmt model s <<<"$row"
  ok=${served[$name]}; bad=${non200[$name]}
  [ $((2 * ok)) -gt $((ok + bad)) ] || failed+=("$name: $ok x 200, $bad non-200; in hey's last run:")
  fig[$name]=$(us "${cpu[$name]}" "$ok")
  cell=${fig[$name]}; [ "$ROUNDS" = 1 ] || cell+=" (rounds:${rounds[$name]})"
  chunk=-; [ "$s" = 1 ] && chunk=$(awk -v f="${fig[$name]}" -v n=$TOKENS 'BEGIN {printf "%.2f", f / n}')
  table+=$'\n'"| ${name//_/ } | $((${rate[$name]} / ROUNDS)) | $bad | $cell | $chunk |"
done

echo
echo "CPU per request, translated vs pass-through: $(date -u '+%Y-%m-%d %H:%M UTC'), nproc $(nproc)," \
  "$ROUNDS x ${DUR}s per target at $RATE req/s (hey -c 50 -q $((RATE / 50))), streams ($TOKENS tokens)" \
  "at $STREAM_RATE/s (-q $((STREAM_RATE / 50))); weir's CPU only"
echo "command: $cmdline"
echo
echo "$table"
echo
# added cost of translating, against pass-through in the same client format
for pair in "openai->anthropic openai->openai" "anthropic->openai anthropic->anthropic"; do
  read -r tr pt <<<"$pair"
  awk -v tr="$tr" -v pt="$pt" -v a="${fig[$tr]}" -v b="${fig[$pt]}" -v as="${fig[${tr}_stream]}" \
    -v bs="${fig[${pt}_stream]}" -v n=$TOKENS 'BEGIN {
    printf "added by %s (vs %s): %+.1f µs per non-stream request, %+.2f µs per stream chunk (%+.1f µs per stream)\n",
      tr, pt, a - b, (as - bs) / n, as - bs }'
done
[ ${#failed[@]} = 0 ] && exit 0
for f in "${failed[@]}"; do echo "FAILED $f" >&2; sed -n '/Status code distribution/,$p' "$work/hey-${f%%:*}.txt" >&2; done
exit 1
