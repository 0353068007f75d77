"""What Celery calls in the process that runs a task, around it: the task's handlers
(``before_start``, ``on_success``, ``on_failure``, ``on_retry``, ``after_return``) and
the error callbacks written for Celery, which get ``(request, exc, traceback)``.

The worker calls these from a hook (``conveyor.worker.handlers``), ``apply()`` from
its eager run: one implementation for both. A handler or error callback that raises
is logged; the task's outcome stands.

How an error callback is called is Celery's rule: a function task registered here,
not ``bind=True``, taking more than one argument, is called here with ``(request,
exc, traceback)``; one taking a single argument is sent as a task with the failed
task's id. conveyor adds its JSON form: a function whose first parameter is
``task_id`` (and any error callback not registered here) is sent as a task with
``(task_id, exc_type, message)`` (docs/canvas.md).
"""

from __future__ import annotations

import inspect
import logging
import traceback as tb
from typing import TYPE_CHECKING, Any

from conveyor import states
from conveyor.canvas.signatures import Signature, as_list, resolve
from conveyor.exceptions import ExceptionInfo, Retry

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.task.base import Task
    from conveyor.task.request import Request

__all__ = [
    "JSON",
    "REQUEST",
    "TASK_ID",
    "after",
    "before",
    "call_errbacks",
    "errback_args",
    "errback_form",
    "sort_errbacks",
]

logger = logging.getLogger("conveyor.task")


def before(task: Task[Any, Any], request: Request) -> None:
    """``task.before_start(task_id, args, kwargs)``."""
    if _overrides(task, "before_start"):
        _call(task, "before_start", request.id, request.args, request.kwargs)


def after(
    task: Task[Any, Any],
    request: Request,
    state: str,
    value: Any,
    error: BaseException | None,
) -> None:
    """The handlers Celery calls once a run ended in ``state``: ``on_success`` (with
    the value), ``on_retry`` (with the exception that caused the retry), or
    ``on_failure``; then ``after_return`` for a success or a failure (not for a retry,
    ``Ignore`` or ``Reject``). Only the handlers the task's class overrides are called
    (the traceback is formatted only for them)."""
    task_id, args, kwargs = request.id, request.args, request.kwargs
    einfo: ExceptionInfo | None = None
    if state == states.SUCCESS:
        if _overrides(task, "on_success"):
            _call(task, "on_success", value, task_id, args, kwargs)
    elif state == states.RETRY and error is not None:
        if _overrides(task, "on_retry"):
            einfo = ExceptionInfo.of(error)
            cause = error.exc if isinstance(error, Retry) else error
            _call(task, "on_retry", cause, task_id, args, kwargs, einfo)
    elif state == states.FAILURE and error is not None and _overrides(task, "on_failure"):
        einfo = ExceptionInfo.of(error)
        _call(task, "on_failure", error, task_id, args, kwargs, einfo)
    if state in (states.SUCCESS, states.FAILURE) and _overrides(task, "after_return"):
        if error is not None and einfo is None:
            einfo = ExceptionInfo.of(error)
        retval = value if error is None else error
        _call(task, "after_return", state, retval, task_id, args, kwargs, einfo)


def _overrides(task: Task[Any, Any], handler: str) -> bool:
    from conveyor.task.base import Task  # (base imports this module)

    return getattr(type(task), handler) is not getattr(Task, handler)


def _call(task: Task[Any, Any], handler: str, *args: Any) -> None:
    try:
        getattr(task, handler)(*args)
    except Exception:
        logger.exception("%s.%s raised (the task's outcome stands)", task.name, handler)


# -- error callbacks ------------------------------------------------------------------


#: How an error callback is called: here, with ``(request, exc, traceback)``; or sent
#: as a task with ``(task_id,)``, or with ``(task_id, exc_type, message)``.
REQUEST, TASK_ID, JSON = "request", "task_id", "json"


def errback_form(task: Task[Any, Any] | None) -> str:
    """How an error callback of ``task`` is called (see the module docstring): a task
    unknown here gets conveyor's JSON form."""
    if task is None:
        return JSON
    try:
        params = list(inspect.signature(task.run).parameters.values())  # no self
    except (TypeError, ValueError):
        return JSON
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    star = any(p.kind is p.VAR_POSITIONAL for p in params)
    first = positional[0].name if positional else None
    function_task = getattr(task, "__wrapped__", None) is not None  # not a class's run
    if function_task and not task.bind and (len(positional) > 1 or star) and first != "task_id":
        return REQUEST
    if len(positional) == 1 and not star:
        return TASK_ID
    return JSON


def sort_errbacks(entries: Any, app: Conveyor) -> tuple[list[Signature], list[tuple[Any, str]]]:
    """The error callbacks of ``entries`` (``link_error``: signatures or their dicts)
    to call here with ``(request, exc, traceback)``, and the others, as given, each
    with its form (``TASK_ID`` or ``JSON``)."""
    direct: list[Signature] = []
    sent: list[tuple[Any, str]] = []
    for entry in as_list(entries):
        sig = resolve(entry, app)
        task = None if sig.subtask_type else app.tasks.get(str(sig.task))
        form = errback_form(task)
        if form == REQUEST:
            direct.append(sig)
        else:
            sent.append((entry, form))
    return direct, sent


def errback_args(form: str, failure: tuple[str, str, str], request_id: str) -> tuple[str, ...]:
    """What an error callback sent as a task gets: ``(request_id,)`` (the failed task's
    id; for a chord, its body's, as Celery), or ``failure``: ``(task_id, exc_type,
    message)``."""
    return (request_id,) if form == TASK_ID else failure


def call_errbacks(
    sigs: list[Signature],
    request: Request,
    exc: BaseException,
    traceback: str | None = None,
) -> None:
    """Call each error callback here, as Celery does: ``errback(request, exc,
    traceback)``, ``traceback`` being the formatted text (None for a chord's body,
    whose header failed elsewhere). One that raises is logged."""
    if traceback is None and exc.__traceback__ is not None:
        traceback = "".join(tb.format_exception(exc))
    for sig in sigs:
        try:
            sig(request, exc, traceback)
        except Exception:
            logger.exception("error callback %r of %s raised", sig, request.id)
