"""The request of a running task (``self.request``), and where code runs: which task's
request is current, and each thread's event loop for async tasks."""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from conveyor.canvas.keys import CHAIN, CHORD, GROUP_ID, GROUP_INDEX, LINK, LINK_ERROR

__all__ = [
    "Request",
    "current_request",
    "from_timestamp",
    "request_context",
    "run_coroutine",
    "to_timestamp",
]


@dataclass(slots=True)
class Request:
    """What a running task knows about its own invocation (``self.request``).

    The fields are the message's; the properties give Celery's names for what its
    headers carry (``callbacks``, ``errbacks``, ``chain``, ``chord``, ``group``...).
    """

    id: str | None = None
    task: str | None = None
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    retries: int = 0
    delivery_count: int = 0
    queue: str | None = None
    priority: int = 0
    hostname: str | None = None
    eta: dt.datetime | None = None
    expires: dt.datetime | None = None
    parent_id: str | None = None
    root_id: str | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    is_eager: bool = False
    ignore_result: bool = False

    @property
    def called_directly(self) -> bool:
        """True when the task was called as a function (``add(2, 2)``), not run by a
        worker nor by ``apply()``: such a call has no task id."""
        return self.id is None

    @property
    def delivery_info(self) -> dict[str, Any]:
        """Celery's ``delivery_info``: ``redelivered`` (this is not the message's first
        delivery), ``routing_key`` (its queue), ``exchange`` (none) and ``priority``."""
        return {
            "redelivered": self.delivery_count > 1,
            "routing_key": self.queue,
            "exchange": "",
            "priority": self.priority,
            "is_eager": self.is_eager,
        }

    @property
    def callbacks(self) -> list[Any] | None:
        """The ``link`` signatures (dicts) sent once the task succeeded."""
        return self.headers.get(LINK)

    @property
    def errbacks(self) -> list[Any] | None:
        """The ``link_error`` signatures (dicts) called once the task failed for good."""
        return self.headers.get(LINK_ERROR)

    @property
    def chain(self) -> list[Any] | None:
        """The chain steps still to run after this task, last first (as Celery's)."""
        steps = self.headers.get(CHAIN)
        return list(reversed(steps)) if steps else None

    @property
    def chord(self) -> dict[str, Any] | None:
        """The chord this task is a header task of: ``{"id", "size", "body"}``."""
        return self.headers.get(CHORD)

    @property
    def group(self) -> str | None:
        """The id of the group this task is a member of."""
        return self.headers.get(GROUP_ID)

    @property
    def group_index(self) -> int | None:
        """The task's place in its group."""
        return self.headers.get(GROUP_INDEX)


_current_request: contextvars.ContextVar[Request | None] = contextvars.ContextVar(
    "conveyor_request", default=None
)


def current_request() -> Request | None:
    """The request of the task running in this thread or task, if any."""
    return _current_request.get()


@contextmanager
def request_context(request: Request) -> Iterator[Request]:
    """Make ``request`` the current request for the code inside the block."""
    token = _current_request.set(request)
    try:
        yield request
    finally:
        _current_request.reset(token)


def to_timestamp(value: dt.datetime | float | None) -> float | None:
    """A UNIX time from a datetime (naive means UTC, as in Celery) or a number."""
    if value is None or isinstance(value, int | float):
        return None if value is None else float(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.timestamp()


def from_timestamp(value: float | None) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromtimestamp(value, dt.UTC)


class _ThreadLoop:
    """A thread's own event loop, closed when the thread ends (``threading.local``
    drops this holder then) or, for a thread still alive, at interpreter exit."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        weakref.finalize(self, _close_idle, self.loop)


def _close_idle(loop: asyncio.AbstractEventLoop) -> None:
    if not loop.is_running() and not loop.is_closed():
        loop.close()


_loops = threading.local()


def run_coroutine(coro: Any) -> Any:
    """Run ``coro`` on this thread's long-lived event loop (one per thread, not one
    per call, so connection pools and caches in async code survive between tasks)."""
    holder: _ThreadLoop | None = getattr(_loops, "holder", None)
    if holder is None or holder.loop.is_closed():
        holder = _loops.holder = _ThreadLoop()
    return holder.loop.run_until_complete(coro)
