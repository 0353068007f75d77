"""The benchmark tasks on RQ (see bench/adapter.py): plain functions, enqueued on the
``default`` queue; ``RESULT_TTL`` turns results off (``result_ttl=0``) except for ``echo``."""

from __future__ import annotations

import os
import time

from redis import Redis
from rq import Queue

from bench.record import record

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
connection = Redis.from_url(URL)
queue = Queue("default", connection=connection)


def noop(i: int) -> None:
    record(i)


def late(i: int, due: float) -> None:
    record(i, due)


def sleep(i: int) -> None:
    start = time.time()
    time.sleep(0.020)
    record(i, start)


def echo(i: int) -> int:
    record(i)
    return i


#: ``result_ttl`` per task: 0 deletes the job and its result once it succeeded;
#: None keeps RQ's default (500 s).
RESULT_TTL: dict[str, int | None] = {"noop": 0, "late": 0, "sleep": 0, "echo": None}
