"""The benchmark tasks on conveyor (see bench/adapter.py)."""

from __future__ import annotations

import asyncio
import os
import time

from bench.adapter import REPLICA_ACKS_ENV, SQLITE_PATH_ENV
from bench.record import record
from conveyor import Conveyor

#: The embedded SQLite scenario: broker and results in the run's own file, no Redis.
SQLITE_PATH = os.environ.get(SQLITE_PATH_ENV, "")
URL = (
    f"sqlite:///{SQLITE_PATH}"
    if SQLITE_PATH
    else os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
)
PROFILE = os.environ.get("BENCH_PROFILE", "")
app = Conveyor("bench", broker=URL, backend=URL)
if PROFILE == "tutorial":
    # examples/tutorial/app/celery_app.py (both are conveyor's defaults already)
    app.conf.update(worker_prefetch_multiplier=1, task_acks_late=True)
elif PROFILE:
    raise ValueError(f"unknown BENCH_PROFILE {PROFILE!r}")
if REPLICA_ACKS_ENV in os.environ:
    # the replicas scenario: publishes and acks WAIT for this many replicas
    app.conf.update(broker_replica_acks=int(os.environ[REPLICA_ACKS_ENV]))


@app.task(ignore_result=True)
def noop(i: int) -> None:
    record(i)


@app.task(ignore_result=True)
def late(i: int, due: float) -> None:
    record(i, due)


@app.task(ignore_result=True)
async def sleep(i: int) -> None:
    start = time.time()
    await asyncio.sleep(0.020)
    record(i, start)


@app.task
def echo(i: int) -> int:
    record(i)
    return i
