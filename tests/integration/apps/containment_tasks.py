"""Tasks that fail in the ways a pool must contain, on the app of ``apps.tasks``.

A worker started with ``-A apps.containment_tasks`` runs these and every task of
``apps.tasks``. ``CONVEYOR_TEST_BREAK_ADMISSION=1`` makes ``guarded``'s admission
check raise in the worker (its rate limit is changed to nonsense after it was checked
at registration), as a bug in a policy check would.
"""

from __future__ import annotations

import asyncio
import os
import sys

from apps.executions import record_event
from apps.tasks import app
from conveyor.task import current_request

__all__ = ["app", "araise_base", "guarded", "raise_base"]


def _record(event: str) -> None:
    request = current_request()
    record_event(request.id if request else None, event)


def _base_exception(kind: str) -> BaseException:
    """The ``BaseException`` named ``kind``, as a task might raise it itself."""
    if kind == "SystemExit":
        return SystemExit(3)
    if kind == "KeyboardInterrupt":
        return KeyboardInterrupt("raised by the task")
    if kind == "GeneratorExit":
        return GeneratorExit("raised by the task")
    if kind == "CancelledError":
        return asyncio.CancelledError("raised by the task")
    raise ValueError(f"no such kind: {kind}")


@app.task
def raise_base(kind: str) -> None:
    """Raises the ``BaseException`` named ``kind`` (``sys.exit(3)`` for SystemExit)."""
    _record("start")
    if kind == "SystemExit":
        sys.exit(3)
    raise _base_exception(kind)


@app.task
async def araise_base(kind: str) -> None:
    """``raise_base`` as a coroutine, raising after giving the loop a turn; nothing
    cancelled it when it raises CancelledError."""
    _record("start")
    await asyncio.sleep(0)
    raise _base_exception(kind)


@app.task
def guarded(x: int) -> int:
    """Returns ``x``; its admission check raises with ``CONVEYOR_TEST_BREAK_ADMISSION``."""
    _record("start")
    return x


if os.environ.get("CONVEYOR_TEST_BREAK_ADMISSION"):
    guarded.rate_limit = "nonsense"
