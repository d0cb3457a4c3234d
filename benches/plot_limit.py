"""Plot weir's adaptive limit against the mock's capacity over time, from
target/bench/overload/limit.csv (written by `cargo bench --bench overload`).

Usage: python3 benches/plot_limit.py CSV PNG
"""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src, dst):
    rows = list(csv.DictReader(open(src)))
    t = [float(r["t_s"]) for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(9, 6))
    top.step(t, [int(r["capacity"]) for r in rows], where="post", label="mock capacity (slots)", color="black")
    top.plot(t, [float(r["limit"]) for r in rows], label="weir limit (weir_concurrency_limit)", color="tab:blue")
    top.plot(t, [int(r["mock_in_service"]) for r in rows], label="in service at the mock", color="tab:orange", alpha=0.7)
    top.set_ylabel("concurrent requests")
    top.legend(loc="upper right", fontsize=8)
    top.set_title("weir adaptive concurrency: mock capacity 20 → 8 → 20")
    bottom.plot(t, [float(r["served_per_s"]) for r in rows], label="goodput (200s/s)", color="tab:green")
    bottom.step(t, [int(r["capacity"]) / 0.25 for r in rows], where="post", label="capacity req/s (nominal)", color="black", linestyle="--")
    bottom.set_ylabel("requests/s")
    bottom.set_xlabel("seconds")
    bottom.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(dst, dpi=100)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
