#!/usr/bin/env bash
# Provider faults, one run: for each scenario of tests/faults.rs (real weir,
# real `weir mock` providers with fault modes), the outcome the client saw,
# the requests each provider received and the wall time of the request.
#
# Usage: benches/faults.sh        (prints a Markdown table)
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(cargo test --test faults -- --nocapture --test-threads=4 2>&1) || {
  echo "$out" | tail -40 >&2
  exit 1
}
echo "| scenario | outcome | requests per provider | wall time |"
echo "| --- | --- | --- | --- |"
echo "$out" | grep '^FIGURE | ' | sed 's/^FIGURE | /| /; s/$/ |/' | sort
