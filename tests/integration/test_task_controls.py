"""Expiry, revokes, global rate limits, global concurrency caps and unique tasks, with
real workers, on SQLite and Redis. Everything here is kept in the broker's coordination
store, so it holds across all workers (and their restarts)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from apps import control_tasks, tasks
from apps.executions import Executions
from harness import StartWorker, queue_stats, wait_until, workers_of

from conveyor import Conveyor, Task, TaskRevokedError, states

CONTROL_APP = "apps.control_tasks"


@pytest.fixture
def start_control_worker(start_worker: StartWorker) -> StartWorker:
    """``start_worker`` for the workers of this module's app."""
    return workers_of(start_worker, CONTROL_APP)


def settled(app: Conveyor) -> None:
    wait_until(lambda: queue_stats(app.broker).in_flight == 0, 10, "nothing in flight")


# -- expiry and revokes ----------------------------------------------------------------------


def test_a_task_due_after_its_expiry_never_runs_and_is_revoked(
    app: Conveyor, start_control_worker: StartWorker, executions: Executions
) -> None:
    # Given a task that expires in 0.3 s but is due only in 1 s, and one that does not expire
    doomed = tasks.sleep_then_record.apply_async((0.0,), countdown=1.0, expires=0.3)
    fine = tasks.sleep_then_record.apply_async((0.0,), countdown=1.0)

    # When a worker runs
    start_control_worker("-c", "2").wait_ready()

    # Then the expired one never runs: REVOKED, and its message is gone
    assert fine.get(timeout=10) == 0.0
    with pytest.raises(TaskRevokedError, match="expired"):
        doomed.get(timeout=10)
    assert doomed.state == states.REVOKED
    assert executions.count(doomed.id) == 0
    settled(app)
    stats = queue_stats(app.broker)
    assert (stats.ready, stats.delayed, stats.dead) == (0, 0, 0)


def test_a_revoked_task_never_runs_on_any_worker_even_after_every_worker_restarted(
    app: Conveyor, start_control_worker: StartWorker, executions: Executions
) -> None:
    # Given a worker, and a task due in 2 s that is revoked at once
    first = start_control_worker("-c", "2").wait_ready()
    revoked = tasks.sleep_then_record.apply_async((0.0,), countdown=2.0)
    app.AsyncResult(revoked.id).revoke()
    assert revoked.state == states.REVOKED  # marked at once
    kept = tasks.sleep_then_record.apply_async((0.0,), countdown=2.5)

    # When every worker is killed and a new one starts (nothing of the revoke in memory)
    first.kill_group()
    start_control_worker("-c", "2").wait_ready()

    # Then the other task runs when due, and the revoked one never does
    assert kept.get(timeout=15) == 0.0
    wait_until(lambda: queue_stats(app.broker).delayed == 0, 5, "the revoked one to be due")
    settled(app)
    assert executions.count(revoked.id) == 0
    assert revoked.state == states.REVOKED
    stats = queue_stats(app.broker)
    assert (stats.ready, stats.delayed, stats.in_flight, stats.dead) == (0, 0, 0, 0)


@pytest.mark.parametrize(
    ("pool", "task"),
    [("prefork", tasks.sleep_then_record), ("asyncio", control_tasks.async_long_nap)],
    ids=["prefork", "asyncio"],
)
def test_revoke_with_terminate_stops_a_running_task(
    app: Conveyor,
    start_control_worker: StartWorker,
    executions: Executions,
    pool: str,
    task: Task[..., Any],
) -> None:
    # Given a worker running a 30 s task
    worker = start_control_worker("-P", pool, "-c", "2").wait_ready()
    running = task.delay(30.0)
    wait_until(lambda: executions.count(running.id) == 1, 10, "the task to start")

    # When it is revoked with terminate=True
    began = time.monotonic()
    app.control.revoke(running.id, terminate=True)

    # Then it is stopped within a couple of seconds, REVOKED, acknowledged, never rerun
    with pytest.raises(TaskRevokedError):
        running.get(timeout=5)
    settled(app)
    assert time.monotonic() - began < 3.0
    assert running.state == states.REVOKED
    assert executions.ends().get(running.id, 0) == 0
    assert "revoked" in worker.stderr_text()
    # ... and the worker goes on at full strength
    assert [r.get(timeout=10) for r in [tasks.sleep_then_record.delay(0.1) for _ in range(2)]] == [
        0.1,
        0.1,
    ]
    assert executions.count(running.id) == 1


# -- global rate limits and concurrency caps -------------------------------------------------


def test_a_rate_limit_holds_across_three_workers_together(
    app: Conveyor, start_control_worker: StartWorker, executions: Executions, record_property: Any
) -> None:
    # Given three workers and 400 tasks limited to 20/s across the cluster
    workers = [start_control_worker("-c", "4", "-l", "warning") for _ in range(3)]
    for worker in workers:
        worker.wait_ready()
    for i in range(400):
        control_tasks.limited.delay(i)

    # When they run for 10 s from the first start
    wait_until(lambda: executions.events("start"), 10, "the first start")
    first = executions.events("start")[0].at
    time.sleep(max(0.0, first + 10.5 - time.time()))

    # Then at most 20 x 10 + 20 ran in those 10 s (Celery's per-worker limit allows 3x)
    in_window = [e for e in executions.events("start") if e.at < first + 10.0]
    record_property("measured: runs in 10 s at 20/s over 3 workers", len(in_window))
    assert len(in_window) <= control_tasks.RATE * 10 + control_tasks.RATE
    assert len(in_window) >= control_tasks.RATE * 10 * 0.8, "the limit starved the tasks"
    # ... spread over the workers, none of them holding tasks it may not run
    assert len({e.ppid for e in in_window}) == 3


def test_a_concurrency_limit_holds_across_three_workers_together(
    app: Conveyor, start_control_worker: StartWorker, executions: Executions, record_property: Any
) -> None:
    # Given three workers with two slots each, and tasks capped at 2 running cluster-wide
    workers = [start_control_worker("-c", "2", "-l", "warning") for _ in range(3)]
    for worker in workers:
        worker.wait_ready()

    # When 12 of them, 0.4 s each, are sent at once
    results = [control_tasks.capped.delay(0.4) for _ in range(12)]

    # Then all run, never more than 2 at a time
    for result in results:
        result.get(timeout=30)
    events = sorted(
        [(e.at, 1) for e in executions.events("start")]
        + [(e.at, -1) for e in executions.events("end")],
        key=lambda pair: (pair[0], pair[1]),
    )
    running = most = 0
    for _, change in events:
        running += change
        most = max(most, running)
    record_property("measured: most capped tasks running at once (cap 2)", most)
    assert most <= control_tasks.CAP
    assert most == control_tasks.CAP, "the cap was never reached: nothing was tested"
    assert set(executions.starts().values()) == {1}


# -- unique tasks --------------------------------------------------------------------------


def test_a_hundred_enqueues_with_one_unique_key_run_once(
    app: Conveyor, start_control_worker: StartWorker, executions: Executions
) -> None:
    # Given no worker yet, 100 enqueues with the same unique key
    results = [
        tasks.sleep_then_record.apply_async((0.2,), unique_key="report:42") for _ in range(100)
    ]

    # Then they all got the first one's handle, and one message was queued
    assert {r.id for r in results} == {results[0].id}
    assert queue_stats(app.broker).ready == 1

    # When a worker runs it, it runs exactly once
    start_control_worker("-c", "4").wait_ready()
    assert results[0].get(timeout=10) == 0.2
    assert executions.count(results[0].id) == 1

    # And once it has finished, the key is free: the next enqueue is a new task
    settled(app)
    again = tasks.sleep_then_record.apply_async((0.0,), unique_key="report:42")
    assert again.id != results[0].id
    assert again.get(timeout=10) == 0.0


def test_unique_until_started_frees_the_key_when_a_worker_starts_the_task(
    app: Conveyor, start_control_worker: StartWorker, executions: Executions
) -> None:
    # Given a unique task freed when it starts, now running
    start_control_worker("-c", "2").wait_ready()
    first = tasks.sleep_then_record.apply_async((1.0,), unique_key="k", unique_until="started")
    wait_until(lambda: executions.count(first.id) == 1, 10, "the first to start")

    # When the same key is sent while it runs
    second = tasks.sleep_then_record.apply_async((0.0,), unique_key="k", unique_until="started")

    # Then it is a new task, and both run
    assert second.id != first.id
    assert second.get(timeout=10) == 0.0
    assert first.get(timeout=10) == 1.0
