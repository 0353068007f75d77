"""The contrib tests' app: the app of ``apps.tasks`` with tasks to trace and report,
and, in a worker, the integrations set up as docs/integrations.md shows.

What a worker enables comes from its environment:

* ``CONVEYOR_TEST_SPANS``: a path. ``ConveyorInstrumentor().instrument()`` at import,
  and in each process that runs tasks (``worker_process_init``) an OpenTelemetry SDK
  whose exporter appends every finished span to that file as a JSON line (the pid
  that ended it, its parent pid, and the SDK's own ``to_json`` of the span).
* ``CONVEYOR_TEST_SPANS_BATCHED=1``: a batch span processor that exports only when
  flushed, instead of one that exports each span as it ends.
* ``CONVEYOR_TEST_SENTRY_EVENTS``: a path. ``sentry_sdk.init`` with the
  ``ConveyorIntegration`` and a transport that appends each event and transaction
  to that file as a JSON line (pid, parent pid, item type, the event).
* ``CONVEYOR_TEST_SENTRY_BUFFERED=1``: that transport holds what it is given until
  the client is flushed.
* ``CONVEYOR_TEST_SENTRY_PII=1``: ``send_default_pii=True``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import sentry_sdk
from opentelemetry import baggage, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport

from apps.tasks import app
from conveyor import Task, signals
from conveyor.contrib.opentelemetry import ConveyorInstrumentor
from conveyor.contrib.sentry import ConveyorIntegration

__all__ = ["app"]

SPANS = "CONVEYOR_TEST_SPANS"
SPANS_BATCHED = "CONVEYOR_TEST_SPANS_BATCHED"
SENTRY_EVENTS = "CONVEYOR_TEST_SENTRY_EVENTS"
SENTRY_BUFFERED = "CONVEYOR_TEST_SENTRY_BUFFERED"
SENTRY_PII = "CONVEYOR_TEST_SENTRY_PII"

logger = logging.getLogger("apps.contrib_tasks")


def append_lines(path: str, records: Sequence[dict[str, Any]]) -> None:
    """One JSON line per record, appended in one write (processes share the file)."""
    if not records:
        return
    data = "".join(json.dumps(record) + "\n" for record in records).encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


class JsonLinesExporter(SpanExporter):
    """Appends finished spans to a file: what an OTLP exporter would send a collector."""

    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        me = {"pid": os.getpid(), "ppid": os.getppid()}
        append_lines(self.path, [{**me, "span": json.loads(s.to_json(indent=None))} for s in spans])
        return SpanExportResult.SUCCESS


class FileTransport(Transport):
    """Appends events and transactions to a file: what Sentry's servers would receive."""

    def __init__(self, path: str, buffered: bool) -> None:
        super().__init__()
        self.path = path
        self.buffered = buffered
        self.held: list[dict[str, Any]] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        me = {"pid": os.getpid(), "ppid": os.getppid()}
        items = [
            {**me, "type": item.type, "event": item.payload.json}
            for item in envelope.items
            if item.type in ("event", "transaction")
        ]
        if self.buffered:
            self.held.extend(items)
        else:
            append_lines(self.path, items)

    def flush(self, timeout: float, callback: Any = None) -> None:
        held, self.held = self.held, []
        append_lines(self.path, held)


if os.environ.get(SPANS):
    # As docs/integrations.md says: instrument at import, start the SDK in each
    # process that runs tasks (an exporter's threads and sockets do not survive a fork).
    ConveyorInstrumentor().instrument()

    @signals.worker_process_init.connect
    def start_tracing(**kwargs: Any) -> None:
        exporter = JsonLinesExporter(os.environ[SPANS])
        if os.environ.get(SPANS_BATCHED) == "1":
            processor: Any = BatchSpanProcessor(exporter, schedule_delay_millis=600_000)
        else:
            processor = SimpleSpanProcessor(exporter)
        provider = TracerProvider(resource=Resource.create({"service.name": "worker"}))
        provider.add_span_processor(processor)
        trace.set_tracer_provider(provider)


if os.environ.get(SENTRY_EVENTS):
    sentry_sdk.init(
        transport=FileTransport(os.environ[SENTRY_EVENTS], os.environ.get(SENTRY_BUFFERED) == "1"),
        integrations=[ConveyorIntegration()],
        traces_sample_rate=1.0,
        send_default_pii=os.environ.get(SENTRY_PII) == "1",
    )


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def boom(message: str = "boom") -> None:
    logger.warning("about to fail: %s", message)
    raise ValueError(message)


@app.task(bind=True, max_retries=1, default_retry_delay=0.1)
def flaky(self: Task[..., Any], fail_at_last: bool) -> str:
    """Asks for one retry; on the retry, fails (``fail_at_last``) or returns ``done``."""
    if self.request.retries == 0:
        raise self.retry(exc=KeyError("not yet"))
    if fail_at_last:
        raise ValueError("still broken")
    return "done"


@app.task(time_limit=0.5)
def stuck() -> None:
    """Runs past its hard time limit."""
    time.sleep(30)


@app.task(soft_time_limit=0.3)
def overtime() -> None:
    """Runs past its soft time limit (SoftTimeLimitExceeded is raised in it)."""
    time.sleep(30)


@app.task
def chatty(word: str) -> str:
    """Logs ``word`` (a breadcrumb for Sentry) and returns it."""
    logger.warning("chatty says %s", word)
    return word


@app.task
def fan_out(x: int) -> str:
    """Sends ``add(x, x)`` from inside a span of its own; returns the child's id."""
    with trace.get_tracer(__name__).start_as_current_span("fan_out work"):
        return add.delay(x, x).id


@app.task
async def async_fan_out(x: int) -> str:
    """``fan_out`` as a coroutine, sending with ``adelay``."""
    with trace.get_tracer(__name__).start_as_current_span("fan_out work"):
        return (await add.adelay(x, x)).id


@app.task
def current_baggage() -> dict[str, Any]:
    """The OpenTelemetry baggage in the task's context."""
    return dict(baggage.get_all())


@app.task(bind=True)
def headers(self: Task[..., Any]) -> dict[str, Any]:
    """The headers the task's message carried."""
    return dict(self.request.headers)
