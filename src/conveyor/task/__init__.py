"""Tasks: the ``Task`` class ``@app.task`` makes subclasses of, its request, and
``shared_task``.

One module per seam:

* ``base``: ``Task`` (options as class attributes, ``run``, ``__call__``, the
  handlers, ``update_state``, ``retry``, ``replace``, signatures);
* ``calling``: ``delay``, ``apply_async`` and their twins, ``apply`` (run it here);
* ``request``: ``Request`` (``self.request``), the current request, the thread's
  event loop for async tasks;
* ``options``: which options there are, their checks, and what they mean at send time;
* ``defining``: the app's task class and a task per decorated function;
* ``handlers``: Celery's handlers and ``(request, exc, traceback)`` error callbacks,
  called where the task runs (the worker's hook and ``apply``);
* ``replacing``: ``Task.replace``; ``shared``: ``shared_task``.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Literal, cast, overload

from conveyor.task.base import Task
from conveyor.task.defining import BoundTaskDecorator, TaskDecorator
from conveyor.task.options import (
    TASK_OPTIONS,
    UNIQUE_KEY,
    UNIQUE_UNTIL,
    check_rate_limit,
    check_unique_until,
    countdown_to_eta,
    expiry,
    seconds,
    unique_claim_key,
)
from conveyor.task.request import (
    Request,
    current_request,
    from_timestamp,
    request_context,
    run_coroutine,
    to_timestamp,
)
from conveyor.task.shared import define

if TYPE_CHECKING:
    from typing import ParamSpec, TypeVar

    P = ParamSpec("P")
    R = TypeVar("R")

__all__ = [
    "TASK_OPTIONS",
    "UNIQUE_KEY",
    "UNIQUE_UNTIL",
    "Request",
    "Task",
    "check_rate_limit",
    "check_unique_until",
    "countdown_to_eta",
    "current_request",
    "expiry",
    "from_timestamp",
    "request_context",
    "run_coroutine",
    "seconds",
    "shared_task",
    "to_timestamp",
    "unique_claim_key",
]


@overload
def shared_task(fun: Callable[P, Coroutine[Any, Any, R]]) -> Task[P, R]: ...


@overload
def shared_task(fun: Callable[P, R]) -> Task[P, R]: ...


@overload
def shared_task(fun: None = None, *, bind: Literal[True], **options: Any) -> BoundTaskDecorator: ...


@overload
def shared_task(fun: None = None, **options: Any) -> TaskDecorator: ...


def shared_task(fun: Callable[..., Any] | None = None, **options: Any) -> Any:
    """A task of every app, as Celery's ``@shared_task`` (for libraries and Django
    apps, which do not import the project's app): ``@shared_task`` or
    ``@shared_task(**options)`` (the options of ``@app.task``).

    Every app registers it, those created before and after; calling it, or its
    ``delay``/``apply_async``/``s``..., uses the default app's (``Conveyor.
    set_default()``, else the app created last).
    """

    def share(f: Callable[..., Any]) -> Task[Any, Any]:
        return cast("Task[Any, Any]", define(f, options))

    return share(fun) if fun is not None else share
