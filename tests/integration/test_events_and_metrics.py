"""Task events and Prometheus metrics from real worker processes, on SQLite and Redis:
events in each task's order with ``-E`` (none without), ``conveyor events``, task-sent
from a producer, and the exact counts two workers leave in the broker, read by a fresh
collector as by the first."""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apps import retry_tasks, tasks
from harness import (
    DashboardProcess,
    RunCli,
    StartWorker,
    WorkerProcess,
    wait_until,
    workers_of,
)
from prometheus_client.parser import text_string_to_metric_families

from conveyor import Conveyor
from conveyor.brokers.base import OutgoingMessage
from conveyor.monitoring.events import recent, stories
from conveyor.monitoring.metrics import render

RETRY_APP = "apps.retry_tasks"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def start_retry_worker(start_worker: StartWorker) -> StartWorker:
    """Workers of ``apps.retry_tasks``: ``apps.tasks``' tasks and the retrying ones."""
    return workers_of(start_worker, RETRY_APP)


@pytest.fixture
def sent_events(app: Conveyor) -> Iterator[Conveyor]:
    """The test app, writing task-sent for what it sends, for this test only."""
    app.conf.task_send_sent_event = True
    try:
        yield app
    finally:
        app.conf.task_send_sent_event = False


def stop(*workers: WorkerProcess) -> None:
    """SIGTERM (a warm shutdown: events and counts are written as it ends), exit 0."""
    for worker in workers:
        worker.terminate()
    for worker in workers:
        assert worker.wait(30) == 0


def samples(app: Conveyor) -> Samples:
    """Every sample of ``render(app)``: (name, sorted labels) -> value."""
    body, _ = render(app)
    return parse(body)


def parse(body: bytes) -> Samples:
    """Every sample of a Prometheus text body: (name, sorted labels) -> value."""
    found: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def task_samples(found: Samples) -> Samples:
    """The task counters and runtime counts alone (not the buckets, queues, workers)."""
    return {
        key: value
        for key, value in found.items()
        if key[0] in ("conveyor_tasks_total", "conveyor_task_runtime_seconds_count")
    }


def send_known_mix(app: Conveyor) -> dict[str, Any]:
    """A success, a failure, a task that retries once then succeeds, and a revoked one."""
    app.revoke("revoked-by-test")
    return {
        "ok": tasks.add.delay(2, 3),
        "failed": tasks.fail.delay("no luck"),
        "retried": retry_tasks.retry_until.delay(2, 0.1),
        "revoked": tasks.add.apply_async((0, 0), task_id="revoked-by-test"),
    }


def wait_results(sent: dict[str, Any]) -> None:
    assert sent["ok"].get(timeout=20) == 5
    with pytest.raises(tasks.Boom):
        sent["failed"].get(timeout=20)
    assert sent["retried"].get(timeout=20) == 1
    wait_until(lambda: sent["revoked"].state == "REVOKED", 20, "the revoked task's state")


def test_a_worker_with_E_writes_each_tasks_events_in_order(
    app: Conveyor, start_retry_worker: StartWorker, conveyor_cli: RunCli
) -> None:
    # Given a prefork worker writing events, and a known mix of tasks
    worker = start_retry_worker("-E", "-c", "2", "-n", "events@%h").wait_ready()
    sent = send_known_mix(app)

    # When they have run and the worker stopped
    wait_results(sent)
    stop(worker)
    found = recent(app.broker)

    # Then each task's events follow its life, each from that worker
    order = {
        name: [e["type"] for e in found if e["uuid"] == result.id] for name, result in sent.items()
    }
    assert order == {
        "ok": ["task-received", "task-started", "task-succeeded"],
        "failed": ["task-received", "task-started", "task-failed"],
        "retried": [
            "task-received", "task-started", "task-retried",
            "task-received", "task-started", "task-succeeded",
        ],
        "revoked": ["task-revoked"],
    }  # fmt: skip
    assert {e["hostname"] for e in found} == {e["hostname"] for e in found[:1]}
    assert found[0]["hostname"].startswith("events@")
    told = stories(found)
    ok = told[sent["ok"].id]
    assert ok.name == tasks.add.name
    assert ok.fields["result"] == "5"
    assert ok.fields["runtime"] > 0
    assert ok.fields["payload"] == {"args": [2, 3], "kwargs": {}}
    failed = told[sent["failed"].id]
    assert failed.state == "FAILURE"
    assert failed.fields["exception"] == "Boom: no luck"
    assert "raise Boom(message)" in failed.fields["traceback"]
    retried = [e for e in found if e["uuid"] == sent["retried"].id]
    assert retried[2]["exception"] == "Flaky: run 1"
    assert retried[3]["retries"] == 1

    # And `conveyor events --json --from-start` prints the same events, one a line
    out = conveyor_cli("events", "--json", "--from-start", "--limit", str(len(found)))
    assert out.returncode == 0, out.stderr
    printed = [json.loads(line) for line in out.stdout.splitlines()]
    assert printed == found
    # ... and as text, one line each with the type and name[uuid]
    out = conveyor_cli("events", "--from-start", "--duration", "0.5")
    lines = out.stdout.splitlines()
    assert len(lines) == len(found)
    [failure] = [line for line in lines if "task-failed" in line]
    assert f"task-failed     {tasks.fail.name}[{sent['failed'].id}]  events@" in failure
    assert failure.endswith("Boom: no luck")


def test_a_worker_without_E_writes_no_events(
    app: Conveyor, start_retry_worker: StartWorker
) -> None:
    # Given a worker started without -E
    worker = start_retry_worker("-c", "2").wait_ready()

    # When the same mix has run and the worker stopped
    wait_results(send_known_mix(app))
    stop(worker)

    # Then the stream is empty, and the runs were counted all the same
    assert recent(app.broker) == []
    assert (
        samples(app)[("conveyor_tasks_total", (("state", "SUCCESS"), ("task", tasks.add.name)))]
        == 1
    )


def test_a_producer_with_task_send_sent_event_writes_task_sent(
    sent_events: Conveyor, start_worker: StartWorker
) -> None:
    # Given a producer with task_send_sent_event, and a worker with -E
    worker = start_worker("-E", "-P", "threads").wait_ready()

    # When it sends a task that runs
    result = tasks.add.delay(20, 22)
    assert result.get(timeout=20) == 42
    stop(worker)

    # Then the task's story begins with task-sent, from this process
    events = [e for e in recent(sent_events.broker) if e["uuid"] == result.id]
    assert [e["type"] for e in events] == [
        "task-sent", "task-received", "task-started", "task-succeeded",
    ]  # fmt: skip
    assert events[0]["hostname"].startswith("gen")
    assert events[0]["queue"] == "celery"
    assert events[0]["payload"] == {"args": [20, 22], "kwargs": {}}


def scrape_dashboard(log: Path) -> Samples:
    """Start ``conveyor dashboard`` (a new process), read its /metrics, stop it."""
    dashboard = DashboardProcess([], dict(os.environ), log, app=RETRY_APP).wait_ready()
    try:
        with urllib.request.urlopen(dashboard.url + "metrics", timeout=10) as reply:
            return parse(reply.read())
    finally:
        dashboard.cleanup()


def test_two_workers_leave_exact_counts_that_any_collector_reads(
    app: Conveyor, start_retry_worker: StartWorker, broker_url: str, tmp_path: Path
) -> None:
    # Given two workers, and a known mix: 30 successes of add, 5 failures of fail,
    # 2 tasks that retry once then succeed, 1 revoked record
    first = start_retry_worker("-c", "2").wait_ready()
    second = start_retry_worker("-c", "2", "-P", "threads").wait_ready()
    app.revoke("revoked-record")
    revoked = tasks.record.apply_async(("x",), task_id="revoked-record")
    adds = [tasks.add.delay(n, n) for n in range(30)]
    fails = [tasks.fail.delay(f"f{n}") for n in range(5)]
    retried = [retry_tasks.retry_until.delay(2, 0.1) for _ in range(2)]

    # When they have run, and the workers stopped cleanly
    assert [r.get(timeout=30) for r in adds] == [2 * n for n in range(30)]
    for result in fails:
        with pytest.raises(tasks.Boom):
            result.get(timeout=30)
    assert [r.get(timeout=30) for r in retried] == [1, 1]
    wait_until(lambda: revoked.state == "REVOKED", 20, "the revoked task's state")
    stop(first, second)

    # Then the scrape holds exactly those counts: one per run's end, one runtime per run
    add, fail, retry, record = (
        tasks.add.name, tasks.fail.name, retry_tasks.retry_until.name, tasks.record.name,
    )  # fmt: skip
    expected = {
        ("conveyor_tasks_total", (("state", "SUCCESS"), ("task", add))): 30,
        ("conveyor_tasks_total", (("state", "FAILURE"), ("task", fail))): 5,
        ("conveyor_tasks_total", (("state", "RETRY"), ("task", retry))): 2,
        ("conveyor_tasks_total", (("state", "SUCCESS"), ("task", retry))): 2,
        ("conveyor_tasks_total", (("state", "REVOKED"), ("task", record))): 1,
        ("conveyor_task_runtime_seconds_count", (("task", add),)): 30,
        ("conveyor_task_runtime_seconds_count", (("task", fail),)): 5,
        ("conveyor_task_runtime_seconds_count", (("task", retry),)): 4,
    }
    found = samples(app)
    assert task_samples(found) == expected
    assert found[("conveyor_task_runtime_seconds_bucket", (("le", "+Inf"), ("task", add)))] == 30
    assert found[("conveyor_task_runtime_seconds_sum", (("task", add),))] > 0
    # ... and so does a collector of a fresh app (a restarted dashboard)
    again = Conveyor("restarted", broker=broker_url)
    try:
        assert task_samples(samples(again)) == expected
    finally:
        again.close()
    # ... and `conveyor dashboard`'s /metrics, the same after the dashboard restarts
    assert task_samples(scrape_dashboard(tmp_path / "dashboard-1.log")) == expected
    assert task_samples(scrape_dashboard(tmp_path / "dashboard-2.log")) == expected


def test_queue_depths_latency_and_live_workers(app: Conveyor, start_worker: StartWorker) -> None:
    # Given a queue no worker consumes with 3 ready messages, 2 delayed and 1 dead
    broker = app.broker
    before = time.time()
    for n in range(4):
        broker.publish(OutgoingMessage(f"ready-{n}", "unread", b"{}", 0, None))
    after = time.time()
    for n in range(2):
        broker.publish(OutgoingMessage(f"later-{n}", "unread", b"{}", 0, time.time() + 3600))
    [dead] = broker.fetch(["unread"], 1, consumer="test", timeout=0)
    assert broker.dead_letter(dead, "dead by test")
    time.sleep(0.3)

    # When it is scraped
    scraped_from = time.time()
    found = samples(app)
    scraped_to = time.time()

    # Then its depth is by state, and its latency is the age of the oldest ready message
    def queue(state: str) -> float:
        return found[("conveyor_queue_messages", (("queue", "unread"), ("state", state)))]

    assert [queue(s) for s in ("ready", "delayed", "held", "dead")] == [3, 2, 0, 1]
    latency = found[("conveyor_queue_latency_seconds", (("queue", "unread"),))]
    # (the oldest left is ready-1, published between `before` and `after`)
    assert scraped_from - after - 0.01 <= latency <= scraped_to - before + 0.01
    assert latency >= 0.29

    # And while two workers run, one of them busy with a task, they are seen
    idle = start_worker("-P", "threads", "-c", "2", "-n", "idle@%h").wait_ready()
    busy = start_worker("-P", "threads", "-c", "2", "-n", "busy@%h", "-Q", "slow").wait_ready()
    running = tasks.sleep_then_record.apply_async((5.0,), queue="slow")  # spans 2+ registry beats

    def active() -> dict[str, float]:
        now = samples(app)
        workers = now.get(("conveyor_workers", ()), 0)
        counts = {
            dict(labels)["worker"].partition("@")[0]: value
            for (name, labels), value in now.items()
            if name == "conveyor_worker_active_tasks"
        }
        return counts if workers == 2 and counts.get("busy") == 1 else {}

    assert wait_until(active, 10, "two workers, one running a task") == {"idle": 0, "busy": 1}
    assert running.get(timeout=20) == 5.0
    stop(idle, busy)
    assert samples(app).get(("conveyor_workers", ()), 0) == 0
