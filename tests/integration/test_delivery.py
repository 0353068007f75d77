"""Delivery guarantees across workers: exactly-once under load, delayed tasks, prefetch."""

from __future__ import annotations

import time

import pytest
from apps import tasks
from apps.executions import Executions
from harness import StartWorker, queue_stats, wait_until

from conveyor import Conveyor, states

TASKS = 2_000


@pytest.mark.brokers("sqlite", "redis", "sentinel")  # a core case
def test_two_workers_on_one_broker_run_2000_tasks_each_exactly_once(
    app: Conveyor, start_worker: StartWorker, executions: Executions
) -> None:
    # Given two prefork workers with concurrency 2 each on the same broker
    workers = [start_worker("-c", "2", "-l", "warning") for _ in range(2)]
    for worker in workers:
        worker.wait_ready()

    # When 2,000 tasks are sent
    results = [tasks.record.delay(i) for i in range(TASKS)]

    # Then all of them run, each exactly once, and the queue ends empty
    wait_until(lambda: len(executions.events("end")) >= TASKS, 60, f"{TASKS} executions", 0.2)
    wait_until(lambda: queue_stats(app.broker).in_flight == 0, 10, "the last acks")
    starts = executions.starts()
    assert set(starts) == {r.id for r in results}
    duplicates = {task_id: n for task_id, n in starts.items() if n != 1}
    assert not duplicates
    stats = queue_stats(app.broker)
    assert (stats.ready, stats.delayed, stats.in_flight, stats.dead) == (0, 0, 0, 0)
    # ... every result is stored
    assert [r.get(timeout=10) for r in results] == list(range(TASKS))
    # ... and both workers took a fair part
    by_worker = {w.pid: 0 for w in workers}
    for event in executions.events("start"):
        by_worker[event.ppid] += 1
    assert min(by_worker.values()) >= TASKS // 5, by_worker


@pytest.mark.slow
def test_countdown_task_survives_a_worker_restart_and_runs_on_time(
    app: Conveyor, start_worker: StartWorker, executions: Executions
) -> None:
    # Given a worker, and a task sent with a countdown of 4 s
    first = start_worker("-c", "1").wait_ready()
    before = time.time()
    result = tasks.record.apply_async(("later",), countdown=4)
    after = time.time()
    # ... which waits in the broker, not in the worker
    time.sleep(1.0)
    stats = queue_stats(app.broker)
    assert (stats.delayed, stats.ready, stats.in_flight) == (1, 0, 0)

    # When the worker stops before the task is due, and a new one starts
    first.terminate()
    assert first.wait(10) == 0
    assert queue_stats(app.broker).delayed == 1
    start_worker("-c", "1").wait_ready()

    # Then the task runs once, no earlier than its eta and within a second of it
    assert result.get(timeout=15) == "later"
    [run] = executions.events("start")
    assert before + 4 <= run.at <= after + 4 + 1.0
    assert queue_stats(app.broker).delayed == 0


@pytest.mark.parametrize(("multiplier", "held"), [(1, 2), (3, 6)])
def test_worker_holds_exactly_concurrency_times_prefetch_multiplier_messages(
    app: Conveyor,
    start_worker: StartWorker,
    executions: Executions,
    multiplier: int,
    held: int,
) -> None:
    # Given 10 long tasks waiting (acks late, the default)
    results = [tasks.sleep_then_record.delay(3.0) for _ in range(10)]

    # When a worker with concurrency 2 and this prefetch multiplier takes them on
    start_worker("-c", "2", "--prefetch-multiplier", str(multiplier)).wait_ready()
    wait_until(lambda: len(executions.starts()) == 2, 10, "two tasks to start")

    # Then, while they run, it holds concurrency x multiplier messages, never more:
    # the running ones stay unacknowledged (acks late) and the rest wait in the queue
    samples = []
    for _ in range(8):
        stats = queue_stats(app.broker)
        samples.append((stats.in_flight, stats.ready))
        time.sleep(0.15)
    assert samples == [(held, 10 - held)] * 8
    assert len(executions.starts()) == 2, "more tasks ran at once than the concurrency"
    assert all(r.state == states.PENDING for r in results)


@pytest.mark.app_env(CONVEYOR_TEST_ACKS_LATE="0")
def test_with_acks_late_off_a_message_is_acknowledged_before_its_task_runs(
    app: Conveyor, start_worker: StartWorker, executions: Executions
) -> None:
    # Given task_acks_late = False and four long tasks waiting
    results = [tasks.sleep_then_record.delay(3.0) for _ in range(4)]

    # When a worker with concurrency 2 starts two of them
    start_worker("-c", "2").wait_ready()
    wait_until(lambda: len(executions.starts()) == 2, 10, "two tasks to start")

    # Then the broker no longer holds the running ones: they were acknowledged first;
    # acknowledged, they no longer count against the prefetch (as in Celery), so the
    # worker holds the other two, unacknowledged, ready to start next
    def running_acked_two_held() -> bool:
        stats = queue_stats(app.broker)
        return (stats.in_flight, stats.ready) == (2, 0)

    wait_until(running_acked_two_held, 5, "the running tasks' early acks")
    assert len(executions.starts()) == 2
    assert len(results) == 4


@pytest.mark.slow
@pytest.mark.brokers("sqlite")  # on Redis: test_redis_guarantees.py, three times the lease
@pytest.mark.app_env(CONVEYOR_TEST_LEASE_TIMEOUT="1.5")
def test_task_running_far_longer_than_the_lease_is_never_handed_to_a_second_worker(
    app: Conveyor, start_worker: StartWorker, executions: Executions
) -> None:
    # Given two workers on a 1.5 s lease, each reclaiming expired leases as it goes
    workers = [start_worker("-c", "1") for _ in range(2)]
    for worker in workers:
        worker.wait_ready()

    # When one of them runs a task for 4 s (well past the lease, renewed by its heartbeat)
    result = tasks.sleep_then_record.delay(4.0)

    # Then it runs once: the idle worker never takes it over
    assert result.get(timeout=15) == 4.0
    assert executions.count(result.id) == 1
    for worker in workers:
        assert "returned to the queue" not in worker.stderr_text()
    stats = queue_stats(app.broker)
    assert (stats.ready, stats.in_flight, stats.dead) == (0, 0, 0)
