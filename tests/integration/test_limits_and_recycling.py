"""Time limits and prefork recycling in real ``conveyor worker`` processes.

The workers load ``apps.limit_tasks`` (the integration app plus tasks with short
limits: soft 0.5 s, hard 1 s). How each pool enforces a limit is documented in
``conveyor.worker.limits`` and docs/deployment.md; these tests hold each pool to it.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from apps import limit_tasks
from apps.executions import Executions
from harness import StartWorker, WorkerProcess, queue_stats, wait_until, workers_of

from conveyor import Conveyor, SoftTimeLimitExceeded, TimeLimitExceeded, states

# Limits and recycling live in the worker, above the broker contract: SQLite is enough,
# except for one hard-limit test that also settles its failure on Redis.
pytestmark = pytest.mark.brokers("sqlite")

LIMIT_APP = "apps.limit_tasks"
#: The integration app's lease (CONVEYOR_TEST_LEASE_TIMEOUT): twice this without a
#: redelivery means the message was settled for good.
LEASE = 2.0


@pytest.fixture
def start_limit_worker(start_worker: StartWorker) -> StartWorker:
    """``start_worker`` for the workers of this module's app."""
    return workers_of(start_worker, LIMIT_APP)


def assert_settled_once(app: Conveyor, executions: Executions, task_id: str) -> None:
    """The task ran once and stays settled: not delivered again after its lease."""
    time.sleep(LEASE * 1.5)
    assert executions.count(task_id) == 1
    stats = queue_stats(app.broker)
    assert (stats.ready, stats.delayed, stats.in_flight, stats.dead) == (0, 0, 0, 0)


# -- soft limits ---------------------------------------------------------------------------


@pytest.mark.parametrize("pool", ["prefork", "threads", "asyncio"])
def test_soft_limit_raises_in_a_sync_task_which_cleans_up_and_returns(
    app: Conveyor, start_limit_worker: StartWorker, pool: str
) -> None:
    # Given a worker of this pool
    start_limit_worker("-P", pool, "-c", "2").wait_ready()

    # When a task with a 0.5 s soft limit works for 5 s in short steps
    value = limit_tasks.soft_cleanup.delay(5.0).get(timeout=10)

    # Then SoftTimeLimitExceeded reached it at about 0.5 s, and its own return value is stored
    assert value["soft"] is True
    assert limit_tasks.SOFT - 0.1 <= value["after"] < limit_tasks.SOFT + 1.0


def test_soft_limit_cancels_an_async_task_which_fails_with_soft_time_limit_exceeded(
    app: Conveyor, start_limit_worker: StartWorker, executions: Executions
) -> None:
    # Given an asyncio worker
    start_limit_worker("-P", "asyncio", "-c", "10").wait_ready()

    # When an async task with a 0.5 s soft limit awaits for 5 s
    began = time.monotonic()
    result = limit_tasks.async_soft.delay(5.0)

    # Then it is cancelled at its soft limit and fails with SoftTimeLimitExceeded
    with pytest.raises(SoftTimeLimitExceeded):
        result.get(timeout=10)
    assert time.monotonic() - began < limit_tasks.SOFT + 1.5
    assert result.state == states.FAILURE
    assert executions.ends().get(result.id, 0) == 0
    assert_settled_once(app, executions, result.id)


# -- hard limits ---------------------------------------------------------------------------


@pytest.mark.brokers("sqlite", "redis")
@pytest.mark.parametrize(
    ("pool", "ends_within"),
    [
        ("prefork", limit_tasks.HARD + 1.0),  # the child is killed at the limit
        ("threads", limit_tasks.HARD + 2.0),  # the thread is abandoned a second later
    ],
)
def test_hard_limit_ends_a_blocked_task_as_a_failure_and_frees_its_slot(
    app: Conveyor,
    start_limit_worker: StartWorker,
    executions: Executions,
    pool: str,
    ends_within: float,
) -> None:
    # Given a worker of this pool with one slot
    worker = start_limit_worker("-P", pool, "-c", "1").wait_ready()

    # When a task with a 1 s hard limit blocks in one call for 20 s
    began = time.monotonic()
    result = limit_tasks.stuck.delay(20.0)

    # Then it fails with TimeLimitExceeded soon after its limit
    with pytest.raises(TimeLimitExceeded, match="time limit"):
        result.get(timeout=10)
    assert time.monotonic() - began < ends_within + 1.0
    # ... its slot is free: the next task runs at once
    assert isinstance(limit_tasks.pid.delay().get(timeout=5), int)
    # ... it is never delivered again, and the worker says what it did
    assert_settled_once(app, executions, result.id)
    log = worker.stderr_text()
    assert "hard time limit" in log
    assert ("killed and replaced" if pool == "prefork" else "abandoned and replaced") in log
    assert worker.proc.poll() is None


def test_hard_limit_on_prefork_replaces_the_child_and_keeps_the_pool_full(
    app: Conveyor, start_limit_worker: StartWorker, executions: Executions
) -> None:
    # Given a prefork worker with two children
    start_limit_worker("-P", "prefork", "-c", "2").wait_ready()

    def two_at_once() -> set[int]:
        naps = [limit_tasks.nap_pid.delay(0.5) for _ in range(2)]
        return {nap.get(timeout=5) for nap in naps}

    before = two_at_once()
    assert len(before) == 2

    # When a task runs past its hard limit
    stuck = limit_tasks.stuck.delay(20.0)
    with pytest.raises(TimeLimitExceeded):
        stuck.get(timeout=10)

    # Then its child was killed and another took its place: two tasks still run at once
    [killed] = {e.pid for e in executions.events("start") if e.task_id == stuck.id}
    assert killed in before
    with pytest.raises(ProcessLookupError):
        os.kill(killed, 0)
    after = two_at_once()
    assert len(after) == 2
    assert killed not in after
    assert before - {killed} <= after


def test_hard_limit_raises_in_a_busy_thread_so_the_task_fails_without_abandoning(
    app: Conveyor, start_limit_worker: StartWorker, executions: Executions
) -> None:
    # Given a threads worker
    worker = start_limit_worker("-P", "threads", "-c", "1").wait_ready()

    # When a task working in short Python steps runs past its 1 s hard limit
    result = limit_tasks.spin_hard.delay(10.0)

    # Then TimeLimitExceeded lands in it at the limit; its thread was not given up
    with pytest.raises(TimeLimitExceeded):
        result.get(timeout=5)
    assert "abandoned" not in worker.stderr_text()
    assert_settled_once(app, executions, result.id)


def test_hard_limit_cancels_an_async_task_and_abandons_one_that_ignores_cancellation(
    app: Conveyor, start_limit_worker: StartWorker, executions: Executions
) -> None:
    # Given an asyncio worker with one slot
    worker = start_limit_worker("-P", "asyncio", "-c", "1").wait_ready()

    # When an async task that swallows every cancellation runs past its 1 s hard limit
    began = time.monotonic()
    result = limit_tasks.async_stuck.delay(20.0)

    # Then it fails with TimeLimitExceeded at its limit, and its slot is free again
    with pytest.raises(TimeLimitExceeded):
        result.get(timeout=10)
    assert time.monotonic() - began < limit_tasks.HARD + 1.5
    assert isinstance(limit_tasks.pid.delay().get(timeout=5), int)
    assert "cancelled" in worker.stderr_text()
    assert_settled_once(app, executions, result.id)


# -- recycling -----------------------------------------------------------------------------


@pytest.mark.app_env(CONVEYOR_TEST_MAX_TASKS_PER_CHILD="2")
def test_max_tasks_per_child_replaces_each_child_after_its_tasks_and_loses_none(
    app: Conveyor, start_limit_worker: StartWorker, executions: Executions
) -> None:
    # Given a prefork worker with one child, replaced after every two tasks
    worker = start_limit_worker("-P", "prefork", "-c", "1").wait_ready()

    # When six tasks run one after the other
    pids = [limit_tasks.pid.delay().get(timeout=10) for _ in range(6)]

    # Then they ran in three children, two tasks each, each task once
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4] == pids[5]
    assert len(set(pids)) == 3
    assert set(executions.starts().values()) == {1}
    assert worker.stderr_text().count("worker_max_tasks_per_child") >= 2
    assert "died" not in worker.stderr_text()


@pytest.mark.app_env(CONVEYOR_TEST_MAX_MEMORY_PER_CHILD=str(400 * 1024))
def test_max_memory_per_child_replaces_a_child_that_grew_past_the_limit(
    app: Conveyor, start_limit_worker: StartWorker
) -> None:
    # Given a prefork worker whose child is replaced above 400 MB resident
    worker = start_limit_worker("-P", "prefork", "-c", "1").wait_ready()
    small = [limit_tasks.pid.delay().get(timeout=10) for _ in range(3)]
    assert len(set(small)) == 1, "a small child was replaced"

    # When a task makes its child keep 450 MB
    hog_pid = limit_tasks.hog.delay(450).get(timeout=20)

    # Then that child finished the task and was replaced afterwards
    assert hog_pid == small[0]
    after = limit_tasks.pid.delay().get(timeout=10)
    assert after != hog_pid
    assert "worker_max_memory_per_child" in worker.stderr_text()


@pytest.mark.app_env(CONVEYOR_TEST_MAX_MEMORY_PER_CHILD="1024")
def test_a_memory_limit_below_a_fresh_child_is_logged_and_starts_no_replace_loop(
    app: Conveyor, start_limit_worker: StartWorker
) -> None:
    # Given a memory limit (1 MB) that even a fresh child is above
    worker = start_limit_worker("-P", "prefork", "-c", "1").wait_ready()

    # When tasks run
    pids = [limit_tasks.pid.delay().get(timeout=10) for _ in range(4)]

    # Then the child is kept (replacing it would only start another as big), and the log says so
    assert len(set(pids)) == 1
    assert "memory recycling is off" in worker.stderr_text()


# -- lost children -------------------------------------------------------------------------


def test_sigkill_of_a_child_mid_task_requeues_the_task_and_refills_the_pool(
    app: Conveyor, start_limit_worker: StartWorker, executions: Executions
) -> None:
    # Given a prefork worker with two children, one running a 3 s task
    worker = start_limit_worker("-P", "prefork", "-c", "2").wait_ready()
    result = limit_tasks.soft_cleanup.delay(0.2)  # warm both children up
    result.get(timeout=5)
    long = limit_tasks.stuck.apply_async((0.4,))
    [first] = wait_until(
        lambda: [e for e in executions.events("start") if e.task_id == long.id],
        5,
        "the task to start",
    )

    # When that child is killed from outside, as the OOM killer would
    os.kill(first.pid, signal.SIGKILL)

    # Then the worker notices at once and the task is delivered again and runs to its end
    assert long.get(timeout=10) is None
    assert executions.count(long.id) == 2
    assert executions.ends()[long.id] == 1
    assert "died running" in worker.stderr_text()
    # ... and the pool is back to two children
    results = [limit_tasks.soft_cleanup.delay(0.3) for _ in range(2)]
    assert all(not r.get(timeout=5)["soft"] for r in results)
    assert worker.proc.poll() is None


def test_a_worker_that_cannot_keep_its_pool_alive_exits_non_zero(
    app: Conveyor, tmp_path: Path
) -> None:
    # Given a worker whose pool children all die as soon as they are forked
    env = {**os.environ, "CONVEYOR_TEST_CHILD_CRASH": "1"}
    worker = WorkerProcess(["-P", "prefork", "-c", "2"], env, tmp_path / "w.log", app=LIMIT_APP)
    try:
        # Then it gives up within seconds and exits non-zero, for its supervisor to act,
        # instead of staying up without a pool
        assert worker.wait(20) == 1
        log = worker.stderr_text()
        assert "pool children keep dying" in log
        assert "the worker cannot run tasks any more: exiting" in log
    finally:
        worker.cleanup()
