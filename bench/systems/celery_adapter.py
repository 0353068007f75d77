"""Celery 5.7 with the Redis broker (kombu) and the Redis result backend."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from importlib.metadata import version

from bench.adapter import (
    OPTIONAL_SCENARIOS,
    Adapter,
    WorkerSpec,
    send_each,
    send_in_threads,
    timed_calls,
)

#: Cluster features a single benchmark worker has no use for: gossip and mingle
#: (worker-to-worker sync; mingle waits for replies at startup) and event heartbeats.
QUIET_CLUSTER = ["--without-gossip", "--without-mingle", "--without-heartbeat"]


class CeleryAdapter(Adapter):
    name = "celery"
    optional = frozenset(OPTIONAL_SCENARIOS)  # no asyncio API: enqueue_async says so

    def __init__(self, redis_url: str):
        super().__init__(redis_url)
        os.environ["BENCH_REDIS_URL"] = redis_url
        from bench.systems import celery_tasks

        self.tasks = celery_tasks

    def versions(self) -> dict[str, str]:
        return {name: version(name) for name in ("celery", "kombu", "redis", "hiredis")}

    def enqueue(self, task: str, ids: Sequence[int], countdown: float | None = None) -> None:
        send_each(self.tasks, task, ids, countdown)

    def enqueue_bulk(self, task: str, ids: Sequence[int]) -> bool:
        """Celery itself has no bulk send; kombu 5.7's public ``Producer.batch()``
        buffers the LPUSH of each ``apply_async(producer=...)`` in one Redis pipeline."""
        send = getattr(self.tasks, task).apply_async
        with self.tasks.app.producer_or_acquire() as producer:
            if not producer.supports_batch_publish:
                return False
            with producer.batch():
                for i in ids:
                    send((i,), producer=producer)
        return True

    def enqueue_threads(self, task: str, ids: Sequence[int], threads: int) -> bool:
        send_in_threads(getattr(self.tasks, task).delay, ids, threads)
        return True

    def pending(self) -> int:
        queue = self.tasks.app.conf.task_default_queue
        with self.tasks.app.connection_for_write() as conn:
            count: int = conn.default_channel.queue_declare(queue, passive=True).message_count
        return count

    def roundtrip(self, ids: Sequence[int], timeout: float) -> list[float]:
        delay = self.tasks.echo.delay
        return timed_calls(ids, lambda i: delay(i).get(timeout=timeout))

    def worker(self, role: str, concurrency: int) -> WorkerSpec:
        """The thread pool for every role but the tutorial's (prefork): for no-op tasks it
        matched prefork's throughput (within noise) at ~10% less CPU and a third of the
        memory; gevent is not installed."""
        celery = os.path.join(os.path.dirname(sys.executable), "celery")
        base = [celery, "-A", "bench.systems.celery_tasks", "worker", "-l", "warning"]
        env = {"BENCH_REDIS_URL": self.redis_url}
        if role == "tutorial":
            # task_acks_late and worker_prefetch_multiplier from the tasks module too
            argv = [*base, *QUIET_CLUSTER, "-P", "prefork", "-c", str(concurrency)]
            argv += ["--prefetch-multiplier", "1"]
            env["BENCH_PROFILE"] = "tutorial"
            return WorkerSpec(argv, f"prefork x{concurrency}, tutorial settings", env)
        if role == "defaults":
            argv = [*base, *QUIET_CLUSTER, "-P", "threads"]
            return WorkerSpec(argv, f"threads, defaults (x{concurrency} CPUs)", env)
        argv = [*base, *QUIET_CLUSTER, "-P", "threads", "-c", str(concurrency)]
        return WorkerSpec(argv, f"threads x{concurrency}", env)

    def close(self) -> None:
        self.tasks.app.close()


ADAPTER = CeleryAdapter
