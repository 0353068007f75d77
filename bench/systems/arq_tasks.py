"""The benchmark tasks on arq (see bench/adapter.py).

The worker runs ``arq bench.systems.arq_tasks.WorkerSettings`` and is configured
per role by the environment the adapter puts in ``WorkerSpec.env``:
``BENCH_CONCURRENCY`` (``max_jobs``) and ``BENCH_POLL_DELAY`` (seconds between
two reads of the queue; arq's default is 0.5).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from arq.connections import RedisSettings
from arq.worker import Function, func

from bench.record import record

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
#: The worker's seconds between two reads of the queue (arq's default, 0.5 s, would cap a
#: ``max_jobs=2`` worker near 2 jobs per poll = 4 jobs/s: it starts at most the free
#: slots' worth of jobs per poll, then sleeps).
POLL_DELAY = 0.001


async def noop(ctx: dict[str, Any], i: int) -> None:
    record(i)


async def late(ctx: dict[str, Any], i: int, due: float) -> None:
    record(i, due)


async def sleep(ctx: dict[str, Any], i: int) -> None:
    start = time.time()
    await asyncio.sleep(0.020)
    record(i, start)


async def echo(ctx: dict[str, Any], i: int) -> int:
    record(i)
    return i


#: ``logging.config.dictConfig`` for ``arq --custom-log-dict``: warnings only.
LOG_CONFIG: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"arq.standard": {"level": "WARNING", "class": "logging.StreamHandler"}},
    "loggers": {"arq": {"handlers": ["arq.standard"], "level": "WARNING"}},
}


class WorkerSettings:
    """``arq`` reads the worker's keyword arguments from this class's attributes."""

    functions: list[Function] = [
        func(noop, keep_result=0),  # 0: the result is not stored
        func(sleep, keep_result=0),
        func(late, keep_result=0),
        func(echo),  # kept for the default hour
    ]
    redis_settings = RedisSettings.from_dsn(URL)
    max_jobs = int(os.environ.get("BENCH_CONCURRENCY", "2"))
    poll_delay = float(os.environ.get("BENCH_POLL_DELAY", str(POLL_DELAY)))
    log_results = False
