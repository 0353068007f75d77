"""At-least-once through crashes and shutdowns: SIGKILL, SIGTERM, a second SIGTERM, Ctrl-C."""

from __future__ import annotations

import os
import signal
import time

import pytest
from apps import tasks
from apps.executions import Executions
from harness import StartWorker, ids_in_queue, queue_stats, wait_until

from conveyor import Conveyor, states

LEASE = 1.5

pytestmark = pytest.mark.slow


@pytest.mark.brokers("sqlite")  # on Redis: test_redis_guarantees.py, with the default lease
@pytest.mark.app_env(CONVEYOR_TEST_LEASE_TIMEOUT=str(LEASE))
def test_sigkill_of_the_whole_worker_mid_task_runs_the_task_again_on_a_new_worker(
    app: Conveyor, start_worker: StartWorker, executions: Executions
) -> None:
    # Given a worker running a long task
    first = start_worker("-c", "1").wait_ready()
    result = tasks.sleep_then_record.delay(2.0)
    wait_until(lambda: executions.count(result.id) == 1, 10, "the task to start")

    # When the worker and its pool child are SIGKILLed together (the host dies)
    first.kill_group()
    assert first.wait(5) == -signal.SIGKILL
    killed_at = time.time()
    # ... and a new worker starts
    start_worker("-c", "1").wait_ready()

    # Then the task runs again, within a bounded time, and its result is stored
    assert result.get(timeout=30) == 2.0
    assert result.state == states.SUCCESS
    assert executions.count(result.id) == 2
    first_run, second_run = executions.events("start")
    assert first_run.ppid == first.pid
    assert second_run.ppid != first.pid
    assert second_run.at - killed_at < LEASE + 5
    # ... and the killed attempt never finished (its child died with the worker)
    assert executions.ends()[result.id] == 1
    stats = queue_stats(app.broker)
    assert (stats.ready, stats.in_flight, stats.dead) == (0, 0, 0)


def test_sigterm_mid_batch_exits_cleanly_and_a_new_worker_drains_the_rest(
    app: Conveyor, start_worker: StartWorker, executions: Executions
) -> None:
    # Given a worker with concurrency 2 part-way through 40 tasks of 0.2 s
    shutdown_timeout = 5.0
    first = start_worker("-c", "2", "--shutdown-timeout", str(shutdown_timeout)).wait_ready()
    results = [tasks.sleep_then_record.delay(0.2) for _ in range(40)]
    ids = {r.id for r in results}
    wait_until(lambda: len(executions.starts()) >= 6, 20, "a few tasks to run")

    # When it receives SIGTERM
    signalled = time.monotonic()
    first.terminate()

    # Then it exits 0 within the shutdown timeout and a few seconds
    assert first.wait(shutdown_timeout + 5) == 0
    assert time.monotonic() - signalled < shutdown_timeout + 3
    # ... holding nothing: its running tasks finished, its prefetched ones went back
    stats = queue_stats(app.broker)
    assert stats.in_flight == 0
    held = ids_in_queue(app.broker)
    assert held, "the worker finished the whole batch before the signal: nothing was tested"
    assert stats.ready == len(held)
    # ... and no message was acknowledged that did not run to its end
    assert ids - held <= set(executions.ends())
    assert not held & set(executions.starts())

    # When a new worker starts
    start_worker("-c", "2").wait_ready()

    # Then every task has run, exactly once, with its result stored, and the queue is empty
    assert [r.get(timeout=30) for r in results] == [0.2] * 40
    assert all(r.state == states.SUCCESS for r in results)
    starts = executions.starts()
    assert set(starts) == ids
    assert set(starts.values()) == {1}
    stats = queue_stats(app.broker)
    assert (stats.ready, stats.delayed, stats.in_flight, stats.dead) == (0, 0, 0, 0)


def test_second_sigterm_is_a_cold_shutdown_that_puts_running_tasks_back_in_the_queue(
    app: Conveyor, start_worker: StartWorker, executions: Executions
) -> None:
    # Given a worker with a long shutdown timeout running two 4 s tasks, a third waiting
    first = start_worker("-c", "2", "--shutdown-timeout", "30").wait_ready()
    results = [tasks.sleep_then_record.delay(4.0) for _ in range(3)]
    wait_until(lambda: len(executions.starts()) == 2, 10, "two tasks to start")

    # When it receives SIGTERM (warm shutdown), then SIGTERM again
    first.terminate()
    wait_until(lambda: "warm shutdown" in first.stderr_text(), 5, "the warm shutdown to begin")
    again = time.monotonic()
    first.terminate()

    # Then it exits at once, without waiting for the running tasks
    assert first.wait(5) == 0
    assert time.monotonic() - again < 3
    assert "cold shutdown" in first.stderr_text()
    assert not executions.ends(), "a running task was allowed to finish"
    # ... and the running tasks are back in the queue, beside the one that never started
    stats = queue_stats(app.broker)
    assert (stats.ready, stats.in_flight) == (3, 0)

    # When a new worker starts
    start_worker("-c", "3").wait_ready()

    # Then all three run to completion: nothing was lost
    assert [r.get(timeout=20) for r in results] == [4.0] * 3
    assert sorted(executions.starts().values()) == [1, 2, 2]
    stats = queue_stats(app.broker)
    assert (stats.ready, stats.in_flight, stats.dead) == (0, 0, 0)


@pytest.mark.brokers("sqlite")  # signal handling does not depend on the broker
def test_a_burst_of_sigterms_is_a_cold_shutdown_and_never_freezes_the_worker(
    app: Conveyor, start_worker: StartWorker, executions: Executions
) -> None:
    # Given a worker running two long tasks (a signal handler that took a lock could
    # interrupt the main thread inside that same lock and wait for itself forever)
    worker = start_worker("-c", "2", "--shutdown-timeout", "30").wait_ready()
    results = [tasks.sleep_then_record.delay(4.0) for _ in range(2)]
    wait_until(lambda: len(executions.starts()) == 2, 10, "two tasks to start")

    # When SIGTERMs arrive back to back, as from an impatient supervisor (spaced a
    # little, or the kernel merges them into one), until the cold shutdown begins
    sent = time.monotonic()
    for _ in range(2000):
        os.kill(worker.pid, signal.SIGTERM)
        time.sleep(0.0002)
        if "cold shutdown" in worker.stderr_text():
            break

    # Then the worker makes a cold shutdown at once, and nothing is lost
    assert worker.wait(5) == 0
    assert time.monotonic() - sent < 3
    assert "cold shutdown" in worker.stderr_text()
    assert not executions.ends()
    assert queue_stats(app.broker).ready == 2
    start_worker("-c", "2").wait_ready()
    assert [r.get(timeout=20) for r in results] == [4.0, 4.0]


def test_ctrl_c_to_the_process_group_is_a_warm_shutdown_that_lets_the_task_finish(
    app: Conveyor, start_worker: StartWorker, executions: Executions
) -> None:
    # Given a worker started from a terminal, running a 1 s task
    worker = start_worker("-c", "1").wait_ready()
    result = tasks.sleep_then_record.delay(1.0)
    wait_until(lambda: executions.count(result.id) == 1, 10, "the task to start")

    # When Ctrl-C sends SIGINT to its whole process group, pool child included
    os.killpg(worker.pid, signal.SIGINT)

    # Then the child is not interrupted: the task finishes, is acknowledged, and the worker
    # exits 0
    assert worker.wait(10) == 0
    assert "SIGINT: warm shutdown" in worker.stderr_text()
    assert result.get(timeout=5) == 1.0
    assert executions.ends()[result.id] == 1
    stats = queue_stats(app.broker)
    assert (stats.ready, stats.in_flight) == (0, 0)
