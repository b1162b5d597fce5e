"""bench/results/latest.png: wall time and $ per 1M items against items, both systems.

matplotlib comes from requirements-bench.txt (`make bench` installs it; `make test` does
not, and the harness skips the plot without it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

COLOURS = {"batchdrain": "#1f77b4", "baseline": "#d62728"}
LABELS = {"batchdrain": "batchdrain (K={k})", "baseline": "origin design, per-item rows (K=1)"}


def plot_results(document: dict[str, Any], path: Path) -> Path:
    """Two panels on a log-log scale: wall time (cron event -> alert) and modelled $ per 1M items."""
    figure, (time_axis, cost_axis) = plt.subplots(1, 2, figsize=(10, 4.8), dpi=110)
    for system in ("baseline", "batchdrain"):
        runs = sorted((run for run in document["runs"] if run["system"] == system), key=lambda run: run["items"])
        if not runs:
            continue
        items = [run["items"] for run in runs]
        label = LABELS[system].format(k=runs[0]["k"])
        style = {"color": COLOURS[system], "marker": "o", "label": label}
        time_axis.plot(items, [run["wall_s"] for run in runs], **style)
        cost_axis.plot(items, [run["usd_per_1m_items"] for run in runs], **style)
        for run in runs:
            time_axis.annotate(f"{run['wall_s']:.0f} s\n{run['items_per_s']:,.0f}/s", (run["items"], run["wall_s"]),
                               textcoords="offset points", xytext=(6, -4), fontsize=8, color=COLOURS[system])
            cost_axis.annotate(f"${run['usd_per_1m_items']:.3f}", (run["items"], run["usd_per_1m_items"]),
                               textcoords="offset points", xytext=(6, -4), fontsize=8, color=COLOURS[system])
    for axis, title, unit in (
        (time_axis, "Wall time, cron event to alert (local stack, noop)", "seconds"),
        (cost_axis, "Modelled AWS cost of the counted requests", "$ per 1M items"),
    ):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("items in the batch")
        axis.set_ylabel(unit)
        axis.set_title(title, fontsize=10)
        axis.grid(True, which="both", alpha=0.3)
        axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
        axis.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axis.yaxis.set_minor_formatter(FuncFormatter(lambda value, _: ""))
        axis.xaxis.set_minor_formatter(FuncFormatter(lambda value, _: ""))
        axis.set_xticks(sorted({run["items"] for run in document["runs"]}))
        axis.margins(x=0.25, y=0.3)
        axis.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, -0.36), ncol=1, frameon=False)
    speedup = document.get("speedup_vs_baseline")
    note = f"same run, {document['machine']['cores']} cores; generated {document['generated_at']}"
    if speedup is not None:
        note = f"batchdrain {speedup}x the baseline's items/s at {document['speedup_at_items']:,} items; " + note
    figure.suptitle(note, fontsize=9)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
