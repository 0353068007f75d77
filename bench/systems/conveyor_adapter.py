"""conveyor from this checkout, in the project's ``.venv``."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
from collections.abc import Sequence
from importlib.metadata import version

from bench.adapter import (
    EMBEDDED_SCENARIOS,
    FEATURE_SCENARIOS,
    OPTIONAL_SCENARIOS,
    REPLICA_ACKS_ENV,
    SQLITE_PATH_ENV,
    Adapter,
    WorkerSpec,
    send_each,
    send_in_threads,
    timed_calls,
)

#: ``--prefetch-multiplier`` for no-op tasks (the default, 1, suits long tasks).
DRAIN_PREFETCH = 64


class ConveyorAdapter(Adapter):
    name = "conveyor"
    optional = frozenset(OPTIONAL_SCENARIOS + EMBEDDED_SCENARIOS + FEATURE_SCENARIOS)

    def __init__(self, redis_url: str):
        super().__init__(redis_url)
        os.environ["BENCH_REDIS_URL"] = redis_url
        from bench.systems import conveyor_tasks

        self.tasks = conveyor_tasks

    def versions(self) -> dict[str, str]:
        return {
            "conveyor": version("conveyor"),
            "redis-py": version("redis"),
            "hiredis": version("hiredis"),
            "SQLite": sqlite3.sqlite_version,
        }

    def enqueue(self, task: str, ids: Sequence[int], countdown: float | None = None) -> None:
        send_each(self.tasks, task, ids, countdown)

    def enqueue_bulk(self, task: str, ids: Sequence[int]) -> bool:
        delay = getattr(self.tasks, task).delay
        with self.tasks.app.publishing():
            for i in ids:
                delay(i)
        return True

    def enqueue_threads(self, task: str, ids: Sequence[int], threads: int) -> bool:
        send_in_threads(getattr(self.tasks, task).delay, ids, threads)
        return True

    def enqueue_async(self, task: str, ids: Sequence[int], coroutines: int) -> bool:
        adelay = getattr(self.tasks, task).adelay

        async def send(share: Sequence[int]) -> None:
            for i in share:
                await adelay(i)

        async def main() -> None:
            await asyncio.gather(*(send(ids[k::coroutines]) for k in range(coroutines)))

        asyncio.run(main())
        return True

    def pending(self) -> int:
        return sum(q.ready for q in self.tasks.app.broker.stats(["celery"]))

    def roundtrip(self, ids: Sequence[int], timeout: float) -> list[float]:
        delay = self.tasks.echo.delay
        return timed_calls(ids, lambda i: delay(i).get(timeout=timeout))

    def worker(self, role: str, concurrency: int) -> WorkerSpec:
        conveyor = os.path.join(os.path.dirname(sys.executable), "conveyor")
        base = [conveyor, "-A", "bench.systems.conveyor_tasks", "worker", "-l", "warning"]
        env = {"BENCH_REDIS_URL": self.redis_url}
        if role in ("sqlite_threads", "sqlite_processes"):
            # the broker (and results) in the run's SQLite file; the default settings
            env[SQLITE_PATH_ENV] = os.environ[SQLITE_PATH_ENV]
            argv = [*base, "-c", str(concurrency)]
            if role == "sqlite_threads":
                return WorkerSpec([*argv, "-P", "threads"], f"threads x{concurrency}", env)
            return WorkerSpec(argv, f"prefork x{concurrency} (the default pool)", env)
        if role == "tutorial":
            # the tutorial's worker command; its settings come from the tasks module
            env["BENCH_PROFILE"] = "tutorial"
            argv = [*base, "-P", "prefork", "-c", str(concurrency)]
            pool = f"prefork x{concurrency}, tutorial settings"
            if REPLICA_ACKS_ENV in os.environ:
                env[REPLICA_ACKS_ENV] = os.environ[REPLICA_ACKS_ENV]
                pool += f", broker_replica_acks={os.environ[REPLICA_ACKS_ENV]}"
            return WorkerSpec(argv, pool, env)
        if role == "defaults":
            argv = [*base, "-P", "threads"]
            return WorkerSpec(argv, f"threads, defaults (x{concurrency} CPUs)", env)
        base += ["-c", str(concurrency)]
        if role == "io":
            return WorkerSpec([*base, "-P", "asyncio"], f"asyncio x{concurrency}", env)
        if role in ("drain", "delayed"):
            # no-op tasks: hold many messages per slot, so one fetch serves many tasks
            argv = [*base, "-P", "threads", "--prefetch-multiplier", str(DRAIN_PREFETCH)]
            return WorkerSpec(argv, f"threads x{concurrency}, prefetch x{DRAIN_PREFETCH}", env)
        return WorkerSpec([*base, "-P", "threads"], f"threads x{concurrency}", env)

    def close(self) -> None:
        self.tasks.app.close()


ADAPTER = ConveyorAdapter
