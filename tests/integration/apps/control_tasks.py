"""Tasks with cluster-wide controls, on the app of ``apps.tasks`` (``-A apps.control_tasks``;
its workers also run ``apps.tasks``, e.g. ``sleep_then_record``)."""

from __future__ import annotations

import asyncio
import time

from apps.executions import record_event
from apps.tasks import app
from conveyor.task import current_request

__all__ = ["app", "async_long_nap", "capped", "limited"]

RATE = 20  # per second, cluster-wide
CAP = 2  # running at once, cluster-wide


def _record(event: str) -> None:
    request = current_request()
    record_event(request.id if request else None, event)


@app.task(rate_limit=f"{RATE}/s", ignore_result=True)
def limited(i: int) -> None:
    _record("start")


@app.task(concurrency_limit=CAP)
def capped(seconds: float) -> None:
    _record("start")
    time.sleep(seconds)
    _record("end")


@app.task
async def async_long_nap(seconds: float) -> None:
    _record("start")
    await asyncio.sleep(seconds)
    _record("end")
