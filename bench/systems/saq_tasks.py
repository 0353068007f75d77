"""The benchmark tasks on SAQ (see bench/adapter.py).

The worker runs ``saq bench.systems.saq_tasks.settings``; ``BENCH_CONCURRENCY``
(the number of concurrent ``BLMOVE``-and-run loops) comes from ``WorkerSpec.env``.
SAQ passes a job's arguments as keywords, after the worker's context.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from saq import Queue

from bench.record import record

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
#: Seconds between two moves of due scheduled jobs to the queue. SAQ's default and its
#: minimum: the value is also the ``SETEX`` lock of the schedule script, an integer.
SCHEDULE_SECONDS = 1


async def noop(ctx: dict[str, Any], *, i: int) -> None:
    record(i)


async def late(ctx: dict[str, Any], *, i: int, due: float) -> None:
    record(i, due)


async def sleep(ctx: dict[str, Any], *, i: int) -> None:
    start = time.time()
    await asyncio.sleep(0.020)
    record(i, start)


async def echo(ctx: dict[str, Any], *, i: int) -> int:
    record(i)
    return i


#: ``saq`` reads the worker's keyword arguments from this dictionary.
settings: dict[str, Any] = {
    "queue": Queue.from_url(URL),
    "functions": [noop, sleep, late, echo],
    "concurrency": int(os.environ.get("BENCH_CONCURRENCY", "2")),
    "timers": {"schedule": SCHEDULE_SECONDS},
}
