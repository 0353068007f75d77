"""The benchmark tasks on Dramatiq with the Redis broker and the Redis result backend
(see bench/adapter.py)."""

from __future__ import annotations

import logging
import os
import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends.redis import RedisBackend

from bench.record import record

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
broker = RedisBroker(url=URL)
backend = RedisBackend(url=URL)
broker.add_middleware(Results(backend=backend))
dramatiq.set_broker(broker)
# The CLI has no log-level option (INFO, or DEBUG with -v); warnings only, like the others.
logging.getLogger("dramatiq").setLevel(logging.WARNING)


@dramatiq.actor
def noop(i: int) -> None:
    record(i)


@dramatiq.actor
def late(i: int, due: float) -> None:
    record(i, due)


@dramatiq.actor
def sleep(i: int) -> None:
    start = time.time()
    time.sleep(0.020)
    record(i, start)


@dramatiq.actor(store_results=True)
def echo(i: int) -> int:
    record(i)
    return i
