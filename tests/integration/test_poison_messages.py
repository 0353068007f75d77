"""Poison messages end in the dead letters with a reason; the worker keeps going."""

from __future__ import annotations

import pytest
from apps import tasks
from apps.executions import Executions
from harness import StartWorker, queue_stats, wait_until

from conveyor import Conveyor, NotRegistered, states
from conveyor.brokers.base import DeadLetter, OutgoingMessage
from conveyor.exceptions import WorkerLostError


def dead_letters(app: Conveyor, count: int) -> list[DeadLetter]:
    """The dead letters, once there are ``count`` of them."""

    def probe() -> list[DeadLetter]:
        found = app.broker.dead_letters()
        return found if len(found) >= count else []

    return wait_until(probe, 20, f"{count} dead letter(s)")


def test_undecodable_message_is_dead_lettered_and_the_worker_goes_on(
    app: Conveyor, start_worker: StartWorker
) -> None:
    # Given a running worker
    worker = start_worker("-c", "2").wait_ready()

    # When bytes that are not a conveyor message arrive in its queue
    app.broker.publish(OutgoingMessage("not-a-message", "celery", b"not json"))

    # Then they end in the dead letters, untouched, with the reason
    [dead] = dead_letters(app, 1)
    assert (dead.id, dead.queue, dead.body) == ("not-a-message", "celery", b"not json")
    assert dead.reason.startswith("DecodeError")
    assert "invalid JSON" in dead.reason
    # ... and the worker keeps processing
    assert tasks.add.delay(20, 22).get(timeout=10) == 42
    assert worker.proc.poll() is None
    stats = queue_stats(app.broker)
    assert (stats.ready, stats.in_flight, stats.dead) == (0, 0, 1)


def test_message_naming_an_unknown_task_is_dead_lettered_and_its_caller_told(
    app: Conveyor, start_worker: StartWorker
) -> None:
    # Given a running worker
    start_worker("-c", "2").wait_ready()

    # When a task this worker does not know is sent to it
    result = app.send_task("no.such.task", [1, 2])

    # Then the message ends in the dead letters, naming the task
    [dead] = dead_letters(app, 1)
    assert dead.id == result.id
    assert dead.reason.startswith("NotRegistered")
    assert "'no.such.task'" in dead.reason
    # ... the caller's get() raises NotRegistered naming it
    with pytest.raises(NotRegistered, match=r"no\.such\.task"):
        result.get(timeout=10)
    assert result.state == states.FAILURE
    # ... and the worker keeps processing
    assert tasks.add.delay(1, 1).get(timeout=10) == 2


@pytest.mark.brokers("sqlite", "redis", "sentinel")  # a core case
@pytest.mark.app_env(CONVEYOR_TEST_MAX_DELIVERIES="3")
def test_task_that_kills_its_process_is_dead_lettered_after_max_deliveries(
    app: Conveyor, start_worker: StartWorker, executions: Executions
) -> None:
    # Given a worker with two pool children, and broker_max_deliveries = 3
    worker = start_worker("-c", "2").wait_ready()
    wait_until(lambda: len(worker.pool_pids()) == 2, 10, "two pool children")

    # When a task that kills the process running it is sent
    result = tasks.die.delay()

    # Then it is delivered three times, and then dead-lettered with its history
    with pytest.raises(WorkerLostError, match="3 deliveries"):
        result.get(timeout=30)
    assert executions.count(result.id) == 3
    [dead] = dead_letters(app, 1)
    assert dead.id == result.id
    assert dead.deliveries == 3
    assert "delivered 3 times" in dead.reason
    assert len(dead.history) == 3
    assert all(record.consumer.endswith(f"/{worker.pid}") for record in dead.history)
    assert len({e.pid for e in executions.events("start")}) == 3, "each run had its own child"
    assert worker.stderr_text().count("died running apps.tasks.die") == 3
    assert "exit code None" not in worker.stderr_text()

    # ... and the worker is still running, its pool back to full size:
    # two tasks run side by side in two live children
    assert worker.proc.poll() is None
    wait_until(lambda: len(worker.pool_pids()) == 2, 10, "the pool to be full again")
    pair = [tasks.sleep_then_record.delay(1.0) for _ in range(2)]
    assert [r.get(timeout=10) for r in pair] == [1.0, 1.0]
    runs = [e for e in executions.events("start") if e.task_id in {r.id for r in pair}]
    assert len({e.pid for e in runs}) == 2
    assert all(e.ppid == worker.pid for e in runs)
    assert abs(runs[0].at - runs[1].at) < 0.9, "the two tasks did not run at the same time"
    stats = queue_stats(app.broker)
    assert (stats.ready, stats.in_flight, stats.dead) == (0, 0, 1)
