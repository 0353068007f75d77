"""The markdown report of a benchmark run: conveyor's aims, then medians (min-max) per
system: first where users are (the tutorial's deployment, the defaults, producers),
then each system's tuned configuration, then conveyor's embedded SQLite broker beside
Huey's, then what conveyor's ``broker_replica_acks`` costs."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.adapter import EMBEDDED_SYSTEMS, SYSTEMS, VARIANTS


@dataclass(frozen=True)
class Metric:
    scenario: str
    key: str
    title: str
    unit: str
    higher_is_better: bool
    digits: int = 0


#: Where users are: the deployment of the tutorial they follow, each system's default
#: configuration, and producers as web apps send (one thread, many, asyncio, bulk).
HEADLINE = (
    Metric("tutorial", "drain_per_s", "tutorial deployment: drain", "tasks/s", True),
    Metric(
        "tutorial_results",
        "drain_per_s",
        "tutorial deployment, results stored: drain",
        "tasks/s",
        True,
    ),
    Metric("defaults", "drain_per_s", "defaults, threads pool: drain", "tasks/s", True),
    Metric(
        "tutorial", "worker_rss_mb", "tutorial deployment: worker memory (PSS)", "MiB", False, 1
    ),
    Metric("producers", "one_thread_per_s", "producers: one thread", "tasks/s", True),
    Metric(
        "producers",
        "raw_per_s",
        "producers: raw loop, one EVALSHA per call (the floor)",
        "calls/s",
        True,
    ),
    Metric("producers", "one_thread_vs_raw", "producers: one thread vs raw loop", "", True, 2),
    Metric("producers", "threads32_per_s", "producers: 32 threads", "tasks/s", True),
    Metric("producers", "asyncio64_per_s", "producers: 64 asyncio tasks", "tasks/s", True),
    Metric("producers", "bulk_per_s", "producers: bulk", "tasks/s", True),
)

#: Each system in the configuration that fits the scenario best (docs/benchmarks.md).
TUNED = (
    Metric("enqueue+drain", "enqueue_per_s", "enqueue, one call each", "tasks/s", True),
    Metric("bulk", "bulk_per_s", "enqueue, bulk API", "tasks/s", True),
    Metric(
        "enqueue+drain",
        "drain_per_s",
        "drain, concurrency 2, tuned (conveyor prefetch x64, Dramatiq 128)",
        "tasks/s",
        True,
    ),
    Metric(
        "enqueue+drain", "worker_rss_mb", "worker memory (PSS) after tuned drain", "MiB", False, 1
    ),
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


#: Embedded, no server: each system on its own SQLite file (conveyor beside Huey).
EMBEDDED = (
    Metric("sqlite", "enqueue_per_s", "enqueue, one call each", "tasks/s", True),
    Metric("sqlite", "bulk_per_s", "enqueue, bulk (`with app.publishing():`)", "tasks/s", True),
    Metric("sqlite", "drain_threads_per_s", "drain, 2 threads", "tasks/s", True),
    Metric(
        "sqlite",
        "drain_processes_per_s",
        "drain, 2 processes (conveyor's default prefork)",
        "tasks/s",
        True,
    ),
    Metric(
        "sqlite",
        "drain_threads_first_seconds",
        "drain, 2 threads: worker start to first task",
        "s",
        False,
        2,
    ),
    Metric(
        "sqlite",
        "drain_processes_first_seconds",
        "drain, 2 processes: worker start to first task",
        "s",
        False,
        2,
    ),
    Metric("sqlite", "threads_worker_rss_mb", "worker memory (PSS), 2 threads", "MiB", False, 1),
    Metric(
        "sqlite", "processes_worker_rss_mb", "worker memory (PSS), 2 processes", "MiB", False, 1
    ),
)


#: What ``broker_replica_acks`` costs (conveyor only): each figure with the setting
#: at 0 and at 1, on a master with one replica either way.
REPLICAS = (
    Metric("replicas", "producer_per_s", "producer: one thread", "tasks/s", True),
    Metric("replicas", "drain_per_s", "tutorial deployment: drain", "tasks/s", True),
    Metric("replicas", "producer_waits_per_task", "WAIT per task sent", "", False, 2),
    Metric("replicas", "drain_waits_per_task", "WAIT per task drained", "", False, 2),
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


def metric_cell(runs: Sequence[dict[str, Any]], system: str, metric: Metric) -> str:
    """The cell of ``metric``; "n/a" where the system ran the scenario without that
    figure (a way of sending it does not have)."""
    found = values(runs, system, metric.scenario, metric.key)
    ran = any(
        r["system"] == system and r["scenario"] == metric.scenario and r.get("ok") for r in runs
    )
    if not found and ran:
        return "n/a"
    return cell(found, metric.digits)


def systems_in(runs: Sequence[dict[str, Any]], scenarios: set[str] | None = None) -> list[str]:
    present = {r["system"] for r in runs if scenarios is None or r["scenario"] in scenarios}
    return [s for s in SYSTEMS if s in present]


def pools(runs: Sequence[dict[str, Any]], system: str, scenario: str) -> str:
    found = sorted(
        {
            str(r["pool"])
            for r in runs
            if r["system"] == system and r["scenario"] == scenario and r.get("pool")
        }
    )
    return "; ".join(found) or "-"


def failures(runs: Sequence[dict[str, Any]], system: str, scenario: str) -> str:
    mine = [r for r in runs if r["system"] == system and r["scenario"] == scenario]
    lost = sum(int(r.get("lost") or 0) for r in mine)
    dup = sum(int(r.get("duplicates") or 0) for r in mine)
    failed = [r.get("error") or "incomplete" for r in mine if not r.get("ok")]
    text = f"{lost} / {dup}"
    if failed:
        text += f"; {len(failed)} failed: {failed[0][:80]}"
    return text


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "**missed**")


def aims(runs: Sequence[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(aim, measured, verdict) for each of conveyor's aims."""
    peers = [
        s
        for s in systems_in(runs)
        if s != "conveyor" and s not in VARIANTS and s not in EMBEDDED_SYSTEMS
    ]
    rows: list[tuple[str, str, str]] = []

    def ours(scenario: str, key: str) -> float | None:
        return median(runs, "conveyor", scenario, key)

    def floor_row(title: str, scenario: str, key: str, floor: float) -> None:
        value = ours(scenario, key)
        if value is None:
            rows.append((title, "not measured", "-"))
        else:
            rows.append((title, f"{value:,.0f}/s", verdict(value >= floor)))

    def ratio_row(
        title: str, scenario: str, key: str, factor: float, floor: float, against: list[str]
    ) -> None:
        """At least ``floor`` and ``factor`` times the fastest of ``against``."""
        value = ours(scenario, key)
        if value is None:
            rows.append((title, "not measured", "-"))
            return
        found = [(s, m) for s in against if (m := median(runs, s, scenario, key)) is not None]
        measured = f"{value:,.0f}/s"
        ok = value >= floor
        if found:
            peer, theirs = max(found, key=lambda sm: sm[1])
            measured += f" = {value / theirs:.1f}x {peer} ({theirs:,.0f}/s)"
            ok = ok and value >= factor * theirs
        else:
            measured += f" ({'/'.join(against) or 'no peer'} not measured)"
        rows.append((title, measured, verdict(ok)))

    ratio_row(
        "tutorial deployment: drain ≥10,000/s and ≥10x Celery",
        "tutorial",
        "drain_per_s",
        10,
        10_000,
        ["celery"],
    )
    floor_row(
        "tutorial deployment, results stored: drain ≥7,000/s",
        "tutorial_results",
        "drain_per_s",
        7_000,
    )
    floor_row("defaults, threads pool: drain ≥10,000/s", "defaults", "drain_per_s", 10_000)
    floor_row("producers, 32 threads: ≥25,000/s", "producers", "threads32_per_s", 25_000)
    floor_row("producers, 64 asyncio tasks: ≥30,000/s", "producers", "asyncio64_per_s", 30_000)
    one = ours("producers", "one_thread_per_s")
    raw = ours("producers", "raw_per_s")
    share = ours("producers", "one_thread_vs_raw")
    rows.append(
        (
            "producers, one thread: ≥90% of the raw EVALSHA loop",
            "not measured"
            if one is None or raw is None or share is None
            else f"{one:,.0f}/s = {share:.0%} of the raw loop ({raw:,.0f}/s)",
            verdict(None if share is None else share >= 0.9),
        )
    )
    bulks = [
        (label, value)
        for label, scenario in (("producers", "producers"), ("bulk scenario", "bulk"))
        if (value := ours(scenario, "bulk_per_s")) is not None
    ]
    rows.append(
        (
            "bulk: ≥50,000/s",
            "; ".join(f"{v:,.0f}/s ({label})" for label, v in bulks) or "not measured",
            verdict(all(v >= 50_000 for _, v in bulks) if bulks else None),
        )
    )
    ratio_row(
        "tuned drain (concurrency 2, prefetch x64): ≥3x the fastest peer and ≥10,000/s",
        "enqueue+drain",
        "drain_per_s",
        3,
        10_000,
        peers,
    )
    ratio_row(
        "enqueue, one call each: ≥2x the fastest peer",
        "enqueue+drain",
        "enqueue_per_s",
        2,
        0,
        peers,
    )
    p50 = ours("roundtrip", "p50_ms")
    rows.append(
        (
            "round trip p50 < 1 ms, worker idle",
            "not measured" if p50 is None else f"{p50:.2f} ms",
            verdict(None if p50 is None else p50 < 1),
        )
    )
    cmds = ours("cost", "ignored_commands_per_task")
    inside = ours("cost", "ignored_script_commands_per_task")
    rows.append(
        (
            "≤4 Redis commands per task, results ignored",
            "not measured"
            if cmds is None
            else f"{cmds:.2f} sent ({inside or 0:.2f} more inside Lua scripts)",
            verdict(None if cmds is None else cmds <= 4),
        )
    )
    ratio_row("SQLite enqueue, one call each: ≥2x Huey", "sqlite", "enqueue_per_s", 2, 0, ["huey"])
    drains = [
        (label, value, theirs)
        for label in ("threads", "processes")
        if (value := ours("sqlite", f"drain_{label}_per_s")) is not None
        and (theirs := median(runs, "huey", "sqlite", f"drain_{label}_per_s")) is not None
    ]
    rows.append(
        (
            "SQLite drain: ≥2x Huey (2 threads, and 2 processes)",
            "; ".join(
                f"{label}: {v:,.0f}/s = {v / h:.1f}x Huey ({h:,.0f}/s)" for label, v, h in drains
            )
            or "not measured",
            verdict(all(v >= 2 * h for _, v, h in drains) if drains else None),
        )
    )
    io = ours("io", "seconds")
    ideal = ours("io", "ideal_seconds")
    rows.append(
        (
            "I/O-bound within 20% of ideal",
            "not measured"
            if io is None or ideal is None
            else f"{io:.3f} s = ideal {ideal:.2f} s +{(io / ideal - 1) * 100:.0f}%",
            verdict(None if io is None or ideal is None else io <= ideal * 1.2),
        )
    )
    return rows


def figures_table(runs: Sequence[dict[str, Any]], metrics: Sequence[Metric]) -> list[str]:
    """The markdown table of ``metrics`` for the systems that ran their scenarios."""
    systems = systems_in(runs, {m.scenario for m in metrics})
    if not systems:
        return ["Not measured in this run.", ""]
    out = ["| | " + " | ".join(systems) + " |", "|---|" + "---|" * len(systems)]
    for metric in metrics:
        if not any(r["scenario"] == metric.scenario for r in runs):
            continue
        cells = [metric_cell(runs, s, metric) for s in systems]
        unit = f" ({metric.unit})" if metric.unit else ""
        best = "↑" if metric.higher_is_better else "↓"
        out.append(f"| {metric.title}{unit} {best} | " + " | ".join(cells) + " |")
    return [*out, ""]


def ratio_table(
    runs: Sequence[dict[str, Any]], metrics: Sequence[Metric], peer: str, name: str
) -> list[str]:
    """The markdown table of ``metrics`` for conveyor and ``peer`` (shown as ``name``),
    with the ratio of their medians (conveyor / ``peer``)."""
    if not any(r["scenario"] in {m.scenario for m in metrics} for r in runs):
        return ["Not measured in this run.", ""]
    out = [f"| | conveyor | {name} | conveyor/{name} |", "|---|---|---|---|"]
    for metric in metrics:
        ours = median(runs, "conveyor", metric.scenario, metric.key)
        theirs = median(runs, peer, metric.scenario, metric.key)
        ratio = f"{ours / theirs:.2f}x" if ours is not None and theirs else "-"
        cells = [metric_cell(runs, s, metric) for s in ("conveyor", peer)]
        unit = f" ({metric.unit})" if metric.unit else ""
        best = "↑" if metric.higher_is_better else "↓"
        out.append(f"| {metric.title}{unit} {best} | " + " | ".join(cells) + f" | {ratio} |")
    return [*out, ""]


def replicas_table(runs: Sequence[dict[str, Any]]) -> list[str]:
    """conveyor's figures with ``broker_replica_acks`` 0 and 1 side by side, and their
    ratio (1 / 0)."""
    by_acks = {
        acks: [r for r in runs if r["scenario"] == "replicas" and r.get("replica_acks") == acks]
        for acks in (0, 1)
    }
    if not any(by_acks.values()):
        return ["Not measured in this run.", ""]
    out = ["| | acks 0 | acks 1 | 1 / 0 |", "|---|---|---|---|"]
    for metric in REPLICAS:
        found = {
            a: values(mine, "conveyor", metric.scenario, metric.key) for a, mine in by_acks.items()
        }
        none, one = (statistics.median(found[a]) if found[a] else None for a in (0, 1))
        ratio = f"{one / none:.2f}x" if one is not None and none else "-"
        unit = f" ({metric.unit})" if metric.unit else ""
        best = "↑" if metric.higher_is_better else "↓"
        cells = " | ".join(cell(found[a], metric.digits) for a in (0, 1))
        out.append(f"| {metric.title}{unit} {best} | {cells} | {ratio} |")
    return [*out, ""]


def render(info: dict[str, Any], runs: Sequence[dict[str, Any]]) -> str:
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
        "## Aims",
        "",
    ]
    if info["quick"]:
        out += [
            "A quick run's sizes are too small for these verdicts (worker start-up alone is "
            "a large part of a 2,000-task drain): `make bench` measures the aims.",
            "",
        ]
    out += ["| aim | conveyor | verdict |", "|---|---|---|"]
    out += [f"| {a} | {mm} | {v} |" for a, mm, v in aims(runs)]
    out += ["", "## Where users are: the tutorial's deployment and the defaults", ""]
    headline = {m.scenario for m in HEADLINE}
    if any(r["scenario"] in headline for r in runs):
        out += [
            "The tutorial's deployment: one worker `-P prefork -c 4` with the tutorial's "
            "`worker_prefetch_multiplier = 1` and `task_acks_late = True` set in the app's "
            "module (Celery also `--prefetch-multiplier 1`), draining queued no-op tasks, "
            "results ignored, then stored (`echo`). Defaults: `-P threads` and nothing else "
            "(concurrency: the CPU count). Every worker logs at `warning` (the tutorial's "
            "`info` writes a line per task in both). Producers: no-op tasks sent from one "
            "process by one thread, 32 threads, 64 asyncio tasks of one event loop, and the "
            "bulk API. The raw loop, one `EVALSHA` of a one-`LPUSH` script per call on one "
            "redis-py connection of the same process, is the floor of one round trip per "
            "call; it runs in slices alternating with one thread's sends, so both meet the "
            "same placement on the CPUs (`raw_client_per_s` in results.json: the same "
            "through `Redis.evalsha`). n/a: the system has no such API (Celery has no "
            "asyncio send).",
            "",
        ]
    out += figures_table(runs, HEADLINE)
    out += [
        "## Tuned configurations",
        "",
        "Each system in the configuration that fits the scenario best, not its defaults "
        "(docs/benchmarks.md; pools below): conveyor drains with `--prefetch-multiplier 64`, "
        "Dramatiq with a prefetch of 128, arq with `poll_delay=0.001`.",
        "",
    ]
    out += figures_table(runs, TUNED)
    out += ["## Embedded, no server: conveyor on SQLite beside Huey", ""]
    if any(r["scenario"] == "sqlite" for r in runs):
        out += [
            "Each system's queue in its own fresh SQLite file, no Redis (the run fails if "
            "Redis sees a command): conveyor with broker and results at "
            "`sqlite:///<workdir>/conveyor.db`, Huey 3 with `SqliteHuey(filename=..., "
            "results=False, fsync=False)` (`PRAGMA synchronous=OFF`, less durable than "
            "conveyor's `NORMAL`). No-op tasks, results ignored: sent one call each, then "
            "drained by a worker of 2 threads (`conveyor worker -P threads -c 2`, "
            "`huey_consumer -w 2 -k thread`); as many again sent with conveyor's bulk API "
            "(Huey has none: one call each, untimed) and drained by a worker of 2 "
            "processes (`conveyor worker -c 2`, its default prefork pool and settings; "
            "`huey_consumer -w 2 -k process`). Huey polls every millisecond (`-d 0.001 "
            "-b 1.0`; its default starts at 100 ms and backs off). A drain: from the "
            "worker's start to the last execution. Both on the same SQLite library.",
            "",
        ]
    out += ratio_table(runs, EMBEDDED, "huey", "Huey")
    out += ["## The cost of replica acknowledgements: conveyor's `broker_replica_acks`", ""]
    if any(r["scenario"] == "replicas" for r in runs):
        out += [
            "conveyor alone (no peer has the setting), on the same redis-server with one "
            "replica (`REPLICAOF`, loopback) started for this scenario, once with "
            "`broker_replica_acks = 0` and once with 1, in turns. With 1, every publish "
            "and ack returns only once the replica holds it: a `WAIT 1` in the same round "
            "trip. No-op tasks sent by one thread calling `delay`, then drained by the "
            "tutorial's deployment (`-P prefork -c 4`, prefetch 1, acks late). WAIT per "
            "task: as Redis counted them (acks of tasks that finish together share one). "
            "On loopback the replica answers in microseconds, so this is the floor of the "
            "cost: over a network each WAIT adds the replication round trip.",
            "",
        ]
    out += replicas_table(runs)
    out += [
        "## Configuration and correctness",
        "",
        "Pools per scenario, and tasks lost / run twice over all runs (producers: every "
        "message sent, run by the worker named).",
        "",
        "| scenario | system | pool | lost / duplicated |",
        "|---|---|---|---|",
    ]
    for scenario in info["sizes"]:
        for s in systems_in(runs, {scenario}):
            out.append(
                f"| {scenario} | {s} | {pools(runs, s, scenario)} | {failures(runs, s, scenario)} |"
            )
    skipped = info.get("unsupported") or {}
    if skipped:
        out += ["", "Not supported, so not run: "]
        out[-1] += "; ".join(f"{s}: {', '.join(names)}" for s, names in skipped.items()) + "."
    out += ["", "## Versions", ""]
    out += [f"- {k} {v}" for k, v in sorted(versions.items())]
    return "\n".join(out) + "\n"


def write_report(out: Path, info: dict[str, Any], runs: Sequence[dict[str, Any]]) -> None:
    (out / "results.md").write_text(render(info, runs))
