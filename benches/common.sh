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
