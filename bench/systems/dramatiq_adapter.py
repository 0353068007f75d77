"""Dramatiq 2.2 with the Redis broker and the Results middleware on a RedisBackend."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from importlib.metadata import version

from bench.adapter import Adapter, WorkerSpec, timed_calls

#: Messages prefetched per worker thread for no-op tasks (``dramatiq_queue_prefetch``
#: is a total; its default is 2 per thread).
DRAIN_PREFETCH = 64
#: ``dramatiq_worker_timeout`` for the delayed role: the longest idle sleep of a
#: consumer (default 1000 ms), which delays moving due messages to the queue.
DELAYED_WORKER_TIMEOUT_MS = 100


class DramatiqAdapter(Adapter):
    name = "dramatiq"

    def __init__(self, redis_url: str):
        super().__init__(redis_url)
        os.environ["BENCH_REDIS_URL"] = redis_url
        from bench.systems import dramatiq_tasks

        self.tasks = dramatiq_tasks

    def versions(self) -> dict[str, str]:
        return {name: version(name) for name in ("dramatiq", "redis", "hiredis")}

    def enqueue(self, task: str, ids: Sequence[int], countdown: float | None = None) -> None:
        if task == "late":
            late = self.tasks.late.send_with_options
            assert countdown is not None
            delay = round(countdown * 1000)
            for i in ids:
                late(args=(i, time.time() + countdown), delay=delay)
            return
        actor = getattr(self.tasks, task)
        if countdown is None:
            send = actor.send
            for i in ids:
                send(i)
            return
        send_with_options = actor.send_with_options
        delay = round(countdown * 1000)
        for i in ids:
            send_with_options(args=(i,), delay=delay)

    def enqueue_bulk(self, task: str, ids: Sequence[int]) -> bool:
        """Dramatiq has no bulk enqueue: ``group(...).run()`` sends one message at a time."""
        return False

    def pending(self) -> int:
        """The length of the list of waiting message ids (``<namespace>:<queue>``)."""
        broker = self.tasks.broker
        count: int = broker.client.llen(f"{broker.namespace}:default")
        return count

    def roundtrip(self, ids: Sequence[int], timeout: float) -> list[float]:
        send = self.tasks.echo.send
        timeout_ms = round(timeout * 1000)
        return timed_calls(ids, lambda i: send(i).get_result(block=True, timeout=timeout_ms))

    def worker(self, role: str, concurrency: int) -> WorkerSpec:
        dramatiq = os.path.join(os.path.dirname(sys.executable), "dramatiq")
        argv = [
            dramatiq,
            "bench.systems.dramatiq_tasks",
            "--processes",
            "1",
            "--threads",
            str(concurrency),
        ]
        env = {"BENCH_REDIS_URL": self.redis_url}
        pool = f"threads x{concurrency}"
        if role in ("drain", "delayed"):
            # no-op tasks: the default prefetch (2 per thread) leaves the consumer asleep
            # (5 ms+ backoff) whenever every prefetched message is still in flight
            env["dramatiq_queue_prefetch"] = str(DRAIN_PREFETCH * concurrency)
            pool += f", prefetch {DRAIN_PREFETCH * concurrency}"
        if role == "delayed":
            # due messages are moved to the queue only when the idle consumer wakes up
            env["dramatiq_worker_timeout"] = str(DELAYED_WORKER_TIMEOUT_MS)
            pool += f", worker timeout {DELAYED_WORKER_TIMEOUT_MS} ms"
        return WorkerSpec(argv, pool, env)

    def close(self) -> None:
        self.tasks.broker.close()
        self.tasks.broker.client.close()
        self.tasks.backend.client.close()


ADAPTER = DramatiqAdapter
