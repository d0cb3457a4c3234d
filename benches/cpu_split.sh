#!/usr/bin/env bash
# Where a request's CPU goes, user or kernel, and how often a proxy's threads
# sleep and wake per request: weir (no plugins), a bare Pingora proxy (and
# answering by itself) and nginx, in front of the CPU benchmarks' nginx
# upstream, each at a fixed rate in turn (hey -c 50). Per request: user and
# system CPU microseconds (utime, stime of every thread, nginx's workers
# included) and voluntary / involuntary context switches.
#
# Usage: WEIRS="now=target/perf/weir" [PLAIN=target/perf/examples/pingora_plain]
#        benches/cpu_split.sh [seconds per run (6)] [rounds (2)]
#   RATE  requests per second (default 5000)
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-6}; ROUNDS=${2:-2}; RATE=${RATE:-5000}; WEIRS=${WEIRS:-weir=target/perf/weir}
source benches/common.sh
need hey nginx
trap 'kill -INT "${pids[@]}" 2>/dev/null; sleep 1; cleanup' EXIT
UP=19800; NG=19801; W0=19810; PL=19820; PA=19821
upstream_conf $UP >"$work/upstream.conf"
proxy_conf $UP $NG >"$work/proxy.conf"
nginx_run upstream; nginx_run proxy; ngpid=$!
bench_keys
rows=()
for lb in $WEIRS; do
  label=${lb%%=*}; bin=${lb#*=}
  { echo "server: { listen: [\"127.0.0.1:$W0\"], threads: 2 }"; bench_routes "http://127.0.0.1:$UP/v1" 0; } >"$work/w-$label.yaml"
  RUST_LOG=error $bin serve -c "$work/w-$label.yaml" >"$work/w-$label.log" 2>&1 & pids+=($!); rows+=("$label $W0 $!"); W0=$((W0+2))
done
if [ -n "${PLAIN:-}" ]; then
  $PLAIN 127.0.0.1:$PL 127.0.0.1:$UP 2 >/dev/null 2>&1 & pids+=($!); rows+=("pingora $PL $!")
  $PLAIN 127.0.0.1:$PA 127.0.0.1:$UP 2 answer >/dev/null 2>&1 & pids+=($!); rows+=("pingora+answer $PA $!")
fi
rows+=("nginx $NG $ngpid")
sleep 1; for r in "${rows[@]}"; do read -r _ p _ <<<"$r"; wait_port $p; done
echo '{"model":"bench-model","messages":[{"role":"user","content":"hello"}],"max_tokens":16}' >"$work/body.json"
# st PID: utime stime voluntary involuntary, summed over the threads of PID
# and of its children
st() { local u=0 s=0 v=0 n=0 p t
  for p in $1 $(pgrep -P "$1" || true); do
    for t in /proc/$p/task/*; do
      read -r a b < <(sed 's/.*) //' $t/stat | awk '{print $12, $13}'); u=$((u+a)); s=$((s+b))
      v=$((v+$(awk '/^voluntary_ctxt/ {print $2}' $t/status))); n=$((n+$(awk '/^nonvoluntary_ctxt/ {print $2}' $t/status)))
    done
  done; echo "$u $s $v $n"; }
declare -A U S V N C
for r in $(seq $ROUNDS); do for row in "${rows[@]}"; do read -r name port pid <<<"$row"
  url=http://127.0.0.1:$port/v1/chat/completions
  [ $r = 1 ] && hey -n 2000 -c 10 -m POST -T application/json -D "$work/body.json" "$url" >/dev/null
  read -r u0 s0 v0 n0 < <(st $pid)
  hey -z ${DUR}s -c 50 -q $((RATE/50)) -m POST -T application/json -D "$work/body.json" "$url" > "$work/h.txt"
  read -r u1 s1 v1 n1 < <(st $pid)
  read -r ok _ _ < <(hey_counts "$work/h.txt")
  U[$name]=$((${U[$name]:-0}+u1-u0)); S[$name]=$((${S[$name]:-0}+s1-s0)); V[$name]=$((${V[$name]:-0}+v1-v0)); N[$name]=$((${N[$name]:-0}+n1-n0)); C[$name]=$((${C[$name]:-0}+ok))
done; done
hz=$(getconf CLK_TCK)
printf '%-16s %8s %8s %8s %8s %8s\n' target user_us sys_us total vcs/req nvcs/req
for row in "${rows[@]}"; do read -r name _ <<<"$row"; c=${C[$name]}
  awk -v n=$name -v u=${U[$name]} -v s=${S[$name]} -v v=${V[$name]} -v nv=${N[$name]} -v c=$c -v hz=$hz 'BEGIN {printf "%-16s %8.1f %8.1f %8.1f %8.2f %8.2f\n", n, u/hz*1e6/c, s/hz*1e6/c, (u+s)/hz*1e6/c, v/c, nv/c}'
done
