"""``conveyor.contrib.opentelemetry`` with real workers on a real redis-server: spans
from this process (the SDK's in-memory exporter) and from the worker (exported to a
file by the test app, ``apps.contrib_tasks``) form one trace.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from apps import contrib_tasks
from harness import StartWorker, WorkerProcess, wait_until, workers_of
from opentelemetry import baggage, context
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Tracer

from conveyor import Conveyor
from conveyor.contrib import opentelemetry as instrumentation
from conveyor.contrib.opentelemetry import ConveyorInstrumentor
from conveyor.exceptions import BrokerUnavailable
from redis_server import RedisServer

APP = "apps.contrib_tasks"
pytestmark = pytest.mark.brokers("redis")

Span = dict[str, Any]


def plain(span: ReadableSpan) -> Span:
    """A span as the worker's exporter writes it (the SDK's JSON form)."""
    found: Span = json.loads(span.to_json(indent=None))
    return found


class Traced:
    """This process's tracing: a tracer, and the spans it ended (in memory)."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer: Tracer = self.provider.get_tracer("tests")

    def spans(self) -> list[Span]:
        return [plain(span) for span in self.exporter.get_finished_spans()]


@pytest.fixture
def traced() -> Iterator[Traced]:
    """``ConveyorInstrumentor`` on in this process, with an SDK of its own (not the
    global one: that can be set once per process)."""
    here = Traced()
    ConveyorInstrumentor().instrument(tracer_provider=here.provider)
    yield here
    ConveyorInstrumentor().uninstrument()


WorkerSpans = Callable[..., list[Span]]


@pytest.fixture
def spans_path(tmp_path: Path) -> Path:
    return tmp_path / "spans.jsonl"


@pytest.fixture
def worker_spans(spans_path: Path) -> WorkerSpans:
    """``worker_spans(name=None)``: the spans the workers exported so far, each with
    ``pid`` and ``ppid`` of the process that ended it."""

    def read(name: str | None = None) -> list[Span]:
        if not spans_path.exists():
            return []
        lines = [json.loads(line) for line in spans_path.read_text().splitlines() if line]
        found = [{**line["span"], "pid": line["pid"], "ppid": line["ppid"]} for line in lines]
        return [span for span in found if name is None or span["name"] == name]

    return read


@pytest.fixture
def start(start_worker: StartWorker, spans_path: Path) -> StartWorker:
    """``start_worker`` for the contrib app, its workers tracing to ``spans_path``."""
    tracing = workers_of(start_worker, APP)

    def start(*args: str, env: dict[str, str] | None = None) -> WorkerProcess:
        return tracing(*args, env={contrib_tasks.SPANS: str(spans_path), **(env or {})})

    return start


def one(spans: list[Span], name: str) -> Span:
    [found] = [span for span in spans if span["name"] == name]
    return found


def parent_of(span: Span) -> str | None:
    parent: str | None = span["parent_id"]
    return parent


def ids(span: Span) -> tuple[str, str]:
    """(trace id, span id)."""
    return span["context"]["trace_id"], span["context"]["span_id"]


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_a_task_sent_here_and_run_by_a_worker_is_one_trace(
    app: Conveyor, start: StartWorker, traced: Traced, worker_spans: WorkerSpans, pool: str
) -> None:
    # Given a worker that traces, and a request being traced here
    worker = start("-P", pool, "-c", "2").wait_ready()

    # When the request sends a task and waits for it
    with traced.tracer.start_as_current_span("GET /sum"):
        result = contrib_tasks.add.delay(2, 3)
        assert result.get(timeout=15) == 5

    # Then here: the request and, as its child, the publish (a PRODUCER span)
    request = one(traced.spans(), "GET /sum")
    publish = one(traced.spans(), "apply_async/apps.contrib_tasks.add")
    assert publish["kind"] == "SpanKind.PRODUCER"
    assert parent_of(publish) == ids(request)[1]
    assert publish["attributes"] == {
        "messaging.system": "conveyor",
        "messaging.operation.type": "send",
        "messaging.operation.name": "apply_async",
        "messaging.destination.name": "celery",
        "messaging.message.id": result.id,
        "conveyor.task.name": "apps.contrib_tasks.add",
    }
    # ... and on the worker, where the task ran, the run (a CONSUMER span), child of the
    # publish in the same trace
    run = wait_until(lambda: worker_spans("run/apps.contrib_tasks.add"), 10, "the run span")[0]
    assert run["kind"] == "SpanKind.CONSUMER"
    assert ids(run)[0] == ids(publish)[0] == ids(request)[0]
    assert parent_of(run) == ids(publish)[1]
    assert run["attributes"] == {
        "messaging.system": "conveyor",
        "messaging.operation.type": "process",
        "messaging.operation.name": "run",
        "messaging.destination.name": "celery",
        "messaging.message.id": result.id,
        "conveyor.task.name": "apps.contrib_tasks.add",
        "conveyor.task.retries": 0,
        "conveyor.task.state": "SUCCESS",
    }
    assert run["status"]["status_code"] == "UNSET"
    if pool == "prefork":
        assert run["ppid"] == worker.pid  # a pool child ended it
    else:
        assert run["pid"] == worker.pid


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_a_failed_task_records_its_error_on_the_run_span_and_a_retry_is_no_error(
    app: Conveyor, start: StartWorker, traced: Traced, worker_spans: WorkerSpans, pool: str
) -> None:
    start("-P", pool, "-c", "2").wait_ready()

    # When one task fails and another retries once, then succeeds
    failed = contrib_tasks.boom.delay("no luck")
    retried = contrib_tasks.flaky.delay(False)
    with pytest.raises(ValueError, match="no luck"):
        failed.get(timeout=15)
    assert retried.get(timeout=15) == "done"

    # Then the failed run's span has the error: status, exception event, error.type
    [run] = wait_until(lambda: worker_spans("run/apps.contrib_tasks.boom"), 10, "the run span")
    assert run["status"] == {"status_code": "ERROR", "description": "ValueError: no luck"}
    assert run["attributes"]["error.type"] == "ValueError"
    assert run["attributes"]["conveyor.task.state"] == "FAILURE"
    [event] = run["events"]
    assert event["name"] == "exception"
    assert event["attributes"]["exception.type"] == "ValueError"
    assert event["attributes"]["exception.message"] == "no luck"
    assert "raise ValueError(message)" in event["attributes"]["exception.stacktrace"]
    # ... and the retried task ran twice, each run a child of the one publish: the first
    # marked RETRY with its reason and no error, the second a success
    runs = wait_until(
        lambda: (
            len(worker_spans("run/apps.contrib_tasks.flaky")) == 2
            and worker_spans("run/apps.contrib_tasks.flaky")
        ),
        10,
        "two runs",
    )
    publish = one(traced.spans(), "apply_async/apps.contrib_tasks.flaky")
    assert {parent_of(r) for r in runs} == {ids(publish)[1]}
    by_retries = {r["attributes"]["conveyor.task.retries"]: r for r in runs}
    first, second = by_retries[0], by_retries[1]
    assert first["attributes"]["conveyor.task.state"] == "RETRY"
    assert first["attributes"]["conveyor.retry.reason"] == "KeyError: 'not yet'"
    assert first["status"]["status_code"] == "UNSET"
    assert second["attributes"]["conveyor.task.state"] == "SUCCESS"


@pytest.mark.parametrize(
    ("pool", "task"),
    [
        ("prefork", contrib_tasks.fan_out),
        ("threads", contrib_tasks.fan_out),
        ("asyncio", contrib_tasks.async_fan_out),
    ],
    ids=["prefork", "threads", "asyncio"],
)
def test_a_task_sent_by_a_task_continues_the_trace_through_the_task_s_own_spans(
    app: Conveyor,
    start: StartWorker,
    traced: Traced,
    worker_spans: WorkerSpans,
    pool: str,
    task: Any,
) -> None:
    start("-P", pool, "-c", "2").wait_ready()

    # When a task makes a span of its own and, inside it, sends another task
    child_id = task.delay(4).get(timeout=15)
    assert app.AsyncResult(child_id).get(timeout=15) == 8

    # Then, on the worker: run(parent) <- its span <- publish(child) <- run(child),
    # all in the trace this process began by sending the first task
    wait_until(lambda: worker_spans("run/apps.contrib_tasks.add"), 10, "the child's run")
    spans = worker_spans()
    publish = one(traced.spans(), f"apply_async/{task.name}")
    run = one(spans, f"run/{task.name}")
    work = one(spans, "fan_out work")
    send_child = one(spans, "apply_async/apps.contrib_tasks.add")
    run_child = one(spans, "run/apps.contrib_tasks.add")
    assert {ids(span)[0] for span in (run, work, send_child, run_child)} == {ids(publish)[0]}
    assert parent_of(run) == ids(publish)[1]
    assert parent_of(work) == ids(run)[1]
    assert parent_of(send_child) == ids(work)[1]
    assert send_child["attributes"]["messaging.message.id"] == child_id
    assert parent_of(run_child) == ids(send_child)[1]


def test_the_trace_context_and_baggage_travel_in_the_message_headers_until_uninstrumented(
    app: Conveyor, start: StartWorker, traced: Traced
) -> None:
    start("-P", "threads", "-c", "1").wait_ready()

    # When a task is sent while instrumented
    seen = contrib_tasks.headers.delay().get(timeout=15)

    # Then the task read the W3C trace context of its publish span in its headers
    publish = one(traced.spans(), "apply_async/apps.contrib_tasks.headers")
    trace_id, span_id = (value[2:] for value in ids(publish))  # hex without 0x
    version, sent_trace, sent_span, _flags = seen["traceparent"].split("-")
    assert (version, sent_trace, sent_span) == ("00", trace_id, span_id)

    # When a task is sent with baggage in the sender's context
    token = context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        result = contrib_tasks.current_baggage.delay()
    finally:
        context.detach(token)

    # Then the task runs with that baggage
    assert result.get(timeout=15) == {"tenant": "acme"}

    # When the instrumentation is off again
    ConveyorInstrumentor().uninstrument()
    traced.exporter.clear()
    seen = contrib_tasks.headers.delay().get(timeout=15)

    # Then nothing is traced here and the message carries no trace context
    assert "traceparent" not in seen
    assert traced.spans() == []
    ConveyorInstrumentor().instrument(tracer_provider=traced.provider)  # for the fixture


def test_spans_a_prefork_child_holds_are_exported_as_it_exits(
    app: Conveyor, start: StartWorker, worker_spans: WorkerSpans
) -> None:
    # Given a worker whose span processor exports in batches, only when flushed here
    worker = start("-P", "prefork", "-c", "1", env={contrib_tasks.SPANS_BATCHED: "1"})
    worker.wait_ready()
    assert contrib_tasks.add.delay(1, 1).get(timeout=15) == 2
    assert worker_spans() == []  # held in the child

    # When the worker stops (its child leaves with os._exit: no atexit hooks)
    worker.terminate()
    assert worker.wait(30) == 0

    # Then the child flushed its spans on the way out
    [run] = worker_spans("run/apps.contrib_tasks.add")
    assert run["ppid"] == worker.pid


@pytest.mark.app_env(CONVEYOR_TEST_CONNECTION_TIMEOUT="0.5")
def test_publishes_the_broker_never_took_are_ended_as_errors_once_too_many_wait(
    app: Conveyor, redis_server: RedisServer, traced: Traced, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a limit of one publish span waiting for the broker, and no broker
    monkeypatch.setattr(instrumentation, "MAX_PENDING_PUBLISHES", 1)
    redis_server.stop()

    # When two sends fail (no after_task_publish comes for either)
    for _ in range(2):
        with pytest.raises(BrokerUnavailable):
            contrib_tasks.add.delay(1, 1)

    # Then the first one's span was ended, as an error, to make room for the second
    [stale] = traced.spans()
    assert stale["name"] == "apply_async/apps.contrib_tasks.add"
    assert stale["status"] == {
        "status_code": "ERROR",
        "description": "the broker never confirmed the publish",
    }


def test_importing_without_opentelemetry_installed_says_what_to_install() -> None:
    blocked = (
        "import sys\n"
        "sys.modules['opentelemetry'] = None\n"  # as if it were not installed
        "import conveyor.contrib.opentelemetry\n"
    )
    ran = subprocess.run(
        [sys.executable, "-c", blocked], capture_output=True, text=True, timeout=30, check=False
    )
    assert ran.returncode == 1
    assert "pip install 'conveyor[opentelemetry]'" in ran.stderr
