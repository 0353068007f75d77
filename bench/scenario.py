"""Run one scenario once for one system and print its figures as one JSON line.

``python -m bench.scenario SYSTEM SCENARIO --redis URL --n N --workdir DIR``, run
with the system's own interpreter from the repository root. The redis-server is
flushed first; the worker, if any, is stopped before the process ends.
``python -m bench.scenario SYSTEM --supported`` prints the scenarios the system
takes part in, as a JSON list. ``--replica-acks N``: the ``broker_replica_acks`` of
the ``replicas`` scenario (whose redis-server must have a replica).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from bench.adapter import (
    EMBEDDED_SCENARIOS,
    FEATURE_SCENARIOS,
    REPLICA_ACKS_ENV,
    SQLITE_PATH_ENV,
    Adapter,
    adapter_class,
    load,
)
from bench.harness import (
    CommandCounter,
    Monitor,
    RawLoop,
    Records,
    percentile,
    start_worker,
    stop_worker,
    tree_rss_mb,
)

CONCURRENCY = 2
#: ``--concurrency=4``, as in the tutorial's worker command.
TUTORIAL_CONCURRENCY = 4
#: Threads of one producer process sending at once (a threaded web server).
PRODUCER_THREADS = 32
#: asyncio tasks of one event loop sending at once (an async web server).
PRODUCER_COROUTINES = 64
#: Calls per slice of the raw loop and of one thread's sends, alternated.
RAW_SLICE = 200
IO_CONCURRENCY = 50
SLEEP_SECONDS = 0.020
COUNTDOWN = 2.0
#: Seconds after the last expected execution during which a duplicate would still be seen.
DUPLICATE_GRACE = 0.3


class Context:
    def __init__(self, adapter: Adapter, n: int, workdir: Path, timeout: float):
        self.adapter = adapter
        self.n = n
        self.workdir = workdir
        self.timeout = timeout
        self.client = redis.Redis.from_url(adapter.redis_url)
        self.records = Records(workdir / "records")
        self.counter = CommandCounter(self.client)

    def worker(self, role: str, concurrency: int) -> tuple[Any, str, float]:
        spec = self.adapter.worker(role, concurrency)
        started = time.time()
        proc = start_worker(
            spec.argv, {**spec.env, **self.records.env()}, self.workdir / "worker.log"
        )
        return proc, spec.pool, started

    def finish(self, proc: Any, expected: range, extra: int = 0) -> dict[str, Any]:
        """Wait for every execution, then a little longer for duplicates."""
        done = self.records.wait_for(len(expected) + extra, self.timeout, proc)
        figures: dict[str, Any] = {"complete": done}
        if proc.poll() is None:
            figures["worker_rss_mb"] = round(tree_rss_mb(proc.pid), 1)
        time.sleep(DUPLICATE_GRACE)
        self.records.poll()
        stop_worker(proc)
        run = self.records.run
        figures["lost"] = run.lost(expected)
        figures["duplicates"] = run.duplicates()
        return figures

    def check_pending(self, expected: int | None = None) -> int:
        expected = self.n if expected is None else expected
        pending = self.adapter.pending()
        if pending != expected:
            raise RuntimeError(f"{pending} messages queued after sending {expected}")
        return pending


def enqueue_and_drain(ctx: Context) -> dict[str, Any]:
    """Enqueue ``n`` no-op tasks one call each, then drain them with one worker."""
    expected = range(ctx.n)
    ctx.counter.reset()
    t0 = time.perf_counter()
    ctx.adapter.enqueue("noop", expected)
    enqueue_seconds = time.perf_counter() - t0
    ctx.counter.collect()
    ctx.check_pending()
    ctx.counter.reset()
    proc, pool, started = ctx.worker("drain", CONCURRENCY)
    figures = ctx.finish(proc, expected)
    ctx.counter.collect()
    drain_seconds = ctx.records.run.last_time() - started
    return {
        "enqueue_per_s": ctx.n / enqueue_seconds,
        "drain_seconds": drain_seconds,
        "drain_per_s": ctx.n / drain_seconds,
        "redis_commands_per_task": sum(ctx.counter.total.values()) / ctx.n,
        "redis_commands": dict(ctx.counter.total.most_common()),
        "pool": pool,
        **figures,
    }


def drain_queued(ctx: Context, task: str, role: str, concurrency: int) -> dict[str, Any]:
    """Queue ``n`` ``task`` (bulk API where the system has one: enqueue is not the
    point), then drain them with one ``role`` worker, from its start to the last task."""
    expected = range(ctx.n)
    if not ctx.adapter.enqueue_bulk(task, expected):
        ctx.adapter.enqueue(task, expected)
    ctx.check_pending()
    ctx.counter.reset()
    proc, pool, started = ctx.worker(role, concurrency)
    figures = ctx.finish(proc, expected)
    ctx.counter.collect()
    if not ctx.records.run.seen:
        raise RuntimeError("no task ran")
    drain_seconds = ctx.records.run.last_time() - started
    return {
        "drain_seconds": drain_seconds,
        "drain_per_s": ctx.n / drain_seconds,
        "redis_commands_per_task": sum(ctx.counter.total.values()) / ctx.n,
        "redis_commands": dict(ctx.counter.total.most_common()),
        "pool": pool,
        **figures,
    }


def tutorial(ctx: Context) -> dict[str, Any]:
    """The tutorial's deployment (prefork, concurrency 4, prefetch 1, acks late)
    draining ``n`` no-op tasks, results ignored."""
    return drain_queued(ctx, "noop", "tutorial", TUTORIAL_CONCURRENCY)


def tutorial_results(ctx: Context) -> dict[str, Any]:
    """The same with each task's result stored in the result backend (same Redis)."""
    return drain_queued(ctx, "echo", "tutorial", TUTORIAL_CONCURRENCY)


def defaults(ctx: Context) -> dict[str, Any]:
    """The system's default configuration with its threads pool draining ``n`` no-op tasks."""
    return drain_queued(ctx, "noop", "defaults", os.cpu_count() or 1)


def producers(ctx: Context) -> dict[str, Any]:
    """``n`` no-op tasks sent by each way of sending, each checked in the queue; then
    one worker runs them all, to check that each was sent exactly once.

    ``raw_per_s`` is the floor of one round trip per call (``harness.RawLoop``),
    measured in slices alternating with those of one thread's ``delay`` so that both
    meet the same placement of processes on the CPUs (the round trip varies several
    times over with it); a way the system lacks is None."""
    n = ctx.n
    adapter = ctx.adapter
    raw = RawLoop(ctx.client)
    seconds = {"raw": 0.0, "raw_client": 0.0, "one_thread": 0.0}
    try:
        for start in range(0, n, RAW_SLICE):
            size = min(RAW_SLICE, n - start)
            seconds["raw"] += raw.one_connection(size)
            seconds["raw_client"] += raw.through_client(size)
            t0 = time.perf_counter()
            adapter.enqueue("noop", range(start, start + size))
            seconds["one_thread"] += time.perf_counter() - t0
    finally:
        raw.close()
    ctx.check_pending(n)
    figures: dict[str, Any] = {
        "raw_per_s": n / seconds["raw"],
        "raw_client_per_s": n / seconds["raw_client"],
        "one_thread_per_s": n / seconds["one_thread"],
    }
    figures["one_thread_vs_raw"] = figures["one_thread_per_s"] / figures["raw_per_s"]
    ways: list[tuple[str, Callable[[range], bool]]] = [
        ("threads32_per_s", lambda ids: adapter.enqueue_threads("noop", ids, PRODUCER_THREADS)),
        ("asyncio64_per_s", lambda ids: adapter.enqueue_async("noop", ids, PRODUCER_COROUTINES)),
        ("bulk_per_s", lambda ids: adapter.enqueue_bulk("noop", ids)),
    ]
    sent = n
    for key, send in ways:
        t0 = time.perf_counter()
        supported = send(range(sent, sent + n))
        elapsed = time.perf_counter() - t0
        if not supported:
            figures[key] = None
            continue
        sent += n
        ctx.check_pending(sent)
        figures[key] = n / elapsed
    proc, pool, _ = ctx.worker("drain", CONCURRENCY)
    figures.update(ctx.finish(proc, range(sent)))
    figures["pool"] = f"check: {pool}"
    return figures


def bulk(ctx: Context) -> dict[str, Any]:
    """Enqueue ``n`` no-op tasks with the system's bulk API, if it has one."""
    t0 = time.perf_counter()
    if not ctx.adapter.enqueue_bulk("noop", range(ctx.n)):
        return {"supported": False}
    seconds = time.perf_counter() - t0
    ctx.check_pending()
    return {"supported": True, "bulk_per_s": ctx.n / seconds, "lost": 0, "duplicates": 0}


def roundtrip(ctx: Context) -> dict[str, Any]:
    """``n`` sequential send + wait-for-result with an idle worker."""
    proc, pool, _ = ctx.worker("roundtrip", CONCURRENCY)
    try:
        ctx.adapter.roundtrip(range(-20, 0), timeout=60.0)  # the worker is up and warm
        times = ctx.adapter.roundtrip(range(ctx.n), timeout=10.0)
    finally:
        stop_worker(proc)
    ms = [t * 1000 for t in times]
    return {
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "mean_ms": statistics.fmean(ms),
        "pool": pool,
        "lost": ctx.n - len(ms),
        "duplicates": 0,
    }


def io_bound(ctx: Context) -> dict[str, Any]:
    """``n`` tasks sleeping 20 ms on a worker with concurrency 50: first start to last end."""
    expected = range(ctx.n)
    if not ctx.adapter.enqueue_bulk("sleep", expected):
        ctx.adapter.enqueue("sleep", expected)
    proc, pool, _ = ctx.worker("io", IO_CONCURRENCY)
    figures = ctx.finish(proc, expected)
    run = ctx.records.run
    first_start = min(extra for times in run.seen.values() for _, extra in times)
    seconds = run.last_time() - first_start
    ideal = ctx.n * SLEEP_SECONDS / IO_CONCURRENCY
    return {
        "seconds": seconds,
        "ideal_seconds": ideal,
        "over_ideal": seconds / ideal - 1,
        "pool": pool,
        **figures,
    }


def delayed(ctx: Context) -> dict[str, Any]:
    """``n`` tasks with a 2 s countdown on a running worker: how late each ran."""
    proc, pool, _ = ctx.worker("delayed", CONCURRENCY)
    ctx.adapter.enqueue("noop", [-1])
    if not ctx.records.wait_for(1, 60.0, proc):
        stop_worker(proc)
        raise RuntimeError("the worker did not run a first task within 60 s")
    expected = range(ctx.n)
    t0 = time.perf_counter()
    ctx.adapter.enqueue("late", expected, countdown=COUNTDOWN)
    enqueue_seconds = time.perf_counter() - t0
    figures = ctx.finish(proc, expected, extra=1)
    lateness = [
        (t - due) * 1000 for i, times in ctx.records.run.seen.items() if i >= 0 for t, due in times
    ]
    return {
        "late_p50_ms": percentile(lateness, 50),
        "late_p99_ms": percentile(lateness, 99),
        "late_max_ms": max(lateness),
        "early": sum(1 for ms in lateness if ms < 0),
        "enqueue_seconds": enqueue_seconds,
        "pool": pool,
        **figures,
    }


def cost(ctx: Context) -> dict[str, Any]:
    """Redis commands per task for enqueue + execute + ack (+ result), with results
    ignored (``noop``) and stored (``echo``), counted with ``MONITOR``."""
    figures: dict[str, Any] = {"lost": 0, "duplicates": 0}
    for label, task, offset in (("ignored", "noop", 0), ("stored", "echo", ctx.n)):
        expected = range(offset, offset + ctx.n)
        before = ctx.records.poll()
        monitor = Monitor(ctx.adapter.redis_url)
        ctx.adapter.enqueue(task, expected)
        proc, pool, _ = ctx.worker("drain", CONCURRENCY)
        phase = ctx.finish(proc, expected, extra=before)
        monitor.close()
        sent = sum(monitor.client_commands.values())
        inside = sum(monitor.script_commands.values())
        figures[f"{label}_commands_per_task"] = sent / ctx.n
        figures[f"{label}_script_commands_per_task"] = inside / ctx.n
        figures[f"{label}_commands"] = dict(monitor.client_commands.most_common())
        figures[f"{label}_script_commands"] = dict(monitor.script_commands.most_common())
        figures["lost"] += phase["lost"]
        figures["complete"] = figures.get("complete", True) and phase["complete"]
        figures["pool"] = pool
    # over the whole run (each phase's count already is)
    figures["duplicates"] = ctx.records.run.duplicates()
    return figures


def sqlite(ctx: Context) -> dict[str, Any]:
    """Each system on its own embedded SQLite file, no server (conveyor beside Huey):
    ``n`` no-op tasks sent one call each, drained by a worker of 2 threads; ``n`` more
    sent with the bulk API where the system has one (else one call each, not timed),
    drained by a worker of 2 processes. Each drain: from the worker's start to the last
    execution. Redis must see no command from the system meanwhile."""
    n = ctx.n
    adapter = ctx.adapter
    ctx.counter.reset()
    figures: dict[str, Any] = {}
    t0 = time.perf_counter()
    adapter.enqueue("noop", range(n))
    figures["enqueue_per_s"] = n / (time.perf_counter() - t0)
    ctx.check_pending(n)
    pools = []
    complete = True
    lost = 0
    for label, role, ids in (
        ("threads", "sqlite_threads", range(n)),
        ("processes", "sqlite_processes", range(n, 2 * n)),
    ):
        if label == "processes":
            t0 = time.perf_counter()
            if adapter.enqueue_bulk("noop", ids):
                figures["bulk_per_s"] = n / (time.perf_counter() - t0)
            else:
                figures["bulk_per_s"] = None
                adapter.enqueue("noop", ids)
            ctx.check_pending(n)
        before = ctx.records.run.executions
        proc, pool, started = ctx.worker(role, CONCURRENCY)
        phase = ctx.finish(proc, ids, extra=before)
        ran = [t for i in ids for t, _ in ctx.records.run.seen.get(i, ())]
        if not ran:
            raise RuntimeError(f"no task ran on the {label} worker")
        seconds = max(ran) - started
        figures[f"drain_{label}_seconds"] = seconds
        figures[f"drain_{label}_first_seconds"] = min(ran) - started  # the worker's start-up
        figures[f"drain_{label}_per_s"] = n / seconds
        figures[f"{label}_worker_rss_mb"] = phase.get("worker_rss_mb")
        pools.append(pool)
        complete = complete and phase["complete"]
        lost += phase["lost"]
    ctx.counter.collect()
    redis_commands = sum(ctx.counter.total.values())
    if redis_commands:
        raise RuntimeError(f"Redis ran {redis_commands} commands: {dict(ctx.counter.total)}")
    return {
        **figures,
        "pool": "; ".join(pools),
        "complete": complete,
        "lost": lost,
        "duplicates": ctx.records.run.duplicates(),
    }


def replicas(ctx: Context) -> dict[str, Any]:
    """What ``broker_replica_acks`` costs, run once per setting on a master with one
    replica (``bench.run`` starts it): ``n`` no-op tasks sent by one thread, one call
    each, then drained by the tutorial's deployment. With the setting, each publish
    and each ack carries a ``WAIT`` in its round trip: the run checks that Redis ran
    them (and none without it)."""
    acks = int(os.environ.get(REPLICA_ACKS_ENV, "0"))
    replication = ctx.client.info("replication")
    if int(replication.get("connected_slaves", 0)) < 1:
        raise RuntimeError("the redis-server has no replica: bench.run starts one")
    expected = range(ctx.n)
    ctx.counter.reset()
    t0 = time.perf_counter()
    ctx.adapter.enqueue("noop", expected)
    producer_seconds = time.perf_counter() - t0
    ctx.counter.collect()
    producer_waits = ctx.counter.total["wait"]
    ctx.check_pending()
    ctx.counter.reset()
    proc, pool, started = ctx.worker("tutorial", TUTORIAL_CONCURRENCY)
    figures = ctx.finish(proc, expected)
    ctx.counter.collect()
    drain_waits = ctx.counter.total["wait"] - producer_waits
    if not ctx.records.run.seen:
        raise RuntimeError("no task ran")
    # a setting that did not reach the producer or the worker would measure nothing
    # (the worker's acks of tasks that finish together share one round trip and WAIT)
    if acks and (producer_waits < ctx.n or not drain_waits):
        raise RuntimeError(
            f"broker_replica_acks={acks} but Redis ran {producer_waits} WAIT while "
            f"sending and {drain_waits} while draining {ctx.n} tasks"
        )
    if not acks and producer_waits + drain_waits:
        raise RuntimeError(
            f"broker_replica_acks=0 but Redis ran {producer_waits + drain_waits} WAIT"
        )
    drain_seconds = ctx.records.run.last_time() - started
    return {
        "replica_acks": acks,
        "replicas": int(replication["connected_slaves"]),
        "producer_per_s": ctx.n / producer_seconds,
        "drain_seconds": drain_seconds,
        "drain_per_s": ctx.n / drain_seconds,
        "producer_waits_per_task": producer_waits / ctx.n,
        "drain_waits_per_task": drain_waits / ctx.n,
        "redis_commands": dict(ctx.counter.total.most_common()),
        "pool": pool,
        **figures,
    }


SCENARIOS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "tutorial": tutorial,
    "tutorial_results": tutorial_results,
    "defaults": defaults,
    "producers": producers,
    "enqueue+drain": enqueue_and_drain,
    "bulk": bulk,
    "roundtrip": roundtrip,
    "io": io_bound,
    "delayed": delayed,
    "cost": cost,
    "sqlite": sqlite,
    "replicas": replicas,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("system")
    parser.add_argument("scenario", nargs="?", choices=sorted(SCENARIOS))
    parser.add_argument("--supported", action="store_true", help="list SYSTEM's scenarios")
    parser.add_argument("--redis")
    parser.add_argument("--n", type=int)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--replica-acks", type=int, default=0, help="replicas scenario [0]")
    args = parser.parse_args(argv)
    if args.supported:
        cls = adapter_class(args.system)
        print(json.dumps([s for s in SCENARIOS if cls.supports(s)]), flush=True)
        return 0
    if args.scenario is None or args.redis is None or args.n is None or args.workdir is None:
        parser.error("SCENARIO, --redis, --n and --workdir are required")
    result: dict[str, Any] = {"system": args.system, "scenario": args.scenario, "n": args.n}
    if not adapter_class(args.system).supports(args.scenario):
        print(json.dumps({**result, "ok": True, "supported": False}), flush=True)
        return 0
    if args.scenario in EMBEDDED_SCENARIOS:
        # read by the tasks module when the adapter imports it, and by the worker
        args.workdir.mkdir(parents=True, exist_ok=True)
        os.environ[SQLITE_PATH_ENV] = str(args.workdir.resolve() / f"{args.system}.db")
    if args.scenario in FEATURE_SCENARIOS:
        # read by the tasks module when the adapter imports it, and by the worker
        os.environ[REPLICA_ACKS_ENV] = str(args.replica_acks)
        result["replica_acks"] = args.replica_acks
    adapter = load(args.system, args.redis)
    try:
        ctx = Context(adapter, args.n, args.workdir, args.timeout)
        ctx.client.flushall()
        result.update(SCENARIOS[args.scenario](ctx))
        result["ok"] = result.get("complete", True) and not result.get("lost")
        result["versions"] = adapter.versions()
    except Exception as exc:
        result["ok"] = False
        result["error"] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    finally:
        adapter.close()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
