"""The benchmark's no-op task on Huey's SQLite storage (see bench/systems/huey_adapter.py).

Huey takes part in the SQLite scenario only, so only ``noop`` is defined. Results are
off (``results=False``: no result is stored, not even None); ``fsync=False`` is the
documented fast setting (``PRAGMA synchronous=OFF``), where Huey 3.5's code otherwise
leaves SQLite's default (FULL: an fsync per commit) although its docs say false.
"""

from __future__ import annotations

import os

from huey import SqliteHuey

from bench.adapter import SQLITE_PATH_ENV
from bench.record import record

huey = SqliteHuey("bench", filename=os.environ[SQLITE_PATH_ENV], results=False, fsync=False)


@huey.task()
def noop(i: int) -> None:
    record(i)
