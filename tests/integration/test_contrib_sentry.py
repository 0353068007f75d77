"""``conveyor.contrib.sentry`` with real workers on a real redis-server: the worker's
Sentry client (``apps.contrib_tasks``) sends through a transport that writes each
event and transaction to a file, read here; this process, when it sends with Sentry
on, keeps its own in memory.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sentry_sdk
from apps import contrib_tasks
from harness import StartWorker, WorkerProcess, wait_until, workers_of
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport

from conveyor import Conveyor
from conveyor.contrib.sentry import ConveyorIntegration
from conveyor.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

APP = "apps.contrib_tasks"
pytestmark = pytest.mark.brokers("redis")

Event = dict[str, Any]
Events = Callable[..., list[Event]]


@pytest.fixture
def events_path(tmp_path: Path) -> Path:
    return tmp_path / "sentry.jsonl"


@pytest.fixture
def worker_events(events_path: Path) -> Events:
    """``worker_events(kind="event")``: what the workers sent Sentry so far, of one
    kind (``event``, ``transaction``), each with ``pid`` and ``ppid`` of its process."""

    def read(kind: str = "event") -> list[Event]:
        if not events_path.exists():
            return []
        lines = [json.loads(line) for line in events_path.read_text().splitlines() if line]
        return [
            {**line["event"], "pid": line["pid"], "ppid": line["ppid"]}
            for line in lines
            if line["type"] == kind
        ]

    return read


@pytest.fixture
def start(start_worker: StartWorker, events_path: Path) -> StartWorker:
    """``start_worker`` for the contrib app, its workers reporting to ``events_path``."""
    reporting = workers_of(start_worker, APP)

    def start(*args: str, env: dict[str, str] | None = None) -> WorkerProcess:
        return reporting(*args, env={contrib_tasks.SENTRY_EVENTS: str(events_path), **(env or {})})

    return start


class MemoryTransport(Transport):
    """Keeps what this process's client sends."""

    def __init__(self) -> None:
        super().__init__()
        self.items: list[tuple[str, Event]] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        self.items += [(item.type, item.payload.json) for item in envelope.items]

    def of(self, kind: str) -> list[Event]:
        return [event for item_type, event in self.items if item_type == kind]


@contextmanager
def sentry_in_this_process(**options: Any) -> Iterator[MemoryTransport]:
    """Sentry on in this process (no default integrations: they would patch this
    process for the tests after), off again after the block."""
    transport = MemoryTransport()
    sentry_sdk.init(
        transport=transport,
        integrations=[ConveyorIntegration(**options)],
        default_integrations=False,
        auto_enabling_integrations=False,
        traces_sample_rate=1.0,
    )
    try:
        yield transport
    finally:
        sentry_sdk.get_client().close()
        sentry_sdk.get_global_scope().set_client(None)


@pytest.fixture
def sentry_here() -> Iterator[MemoryTransport]:
    with sentry_in_this_process() as transport:
        yield transport


def messages(event: Event) -> list[str]:
    return [crumb.get("message") or "" for crumb in event["breadcrumbs"]["values"]]


def transactions_of(events: Events, task_name: str) -> list[Event]:
    return [t for t in events("transaction") if t["transaction"] == task_name]


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_a_failed_task_is_captured_once_with_its_tags_context_and_own_breadcrumbs(
    app: Conveyor, start: StartWorker, worker_events: Events, pool: str
) -> None:
    # Given a worker that reports to Sentry, one process or thread for every task
    worker = start("-P", pool, "-c", "1").wait_ready()

    # When a task logs a line and succeeds, another succeeds, then one fails
    assert contrib_tasks.chatty.delay("hello").get(timeout=15) == "hello"
    assert contrib_tasks.add.delay(1, 2).get(timeout=15) == 3
    failed = contrib_tasks.boom.delay("no luck")
    with pytest.raises(ValueError, match="no luck"):
        failed.get(timeout=15)

    # Then one event: the failure, unhandled, with the task's tags and context (the
    # worker's own line about it is no second event: once it is logged, all is in)
    line = f"boom[{failed.id}] failed"
    wait_until(lambda: line in worker.stderr_text(), 10, "the worker's line")
    [event] = worker_events()
    [exception] = event["exception"]["values"]
    assert (exception["type"], exception["value"]) == ("ValueError", "no luck")
    assert exception["mechanism"] == {"type": "conveyor", "handled": False}
    assert event["tags"] == {
        "conveyor.task_name": "apps.contrib_tasks.boom",
        "conveyor.task_id": failed.id,
        "conveyor.retries": 0,
        "conveyor.queue": "celery",
        "celery_task_id": failed.id,
    }
    context = event["contexts"]["conveyor"]
    assert (context["task_name"], context["id"], context["queue"]) == (
        "apps.contrib_tasks.boom",
        failed.id,
        "celery",
    )
    assert "args" not in context  # arguments only with send_default_pii
    assert event["transaction"] == "apps.contrib_tasks.boom"
    # ... with the breadcrumbs of its own run (its start, its log line), none of the
    # task before it in the same process
    crumbs = messages(event)
    assert f"apps.contrib_tasks.boom[{failed.id}] started" in crumbs
    assert "about to fail: no luck" in crumbs
    assert not [c for c in crumbs if "hello" in c or "chatty" in c]
    # ... sent from where the task ran
    if pool == "prefork":
        assert event["ppid"] == worker.pid
    else:
        assert event["pid"] == worker.pid

    # And each run was a transaction, the failed one in error, the event in its trace
    [ok] = transactions_of(worker_events, "apps.contrib_tasks.add")
    [bad] = wait_until(
        lambda: transactions_of(worker_events, "apps.contrib_tasks.boom"), 10, "its transaction"
    )
    assert ok["contexts"]["trace"]["status"] == "ok"
    assert bad["contexts"]["trace"]["status"] == "internal_error"
    assert bad["contexts"]["trace"]["op"] == "queue.task.conveyor"
    assert bad["transaction_info"] == {"source": "task"}
    assert event["contexts"]["trace"]["trace_id"] == bad["contexts"]["trace"]["trace_id"]
    [process] = bad["spans"]
    assert process["op"] == "queue.process"
    assert process["data"]["messaging.message.id"] == failed.id
    assert process["data"]["messaging.destination.name"] == "celery"
    assert process["data"]["messaging.message.retry.count"] == 0
    # (no receive latency: the sender, this process, has no Sentry to stamp the time)
    assert "messaging.message.receive.latency" not in process["data"]


def test_a_task_that_fails_after_retrying_is_reported_once_with_its_retries(
    app: Conveyor, start: StartWorker, worker_events: Events
) -> None:
    start("-P", "threads", "-c", "1", env={contrib_tasks.SENTRY_PII: "1"}).wait_ready()

    # When a task retries once, then fails
    result = contrib_tasks.flaky.delay(True)
    with pytest.raises(ValueError, match="still broken"):
        result.get(timeout=15)

    # Then the failure is the one event, from the last run, with its arguments (PII on)
    [event] = wait_until(worker_events, 10, "the event")
    assert event["exception"]["values"][0]["value"] == "still broken"
    assert event["tags"]["conveyor.retries"] == 1
    assert event["contexts"]["conveyor"]["args"] == [True]
    # ... and the first run's transaction is marked aborted (a retry), not an error
    runs = wait_until(
        lambda: (
            len(transactions_of(worker_events, "apps.contrib_tasks.flaky")) == 2
            and transactions_of(worker_events, "apps.contrib_tasks.flaky")
        ),
        10,
        "two transactions",
    )
    by_retry = {t["spans"][0]["data"]["messaging.message.retry.count"]: t for t in runs}
    assert by_retry[0]["contexts"]["trace"]["status"] == "aborted"
    assert by_retry[1]["contexts"]["trace"]["status"] == "internal_error"


def test_a_task_killed_at_its_hard_time_limit_on_prefork_is_still_reported(
    app: Conveyor, start: StartWorker, worker_events: Events
) -> None:
    # Given a prefork worker, whose child running a task is killed at its hard limit
    # (so no task_failure can be sent where the task ran)
    worker = start("-P", "prefork", "-c", "1").wait_ready()
    result = contrib_tasks.stuck.delay()
    with pytest.raises(TimeLimitExceeded):
        result.get(timeout=15)

    # Then the worker's line about the kill is the event (the line that the task failed
    # is none: it says nothing more)
    line = f"stuck[{result.id}] failed"
    wait_until(lambda: line in worker.stderr_text(), 10, "the worker's line")
    [event] = worker_events()
    assert event["logger"] == "conveyor.worker"
    assert event["level"] == "error"
    message = event["logentry"]["formatted"]
    assert f"stuck[{result.id}] reached its hard time limit" in message
    assert event["pid"] == worker.pid


def test_the_task_continues_the_trace_of_the_code_that_sent_it(
    app: Conveyor, start: StartWorker, worker_events: Events, sentry_here: MemoryTransport
) -> None:
    start("-P", "prefork", "-c", "1").wait_ready()

    # When a request traced here sends a task that fails
    with sentry_sdk.start_transaction(name="POST /checkout", op="http.server") as request:
        failed = contrib_tasks.boom.delay("declined")
        sentry_sdk.capture_message("checkout sent")
    with pytest.raises(ValueError, match="declined"):
        failed.get(timeout=15)

    # Then the request's own event has a breadcrumb of the send
    [here] = sentry_here.of("event")
    [sent] = [c for c in here["breadcrumbs"]["values"] if c["category"] == "conveyor"]
    assert sent["message"] == "sent apps.contrib_tasks.boom"
    assert sent["data"] == {"task_id": failed.id, "queue": "celery"}
    # ... and the worker's transaction and error are in the request's trace, the
    # transaction a child of the request's span
    [event] = wait_until(worker_events, 10, "the event")
    [task] = wait_until(
        lambda: transactions_of(worker_events, "apps.contrib_tasks.boom"), 10, "its transaction"
    )
    assert event["contexts"]["trace"]["trace_id"] == request.trace_id
    assert task["contexts"]["trace"]["trace_id"] == request.trace_id
    assert task["contexts"]["trace"]["parent_span_id"] == request.span_id
    assert task["spans"][0]["data"]["messaging.message.receive.latency"] >= 0


@pytest.mark.parametrize("propagate", [True, False])
def test_the_sender_s_trace_goes_with_the_message_unless_told_not_to(
    app: Conveyor, start: StartWorker, propagate: bool
) -> None:
    start("-P", "threads", "-c", "1").wait_ready()

    # When a task is sent inside a transaction, with propagate_traces on or off
    with (
        sentry_in_this_process(propagate_traces=propagate),
        sentry_sdk.start_transaction(name="POST /checkout") as request,
    ):
        result = contrib_tasks.headers.delay()
    seen = result.get(timeout=15)

    # Then the message carried the trace (to the task's headers) only when on
    if propagate:
        trace_id, span_id, _sampled = seen["sentry-trace"].split("-")
        assert (trace_id, span_id) == (request.trace_id, request.span_id)
        assert f"sentry-trace_id={request.trace_id}" in seen["baggage"]
    else:
        assert "sentry-trace" not in seen
        assert "baggage" not in seen


def test_a_soft_time_limit_is_one_issue_per_task(
    app: Conveyor, start: StartWorker, worker_events: Events
) -> None:
    start("-P", "prefork", "-c", "1").wait_ready()
    with pytest.raises(SoftTimeLimitExceeded):
        contrib_tasks.overtime.delay().get(timeout=15)

    [event] = wait_until(worker_events, 10, "the event")
    assert event["exception"]["values"][0]["type"] == "SoftTimeLimitExceeded"
    assert event["fingerprint"] == [
        "conveyor",
        "SoftTimeLimitExceeded",
        contrib_tasks.overtime.name,
    ]


def test_events_a_prefork_child_holds_are_sent_as_it_exits(
    app: Conveyor, start: StartWorker, worker_events: Events
) -> None:
    # Given a worker whose transport holds events until the client is flushed
    worker = start("-P", "prefork", "-c", "1", env={contrib_tasks.SENTRY_BUFFERED: "1"})
    worker.wait_ready()
    with pytest.raises(ValueError, match="boom"):
        contrib_tasks.boom.delay().get(timeout=15)
    assert worker_events() == []  # held in the child

    # When the worker stops (its child leaves with os._exit: no atexit hooks)
    worker.terminate()
    assert worker.wait(30) == 0

    # Then the child flushed its client on the way out
    [event] = worker_events()
    assert event["ppid"] == worker.pid
    assert event["tags"]["conveyor.task_name"] == "apps.contrib_tasks.boom"


def test_importing_without_sentry_installed_says_what_to_install() -> None:
    blocked = "import sys\nsys.modules['sentry_sdk'] = None\nimport conveyor.contrib.sentry\n"
    ran = subprocess.run(
        [sys.executable, "-c", blocked], capture_output=True, text=True, timeout=30, check=False
    )
    assert ran.returncode == 1
    assert "pip install 'conveyor[sentry]'" in ran.stderr
