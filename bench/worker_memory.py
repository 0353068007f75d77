"""A worker's memory over a long run: RSS growth after warm-up must stay under 5 MiB.

Starts a redis-server (persistence off) and ONE ``conveyor worker`` (default pool and
concurrency unless told), keeps its queue fed with batches of no-op tasks until
``--tasks`` (default 1,000,000) have been sent, and samples every 2 s the resident memory
of the worker's main process (``VmRSS``), of its pool children, and of the whole tree
(PSS: pages a forked child shares with its parent count once). Completions are counted
from the queue's counts alone (sent - ready - delayed - in flight), so measuring adds no
Redis work per task. At the end the queue must be empty with no dead letters. Exit code 1
if the main process grew by 5 MiB or more between the end of warm-up and the end (or a
check failed). Run: ``.venv/bin/python -m bench.worker_memory [--tasks N] [--results]
[--pool P] [--concurrency N] [--prefetch-multiplier N]`` (``make bench-memory``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.harness import descendants

APP = """
import linecache
import os
import threading
import time
import tracemalloc

from conveyor import Conveyor

# Results expire soon: a million stored results need not all stay in Redis.
app = Conveyor("worker-memory-bench", result_expires=60.0)


@app.task(ignore_result=True)
def noop(i):
    return None


@app.task(ignore_result=False)
def stored(i):
    return i


def _trace(folder, frames=8, every=30.0):
    # Diagnostics only (--tracemalloc): once the bench marks the end of warm-up, take a
    # baseline; then write what has grown since, per allocation site, every `every` s.
    # The tracer's own allocations (snapshots, linecache) are filtered out.
    def run():
        marker, out = os.path.join(folder, "warm"), os.path.join(folder, f"trace-{os.getpid()}.txt")
        ignore = [
            tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, linecache.__file__),
            tracemalloc.Filter(False, __file__, all_frames=True),
        ]
        while not os.path.exists(marker):
            time.sleep(1.0)
        base = tracemalloc.take_snapshot().filter_traces(ignore)
        while True:
            time.sleep(every)
            stats = tracemalloc.take_snapshot().filter_traces(ignore).compare_to(base, "traceback")
            total = sum(s.size_diff for s in stats) / 1024
            lines = [f"pid {os.getpid()} at {time.time():.0f}: {total:+.1f} KiB in all"]
            for stat in stats[:12]:
                lines.append(f"{stat.size_diff / 1024:+.1f} KiB {stat.count_diff:+d} blocks")
                lines.extend("    " + line for line in stat.traceback.format())
            del stats
            with open(out, "w") as f:
                f.write("\\n".join(lines) + "\\n")

    if not tracemalloc.is_tracing():
        tracemalloc.start(frames)
    threading.Thread(target=run, name="bench-tracemalloc", daemon=True).start()


if os.environ.get("BENCH_TRACEMALLOC"):
    _trace(os.environ["BENCH_TRACEMALLOC"])
    os.register_at_fork(after_in_child=lambda: _trace(os.environ["BENCH_TRACEMALLOC"]))
"""
MODULE = "worker_memory_bench_app"
QUEUE = "celery"
LIMIT_MIB = 5.0
SAMPLE_EVERY = 2.0
LOW_WATER = 20_000  # ready messages below which the producer sends another batch
STALL_SECONDS = 120.0  # no completion for this long: the worker is stuck, give up


@dataclass
class Sample:
    t: float  # seconds since the first task was sent
    sent: int
    completed: int
    ready: int
    in_flight: int
    main_rss_mib: float
    children_rss_mib: float  # sum of the pool children's VmRSS
    tree_pss_mib: float
    children: list[int]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def proc_kib(pid: int, file: str, field: str) -> int:
    """A ``field:`` line of ``/proc/<pid>/<file>`` in KiB (0 if the process is gone)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def least_squares_slope(xs: list[float], ys: list[float]) -> float:
    """Slope of the best straight line through the points (0 with fewer than two)."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--warmup", type=int, default=50_000, help="tasks before the baseline")
    parser.add_argument("--batch", type=int, default=5_000, help="tasks per publish")
    parser.add_argument("--results", action="store_true", help="tasks store their results")
    parser.add_argument("-P", "--pool", help="worker pool [the worker's default]")
    parser.add_argument("-c", "--concurrency", type=int)
    parser.add_argument("--prefetch-multiplier", type=int)
    parser.add_argument("--tracemalloc", action="store_true", help="diagnose growth (slow)")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "worker_memory.json"
    )
    args = parser.parse_args()
    if args.warmup >= args.tasks:
        sys.exit("--warmup must be below --tasks")
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        sys.exit("redis-server is not on PATH: run `make redis`")
    task = f"{MODULE}.{'stored' if args.results else 'noop'}"
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        (directory / f"{MODULE}.py").write_text(APP)
        url = f"redis://127.0.0.1:{free_port()}/0"
        port = url.rsplit(":", 1)[1].split("/")[0]
        env = {**os.environ, "CONVEYOR_BROKER_URL": url, "PYTHONPATH": str(directory)}
        env.pop("CONVEYOR_RESULT_BACKEND", None)
        # The allocation reports stay after the run (in a folder of their own).
        traces = Path(tempfile.mkdtemp(prefix="worker-memory-")) if args.tracemalloc else directory
        if args.tracemalloc:
            env["BENCH_TRACEMALLOC"] = str(traces)
        argv = [sys.executable, "-m", "conveyor", "-A", MODULE, "worker", "-l", "warning"]
        for flag, value in (
            ("--pool", args.pool),
            ("--concurrency", args.concurrency),
            ("--prefetch-multiplier", args.prefetch_multiplier),
        ):
            if value is not None:
                argv += [flag, str(value)]
        processes: list[subprocess.Popen[bytes]] = []

        def start(command: list[str], name: str, extra: dict[str, str]) -> subprocess.Popen[bytes]:
            log = open(directory / f"{name}.log", "wb")  # noqa: SIM115 - closed with the dir
            proc = subprocess.Popen(command, cwd=directory, env=extra, stdout=log, stderr=log)
            processes.append(proc)
            return proc

        def log_tail(name: str) -> str:
            return "\n".join((directory / f"{name}.log").read_text().splitlines()[-30:])

        try:
            start([redis_server, "--port", port, "--bind", "127.0.0.1",
                   "--save", "", "--appendonly", "no"], "redis", env)  # fmt: skip
            time.sleep(0.5)
            sys.path.insert(0, str(directory))
            os.environ["CONVEYOR_BROKER_URL"] = url
            os.environ.pop("CONVEYOR_RESULT_BACKEND", None)
            from worker_memory_bench_app import app  # type: ignore[import-not-found]

            worker = start(argv, "worker", env)
            report = run(app, worker, task, args, traces)
            if report is None:
                sys.exit(f"the worker stopped or stalled; its log ends:\n{log_tail('worker')}")
            if args.tracemalloc:
                for trace in sorted(traces.glob("trace-*.txt")):
                    print(trace.read_text())
                print(f"allocation reports: {traces}")
            app.close()
        finally:
            for proc in reversed(processes):
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(30)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"samples: {args.out}")
    if report["failures"]:
        sys.exit(1)


def run(
    app: Any, worker: subprocess.Popen[bytes], task: str, args: argparse.Namespace, folder: Path
) -> dict[str, Any] | None:
    """Feed the worker and sample its memory until every task has run; the report (None:
    the worker died or stalled)."""
    samples: list[Sample] = []
    warm: Sample | None = None
    sent = completed = progress_at = 0
    began = last_sample = stalled_since = time.monotonic()
    ignore = not args.results
    while True:
        if worker.poll() is not None:
            return None
        [stats] = app.broker.stats([QUEUE])
        completed = sent - stats.ready - stats.delayed - stats.in_flight
        now = time.monotonic()
        if completed > progress_at:
            progress_at, stalled_since = completed, now
        elif samples and now - stalled_since > STALL_SECONDS:
            return None
        done = sent == args.tasks and completed == sent
        if done or now - last_sample >= SAMPLE_EVERY or not samples:
            last_sample = now
            children = descendants(worker.pid)
            sample = Sample(
                t=round(now - began, 2),
                sent=sent,
                completed=completed,
                ready=stats.ready,
                in_flight=stats.in_flight,
                main_rss_mib=proc_kib(worker.pid, "status", "VmRSS") / 1024,
                children_rss_mib=sum(proc_kib(c, "status", "VmRSS") for c in children) / 1024,
                tree_pss_mib=sum(
                    proc_kib(p, "smaps_rollup", "Pss") for p in [worker.pid, *children]
                )
                / 1024,
                children=children,
            )
            samples.append(sample)
            if warm is None and completed >= args.warmup:
                warm = sample
                (folder / "warm").touch()  # starts the --tracemalloc baselines
            print(
                f"{sample.t:7.0f} s  {completed:>9,} done  main {sample.main_rss_mib:6.1f} MiB"
                f"  children {sample.children_rss_mib:6.1f} MiB  tree PSS "
                f"{sample.tree_pss_mib:6.1f} MiB",
                flush=True,
            )
        if done:
            break
        if sent < args.tasks and stats.ready < LOW_WATER:
            first, sent = sent, min(sent + args.batch, args.tasks)
            with app.publishing():
                for i in range(first, sent):
                    app.send_task(task, [i], ignore_result=ignore)
        else:
            time.sleep(0.2)
    assert warm is not None  # warmup < tasks, and every task completed
    return summarize(app, samples, warm, time.monotonic() - began, args)


def summarize(
    app: Any, samples: list[Sample], warm: Sample, elapsed: float, args: argparse.Namespace
) -> dict[str, Any]:
    """Print the table and the checks; the JSON report."""
    end = samples[-1]
    after = [s for s in samples if s.completed >= warm.completed]
    span = max(end.completed - warm.completed, 1)
    [stats] = app.broker.stats([QUEUE])
    rows = []
    for name in ("main_rss_mib", "children_rss_mib", "tree_pss_mib"):
        ys = [getattr(s, name) for s in after]
        slope = least_squares_slope([float(s.completed) for s in after], ys) * 100_000
        rows.append(
            {
                "measure": name,
                "warmup": getattr(warm, name),
                "end": getattr(end, name),
                "max": max(getattr(s, name) for s in samples),
                "growth": getattr(end, name) - getattr(warm, name),
                "growth_per_100k": (getattr(end, name) - getattr(warm, name)) * 100_000 / span,
                "slope_per_100k": slope,
            }
        )
    print(
        f"\n{end.completed:,} tasks ({'results stored' if args.results else 'no results'}) in "
        f"{elapsed:.0f} s: {end.completed / elapsed:,.0f} tasks/s; warm-up {warm.completed:,} "
        f"tasks; {len(samples)} samples; pool children {warm.children} -> {end.children}"
    )
    print(f"{'MiB':<18}{'warm-up':>9}{'end':>9}{'max':>9}{'growth':>9}{'/100k':>9}{'fit/100k':>10}")
    for row in rows:
        print(
            f"{row['measure']:<18}{row['warmup']:>9.1f}{row['end']:>9.1f}{row['max']:>9.1f}"
            f"{row['growth']:>+9.2f}{row['growth_per_100k']:>+9.2f}{row['slope_per_100k']:>+10.2f}"
        )
    failures = []
    if rows[0]["growth"] >= LIMIT_MIB:
        failures.append(f"main RSS grew {rows[0]['growth']:.2f} MiB >= {LIMIT_MIB} MiB")
    if end.sent != args.tasks:
        failures.append(f"sent {end.sent:,} != {args.tasks:,}")
    if stats.ready or stats.delayed or stats.in_flight:
        failures.append(f"queue not empty: {stats}")
    if stats.dead:
        failures.append(f"{stats.dead} dead letters")
    print("FAIL: " + "; ".join(failures) if failures else f"OK: main RSS growth < {LIMIT_MIB} MiB")
    return {
        "tasks": args.tasks,
        "warmup": args.warmup,
        "results": args.results,
        "pool": args.pool,
        "concurrency": args.concurrency,
        "prefetch_multiplier": args.prefetch_multiplier,
        "elapsed_s": elapsed,
        "tasks_per_s": end.completed / elapsed,
        "limit_mib": LIMIT_MIB,
        "memory": rows,
        "failures": failures,
        "samples": [asdict(s) for s in samples],
    }


if __name__ == "__main__":
    main()
