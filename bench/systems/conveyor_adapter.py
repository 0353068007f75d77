"""conveyor from this checkout, in the project's ``.venv``."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from importlib.metadata import version

from bench.adapter import Adapter, WorkerSpec, send_each, timed_calls

#: ``--prefetch-multiplier`` for no-op tasks (the default, 1, suits long tasks).
DRAIN_PREFETCH = 64


class ConveyorAdapter(Adapter):
    name = "conveyor"

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
        }

    def enqueue(self, task: str, ids: Sequence[int], countdown: float | None = None) -> None:
        send_each(self.tasks, task, ids, countdown)

    def enqueue_bulk(self, task: str, ids: Sequence[int]) -> bool:
        delay = getattr(self.tasks, task).delay
        with self.tasks.app.publishing():
            for i in ids:
                delay(i)
        return True

    def pending(self) -> int:
        return sum(q.ready for q in self.tasks.app.broker.stats(["celery"]))

    def roundtrip(self, ids: Sequence[int], timeout: float) -> list[float]:
        delay = self.tasks.echo.delay
        return timed_calls(ids, lambda i: delay(i).get(timeout=timeout))

    def worker(self, role: str, concurrency: int) -> WorkerSpec:
        conveyor = os.path.join(os.path.dirname(sys.executable), "conveyor")
        base = [
            conveyor,
            "-A",
            "bench.systems.conveyor_tasks",
            "worker",
            "-l",
            "warning",
            "-c",
            str(concurrency),
        ]
        env = {"BENCH_REDIS_URL": self.redis_url}
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
