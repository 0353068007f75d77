"""Sentry for conveyor: failed tasks reported with their context, tasks traced.

::

    import sentry_sdk
    from conveyor.contrib.sentry import ConveyorIntegration

    sentry_sdk.init(dsn="...", integrations=[ConveyorIntegration()])

Call it in every process that sends or runs tasks (the web app and the worker: in
the module the worker imports with ``-A``). Where a task runs, it gets its own
isolation scope: tags ``conveyor.task_name``, ``conveyor.task_id``,
``conveyor.retries``, ``conveyor.queue`` (and ``celery_task_id``, the tag Sentry's
Celery integration sets, so saved searches keep working), a ``conveyor`` context
(arguments only with ``send_default_pii``) and breadcrumbs from its start on, none
left over from the task before. A task that fails is captured once, with that
scope, when it fails for good (not at each retry).

Sending a task leaves a breadcrumb and, with ``propagate_traces`` (the default),
puts ``sentry-trace`` and ``baggage`` in the message's headers: the task runs in a
transaction ``<task name>`` (op ``queue.task.conveyor``) that continues the
sender's trace, so its errors link to the request that sent it. Transactions are
sent as ``traces_sample_rate`` says.

Built on Celery's signals (``before_task_publish``, ``task_prerun``,
``task_failure``, ``task_retry``, ``task_postrun``, ``worker_process_shutdown``):
they run in the task's own context, and prerun to postrun spans the whole run.
A prefork child ends with ``os._exit``, so the client is flushed as it leaves.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextlib import ExitStack
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

try:
    import sentry_sdk
    from sentry_sdk.consts import OP, SPANDATA, SPANSTATUS
    from sentry_sdk.integrations import Integration
    from sentry_sdk.scope import add_global_event_processor, should_send_default_pii
    from sentry_sdk.tracing import Span
    from sentry_sdk.utils import capture_internal_exceptions, event_from_exception
except ImportError as exc:
    raise ImportError(
        "conveyor.contrib.sentry needs the Sentry SDK: pip install 'conveyor[sentry]'"
    ) from exc

from conveyor import signals

if TYPE_CHECKING:
    from sentry_sdk._types import Event, EventProcessor, Hint
from conveyor.exceptions import SoftTimeLimitExceeded

__all__ = ["ConveyorIntegration"]

#: The op of a task's transaction; its run is a ``queue.process`` span inside it.
TASK_OP = "queue.task.conveyor"
#: Headers a sent task carries (Sentry's names, as its Celery integration uses).
SENTRY_TRACE = "sentry-trace"
BAGGAGE = "baggage"
ENQUEUED_AT = "sentry-task-enqueued-time"

_UID = "conveyor.contrib.sentry"


class ConveyorIntegration(Integration):
    """Reports conveyor tasks to Sentry (see the module docstring).

    Args:
        propagate_traces: carry the sender's trace to the worker in the message
            headers, so the task's transaction and errors join it.
    """

    identifier = "conveyor"
    origin = f"auto.queue.{identifier}"

    def __init__(self, propagate_traces: bool = True) -> None:
        self.propagate_traces = propagate_traces

    @staticmethod
    def setup_once() -> None:
        # once per process; each receiver does nothing while no client enables it
        for signal, receiver in _RECEIVERS:
            signal.connect(receiver, weak=False, dispatch_uid=_UID)
        add_global_event_processor(_drop_task_end_lines)


def _drop_task_end_lines(event: Event, hint: Hint) -> Event | None:
    """No event for the worker's line that a task failed (``conveyor.worker``, with the
    task's ``runtime``): ``task_failure`` reported it with its traceback and context,
    and the lines of every task would group as one issue. (Sentry's Celery integration
    ignores Celery's ``celery.app.trace`` logger for the same reason.) A failure no
    ``task_failure`` reports (a prefork child killed at a hard time limit, or lost)
    has lines of its own, which are events."""
    record = (hint or {}).get("log_record")
    if (
        record is not None
        and record.name == "conveyor.worker"
        and hasattr(record, "runtime")
        and _enabled() is not None
    ):
        return None
    return event


def _enabled() -> ConveyorIntegration | None:
    integration: ConveyorIntegration | None = sentry_sdk.get_client().get_integration(
        ConveyorIntegration
    )
    return integration


# -- the process that sends -----------------------------------------------------------


def _before_publish(
    sender: str,
    body: Mapping[str, Any],
    routing_key: str,
    headers: dict[str, Any],
    **_: Any,
) -> None:
    integration = _enabled()
    if integration is None:
        return
    with capture_internal_exceptions():
        sentry_sdk.add_breadcrumb(
            category="conveyor",
            message=f"sent {sender}",
            level="info",
            data={"task_id": body["id"], "queue": routing_key},
        )
        if not integration.propagate_traces:
            return
        traceparent = sentry_sdk.get_traceparent()
        if traceparent:
            headers[SENTRY_TRACE] = traceparent
        baggage = sentry_sdk.get_baggage()
        if baggage:
            headers[BAGGAGE] = baggage
        headers[ENQUEUED_AT] = time.time()


# -- where the task runs ------------------------------------------------------------


@dataclass(slots=True)
class _Running:
    """The scope and transaction of the task running in this context."""

    task_id: str
    exits: ExitStack
    transaction: Span | None = None


# Per context: prerun, failure, retry and postrun run in the task's own context (its
# thread, or its asyncio task), where the isolation scope entered at prerun is current.
_running: ContextVar[_Running | None] = ContextVar("conveyor_sentry_run", default=None)


def _prerun(task_id: str, task: Any, args: Any, kwargs: Any, **_: Any) -> None:
    integration = _enabled()
    if integration is None:
        return
    run = _Running(task_id, ExitStack())
    _running.set(run)
    with capture_internal_exceptions():
        request = task.request
        scope = run.exits.enter_context(sentry_sdk.isolation_scope())
        scope.clear_breadcrumbs()
        scope.set_tag("conveyor.task_name", task.name)
        scope.set_tag("conveyor.task_id", task_id)
        scope.set_tag("conveyor.retries", request.retries)
        scope.set_tag("conveyor.queue", request.queue)
        scope.set_tag("celery_task_id", task_id)
        job: dict[str, Any] = {
            "task_name": task.name,
            "id": task_id,
            "retries": request.retries,
            "queue": request.queue,
            "hostname": request.hostname,
            "parent_id": request.parent_id,
            "root_id": request.root_id,
        }
        if should_send_default_pii():
            job.update(args=list(args), kwargs=dict(kwargs))
        scope.set_context("conveyor", job)
        scope.add_event_processor(_fingerprint_soft_time_limits(task.name))

        headers = request.headers or {}
        transaction = sentry_sdk.continue_trace(
            headers if integration.propagate_traces else {},
            op=TASK_OP,
            name=task.name,
            source="task",  # TransactionSource.TASK, a string in SDKs before the enum
            origin=ConveyorIntegration.origin,
        )
        transaction.set_status(SPANSTATUS.OK)
        run.transaction = transaction
        run.exits.enter_context(
            sentry_sdk.start_transaction(transaction, custom_sampling_context={"conveyor_job": job})
        )
        span = run.exits.enter_context(
            sentry_sdk.start_span(
                op=OP.QUEUE_PROCESS, name=task.name, origin=ConveyorIntegration.origin
            )
        )
        span.set_data(SPANDATA.MESSAGING_SYSTEM, "conveyor")
        span.set_data(SPANDATA.MESSAGING_MESSAGE_ID, task_id)
        span.set_data(SPANDATA.MESSAGING_DESTINATION_NAME, request.queue)
        span.set_data(SPANDATA.MESSAGING_MESSAGE_RETRY_COUNT, request.retries)
        enqueued = headers.get(ENQUEUED_AT)
        if isinstance(enqueued, int | float):
            latency_ms = max(0.0, time.time() - enqueued) * 1000
            span.set_data(SPANDATA.MESSAGING_MESSAGE_RECEIVE_LATENCY, latency_ms)
        sentry_sdk.add_breadcrumb(
            category="conveyor",
            message=f"{task.name}[{task_id}] started",
            level="info",
            data={"retries": request.retries, "queue": request.queue},
        )


def _fingerprint_soft_time_limits(task_name: str) -> EventProcessor:
    # One issue per task for its soft time limits, whatever line the task was on.
    def process(event: Event, hint: Hint) -> Event:
        exc_info = hint.get("exc_info")
        if exc_info and issubclass(exc_info[0], SoftTimeLimitExceeded):
            event["fingerprint"] = ["conveyor", "SoftTimeLimitExceeded", task_name]
        return event

    return process


def _failure(task_id: str, exception: BaseException, **_: Any) -> None:
    integration = _enabled()
    if integration is None:
        return
    with capture_internal_exceptions():
        run = _running.get()
        if run is not None and run.transaction is not None and run.task_id == task_id:
            run.transaction.set_status(SPANSTATUS.INTERNAL_ERROR)
        event, hint = event_from_exception(
            (type(exception), exception, exception.__traceback__),
            client_options=sentry_sdk.get_client().options,
            mechanism={"type": ConveyorIntegration.identifier, "handled": False},
        )
        sentry_sdk.capture_event(event, hint=hint)


def _retry(request: Any, **_: Any) -> None:
    # Only the transaction says so: the run's scope, breadcrumbs and all, ends with it
    # (an event of the next run would not show them), and a retry is no error.
    run = _running.get()
    if run is not None and run.transaction is not None and run.task_id == request.id:
        run.transaction.set_status(SPANSTATUS.ABORTED)


def _postrun(task_id: str, **_: Any) -> None:
    run = _running.get()
    if run is None or run.task_id != task_id:
        return
    _running.set(None)
    with capture_internal_exceptions():
        run.exits.close()  # ends the span and the transaction (sent), leaves the scope


def _process_shutdown(**_: Any) -> None:
    # A prefork child leaves with os._exit: no atexit flush would send what is queued.
    if _enabled() is not None:
        sentry_sdk.flush()


_RECEIVERS = (
    (signals.before_task_publish, _before_publish),
    (signals.task_prerun, _prerun),
    (signals.task_failure, _failure),
    (signals.task_retry, _retry),
    (signals.task_postrun, _postrun),
    (signals.worker_process_shutdown, _process_shutdown),
)
