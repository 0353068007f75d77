"""The benchmark tasks on Celery with the Redis broker and result backend (see bench/adapter.py)."""

from __future__ import annotations

import os
import time

from celery import Celery

from bench.record import record

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
PROFILE = os.environ.get("BENCH_PROFILE", "")
app = Celery("bench", broker=URL, backend=URL)
# Set explicitly (to its effective default) so the worker does not warn about it.
app.conf.broker_connection_retry_on_startup = True
if PROFILE == "tutorial":
    # the deployment tutorial's app/celery_app.py (docs/deployment.md)
    app.conf.update(worker_prefetch_multiplier=1, task_acks_late=True)
elif PROFILE:
    raise ValueError(f"unknown BENCH_PROFILE {PROFILE!r}")


@app.task(ignore_result=True)
def noop(i: int) -> None:
    record(i)


@app.task(ignore_result=True)
def late(i: int, due: float) -> None:
    record(i, due)


@app.task(ignore_result=True)
def sleep(i: int) -> None:
    start = time.time()
    time.sleep(0.020)
    record(i, start)


@app.task
def echo(i: int) -> int:
    record(i)
    return i
