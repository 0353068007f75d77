"""The markdown report of a benchmark run: medians (min-max) per system and the targets."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.adapter import SYSTEMS, VARIANTS


@dataclass(frozen=True)
class Metric:
    scenario: str
    key: str
    title: str
    unit: str
    higher_is_better: bool
    digits: int = 0


METRICS = (
    Metric("enqueue+drain", "enqueue_per_s", "enqueue, one call each", "tasks/s", True),
    Metric("bulk", "bulk_per_s", "enqueue, bulk API", "tasks/s", True),
    Metric("enqueue+drain", "drain_per_s", "drain, concurrency 2", "tasks/s", True),
    Metric("enqueue+drain", "worker_rss_mb", "worker memory (PSS) after drain", "MiB", False, 1),
    Metric("roundtrip", "p50_ms", "round trip p50", "ms", False, 2),
    Metric("roundtrip", "p99_ms", "round trip p99", "ms", False, 2),
    Metric("io", "seconds", "I/O-bound, 2,000 x 20 ms at 50 (ideal 0.8 s)", "s", False, 2),
    Metric("delayed", "late_p50_ms", "countdown lateness p50", "ms", False, 1),
    Metric("delayed", "late_p99_ms", "countdown lateness p99", "ms", False, 1),
    Metric(
        "cost", "ignored_commands_per_task", "Redis commands/task, results ignored", "", False, 2
    ),
    Metric(
        "cost", "ignored_script_commands_per_task", "  + commands inside Lua scripts", "", False, 2
    ),
    Metric("cost", "stored_commands_per_task", "Redis commands/task, results stored", "", False, 2),
    Metric(
        "cost", "stored_script_commands_per_task", "  + commands inside Lua scripts", "", False, 2
    ),
)


def values(runs: Sequence[dict[str, Any]], system: str, scenario: str, key: str) -> list[float]:
    return [
        float(r[key])
        for r in runs
        if r["system"] == system
        and r["scenario"] == scenario
        and r.get("ok")
        and r.get(key) is not None
    ]


def median(runs: Sequence[dict[str, Any]], system: str, scenario: str, key: str) -> float | None:
    found = values(runs, system, scenario, key)
    return statistics.median(found) if found else None


def cell(found: list[float], digits: int) -> str:
    if not found:
        return "-"
    mid = statistics.median(found)
    if len(found) == 1:
        return f"{mid:,.{digits}f}"
    return f"{mid:,.{digits}f} ({min(found):,.{digits}f}-{max(found):,.{digits}f})"


def systems_in(runs: Sequence[dict[str, Any]]) -> list[str]:
    present = {r["system"] for r in runs}
    return [s for s in SYSTEMS if s in present]


def pools(runs: Sequence[dict[str, Any]], system: str, scenario: str) -> str:
    found = sorted(
        {
            str(r["pool"])
            for r in runs
            if r["system"] == system and r["scenario"] == scenario and r.get("pool")
        }
    )
    return ", ".join(found) or "-"


def failures(runs: Sequence[dict[str, Any]], system: str, scenario: str) -> str:
    mine = [r for r in runs if r["system"] == system and r["scenario"] == scenario]
    lost = sum(int(r.get("lost") or 0) for r in mine)
    dup = sum(int(r.get("duplicates") or 0) for r in mine)
    failed = [r.get("error") or "incomplete" for r in mine if not r.get("ok")]
    text = f"{lost} / {dup}"
    if failed:
        text += f"; {len(failed)} failed: {failed[0][:80]}"
    return text


def targets(runs: Sequence[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) for each of issue 7's targets."""
    peers = [s for s in systems_in(runs) if s != "conveyor" and s not in VARIANTS]

    def best_peer(scenario: str, key: str, higher: bool) -> tuple[str, float] | None:
        found = [(s, m) for s in peers if (m := median(runs, s, scenario, key)) is not None]
        if not found:
            return None
        return (max if higher else min)(found, key=lambda sm: sm[1])

    rows: list[tuple[str, str, str]] = []

    def ratio_row(title: str, scenario: str, key: str, factor: float, floor: float) -> None:
        ours = median(runs, "conveyor", scenario, key)
        peer = best_peer(scenario, key, True)
        if ours is None:
            rows.append((title, "not measured", "-"))
            return
        measured = f"{ours:,.0f}/s"
        ok = ours >= floor
        if peer is not None:
            measured += f" = {ours / peer[1]:.1f}x {peer[0]} ({peer[1]:,.0f}/s)"
            ok = ok and ours >= factor * peer[1]
        rows.append((title, measured, "met" if ok else "**missed**"))

    ratio_row(
        "drain: ≥3x the fastest peer and ≥10,000/s", "enqueue+drain", "drain_per_s", 3, 10_000
    )
    ratio_row("enqueue: ≥2x the fastest peer per call", "enqueue+drain", "enqueue_per_s", 2, 0)
    bulk = median(runs, "conveyor", "bulk", "bulk_per_s")
    rows.append(
        (
            "enqueue: ≥50,000/s bulk",
            "not measured" if bulk is None else f"{bulk:,.0f}/s",
            "-" if bulk is None else ("met" if bulk >= 50_000 else "**missed**"),
        )
    )
    p50 = median(runs, "conveyor", "roundtrip", "p50_ms")
    rows.append(
        (
            "round trip p50 < 1 ms, worker idle",
            "not measured" if p50 is None else f"{p50:.2f} ms",
            "-" if p50 is None else ("met" if p50 < 1 else "**missed**"),
        )
    )
    cmds = median(runs, "conveyor", "cost", "ignored_commands_per_task")
    inside = median(runs, "conveyor", "cost", "ignored_script_commands_per_task")
    rows.append(
        (
            "≤4 Redis commands per task, results ignored",
            "not measured"
            if cmds is None
            else f"{cmds:.2f} sent ({inside or 0:.2f} more inside Lua scripts)",
            "-" if cmds is None else ("met" if cmds <= 4 else "**missed**"),
        )
    )
    io = median(runs, "conveyor", "io", "seconds")
    ideal = median(runs, "conveyor", "io", "ideal_seconds")
    rows.append(
        (
            "I/O-bound within 20% of ideal",
            "not measured"
            if io is None or ideal is None
            else f"{io:.3f} s = ideal {ideal:.2f} s +{(io / ideal - 1) * 100:.0f}%",
            "-" if io is None or ideal is None else ("met" if io <= ideal * 1.2 else "**missed**"),
        )
    )
    return rows


def render(info: dict[str, Any], runs: Sequence[dict[str, Any]]) -> str:
    systems = systems_in(runs)
    versions: dict[str, str] = {}
    for r in runs:
        for name, v in (r.get("versions") or {}).items():
            versions.setdefault(f"{r['system']}: {name}", v)
    out = [f"# Benchmark results ({'quick' if info['quick'] else 'full'} run)", ""]
    m = info["machine"]
    out.append(
        f"{m['date']} · {m['cpu']} · {m['memory']} · Linux {m['kernel']} · Python "
        f"{m['python']} · redis-server {m['redis-server']} (persistence off) · conveyor "
        f"at {m['conveyor commit']} · {info['reps']} run(s) per scenario, systems "
        f"interleaved · {info['seconds']} s in all"
    )
    out += [
        "",
        "Each cell: median (min-max) of the runs. Sizes: "
        + ", ".join(f"{k} {v:,}" for k, v in info["sizes"].items())
        + ".",
        "",
    ]
    out += ["## Targets (issue 7)", ""]
    if info["quick"]:
        out += [
            "A quick run's sizes are too small for these verdicts (worker start-up alone is "
            "a large part of a 2,000-task drain): `make bench` measures the targets.",
            "",
        ]
    out += ["| target | conveyor | verdict |", "|---|---|---|"]
    out += [f"| {t} | {mm} | {v} |" for t, mm, v in targets(runs)]
    out += [
        "",
        "## Figures",
        "",
        "| | " + " | ".join(systems) + " |",
        "|---|" + "---|" * len(systems),
    ]
    for metric in METRICS:
        cells = [cell(values(runs, s, metric.scenario, metric.key), metric.digits) for s in systems]
        unit = f" ({metric.unit})" if metric.unit else ""
        best = "↑" if metric.higher_is_better else "↓"
        out.append(f"| {metric.title}{unit} {best} | " + " | ".join(cells) + " |")
    out += [
        "",
        "## Configuration and correctness",
        "",
        "Pools per scenario, and tasks lost / run twice over all runs.",
        "",
        "| scenario | system | pool | lost / duplicated |",
        "|---|---|---|---|",
    ]
    for scenario in info["sizes"]:
        for s in systems:
            out.append(
                f"| {scenario} | {s} | {pools(runs, s, scenario)} | {failures(runs, s, scenario)} |"
            )
    out += ["", "## Versions", ""]
    out += [f"- {k} {v}" for k, v in sorted(versions.items())]
    return "\n".join(out) + "\n"


def write_report(out: Path, info: dict[str, Any], runs: Sequence[dict[str, Any]]) -> None:
    (out / "results.md").write_text(render(info, runs))
