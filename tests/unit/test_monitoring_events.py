"""Task events: their encoding, the worker's buffer, and reading them back (memory broker;
the integration tests run them through real worker processes)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from conveyor import Conveyor, events
from conveyor.brokers.base import Broker, Delivery
from conveyor.message import Message
from conveyor.monitoring.events import EventReceiver, recent, stories
from conveyor.testing import start_worker
from conveyor.worker.events import EventBuffer
from conveyor.worker.job import Job, Outcome
from conveyor.worker.metrics import TaskCounts, bucket_of
from conveyor.worker.monitors import End, ending

MakeApp = Callable[..., Conveyor]


def unreachable_broker() -> Broker:
    """A real Redis broker on a port nothing listens on: every call fails at once."""
    app = Conveyor("down", broker="redis://127.0.0.1:1/0", broker_connection_timeout=0.2)
    return app.broker


def by_task(found: list[dict[str, Any]], uuid: str) -> list[str]:
    return [e["type"] for e in found if e["uuid"] == uuid]


# -- encoding --------------------------------------------------------------------------


def test_a_received_event_carries_celerys_fields_and_the_json_payload() -> None:
    # Given a message with small arguments, a due time and a parent
    msg = Message(
        id="t1", task="proj.add", args=[1, "a"], kwargs={"k": [2]}, queue="q", eta=0.0,
        retries=2, parent_id="p", root_id="r",
    )  # fmt: skip

    # When its task-received event is built and read back
    body = events.decode(events.encode(events.message_event(events.RECEIVED, msg, "w1@h")))

    # Then it has Celery's fields, reprs of the arguments, and their JSON values
    assert body["type"] == "task-received"
    assert body["uuid"] == "t1"
    assert body["hostname"] == "w1@h"
    assert body["name"] == "proj.add"
    assert body["queue"] == "q"
    assert body["retries"] == 2
    assert body["args"] == "[1, 'a']"
    assert body["kwargs"] == "{'k': [2]}"
    assert body["payload"] == {"args": [1, "a"], "kwargs": {"k": [2]}}
    assert body["eta"] == "1970-01-01T00:00:00+00:00"
    assert body["expires"] is None
    assert (body["parent_id"], body["root_id"]) == ("p", "r")
    assert abs(body["timestamp"] - time.time()) < 60


def test_large_arguments_are_cut_in_the_repr_and_left_out_of_the_payload() -> None:
    # Given arguments far over 8 KiB
    msg = Message(id="t2", task="proj.big", args=["x" * 20_000])

    # When its event is built
    body = events.message_event(events.SENT, msg, "gen1@h")

    # Then the repr is cut at about 1 KiB and no payload is carried
    assert len(body["args"]) == events.REPR_LIMIT
    assert body["args"].endswith("...")
    assert body["payload"] is None


def test_a_value_json_cannot_hold_is_encoded_as_its_repr() -> None:
    # Given an event holding an object that is not JSON
    class Odd:
        def __repr__(self) -> str:
            return "<odd>"

    # When it is encoded, Then its repr stands in for it
    assert orjson.loads(events.encode({"type": "x", "value": Odd()}))["value"] == "<odd>"


def test_bucket_bounds_include_their_upper_edge() -> None:
    assert bucket_of(0.0) == "0.005"
    assert bucket_of(0.005) == "0.005"
    assert bucket_of(0.0051) == "0.01"
    assert bucket_of(300.0) == "300.0"
    assert bucket_of(301.0) == "+Inf"


def _job(acks_late: bool = True) -> Job:
    delivery = Delivery("t", "celery", b"{}", 0, "token", 1)
    return Job(delivery, Message(id="t", task="proj.t"), acks_late=acks_late)


@pytest.mark.parametrize(
    ("outcome", "acks_late", "reject_on_lost", "end"),
    [
        (Outcome("SUCCESS"), True, True, End("SUCCESS", "task-succeeded")),
        (Outcome("FAILURE"), True, True, End("FAILURE", "task-failed")),
        (Outcome("RETRY"), True, True, End("RETRY", "task-retried")),
        (Outcome("IGNORED"), True, True, End("IGNORED", None)),
        (
            Outcome("TIMED_OUT", summary="limit"),
            True, True, End("FAILURE", "task-failed", "TimeLimitExceeded: limit"),
        ),
        (
            Outcome("REJECTED", summary="nope", requeue=True),
            True, True, End("REJECTED", "task-rejected", "nope", requeue=True),
        ),
        (
            Outcome("LOST", summary="signal 9"),
            True, True, End("REJECTED", "task-rejected", "worker lost: signal 9", requeue=True),
        ),
        (
            Outcome("LOST", summary="signal 9"),
            False, True, End("FAILURE", "task-failed", "WorkerLostError: signal 9"),
        ),
        (
            Outcome("LOST", summary="signal 9"),
            True, False, End("FAILURE", "task-failed", "WorkerLostError: signal 9"),
        ),
        (Outcome("REVOKED"), True, True, None),
        (Outcome("TERMINATED"), True, True, None),
    ],
)  # fmt: skip
def test_each_outcome_is_named_once_for_the_counters_and_the_events(
    make_app: MakeApp, outcome: Outcome, acks_late: bool, reject_on_lost: bool, end: End | None
) -> None:
    conf = make_app(task_reject_on_worker_lost=reject_on_lost).conf
    assert ending(_job(acks_late), outcome, conf) == end


# -- the worker's buffer and counts ----------------------------------------------------------


def test_the_event_buffer_keeps_the_newest_when_full(app: Conveyor) -> None:
    # Given a buffer of 3 events that 5 are put in
    buffer = EventBuffer(maxlen=100, capacity=3)
    for n in range(5):
        buffer.put({"type": "task-started", "uuid": str(n)})

    # When it is flushed
    assert buffer.dropped == 2
    assert buffer.flush(app.broker)

    # Then the newest 3 are in the stream, in order
    assert [e["uuid"] for e in recent(app.broker)] == ["2", "3", "4"]


def test_events_the_broker_refused_are_written_by_the_next_flush(app: Conveyor) -> None:
    # Given buffered events and a broker that cannot be reached
    buffer = EventBuffer(maxlen=100)
    for n in range(3):
        buffer.put({"type": "task-started", "uuid": str(n)})

    # When a flush fails, Then nothing is lost
    assert not buffer.flush(unreachable_broker())
    assert len(buffer) == 3

    # And the next flush, to a broker that answers, writes them in order
    buffer.put({"type": "task-started", "uuid": "3"})
    assert buffer.flush(app.broker)
    assert [e["uuid"] for e in recent(app.broker)] == ["0", "1", "2", "3"]
    assert len(buffer) == 0


def test_counts_the_broker_refused_are_added_by_the_next_flush(app: Conveyor) -> None:
    # Given counts gathered and a broker that cannot be reached
    counts = TaskCounts()
    counts.count("t", "SUCCESS")
    counts.observe("t", 0.2)
    assert not counts.flush(unreachable_broker())

    # When more are gathered and the broker answers
    counts.count("t", "SUCCESS")
    assert counts.flush(app.broker)

    # Then the broker holds every count once
    assert app.broker.counters() == {
        "tasks|t|SUCCESS": 2.0,
        "runtime_bucket|t|0.25": 1.0,
        "runtime_sum|t": pytest.approx(0.2),
        "runtime_count|t": 1.0,
    }
    assert counts.pending() == {}


# -- a worker in this process -------------------------------------------------------------


def test_a_worker_with_events_tells_each_moment_of_each_task(make_app: MakeApp) -> None:
    # Given an app whose workers write events, and tasks that succeed, fail, retry, and one
    # revoked before it runs
    app = make_app(worker_send_task_events=True)

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def boom() -> None:
        raise ValueError("nope")

    @app.task(bind=True, max_retries=3)
    def flaky(self: Any) -> str:
        if self.request.retries < 1:
            raise self.retry(countdown=0.05, exc=KeyError("k"))
        return "ok"

    app.revoke("revoked-1")
    revoked = add.apply_async((0, 0), task_id="revoked-1")
    ok, bad, retried = add.delay(1, 2), boom.delay(), flaky.delay()
    unknown = app.send_task("no.such.task")

    # When a worker runs them and stops
    with start_worker(app) as worker:
        assert ok.get(timeout=5) == 3
        assert retried.get(timeout=5) == "ok"
        with pytest.raises(ValueError, match="nope"):
            bad.get(timeout=5)
    found = recent(app.broker)

    # Then each task's events are in the order of its life, from this worker
    assert by_task(found, ok.id) == ["task-received", "task-started", "task-succeeded"]
    assert by_task(found, bad.id) == ["task-received", "task-started", "task-failed"]
    assert by_task(found, retried.id) == [
        "task-received", "task-started", "task-retried",
        "task-received", "task-started", "task-succeeded",
    ]  # fmt: skip
    assert by_task(found, revoked.id) == ["task-revoked"]
    assert by_task(found, unknown.id) == ["task-rejected"]
    assert {e["hostname"] for e in found} == {worker.hostname}
    told = stories(found)
    assert told[ok.id].fields["result"] == "3"
    assert told[ok.id].state == "SUCCESS"
    assert told[ok.id].fields["runtime"] >= 0
    assert told[bad.id].fields["exception"] == "ValueError: nope"
    assert 'raise ValueError("nope")' in told[bad.id].fields["traceback"]
    assert told[revoked.id].fields == {"name": add.name, "terminated": False, "expired": False}
    assert told[unknown.id].fields["name"] == "no.such.task"
    assert "NotRegistered" in told[unknown.id].fields["reason"]


def test_a_worker_without_events_writes_none_and_still_counts(make_app: MakeApp) -> None:
    # Given an app with events off (the default)
    app = make_app()

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    # When a worker runs a task and stops
    with start_worker(app):
        assert add.delay(1, 2).get(timeout=5) == 3

    # Then no event was written, and the run is counted
    assert recent(app.broker) == []
    assert app.broker.counters("tasks|") == {f"tasks|{add.name}|SUCCESS": 1.0}


def test_a_producer_writes_task_sent_only_when_asked(make_app: MakeApp) -> None:
    # Given two apps on one broker, one of them with task_send_sent_event
    quiet = make_app()
    url = quiet.conf.broker_url
    loud = Conveyor("loud", broker=url, task_send_sent_event=True)

    # When each sends a task
    quiet.send_task("proj.a", [1])
    sent = loud.send_task("proj.b", [2], {"k": "v"}, countdown=60)

    # Then only the second is told, with its arguments and due time
    [event] = recent(quiet.broker)
    assert event["type"] == "task-sent"
    assert event["uuid"] == sent.id
    assert event["name"] == "proj.b"
    assert event["payload"] == {"args": [2], "kwargs": {"k": "v"}}
    assert event["eta"] is not None
    assert event["hostname"].startswith("gen")
    loud.close()


# -- reading ------------------------------------------------------------------------------


def test_a_receiver_reads_from_now_or_from_the_start_and_resumes_from_its_cursor(
    app: Conveyor,
) -> None:
    # Given two events in the stream
    def add(uuid: str) -> None:
        body = events.encode(events.event("task-started", uuid, "w"))
        app.broker.stream_add(events.STREAM, [body], 100)

    add("a")
    add("b")
    from_now = EventReceiver(app.broker)
    from_start = EventReceiver(app.broker, from_start=True)

    # When one more arrives
    add("c")

    # Then a receiver from now sees it alone, one from the start all three
    assert [e["uuid"] for e in from_now.read()] == ["c"]
    assert [e["uuid"] for e in from_start.read(count=2)] == ["a", "b"]
    # and a receiver made again from a kept cursor goes on where it stopped
    again = EventReceiver(app.broker, after=from_start.cursor)
    assert [e["uuid"] for e in again.read()] == ["c"]
    assert from_now.read(timeout=0.05) == []


def test_an_entry_that_is_not_an_event_is_skipped(app: Conveyor) -> None:
    app.broker.stream_add(events.STREAM, [b"not json", b"[1]", events.encode({"uuid": "x"})], 10)
    assert [e["uuid"] for e in EventReceiver(app.broker, from_start=True).read()] == ["x"]
