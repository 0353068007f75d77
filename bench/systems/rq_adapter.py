"""RQ 3.0: ``rq worker-pool`` of non-forking ``SimpleWorker`` processes."""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Sequence
from datetime import timedelta
from importlib.metadata import version

from rq import Queue
from rq.results import Result

from bench.adapter import Adapter, WorkerSpec, timed_calls

#: Runs each job in the worker process itself instead of forking a work horse per job.
WORKER_CLASS = "rq.worker.SimpleWorker"


class RQAdapter(Adapter):
    name = "rq"

    def __init__(self, redis_url: str):
        super().__init__(redis_url)
        os.environ["BENCH_REDIS_URL"] = redis_url
        from bench.systems import rq_tasks

        self.tasks = rq_tasks
        self.queue: Queue = rq_tasks.queue

    def versions(self) -> dict[str, str]:
        return {name: version(name) for name in ("rq", "redis", "hiredis")}

    def enqueue(self, task: str, ids: Sequence[int], countdown: float | None = None) -> None:
        func = getattr(self.tasks, task)
        ttl = self.tasks.RESULT_TTL[task]
        if task == "late":
            assert countdown is not None
            enqueue_in = self.queue.enqueue_in
            delta = timedelta(seconds=countdown)
            for i in ids:
                enqueue_in(delta, func, i, time.time() + countdown, result_ttl=ttl)
            return
        if countdown is not None:
            enqueue_in = self.queue.enqueue_in
            delta = timedelta(seconds=countdown)
            for i in ids:
                enqueue_in(delta, func, i, result_ttl=ttl)
            return
        enqueue = self.queue.enqueue
        for i in ids:
            enqueue(func, i, result_ttl=ttl)

    def enqueue_bulk(self, task: str, ids: Sequence[int]) -> bool:
        """``Queue.enqueue_many``: every job in one Redis pipeline."""
        func = getattr(self.tasks, task)
        ttl = self.tasks.RESULT_TTL[task]
        prepare = Queue.prepare_data
        self.queue.enqueue_many([prepare(func, (i,), result_ttl=ttl) for i in ids])
        return True

    def pending(self) -> int:
        return self.queue.count

    def roundtrip(self, ids: Sequence[int], timeout: float) -> list[float]:
        enqueue = self.queue.enqueue
        echo = self.tasks.echo
        block = max(1, math.ceil(timeout))  # whole seconds (XREAD BLOCK on the result stream)

        def call(i: int) -> object:
            result = enqueue(echo, i).latest_result(timeout=block)
            if result is None:
                raise TimeoutError(f"echo({i}): no result within {block} s")
            if result.type != Result.Type.SUCCESSFUL:
                raise AssertionError(f"echo({i}) gave {result!r}")
            return result.return_value

        return timed_calls(ids, call)

    def worker(self, role: str, concurrency: int) -> WorkerSpec:
        rq = os.path.join(os.path.dirname(sys.executable), "rq")
        argv = [
            rq,
            "worker-pool",
            "--url",
            self.redis_url,
            "--worker-class",
            WORKER_CLASS,
            "--logging-level",
            "WARNING",
            "--num-workers",
            str(concurrency),
            "default",
        ]
        return WorkerSpec(
            argv,
            f"SimpleWorker processes x{concurrency} (worker-pool)",
            {"BENCH_REDIS_URL": self.redis_url},
        )

    def close(self) -> None:
        self.tasks.connection.close()


ADAPTER = RQAdapter
