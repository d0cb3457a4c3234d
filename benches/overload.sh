#!/usr/bin/env bash
# Overload control in one run (benches/overload.rs against the release
# weir and weir mock): the adaptive limit following the mock's capacity,
# goodput and p99 per class under a batch flood, fair shares between keys,
# Retry-After honesty. Then the limit-vs-time PNG from its CSV
# (matplotlib in a venv of its own, target/py-bench).
#
# Usage: benches/overload.sh    (Markdown on stdout; CSV and PNG under target/bench/overload)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --bench overload 2>/dev/null
venv=target/py-bench
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import matplotlib' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r benches/requirements.txt
fi
"$venv/bin/python" benches/plot_limit.py target/bench/overload/limit.csv target/bench/overload/limit.png
echo
echo "plot: target/bench/overload/limit.png"
