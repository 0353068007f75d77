"""A task's options: which there are, how each is checked, and the send-time values
they turn into (due times, expiry, unique keys)."""

from __future__ import annotations

import datetime as dt
import inspect
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from conveyor.brokers.base import check_priority
from conveyor.config import parse_rate
from conveyor.exceptions import ConfigurationError
from conveyor.message import is_datetime_time
from conveyor.task.request import to_timestamp

if TYPE_CHECKING:
    from conveyor.task.base import Task

__all__ = [
    "CELERY_ONLY_OPTIONS",
    "TASK_OPTIONS",
    "UNIQUE_KEY",
    "UNIQUE_UNTIL",
    "check_class",
    "check_rate_limit",
    "check_unique_until",
    "countdown_to_eta",
    "expiry",
    "positional_range",
    "seconds",
    "unique_claim_key",
]

#: The options ``@app.task(...)`` takes (each a ``Task`` class attribute of that name),
#: besides ``name``, ``bind`` and ``base``.
TASK_OPTIONS = frozenset(
    {
        "ignore_result",
        "acks_late",
        "track_started",
        "queue",
        "priority",
        "expires",
        "max_retries",
        "default_retry_delay",
        "rate_limit",
        "time_limit",
        "soft_time_limit",
        "typing",
        "autoretry_for",
        "dont_autoretry_for",
        "retry_kwargs",
        "retry_backoff",
        "retry_backoff_max",
        "retry_jitter",
        "dead_letter_on_failure",
        "concurrency_limit",
        "unique_key",
        "unique_for",
        "unique_until",
    }
)

#: Celery's task options that conveyor accepts and does not need, each with the reason
#: (docs/tasks.md lists them).
CELERY_ONLY_OPTIONS = {
    "serializer": "JSON is the only serializer (``json`` is accepted, anything else refused)",
    "compression": "messages are not compressed",
    "send_events": "conveyor sends no monitoring events",
    "trail": "children are recorded from the canvas headers, always",
    "store_errors_even_if_ignored": "a task with ignore_result stores nothing",
    "throws": "every failure is logged at ERROR level",
    "resultrepr_maxsize": "the worker log shortens results to 120 characters",
    "acks_on_failure_or_timeout": "a failure or time-out is always acknowledged",
    "reject_on_worker_lost": "the setting task_reject_on_worker_lost decides, for every task",
    "shadow": "tasks are logged under their own name",
}

#: Headers of a unique task's message: its key, and when a worker frees it.
UNIQUE_KEY = "unique_key"
UNIQUE_UNTIL = "unique_until"


def unique_claim_key(key: str) -> str:
    """The coordination-store key a unique task's ``unique_key`` is claimed under."""
    return f"unique:{key}"


def check_class(cls: type[Task[Any, Any]]) -> None:
    """Check the options a task class sets, when the class is defined (by
    ``@app.task`` or a ``class ...(Task)``), not when a worker meets its first message.

    Raises:
        ConfigurationError: a rate limit that is no rate, a serializer that is not JSON.
        ValueError: a priority outside 0-9, a concurrency limit below 1, an unknown
            ``unique_until``.
        TypeError: ``retry_kwargs`` other than ``max_retries`` and ``countdown``.
    """
    name = cls.name or cls.__qualname__
    check_rate_limit(name, cls.rate_limit)
    if cls.priority is not None:
        check_priority(cls.priority)
    limit = cls.concurrency_limit
    if limit is not None and limit < 1:
        raise ValueError(f"concurrency_limit must be at least 1, not {limit}")
    check_unique_until(cls.unique_until)
    unknown = set(cls.retry_kwargs or {}) - {"max_retries", "countdown"}
    if unknown:
        raise TypeError(f"retry_kwargs takes max_retries and countdown, not {sorted(unknown)}")
    serializer = getattr(cls, "serializer", None)
    if serializer not in (None, "json", "application/json"):
        raise ConfigurationError(
            f"task {name!r}: serializer={serializer!r}: conveyor sends JSON only"
        )


def check_rate_limit(task_name: str, rate: str | float | None) -> str | float | None:
    """``rate_limit`` if it is None or a rate ``parse_rate`` reads: checked when the task
    is defined, not when its first message is refused by a worker.

    Raises:
        ConfigurationError: naming the task and the forms a rate may take.
    """
    if rate is not None:
        try:
            parse_rate(rate)
        except ValueError as exc:
            raise ConfigurationError(f"task {task_name!r}: {exc}") from None
    return rate


def check_unique_until(mode: str) -> str:
    """``unique_until``: ``finished`` (the default) or ``started``."""
    if mode not in ("finished", "started"):
        raise ValueError(f"unique_until must be 'finished' or 'started', not {mode!r}")
    return mode


def countdown_to_eta(
    countdown: float | dt.timedelta | None, eta: dt.datetime | float | None
) -> float | None:
    """The due time of a message given Celery's ``countdown``/``eta`` options.

    Raises:
        ValueError: naming the option, if the time is not one a datetime can hold.
    """
    if countdown is not None:
        return _checked("countdown", countdown, lambda: time.time() + seconds(countdown))
    return _checked("eta", eta, lambda: to_timestamp(eta))


def expiry(expires: dt.datetime | dt.timedelta | float | None) -> float | None:
    """The UNIX time after which a message must not run: ``expires`` is seconds
    (or a timedelta) from now, or an absolute datetime.

    Raises:
        ValueError: naming the option, if the time is not one a datetime can hold.
    """
    if expires is None or isinstance(expires, dt.datetime):
        return _checked("expires", expires, lambda: to_timestamp(expires))
    return _checked("expires", expires, lambda: time.time() + seconds(expires))


def _checked(option: str, given: object, when: Callable[[], float | None]) -> float | None:
    """``when()``, the UNIX time the send option ``option=given`` stands for, if a
    worker can hold it as a datetime (it must, to build the task's request)."""
    try:
        value = when()
    except (OverflowError, ValueError):  # an int beyond float, a datetime beyond UTC
        value = math.inf
    if value is None or is_datetime_time(value):
        return value
    raise ValueError(
        f"{option}={given!r} is out of range: it is no time between the years 1 and 9999 "
        f"(UTC), which a task's request must hold"
    )


def seconds(value: float | dt.timedelta) -> float:
    """Seconds from a number or a timedelta (public API takes either)."""
    return value.total_seconds() if isinstance(value, dt.timedelta) else float(value)


def positional_range(signature: inspect.Signature) -> tuple[int, float] | None:
    """How many positional arguments a call with no keyword arguments may pass (at
    least, at most), or None if such a call needs a full ``bind`` to be checked (a
    keyword-only parameter without a default)."""
    low, high = 0, 0.0
    for param in signature.parameters.values():
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            high += 1
            if param.default is param.empty:
                low += 1
        elif param.kind is param.VAR_POSITIONAL:
            high = math.inf
        elif param.kind is param.KEYWORD_ONLY and param.default is param.empty:
            return None
    return low, high
