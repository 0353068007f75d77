"""Every failure of a job is contained: it ends as a FAILURE result or a dead letter,
its slot is freed and the worker goes on; solo never runs two tasks at once; a task
still running at shutdown keeps its delivery count. Real workers, real brokers."""

from __future__ import annotations

import functools
import itertools
import json
import time
from pathlib import Path

import pytest
from apps import containment_tasks, tasks
from apps.executions import Executions
from harness import RunCli, StartWorker, queue_stats, wait_until

from conveyor import Conveyor, states
from conveyor.brokers.base import DeadLetter, OutgoingMessage
from conveyor.exceptions import TaskError, WorkerLostError
from conveyor.message import Message, encode, new_id

pytestmark = pytest.mark.slow

CONTAINMENT_APP = "apps.containment_tasks"
POOLS = ["solo", "threads", "prefork", "asyncio"]
KINDS = ["SystemExit", "KeyboardInterrupt", "GeneratorExit", "CancelledError"]


def dead_letter(app: Conveyor, message_id: str, timeout: float = 20) -> DeadLetter:
    """The dead letter of ``message_id``, once it is there."""
    return wait_until(lambda: app.broker.get_dead(message_id), timeout, f"{message_id} dead")


def type_name(exc: BaseException) -> str:
    """The class name of a task's exception as stored (a client never rebuilds one that
    is not an ``Exception``: it gets a TaskError naming it)."""
    if isinstance(exc, TaskError):
        return exc.type_name.rpartition(".")[2]
    return type(exc).__name__


def health(conveyor_cli: RunCli, path: Path, max_age: float) -> tuple[int, str]:
    """``conveyor worker-health --file PATH --max-age MAX_AGE``: exit code and its line."""
    done = conveyor_cli("worker-health", "--file", str(path), "--max-age", str(max_age), app=None)
    return done.returncode, (done.stdout + done.stderr).strip()


# -- failures of a job, in every pool ----------------------------------------------------------


@pytest.mark.parametrize("pool", POOLS)
def test_a_task_raising_any_base_exception_fails_and_the_worker_goes_on(
    app: Conveyor, start_worker: StartWorker, executions: Executions, pool: str
) -> None:
    # Given a worker of one slot
    worker = start_worker("-P", pool, "-c", "1", app=CONTAINMENT_APP).wait_ready()

    # When tasks raise, themselves, each BaseException that is not an Exception (sync
    # ones, and coroutines: on the asyncio pool's loop, or on a thread's own loop)
    sent = [(kind, containment_tasks.raise_base.delay(kind)) for kind in KINDS]
    sent += [(kind, containment_tasks.araise_base.delay(kind)) for kind in KINDS]

    # Then each ends as a FAILURE naming its exception, with its traceback, run once
    for kind, result in sent:
        exc = result.get(timeout=20, propagate=False)
        assert result.state == states.FAILURE, kind
        assert type_name(exc) == kind
        assert result.traceback is not None
        assert kind in result.traceback
    assert set(executions.starts().values()) == {1}
    # And the one slot is free: the worker goes on running tasks
    assert tasks.add.delay(20, 22).get(timeout=20) == 42
    assert worker.proc.poll() is None
    stats = queue_stats(app.broker)
    assert (stats.ready, stats.in_flight, stats.dead) == (0, 0, 0)


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("expires", 253402300800.0, id="expires-datetime-max"),
        pytest.param("eta", 1e300, id="eta-1e300"),
    ],
)
def test_a_message_with_a_time_out_of_range_is_dead_lettered_and_the_worker_goes_on(
    app: Conveyor, start_worker: StartWorker, pool: str, field: str, value: float
) -> None:
    # Given a worker of one slot
    worker = start_worker("-P", pool, "-c", "1").wait_ready()

    # When a hand-made message carries a time no datetime can hold (what
    # apply_async(expires=datetime.max) used to send)
    message = Message(id=new_id(), task=tasks.add.name, args=[1, 2], **{field: value})
    app.broker.publish(OutgoingMessage(message.id, "celery", encode(message)))

    # Then it ends in the dead letters, the reason naming the field
    dead = dead_letter(app, message.id)
    assert dead.reason.startswith("DecodeError")
    assert repr(field) in dead.reason
    # And the worker goes on running tasks in its one slot
    assert tasks.add.delay(20, 22).get(timeout=20) == 42
    assert worker.proc.poll() is None
    stats = queue_stats(app.broker)
    assert (stats.ready, stats.in_flight, stats.dead) == (0, 0, 1)


def test_a_message_whose_admission_check_raises_is_dead_lettered_with_the_reason(
    app: Conveyor, start_worker: StartWorker, executions: Executions
) -> None:
    # Given a worker in which the admission check of the task `guarded` raises
    env = {"CONVEYOR_TEST_BREAK_ADMISSION": "1"}
    worker = start_worker("-P", "threads", "-c", "1", env=env, app=CONTAINMENT_APP).wait_ready()

    # When that task is sent
    result = containment_tasks.guarded.delay(7)

    # Then it is dead-lettered at once, with the reason, on its first delivery (not
    # left to a lease that expires delivery after delivery), and its caller is told
    dead = dead_letter(app, result.id)
    assert dead.reason.startswith("ValueError")
    assert "nonsense" in dead.reason
    assert dead.deliveries == 1
    assert isinstance(result.get(timeout=10, propagate=False), ValueError)
    assert result.state == states.FAILURE
    assert executions.count(result.id) == 0
    # And the worker goes on
    assert tasks.add.delay(20, 22).get(timeout=20) == 42
    assert worker.proc.poll() is None


# -- the solo pool runs tasks in its fetch loop ------------------------------------------------


def test_a_solo_worker_never_runs_two_tasks_at_once_whatever_their_length(
    app: Conveyor, start_worker: StartWorker, executions: Executions
) -> None:
    # Given a solo worker prefetching two messages, whose fetch-loop watchdog gives up
    # on a loop after 1 s without progress
    worker = start_worker(
        "-P", "solo", "--prefetch-multiplier", "2", "--watchdog-timeout", "1"
    ).wait_ready()

    # When three tasks, each longer than that window, are sent
    results = [tasks.sleep_then_record.delay(2.5) for _ in range(3)]

    # Then they run one after the other, each once
    assert [r.get(timeout=40) for r in results] == [2.5] * 3
    runs = sorted(
        (start.at, end.at)
        for start, end in zip(executions.events("start"), executions.events("end"), strict=True)
    )
    assert len(runs) == 3
    for (_, ended), (started, _) in itertools.pairwise(runs):
        assert started >= ended, f"two tasks ran at once: {runs}"
    # And the watchdog did not take a busy loop for a stuck one
    assert "restarting the fetch loop" not in worker.stderr_text()
    stats = queue_stats(app.broker)
    assert (stats.ready, stats.in_flight, stats.dead) == (0, 0, 0)


def test_worker_health_reports_a_solo_worker_busy_with_a_long_task_as_alive(
    app: Conveyor,
    start_worker: StartWorker,
    executions: Executions,
    conveyor_cli: RunCli,
    tmp_path: Path,
) -> None:
    # Given a solo worker keeping a heartbeat file
    path = tmp_path / "heartbeat.json"
    start_worker("-P", "solo", "--heartbeat-file", str(path)).wait_ready()
    wait_until(path.exists, 10, "the heartbeat file")

    # When it runs a task far longer than the probe's max age
    result = tasks.sleep_then_record.delay(6.0)
    wait_until(lambda: executions.count(result.id) == 1, 10, "the task to start")
    started = executions.events("start")[0].at
    wait_until(
        lambda: json.loads(path.read_text())["written"] > started + 3.5, 10, "a later heartbeat"
    )

    # Then worker-health, asked for progress within 2 s, says it is alive: its fetch
    # loop is busy running the task, not stuck
    code, line = health(conveyor_cli, path, 2.0)
    assert code == 0, line
    assert line.startswith("ok")
    assert executions.ends()[result.id] == 0, "the task ended before the probe: nothing tested"
    assert result.get(timeout=20) == 6.0


# -- shutdown ----------------------------------------------------------------------------------


@pytest.mark.app_env(CONVEYOR_TEST_MAX_DELIVERIES="2")
@pytest.mark.parametrize("pool", ["prefork", "solo"])
def test_a_task_that_always_outlives_the_shutdown_timeout_ends_in_the_dead_letters(
    app: Conveyor, start_worker: StartWorker, executions: Executions, pool: str
) -> None:
    # Given a task far longer than the workers' shutdown timeout, broker_max_deliveries 2
    result = tasks.sleep_then_record.delay(60.0)
    start = functools.partial(start_worker, "-P", pool, "-c", "1", "--shutdown-timeout", "0.5")

    # When two workers in turn start it and are stopped (SIGTERM) while it runs
    for attempt in (1, 2):
        worker = start().wait_ready()
        wait_until(lambda n=attempt: executions.count(result.id) == n, 20, f"run {attempt}")
        signalled = time.monotonic()
        worker.terminate()
        assert worker.wait(20) == 0
        # (solo too: its fetch loop, busy with the task, is not waited for past the timeout)
        assert time.monotonic() - signalled < 5
        assert "shutdown timeout reached" in worker.stderr_text()

    # Then each stop counted as a delivery: after the second it is in the dead letters,
    # and its caller is told it was lost
    dead = dead_letter(app, result.id, timeout=5)
    assert dead.deliveries == 2
    assert isinstance(result.get(timeout=10, propagate=False), WorkerLostError)
    assert result.state == states.FAILURE
    stats = queue_stats(app.broker)
    assert (stats.ready, stats.delayed, stats.in_flight, stats.dead) == (0, 0, 0, 1)


def test_at_shutdown_a_started_job_keeps_its_delivery_count_and_prefetched_ones_do_not(
    app: Conveyor, start_worker: StartWorker, executions: Executions
) -> None:
    # Given a worker of one slot holding three long tasks: one running, two prefetched
    worker = start_worker(
        "-c", "1", "--prefetch-multiplier", "3", "--shutdown-timeout", "0.5"
    ).wait_ready()
    results = [tasks.sleep_then_record.delay(60.0) for _ in range(3)]
    wait_until(lambda: len(executions.starts()) == 1, 20, "one task to start")
    wait_until(lambda: queue_stats(app.broker).in_flight == 3, 10, "three messages held")
    [running] = executions.starts()

    # When it is stopped while the task runs
    worker.terminate()
    assert worker.wait(20) == 0

    # Then all three are back in the queue: the started one with its delivery counted,
    # the two that never started as if never delivered
    deliveries = app.broker.fetch(["celery"], 10, consumer="test-inspector", timeout=0)
    assert {d.id for d in deliveries} == {r.id for r in results}
    assert {d.id: d.deliveries for d in deliveries} == {
        r.id: 2 if r.id == running else 1 for r in results
    }
    for delivery in deliveries:
        assert app.broker.release(delivery)
