"""Exception retries in real workers: the broker's delayed store, backoff, RETRY state,
retries running out, and the dead letters on request. On SQLite and Redis."""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest
from apps import retry_tasks, tasks
from apps.executions import Executions
from harness import StartWorker, queue_stats, wait_until, workers_of

from conveyor import Conveyor, states

RETRY_APP = "apps.retry_tasks"


@pytest.fixture
def start_retry_worker(start_worker: StartWorker) -> StartWorker:
    """``start_worker`` for the workers of this module's app."""
    return workers_of(start_worker, RETRY_APP)


def test_autoretry_waits_along_the_backoff_curve_then_fails_with_the_last_exception(
    app: Conveyor, start_retry_worker: StartWorker, executions: Executions, record_property: Any
) -> None:
    # Given a worker and a task that always raises Flaky, retried with backoff 0.5 s
    # doubling, no jitter, three retries
    start_retry_worker("-c", "2").wait_ready()

    # When it is sent
    result = retry_tasks.backoff_then_fail.delay()

    # Then it runs four times and fails with Flaky
    with pytest.raises(retry_tasks.Flaky, match="still down"):
        result.get(timeout=20)
    runs = [e.at for e in executions.events("start") if e.task_id == result.id]
    assert len(runs) == 1 + retry_tasks.BACKOFF_RETRIES
    # ... the gaps between runs follow 0.5, 1, 2 s (never early; late by little)
    gaps = [later - earlier for earlier, later in itertools.pairwise(runs)]
    expected = [retry_tasks.BACKOFF_FACTOR * 2**i for i in range(retry_tasks.BACKOFF_RETRIES)]
    record_property("measured: retry gaps (s) vs 0.5, 1, 2", [round(g, 3) for g in gaps])
    for gap, want in zip(gaps, expected, strict=True):
        assert want - 0.05 <= gap < want + 0.6, (gaps, expected)
    assert result.state == states.FAILURE
    wait_until(lambda: queue_stats(app.broker).in_flight == 0, 5, "the last ack")
    stats = queue_stats(app.broker)
    assert (stats.ready, stats.delayed, stats.dead) == (0, 0, 0)


def test_a_task_waiting_to_retry_holds_no_worker_slot_and_shows_retry(
    app: Conveyor, start_retry_worker: StartWorker, executions: Executions
) -> None:
    # Given a worker with ONE slot
    start_retry_worker("-c", "1").wait_ready()

    # When a task asks to be retried in 3 s
    retrying = retry_tasks.retry_until.delay(2, 3.0)
    wait_until(lambda: executions.count(retrying.id) == 1, 10, "the first run")

    # Then while it waits, its state is RETRY, it sits in the broker's delayed store...
    wait_until(lambda: retrying.state == states.RETRY, 5, "the RETRY state")
    wait_until(lambda: queue_stats(app.broker).delayed == 1, 5, "the delayed message")
    # ... and the one slot runs another task at once
    began = time.monotonic()
    assert tasks.add.delay(2, 2).get(timeout=5) == 4
    assert time.monotonic() - began < 1.5

    # And the retry runs once when due, with its retry count
    assert retrying.get(timeout=10) == 1
    assert executions.count(retrying.id) == 2


def test_retries_are_counted_apart_from_deliveries_so_many_retries_are_not_poison(
    app: Conveyor, start_retry_worker: StartWorker, executions: Executions
) -> None:
    # Given the default delivery limit (5 deliveries before the dead letters)
    start_retry_worker("-c", "2").wait_ready()

    # When a task retries 7 times before it succeeds
    result = retry_tasks.retry_until.delay(8, 0.05)

    # Then it is not taken for a crash-looping message: it runs 8 times and succeeds
    assert result.get(timeout=20) == 7
    assert executions.count(result.id) == 8
    assert queue_stats(app.broker).dead == 0


def test_dead_letter_on_failure_puts_a_task_out_of_retries_into_the_dead_letters(
    app: Conveyor, start_retry_worker: StartWorker, executions: Executions
) -> None:
    # Given a worker
    start_retry_worker("-c", "1").wait_ready()

    # When a task with dead_letter_on_failure fails again after its one retry
    result = retry_tasks.retry_into_dead_letters.delay()

    # Then it fails with its exception, and its message is in the dead letters with why
    with pytest.raises(retry_tasks.Flaky):
        result.get(timeout=10)
    assert executions.count(result.id) == 2
    dead = wait_until(lambda: app.broker.dead_letters(), 5, "the dead letter")
    assert [d.id for d in dead] == [result.id]
    assert "dead_letter_on_failure" in dead[0].reason
    stats = queue_stats(app.broker)
    assert (stats.ready, stats.delayed, stats.in_flight, stats.dead) == (0, 0, 0, 1)
