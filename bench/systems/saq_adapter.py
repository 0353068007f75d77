"""SAQ with its Redis queue, in ``.bench/venvs/saq``: an asyncio client driven from one
persistent loop."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Coroutine, Sequence
from importlib.metadata import version
from typing import Any, TypeVar

from saq.queue.redis import RedisQueue

from bench.adapter import Adapter, WorkerSpec

T = TypeVar("T")

#: ``Job.ttl`` of the tasks whose result nobody reads: -1 deletes the job's key when it
#: finishes (the default, 600, keeps the job and its result for ten minutes).
NO_RESULT_TTL = -1
#: ``Queue.apply(poll_interval=...)``: the client polls for the result (default 0.5 s).
RESULT_POLL_INTERVAL = 0.001


class SaqAdapter(Adapter):
    name = "saq"

    def __init__(self, redis_url: str):
        super().__init__(redis_url)
        self.loop = asyncio.new_event_loop()
        self.queue: RedisQueue = self._run(self._connect())

    async def _connect(self) -> RedisQueue:
        queue = RedisQueue.from_url(self.redis_url)
        await queue.connect()
        return queue

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` (a whole batch of calls) on the adapter's loop."""
        return self.loop.run_until_complete(coro)

    def versions(self) -> dict[str, str]:
        return {"saq": version("saq"), "redis-py": version("redis"), "hiredis": version("hiredis")}

    def enqueue(self, task: str, ids: Sequence[int], countdown: float | None = None) -> None:
        self._run(self._enqueue(task, ids, countdown))

    async def _enqueue(self, task: str, ids: Sequence[int], countdown: float | None) -> None:
        enqueue = self.queue.enqueue
        # echo keeps its result (the default ttl); the others need none.
        ttl = {} if task == "echo" else {"ttl": NO_RESULT_TTL}
        if task == "late":
            assert countdown is not None
            for i in ids:
                due = time.time() + countdown
                await enqueue("late", i=i, due=due, scheduled=due, **ttl)
            return
        for i in ids:
            # ``scheduled``: epoch seconds, 0 for now.
            scheduled = time.time() + countdown if countdown else 0
            await enqueue(task, i=i, scheduled=scheduled, **ttl)

    # SAQ has no bulk enqueue: Queue.map gathers one enqueue script call per job (at
    # most 20 at a time) and waits for the results; Queue.batch only aborts the jobs
    # enqueued in its block if the block raises. enqueue_bulk stays False.

    def pending(self) -> int:
        return self._run(self.queue.count("queued"))

    def roundtrip(self, ids: Sequence[int], timeout: float) -> list[float]:
        return self._run(self._roundtrip(ids, timeout))

    async def _roundtrip(self, ids: Sequence[int], timeout: float) -> list[float]:
        # Queue.apply enqueues, then polls the job (MGET) every poll_interval (default
        # 0.5 s). Job.refresh(until_complete=...) would wait on the job's pubsub channel
        # instead, but it GETs the job before it subscribes: a job that completes in
        # between is missed until the timeout (several times in 2000 calls here).
        apply = self.queue.apply
        times = []
        for i in ids:
            t0 = time.perf_counter()
            value = await apply("echo", timeout=timeout, poll_interval=RESULT_POLL_INTERVAL, i=i)
            times.append(time.perf_counter() - t0)
            if value != i:
                raise AssertionError(f"echo({i}) returned {value!r}")
        return times

    def worker(self, role: str, concurrency: int) -> WorkerSpec:
        saq = os.path.join(os.path.dirname(sys.executable), "saq")
        argv = [saq, "bench.systems.saq_tasks.settings"]  # log level: warning by default
        env = {"BENCH_REDIS_URL": self.redis_url, "BENCH_CONCURRENCY": str(concurrency)}
        return WorkerSpec(argv, f"async concurrency={concurrency}", env)

    def close(self) -> None:
        self._run(self.queue.disconnect())
        self.loop.close()


ADAPTER = SaqAdapter
