"""The Prometheus collector: every number read from the broker at each scrape (memory
broker here; tests/integration/test_events_and_metrics.py runs real workers)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conveyor import Conveyor
from conveyor.brokers.base import OutgoingMessage
from conveyor.monitoring import metrics
from conveyor.monitoring.metrics import ConveyorCollector, queue_metrics, render

MakeApp = Callable[..., Conveyor]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(app: Conveyor) -> Samples:
    """Every sample of ``render(app)``: (name, sorted labels) -> value."""
    body, content_type = render(app)
    assert content_type.startswith("text/plain")
    found: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def test_task_counters_become_totals_and_a_cumulative_histogram(app: Conveyor) -> None:
    # Given the counters two workers added: 3 successes (runtimes in two buckets) and a failure
    app.broker.counters_add(
        {
            "tasks|proj.a|SUCCESS": 3,
            "tasks|proj.a|FAILURE": 1,
            "runtime_bucket|proj.a|0.005": 1,
            "runtime_bucket|proj.a|0.5": 2,
            "runtime_bucket|proj.a|+Inf": 1,
            "runtime_sum|proj.a": 1000.75,
            "runtime_count|proj.a": 4,
        }
    )

    # When they are scraped
    found = samples(app)

    # Then the totals are by task and state, and the buckets add up to the count
    assert found[("conveyor_tasks_total", (("state", "SUCCESS"), ("task", "proj.a")))] == 3
    assert found[("conveyor_tasks_total", (("state", "FAILURE"), ("task", "proj.a")))] == 1
    bucket = "conveyor_task_runtime_seconds_bucket"
    assert found[(bucket, (("le", "0.005"), ("task", "proj.a")))] == 1
    assert found[(bucket, (("le", "0.25"), ("task", "proj.a")))] == 1
    assert found[(bucket, (("le", "0.5"), ("task", "proj.a")))] == 3
    assert found[(bucket, (("le", "300.0"), ("task", "proj.a")))] == 3
    assert found[(bucket, (("le", "+Inf"), ("task", "proj.a")))] == 4
    assert found[("conveyor_task_runtime_seconds_count", (("task", "proj.a"),))] == 4
    assert found[("conveyor_task_runtime_seconds_sum", (("task", "proj.a"),))] == 1000.75


def test_a_task_name_with_the_separator_is_read_whole(app: Conveyor) -> None:
    app.broker.counters_add({"tasks|odd|name|SUCCESS": 1})
    assert samples(app)[("conveyor_tasks_total", (("state", "SUCCESS"), ("task", "odd|name")))]


def test_queue_depths_by_state_and_the_latency_of_the_oldest_ready(app: Conveyor) -> None:
    # Given a queue with 3 ready messages, 1 delayed, 1 held by a consumer, 1 dead
    broker = app.broker
    before = time.time()
    for n in range(4):
        broker.publish(OutgoingMessage(f"r{n}", "jobs", b"{}", 0, None))
    broker.publish(OutgoingMessage("d", "jobs", b"{}", 0, time.time() + 3600))
    after = time.time()
    _held, dead = broker.fetch(["jobs"], 2, consumer="c", timeout=0)
    assert broker.dead_letter(dead, "test")

    # When scraped at a known time
    at = after + 5.0
    messages, latency = queue_metrics(broker, now=at)

    # Then each state is counted, and the latency is the oldest ready message's age
    counts = {tuple(s.labels.values()): s.value for s in messages.samples}
    assert counts == {
        ("jobs", "ready"): 2,
        ("jobs", "delayed"): 1,
        ("jobs", "held"): 1,
        ("jobs", "dead"): 1,
    }
    [age] = latency.samples
    assert at - after <= age.value <= at - before


def test_a_queue_with_nothing_ready_has_no_latency(app: Conveyor) -> None:
    app.broker.publish(OutgoingMessage("d", "later", b"{}", 0, time.time() + 3600))
    assert samples(app)[("conveyor_queue_latency_seconds", (("queue", "later"),))] == 0.0


def test_workers_alive_and_their_active_tasks(app: Conveyor) -> None:
    # Given two live workers (one busy with 2 tasks) and one whose beat expired
    app.broker.worker_beat("w1@h", orjson.dumps({"name": "w1@h", "active": 2}), ttl=30)
    app.broker.worker_beat("w2@h", orjson.dumps({"name": "w2@h", "active": 0}), ttl=30)
    app.broker.worker_beat("w3@h", orjson.dumps({"name": "w3@h", "active": 9}), ttl=0.01)
    time.sleep(0.05)

    # When scraped
    found = samples(app)

    # Then only the live ones count
    assert found[("conveyor_workers", ())] == 2
    assert found[("conveyor_worker_active_tasks", (("worker", "w1@h"),))] == 2
    assert found[("conveyor_worker_active_tasks", (("worker", "w2@h"),))] == 0
    assert ("conveyor_worker_active_tasks", (("worker", "w3@h"),)) not in found


def test_a_second_collector_reads_the_same_numbers(make_app: MakeApp) -> None:
    # Given counters in a broker, and two apps on it (a dashboard and its restart)
    first = make_app()
    first.broker.counters_add({"tasks|t|SUCCESS": 7, "runtime_bucket|t|1.0": 7})
    second = Conveyor("again", broker=first.conf.broker_url)

    # When each is scraped, Then they agree: nothing is kept by a collector
    assert samples(first) == samples(second)
    assert samples(second)[("conveyor_tasks_total", (("state", "SUCCESS"), ("task", "t")))] == 7
    second.close()


def test_a_missing_prometheus_client_names_the_extra(
    app: Conveyor, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given prometheus_client cannot be imported
    monkeypatch.setitem(sys.modules, "prometheus_client", None)

    # When a collector is made, Then the error says which extra to install
    with pytest.raises(ImportError, match=r"conveyor\[prometheus\]"):
        ConveyorCollector(app)
    with pytest.raises(ImportError, match=r"conveyor\[prometheus\]"):
        metrics.render(app)
