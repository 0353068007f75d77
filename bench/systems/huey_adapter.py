"""Huey 3.5 on its SQLite storage (``SqliteHuey``): the embedded anchor, no server.

Huey takes part in the SQLite scenario only (not a Redis peer here). Settings, the
fastest Huey documents for two workers' worth of concurrency:

* ``SqliteHuey(filename=..., results=False, fsync=False)`` (bench/systems/huey_tasks.py):
  no result stored; ``fsync=False`` is ``PRAGMA synchronous=OFF``, less durable than
  conveyor's ``NORMAL`` and so, if anything, generous to Huey;
* ``huey_consumer bench.systems.huey_tasks.huey -w 2 -k thread`` (or ``-k process``)
  with ``-d 0.001 -b 1.0``: an idle worker polls the table every millisecond (the
  default starts at 100 ms and backs off 1.15x up to 10 s; Huey accepts any positive
  delay and requires a backoff >= 1), so the consumer's start is not a 100 ms sleep;
  ``-n``: no periodic tasks to schedule; ``-q``: warnings only, as every other worker
  (Huey's default logs a line per task).

Huey has no bulk send (``enqueue(group)`` enqueues its tasks one by one), so
``enqueue_bulk`` says so.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from collections.abc import Sequence
from importlib.metadata import version

from bench.adapter import EMBEDDED_SCENARIOS, SQLITE_PATH_ENV, Adapter, WorkerSpec

#: Seconds an idle worker waits between polls of the table (``-d``), without backing off.
POLL_DELAY = 0.001
WORKER_TYPES = {"sqlite_threads": "thread", "sqlite_processes": "process"}


class HueyAdapter(Adapter):
    name = "huey"
    optional = frozenset(EMBEDDED_SCENARIOS)

    @classmethod
    def supports(cls, scenario: str) -> bool:
        return scenario in cls.optional

    def __init__(self, redis_url: str):
        super().__init__(redis_url)  # unused: SqliteHuey needs no server
        from bench.systems import huey_tasks

        self.tasks = huey_tasks
        self.huey = huey_tasks.huey

    def versions(self) -> dict[str, str]:
        return {"huey": version("huey"), "SQLite": sqlite3.sqlite_version}

    def enqueue(self, task: str, ids: Sequence[int], countdown: float | None = None) -> None:
        if countdown is not None:
            raise NotImplementedError("the SQLite scenario sends no countdown")
        send = getattr(self.tasks, task)
        for i in ids:
            send(i)

    def pending(self) -> int:
        count: int = self.huey.pending_count()
        return count

    def worker(self, role: str, concurrency: int) -> WorkerSpec:
        kind = WORKER_TYPES.get(role)
        if kind is None:
            raise NotImplementedError(f"huey takes part in the SQLite scenario only, not {role}")
        consumer = os.path.join(os.path.dirname(sys.executable), "huey_consumer")
        argv = [
            consumer,
            "bench.systems.huey_tasks.huey",
            "-w",
            str(concurrency),
            "-k",
            kind,
            "-d",
            str(POLL_DELAY),
            "-b",
            "1.0",
            "-n",
            "-q",
        ]
        env = {SQLITE_PATH_ENV: os.environ[SQLITE_PATH_ENV]}
        return WorkerSpec(argv, f"{kind} x{concurrency}, -d {POLL_DELAY} -b 1.0", env)

    def close(self) -> None:
        self.huey.storage.close()


ADAPTER = HueyAdapter
