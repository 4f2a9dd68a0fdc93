"""Draws the curves of `scripts/bench curves` and `scripts/bench soak` as one SVG.

Usage: bench_chart.py OUT_DIR CHART.svg. Reads OUT_DIR/curves.tsv (curve, point, figure,
value), OUT_DIR/backlog.txt (seconds, stock rows, inventory RSS KiB) and OUT_DIR/soak.tsv;
draws a panel for each that holds data.
"""

import csv
import os
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("svg")
import matplotlib.pyplot as plt  # noqa: E402

out, chart = sys.argv[1], sys.argv[2]


def read_curves():
    figures = defaultdict(dict)  # (curve, figure) -> {point: value}
    path = os.path.join(out, "curves.tsv")
    if os.path.exists(path):
        for row in csv.reader(open(path), delimiter="\t"):
            if len(row) == 4:
                try:
                    figures[(row[0], row[2])][row[1]] = float(row[3])
                except ValueError:
                    pass
    return figures


def concurrency(ax, figures):
    sagas = figures.get(("concurrency", "completed sagas/s"), {})
    points = sorted(sagas, key=float)
    xs = [float(p) for p in points]
    ax.plot(xs, [sagas[p] for p in points], "o-", color="tab:blue", label="sagas/s")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("closed-loop clients")
    ax.set_ylabel("completed sagas/s", color="tab:blue")
    ax.set_title("Concurrency")
    right = ax.twinx()
    for name, style in (("saga p50 (ms)", "s--"), ("saga p99 (ms)", "s-")):
        values = figures.get(("concurrency", name), {})
        right.plot(xs, [values.get(p, 0) for p in points], style, color="tab:red", label=name)
    right.set_yscale("log")
    right.set_ylabel("saga latency (ms)", color="tab:red")
    lines = ax.get_lines() + right.get_lines()
    right.legend(lines, [line.get_label() for line in lines], loc="upper left", fontsize=8)


def ratios(ax, figures, curve, base_curve, base_point, big_point, title, base_label):
    names = [f for (c, f) in figures if c == curve and big_point in figures[(c, f)]]
    names = [n for n in names if figures.get((base_curve, n), {}).get(base_point)]
    values = [figures[(curve, n)][big_point] / figures[(base_curve, n)][base_point] for n in names]
    ax.barh(range(len(names)), values, color="tab:purple")
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel(f"ratio to {base_label} (log scale; 1 = no change)")
    ax.set_title(title)
    for i, v in enumerate(values):
        ax.annotate(f"{v:.2f}x", (v, i), fontsize=7, va="center", xytext=(3, 0), textcoords="offset points")


def backlog(ax):
    rows = [line.split() for line in open(os.path.join(out, "backlog.txt")).read().splitlines()[1:]]
    t = [float(r[0]) for r in rows]
    ax.plot(t, [int(r[1]) for r in rows], color="tab:green")
    ax.set_xlabel("seconds after inventory started")
    ax.set_ylabel("products inventory knows", color="tab:green")
    ax.set_title("Backlog drain")
    right = ax.twinx()
    right.plot(t, [int(r[2]) / 1024 for r in rows], color="tab:orange")
    right.set_ylabel("inventory RSS (MiB)", color="tab:orange")
    right.set_ylim(bottom=0)


def soak(ax):
    per_minute = defaultdict(dict)
    p99 = {}
    for row in csv.DictReader(open(os.path.join(out, "soak.tsv")), delimiter="\t"):
        m = int(row["minute"])
        per_minute[row["program"]][m] = int(row["rss_kib"]) / 1024
        p99[m] = float(row["saga_p99_ms"])
    for program, values in sorted(per_minute.items()):
        minutes = sorted(values)
        ax.plot(minutes, [values[m] for m in minutes], label=program, linewidth=1)
    ax.set_xlabel("minute")
    ax.set_ylabel("RSS (MiB)")
    ax.set_ylim(bottom=0)
    ax.set_title("Soak at half saturation")
    ax.legend(fontsize=6, loc="lower left", ncol=2)
    right = ax.twinx()
    minutes = sorted(p99)
    right.plot(minutes, [p99[m] for m in minutes], "k--", label="saga p99")
    right.set_ylabel("saga p99 (ms), dashed")
    right.set_ylim(bottom=0)


figures = read_curves()
panels = []
if ("concurrency", "completed sagas/s") in figures:
    panels.append(lambda ax: concurrency(ax, figures))
big = {c: max((p for (cc, _), v in figures.items() if cc == c for p in v), key=float, default=None) for c in ("data", "catalog", "users")}
if big["data"] and "0" in figures.get(("data", "completed sagas/s at saturation"), {}):
    panels.append(lambda ax: ratios(ax, figures, "data", "data", "0", big["data"], f"{int(float(big['data'])):,} orders vs an empty database", "an empty database"))
if big["catalog"] and big["catalog"] != "20":
    panels.append(lambda ax: ratios(ax, figures, "catalog", "catalog", "20", big["catalog"], f"{int(float(big['catalog'])):,} products vs 20", "20 products"))
if big["users"]:
    panels.append(lambda ax: ratios(ax, figures, "users", "catalog", "20", big["users"], f"{int(float(big['users'])):,} users vs 20", "20 users"))
if os.path.exists(os.path.join(out, "backlog.txt")):
    panels.append(backlog)
if os.path.exists(os.path.join(out, "soak.tsv")):
    panels.append(soak)
if not panels:
    sys.exit("nothing to draw in " + out)

cols = 2
rows = (len(panels) + cols - 1) // cols
fig, axes = plt.subplots(rows, cols, figsize=(12, 4 * rows), squeeze=False)
for ax, draw in zip(axes.flat, panels):
    draw(ax)
for ax in list(axes.flat)[len(panels):]:
    ax.set_visible(False)
fig.suptitle("How Shop's cost grows (scripts/bench curves, soak)")
fig.tight_layout()
fig.savefig(chart)
print(chart)
