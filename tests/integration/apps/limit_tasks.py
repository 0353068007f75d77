"""Tasks with time limits and the recycling settings, on the app of ``apps.tasks``.

A worker started with ``-A apps.limit_tasks`` runs these and every task of
``apps.tasks``. Recycling settings come from the environment (``app_env``):

* ``CONVEYOR_TEST_MAX_TASKS_PER_CHILD``: ``worker_max_tasks_per_child``
* ``CONVEYOR_TEST_MAX_MEMORY_PER_CHILD``: ``worker_max_memory_per_child`` (KiB)
* ``CONVEYOR_TEST_AUTOSCALE_KEEPALIVE``: ``worker_autoscale_keepalive`` (seconds)
* ``CONVEYOR_TEST_CHILD_CRASH``: ``1`` makes every process forked by the worker die
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from apps.executions import record_event
from apps.tasks import app
from conveyor import SoftTimeLimitExceeded
from conveyor.task import current_request

__all__ = [
    "app",
    "async_soft",
    "async_stuck",
    "hog",
    "nap_pid",
    "pid",
    "soft_cleanup",
    "spin_hard",
    "stuck",
]

#: Seconds of the limits below: short, so the tests are quick.
SOFT = 0.5
HARD = 1.0

for _variable, _setting in [
    ("CONVEYOR_TEST_MAX_TASKS_PER_CHILD", "worker_max_tasks_per_child"),
    ("CONVEYOR_TEST_MAX_MEMORY_PER_CHILD", "worker_max_memory_per_child"),
]:
    if os.environ.get(_variable):
        app.conf[_setting] = int(os.environ[_variable])
if os.environ.get("CONVEYOR_TEST_CHILD_CRASH"):
    # Every process forked from here dies at once, as a pool child would with a broken
    # native extension or no memory: the worker cannot keep its pool alive.
    os.register_at_fork(after_in_child=lambda: os._exit(3))
if os.environ.get("CONVEYOR_TEST_AUTOSCALE_KEEPALIVE"):
    app.conf.worker_autoscale_keepalive = float(os.environ["CONVEYOR_TEST_AUTOSCALE_KEEPALIVE"])


def _record(event: str) -> None:
    request = current_request()
    record_event(request.id if request else None, event)


@app.task(soft_time_limit=SOFT)
def soft_cleanup(seconds: float) -> dict[str, Any]:
    """Works in short Python steps for ``seconds``; on the soft limit, cleans up and
    returns how long it had run."""
    _record("start")
    began = time.monotonic()
    try:
        while time.monotonic() - began < seconds:
            time.sleep(0.01)
    except SoftTimeLimitExceeded:
        _record("end")
        return {"soft": True, "after": time.monotonic() - began}
    _record("end")
    return {"soft": False, "after": time.monotonic() - began}


@app.task(time_limit=HARD)
def stuck(seconds: float) -> None:
    """One blocking call far past the hard limit: only killing or abandoning ends it."""
    _record("start")
    time.sleep(seconds)
    _record("end")


@app.task(time_limit=HARD)
def spin_hard(seconds: float) -> None:
    """Python steps past the hard limit: an exception raised in its thread lands."""
    _record("start")
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        time.sleep(0.01)
    _record("end")


@app.task(soft_time_limit=SOFT)
async def async_soft(seconds: float) -> str:
    """Awaits past its soft limit: cancelled there, so it fails with SoftTimeLimitExceeded."""
    _record("start")
    await asyncio.sleep(seconds)
    _record("end")
    return "slept"


@app.task(time_limit=HARD)
async def async_stuck(seconds: float) -> None:
    """Ignores cancellation (as careless code does): the pool must abandon it."""
    _record("start")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            await asyncio.sleep(deadline - time.monotonic())
        except asyncio.CancelledError:
            continue
    _record("end")


@app.task
def nap_pid(seconds: float) -> int:
    """Sleeps ``seconds``; returns the pid of the process running it."""
    _record("start")
    time.sleep(seconds)
    return os.getpid()


@app.task
def pid() -> int:
    """The pid of the process running it."""
    _record("start")
    return os.getpid()


_kept: list[bytes] = []


@app.task
def hog(megabytes: int) -> int:
    """Keeps ``megabytes`` of memory for the rest of its process's life; returns the pid."""
    _record("start")
    _kept.append(os.urandom(megabytes * 1024 * 1024))
    return os.getpid()
