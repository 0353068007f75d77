"""OpenTelemetry tracing of tasks: one trace from the code that sends a task to the
worker that runs it, and on to the tasks it sends.

::

    from conveyor.contrib.opentelemetry import ConveyorInstrumentor

    ConveyorInstrumentor().instrument()        # or instrument(tracer_provider=provider)

Call it in every process that sends or runs tasks (the web app and the worker: in
the module the worker imports with ``-A``). Sending a task makes a PRODUCER span
``apply_async/<task>``, child of the current span, and puts its context in the
message's headers (the configured propagator: W3C ``traceparent`` by default);
where the task runs (a prefork child), a CONSUMER span ``run/<task>`` is started
as that span's child and made current while the task runs, so what the task does
(its own spans, the tasks it sends) joins the trace. A task that fails sets the
span's status to ERROR with the exception recorded; a retry is marked on the span.
The span names are those of Celery's OpenTelemetry instrumentation.

Built on Celery's signals (``before_task_publish``, ``after_task_publish``,
``task_prerun``, ``task_failure``, ``task_retry``, ``task_postrun``): they carry
all it needs, since ``before_task_publish``'s headers travel with the message and
the task signals run in the task's own context.

Not traced: the callbacks of a canvas (links, chains, chords) are sent by the
worker once the task is settled, outside its span, and start traces of their own.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.context import Context

    # mypy (2.4) reads this module as empty: BaseInstrumentor is Any to it
    from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined, unused-ignore]
        BaseInstrumentor,
    )
    from opentelemetry.propagators.textmap import TextMapPropagator
    from opentelemetry.trace import Span, SpanKind, Status, StatusCode
except ImportError as exc:
    raise ImportError(
        "conveyor.contrib.opentelemetry needs OpenTelemetry: pip install 'conveyor[opentelemetry]'"
    ) from exc

from conveyor import __version__, signals

__all__ = ["ConveyorInstrumentor"]

# Messaging semantic conventions (as strings: the constants live in the
# conventions package's "incubating" modules, whose names move between releases).
MESSAGING_SYSTEM = "messaging.system"
OPERATION_TYPE = "messaging.operation.type"
OPERATION_NAME = "messaging.operation.name"
DESTINATION = "messaging.destination.name"
MESSAGE_ID = "messaging.message.id"
ERROR_TYPE = "error.type"
# conveyor's own, for what the conventions have no name for
TASK_NAME = "conveyor.task.name"
TASK_RETRIES = "conveyor.task.retries"
TASK_STATE = "conveyor.task.state"
RETRY_REASON = "conveyor.retry.reason"

#: Publish spans waiting for their ``after_task_publish`` at most; one whose publish
#: failed never gets it, so past this many the oldest are ended (as errors).
MAX_PENDING_PUBLISHES = 65_536

_UID = "conveyor.contrib.opentelemetry"


@dataclass(slots=True)
class _Running:
    """The run span of the task running in this context, and how to leave it."""

    task_id: str
    span: Span
    token: Token[Context]


# Per context, not per task id: prerun, failure, retry and postrun are sent in the
# context the task runs in (a thread, or an asyncio task), and nothing else sees it.
_running: ContextVar[_Running | None] = ContextVar("conveyor_otel_run", default=None)


class ConveyorInstrumentor(BaseInstrumentor):  # type: ignore[misc, unused-ignore]
    """Traces conveyor tasks (see the module docstring).

    ``instrument(tracer_provider=None, propagator=None)`` starts (the global tracer
    provider and propagator by default); ``uninstrument()`` stops. As every
    OpenTelemetry instrumentor, the class has one instance per process:
    ``ConveyorInstrumentor()`` always returns it.
    """

    def instrumentation_dependencies(self) -> Collection[str]:
        # It ships inside conveyor: there is no other version of conveyor to check.
        return ()

    def _instrument(self, **kwargs: Any) -> None:
        self._provider: trace.TracerProvider | None = kwargs.get("tracer_provider")
        self._tracer = trace.get_tracer(__name__, __version__, self._provider)
        self._propagator: TextMapPropagator | None = kwargs.get("propagator")
        self._publishing: dict[str, Span] = {}
        self._lock = threading.Lock()
        for signal, receiver in self._receivers():
            signal.connect(receiver, weak=False, dispatch_uid=_UID)

    def _uninstrument(self, **kwargs: Any) -> None:
        for signal, _ in self._receivers():
            signal.disconnect(dispatch_uid=_UID)

    def _receivers(self) -> list[tuple[signals.Signal, Any]]:
        return [
            (signals.before_task_publish, self._before_publish),
            (signals.after_task_publish, self._after_publish),
            (signals.task_prerun, self._prerun),
            (signals.task_failure, self._failure),
            (signals.task_retry, self._retry),
            (signals.task_postrun, self._postrun),
            (signals.worker_process_shutdown, self._process_shutdown),
        ]

    def _textmap(self) -> TextMapPropagator:
        # the global one as it is now: an application may set it after instrumenting
        return self._propagator or propagate.get_global_textmap()

    # -- the process that sends ----------------------------------------------------

    def _before_publish(
        self,
        sender: str,
        body: Mapping[str, Any],
        routing_key: str,
        headers: dict[str, Any],
        **_: Any,
    ) -> None:
        task_id = str(body["id"])
        span = self._tracer.start_span(
            f"apply_async/{sender}",
            kind=SpanKind.PRODUCER,
            attributes=_attributes("send", "apply_async", sender, task_id, routing_key),
        )
        # The span is not made current: a batch (a group) sends its after_task_publish
        # signals later, all together, so it could not be left in order.
        self._textmap().inject(headers, context=trace.set_span_in_context(span))
        with self._lock:
            self._publishing[task_id] = span
            overdue = []
            while len(self._publishing) > MAX_PENDING_PUBLISHES:
                oldest = next(iter(self._publishing))
                overdue.append(self._publishing.pop(oldest))
        for stale in overdue:
            stale.set_status(Status(StatusCode.ERROR, "the broker never confirmed the publish"))
            stale.end()

    def _after_publish(self, body: Mapping[str, Any], **_: Any) -> None:
        with self._lock:
            span = self._publishing.pop(str(body["id"]), None)
        if span is not None:
            span.end()

    # -- where the task runs -------------------------------------------------------

    def _prerun(self, task_id: str, task: Any, **_: Any) -> None:
        request = task.request
        parent = self._textmap().extract(request.headers or {})
        span = self._tracer.start_span(
            f"run/{task.name}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                **_attributes("process", "run", task.name, task_id, request.queue),
                TASK_RETRIES: request.retries,
            },
        )
        # on top of the extracted context, so the sender's baggage reaches the task
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        _running.set(_Running(task_id, span, token))

    def _failure(self, task_id: str, exception: BaseException, **_: Any) -> None:
        run = _running.get()
        if run is None or run.task_id != task_id:
            return
        run.span.record_exception(exception)
        run.span.set_attribute(ERROR_TYPE, _qualified_name(type(exception)))
        run.span.set_status(Status(StatusCode.ERROR, f"{type(exception).__name__}: {exception}"))

    def _retry(self, request: Any, reason: BaseException, **_: Any) -> None:
        run = _running.get()
        if run is None or run.task_id != request.id:
            return
        # a retry is no error: the cause is an attribute, the status stays unset
        cause = getattr(reason, "exc", None) or reason
        run.span.set_attribute(RETRY_REASON, f"{type(cause).__name__}: {cause}")

    def _postrun(self, task_id: str, state: str, **_: Any) -> None:
        run = _running.get()
        if run is None or run.task_id != task_id:
            return
        _running.set(None)
        run.span.set_attribute(TASK_STATE, state)
        otel_context.detach(run.token)
        run.span.end()

    def _process_shutdown(self, **_: Any) -> None:
        # A prefork child leaves with os._exit: no atexit hook would export what a
        # batching span processor still holds.
        provider = self._provider or trace.get_tracer_provider()
        flush = getattr(provider, "force_flush", None)
        if callable(flush):
            flush()


def _attributes(
    operation_type: str, operation: str, task_name: str, task_id: str, queue: str | None
) -> dict[str, Any]:
    found = {
        MESSAGING_SYSTEM: "conveyor",
        OPERATION_TYPE: operation_type,
        OPERATION_NAME: operation,
        MESSAGE_ID: task_id,
        TASK_NAME: task_name,
    }
    if queue:
        found[DESTINATION] = queue
    return found


def _qualified_name(cls: type) -> str:
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )
