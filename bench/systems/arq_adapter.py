"""arq, in ``.bench/venvs/arq``: an asyncio client driven from one persistent loop."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Coroutine, Sequence
from importlib.metadata import version
from typing import Any, TypeVar

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import default_queue_name

from bench.adapter import Adapter, WorkerSpec

T = TypeVar("T")

#: ``Job.result(poll_delay=...)``: the client polls for the result (arq's default: 0.5 s).
RESULT_POLL_DELAY = 0.001


class ArqAdapter(Adapter):
    name = "arq"

    def __init__(self, redis_url: str):
        super().__init__(redis_url)
        os.environ["BENCH_REDIS_URL"] = redis_url
        from bench.systems import arq_tasks

        self.tasks = arq_tasks
        self.loop = asyncio.new_event_loop()
        self.redis: ArqRedis = self._run(create_pool(RedisSettings.from_dsn(redis_url)))

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` (a whole batch of calls) on the adapter's loop."""
        return self.loop.run_until_complete(coro)

    def versions(self) -> dict[str, str]:
        return {"arq": version("arq"), "redis-py": version("redis"), "hiredis": version("hiredis")}

    def enqueue(self, task: str, ids: Sequence[int], countdown: float | None = None) -> None:
        self._run(self._enqueue(task, ids, countdown))

    async def _enqueue(self, task: str, ids: Sequence[int], countdown: float | None) -> None:
        enqueue_job = self.redis.enqueue_job
        if task == "late":
            assert countdown is not None
            for i in ids:
                await enqueue_job("late", i, time.time() + countdown, _defer_by=countdown)
            return
        for i in ids:
            await enqueue_job(task, i, _defer_by=countdown)

    # arq has no bulk enqueue (one WATCH/MULTI/EXEC per job): enqueue_bulk stays False.

    def pending(self) -> int:
        return self._run(self._pending())

    async def _pending(self) -> int:
        count: int = await self.redis.zcard(default_queue_name)
        return count

    def roundtrip(self, ids: Sequence[int], timeout: float) -> list[float]:
        return self._run(self._roundtrip(ids, timeout))

    async def _roundtrip(self, ids: Sequence[int], timeout: float) -> list[float]:
        times = []
        for i in ids:
            t0 = time.perf_counter()
            job = await self.redis.enqueue_job("echo", i)
            assert job is not None
            value = await job.result(timeout=timeout, poll_delay=RESULT_POLL_DELAY)
            times.append(time.perf_counter() - t0)
            if value != i:
                raise AssertionError(f"echo({i}) returned {value!r}")
        return times

    def worker(self, role: str, concurrency: int) -> WorkerSpec:
        arq = os.path.join(os.path.dirname(sys.executable), "arq")
        argv = [
            arq,
            "bench.systems.arq_tasks.WorkerSettings",
            "--custom-log-dict",
            "bench.systems.arq_tasks.LOG_CONFIG",
        ]
        poll = self.tasks.POLL_DELAY
        env = {
            "BENCH_REDIS_URL": self.redis_url,
            "BENCH_CONCURRENCY": str(concurrency),
            "BENCH_POLL_DELAY": str(poll),
        }
        return WorkerSpec(argv, f"async max_jobs={concurrency} poll_delay={poll:g}", env)

    def close(self) -> None:
        self._run(self.redis.aclose())
        self.loop.close()


ADAPTER = ArqAdapter
