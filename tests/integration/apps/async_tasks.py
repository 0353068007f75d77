"""Async (``async def``) tasks for the integration tests, on the app of ``apps.tasks``.

A worker started with ``-A apps.async_tasks`` finds ``app`` here: the same app, so it
runs these tasks and every task of ``apps.tasks``.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
import weakref
from typing import Any

from apps.tasks import Boom, app

__all__ = ["app", "async_add", "async_fail", "async_nap", "blocking_stamp", "loop_identity"]


@app.task
async def async_add(x: int, y: int) -> int:
    """``x + y``, after giving the loop a turn."""
    await asyncio.sleep(0)
    return x + y


@app.task
async def async_fail(message: str = "async boom") -> None:
    await asyncio.sleep(0)
    raise Boom(message)


@app.task
async def async_nap(seconds: float) -> float:
    """Awaits ``asyncio.sleep(seconds)``; returns the UNIX time it woke up."""
    await asyncio.sleep(seconds)
    return time.time()


@app.task
def blocking_stamp(seconds: float) -> float:
    """A sync task that blocks its thread in ``time.sleep``; returns the UNIX time it ended."""
    time.sleep(seconds)
    return time.time()


#: A name for each event loop a task ran on: a closed loop's ``id`` may be reused by the
#: next one, a name never is.
_loop_names: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, str] = weakref.WeakKeyDictionary()


@app.task
async def loop_identity() -> dict[str, Any]:
    """Which event loop ran this task (its ``id`` and a unique name), in which thread of
    which process."""
    loop = asyncio.get_running_loop()
    return {
        "loop": id(loop),
        "name": _loop_names.setdefault(loop, uuid.uuid4().hex),
        "thread": threading.get_ident(),
        "pid": os.getpid(),
    }
