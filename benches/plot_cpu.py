"""Chart a `benches/cpu.sh` table: CPU µs per request (left) and max req/s
(right) for each target, as horizontal bars.

Usage: python3 benches/plot_cpu.py TABLE.md PNG [TARGET ...]
  TABLE.md  cpu.sh's output (its markdown table and the lines above it)
  TARGET    only these rows, in this order (default: every row)
"""
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def rows(path):
    """(target, cpu µs, max req/s or None) for each row of the table."""
    out = []
    for line in open(path):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 4 or not re.match(r"^[0-9.]+", cells[3]):
            continue
        cpu = float(re.match(r"^[0-9.]+", cells[3]).group())
        # The max req/s cell is a mean, with each round's after it.
        m = re.match(r"^[0-9]+", cells[4]) if len(cells) > 4 else None
        top = int(m.group()) if m else None
        out.append((cells[0], cpu, top))
    if not out:
        sys.exit(f"{path}: no cpu.sh table rows")
    return out


def title(path):
    for line in open(path):
        if line.startswith("CPU per proxied request:"):
            return line.split(":", 1)[1].strip().split(",")[0]
    return ""


def main(src, dst, only):
    data = rows(src)
    if only:
        by = {r[0]: r for r in data}
        missing = [t for t in only if t not in by]
        if missing:
            sys.exit(f"{src}: no rows {missing}")
        data = [by[t] for t in only]
    names = [r[0] for r in data][::-1]
    cpu = [r[1] for r in data][::-1]
    top = [r[2] or 0 for r in data][::-1]
    colour = ["tab:gray" if n in ("nginx", "upstream-direct") or n.startswith("pingora") else "tab:blue" for n in names]
    fig, (left, right) = plt.subplots(1, 2, sharey=True, figsize=(11, 0.45 * len(names) + 1.6))
    left.barh(names, cpu, color=colour)
    left.set_xlabel("CPU µs per request at 5k req/s (lower is better)")
    for y, v in enumerate(cpu):
        left.text(v, y, f" {v:.1f}", va="center", fontsize=8)
    right.barh(names, top, color=colour)
    right.set_xlabel("max req/s, wrk -c64 (higher is better)")
    for y, v in enumerate(top):
        right.text(v, y, f" {v:,}", va="center", fontsize=8)
    left.set_xlim(0, max(cpu) * 1.18)
    right.set_xlim(0, max(top) * 1.22 if max(top) else 1)
    fig.suptitle(f"weir vs bare Pingora vs nginx, one run of benches/cpu.sh ({title(src)}, 2 cores)", fontsize=10)
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
