"""Draw results.json as one PNG (run with the chart environment's Python).

``python bench/chart.py bench/results/results.json bench/results/results.png``
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

PANELS = (
    ("tutorial", "drain_per_s", "tutorial deployment: drain (tasks/s, higher is better)"),
    ("tutorial_results", "drain_per_s", "tutorial deployment, results stored: drain"),
    ("defaults", "drain_per_s", "defaults, threads pool: drain (tasks/s)"),
    ("producers", "threads32_per_s", "producers: 32 threads (tasks/s)"),
    ("enqueue+drain", "enqueue_per_s", "enqueue, one call each (tasks/s, higher is better)"),
    ("bulk", "bulk_per_s", "enqueue, bulk (tasks/s)"),
    ("enqueue+drain", "drain_per_s", "drain, concurrency 2, tuned (tasks/s)"),
    ("roundtrip", "p50_ms", "round trip p50 (ms, lower is better)"),
    ("io", "seconds", "I/O-bound 2,000 x 20 ms at 50 (s; ideal 0.8)"),
    ("delayed", "late_p99_ms", "countdown lateness p99 (ms)"),
    ("cost", "ignored_commands_per_task", "Redis commands/task, results ignored"),
    ("enqueue+drain", "worker_rss_mb", "worker memory, PSS, after drain (MiB)"),
    ("sqlite", "enqueue_per_s", "SQLite, no server: enqueue, one call each (tasks/s)"),
    ("sqlite", "drain_threads_per_s", "SQLite: drain, 2 threads (tasks/s)"),
    ("sqlite", "drain_processes_per_s", "SQLite: drain, 2 processes (tasks/s)"),
)
ORDER = ("conveyor", "celery", "dramatiq", "rq", "arq", "saq", "huey")


def main(source: str, target: str) -> None:
    data = json.loads(Path(source).read_text())
    runs = data["runs"]
    fig, axes = plt.subplots(3, 5, figsize=(22, 12))
    for ax, (scenario, key, title) in zip(axes.flat, PANELS, strict=True):
        names, mids, lows, highs = [], [], [], []
        for system in ORDER:
            found = [
                r[key]
                for r in runs
                if r["system"] == system
                and r["scenario"] == scenario
                and r.get("ok")
                and r.get(key) is not None
            ]
            if not found:
                continue
            mid = statistics.median(found)
            names.append(system)
            mids.append(mid)
            lows.append(mid - min(found))
            highs.append(max(found) - mid)
        if not names:
            ax.set_title(title, fontsize=9)
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        colors = ["#d62728" if n == "conveyor" else "#7f7f7f" for n in names]
        ax.bar(names, mids, yerr=[lows, highs], color=colors, capsize=3)
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelsize=8, rotation=30)
        for i, v in enumerate(mids):
            label = f"{v:,.0f}" if v >= 100 else f"{v:.3g}"
            ax.annotate(label, (i, v), ha="center", va="bottom", fontsize=7)
    m = data["info"]["machine"]
    fig.suptitle(
        f"conveyor beside its peers (SQLite: beside Huey) · {m['date']} · {m['cpu']} · "
        f"redis-server {m['redis-server']} · median of {data['info']['reps']} run(s), bars min-max",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(target, dpi=90)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
