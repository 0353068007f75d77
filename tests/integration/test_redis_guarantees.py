"""The delivery guarantees on Redis, proved with real worker processes and real signals.

Every test runs ``conveyor worker`` processes against the session's redis-server
(flushed first) and counts executions in the executions log. Figures a test
measures (redelivery delay, duplicates, lateness) are shown in the "measured"
section at the end of the run.
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from apps import tasks
from apps.executions import Event, Executions
from harness import StartWorker, queue_stats, wait_until

from conveyor import BrokerUnavailable, Conveyor, NotRegistered, states
from conveyor.brokers.base import DeadLetter, OutgoingMessage
from conveyor.config import SETTINGS
from conveyor.exceptions import DecodeError, WorkerLostError
from redis_server import RedisServer

pytestmark = pytest.mark.brokers("redis")

#: A lease short enough that a lost one is noticed within a second or two.
SHORT_LEASE = 1.5

Measure = Any  # pytest's ``record_property`` fixture: ``(name, value) -> None``


def result_key(task_id: str) -> str:
    """The Redis key of a task's result (the backend's default prefix)."""
    return f"conveyor:result:{task_id}"


def dead_letters(app: Conveyor, count: int, timeout: float = 20) -> list[DeadLetter]:
    """The dead letters, once there are ``count`` of them."""

    def probe() -> list[DeadLetter]:
        found = app.broker.dead_letters()
        return found if len(found) >= count else []

    return wait_until(probe, timeout, f"{count} dead letter(s)")


def started(executions: Executions, count: int, timeout: float = 10) -> list[Event]:
    """The first ``count`` start events, once there are that many."""

    def probe() -> list[Event]:
        found = executions.events("start")
        return found[:count] if len(found) >= count else []

    return wait_until(probe, timeout, f"{count} task start(s)")


def assert_queue_empty(app: Conveyor, dead: int = 0) -> None:
    stats = queue_stats(app.broker)
    assert (stats.ready, stats.delayed, stats.in_flight, stats.dead) == (0, 0, 0, dead)


def wait_for_acks(app: Conveyor, timeout: float = 10) -> None:
    """Wait until nothing is in flight: every finished task has been acknowledged."""
    wait_until(lambda: queue_stats(app.broker).in_flight == 0, timeout, "the last acks")


# -- 1. SIGKILL with the default lease --------------------------------------------------------

DEFAULT_LEASE = SETTINGS["broker_lease_timeout"].default


@pytest.mark.app_env(CONVEYOR_TEST_LEASE_TIMEOUT=str(DEFAULT_LEASE))
@pytest.mark.brokers("redis", "sentinel")  # a core case, also behind Sentinel
def test_sigkill_of_a_whole_worker_mid_task_hands_the_task_to_a_running_worker_within_15_s(
    app: Conveyor, start_worker: StartWorker, executions: Executions, record_property: Measure
) -> None:
    # Given the default lease (10 s) and two running workers, one of them running a task
    assert app.conf.broker_lease_timeout == DEFAULT_LEASE == 10.0
    workers = [start_worker("-c", "1") for _ in range(2)]
    for worker in workers:
        worker.wait_ready()
    result = tasks.sleep_then_record.delay(2.0)
    [first_run] = started(executions, 1)
    [victim] = [w for w in workers if w.pid == first_run.ppid]
    [survivor] = [w for w in workers if w is not victim]

    # When that worker and its pool child are SIGKILLed together (its host dies)
    killed_at = time.time()
    victim.kill_group()
    assert victim.wait(5) == -signal.SIGKILL

    # Then the other worker, already running, runs the task within 15 s of the kill
    [_, second_run] = started(executions, 2, timeout=20)
    delay = second_run.at - killed_at
    record_property("measured: redelivery delay after SIGKILL, 10 s lease (s)", round(delay, 2))
    assert second_run.ppid == survivor.pid
    assert delay < 15, f"redelivered {delay:.1f} s after the kill"
    assert "its consumer stopped renewing" in survivor.stderr_text()
    # ... nothing is lost: it completes, its result is stored, the queue ends empty
    assert result.get(timeout=10) == 2.0
    assert executions.count(result.id) == 2
    assert executions.ends()[result.id] == 1, "the killed run finished: its child outlived it"
    wait_for_acks(app)
    assert_queue_empty(app)


# -- 2. no visibility-timeout duplicates ------------------------------------------------------


@pytest.mark.app_env(CONVEYOR_TEST_LEASE_TIMEOUT=str(SHORT_LEASE))
def test_task_running_three_times_the_lease_on_a_live_worker_runs_exactly_once(
    app: Conveyor, start_worker: StartWorker, executions: Executions
) -> None:
    # Given two workers on a 1.5 s lease, each sweeping for expired leases several times a second
    workers = [start_worker("-c", "1") for _ in range(2)]
    for worker in workers:
        worker.wait_ready()

    # When one of them runs a 4.5 s task (three leases long, kept alive by its heartbeat)
    result = tasks.sleep_then_report.delay(3 * SHORT_LEASE)
    [run] = started(executions, 1)
    [busy] = [w for w in workers if w.pid == run.ppid]
    [idle] = [w for w in workers if w is not busy]
    # ... while the other one keeps fetching: it runs quick tasks all that time
    quick = []
    while not result.ready():
        quick.append(tasks.record.delay(len(quick)))
        time.sleep(0.3)

    # Then the long task ran once, on its worker, and its result is that run's
    assert result.get(timeout=1)["ppid"] == busy.pid
    assert executions.count(result.id) == 1
    assert [r.get(timeout=10) for r in quick] == list(range(len(quick)))
    assert len(quick) >= 10
    quick_ids = {r.id for r in quick}
    assert {e.ppid for e in executions.events("start") if e.task_id in quick_ids} == {idle.pid}
    # ... its lease was never lost nor taken over
    for worker in workers:
        log = worker.stderr_text()
        assert "returned to the queue" not in log
        assert "was lost" not in log
        assert "result dropped" not in log
    wait_for_acks(app)
    assert_queue_empty(app)


# -- 3. fencing ----------------------------------------------------------------------------


@pytest.mark.app_env(CONVEYOR_TEST_LEASE_TIMEOUT=str(SHORT_LEASE))
def test_worker_frozen_past_its_lease_cannot_overwrite_the_result_of_the_worker_that_took_over(
    app: Conveyor, start_worker: StartWorker, executions: Executions, redis_server: RedisServer
) -> None:
    # Given worker A running a 3 s task that returns who ran it
    a = start_worker("-c", "1").wait_ready()
    result = tasks.sleep_then_report.delay(3.0)
    [a_start] = started(executions, 1)
    assert a_start.ppid == a.pid

    # When A (parent and pool child) is frozen with SIGSTOP until its lease has expired
    os.killpg(a.pid, signal.SIGSTOP)
    try:
        # ... and worker B, started meanwhile, takes the task over and finishes it
        b = start_worker("-c", "1").wait_ready()
        b_value = result.get(timeout=20)
        with redis_server.client() as raw:
            stored_by_b = raw.get(result_key(result.id))
        assert executions.ends()[result.id] == 1
    finally:
        # ... and then A is woken up
        os.killpg(a.pid, signal.SIGCONT)

    # Then A's run ends late, and A is refused: it logs that it dropped its result
    wait_until(lambda: "result dropped" in a.stderr_text(), 10, "A to drop its result")
    ends = {e.ppid: e for e in executions.events("end") if e.task_id == result.id}
    assert set(ends) == {a.pid, b.pid}
    assert executions.events("start")[1].ppid == b.pid
    assert ends[b.pid].at < ends[a.pid].at, "A finished before B: nothing was fenced"
    # (whether A's heartbeat also logged the lost lease first is a race with its child)
    # ... and the stored result is B's, byte for byte, as it was before A woke up
    assert b_value["hostname"].startswith("w2@")
    assert b_value["ppid"] == b.pid
    with redis_server.client() as raw:
        assert raw.get(result_key(result.id)) == stored_by_b
    assert app.AsyncResult(result.id).get(timeout=1) == b_value
    assert executions.count(result.id) == 2
    wait_for_acks(app)
    assert_queue_empty(app)
    assert a.proc.poll() is None, "A died instead of carrying on"


# -- 4. a task that kills its process ---------------------------------------------------------


@pytest.mark.app_env(CONVEYOR_TEST_LEASE_TIMEOUT=str(SHORT_LEASE))
def test_task_that_exits_its_process_is_dead_lettered_after_five_deliveries_with_its_history(
    app: Conveyor, start_worker: StartWorker, executions: Executions
) -> None:
    # Given the default delivery limit (5) and a worker with two pool children
    assert app.conf.broker_max_deliveries == SETTINGS["broker_max_deliveries"].default == 5
    worker = start_worker("-c", "2").wait_ready()

    # When a task that calls os._exit() is sent
    result = tasks.die.delay()

    # Then it is delivered five times, then dead-lettered with its five deliveries recorded
    with pytest.raises(WorkerLostError, match="after 5 deliveries"):
        result.get(timeout=30)
    assert executions.count(result.id) == 5
    [dead] = dead_letters(app, 1)
    assert (dead.id, dead.deliveries) == (result.id, 5)
    assert "delivered 5 times" in dead.reason
    assert len(dead.history) == 5
    assert all(r.consumer.endswith(f"/{worker.pid}") for r in dead.history)
    assert [r.at for r in dead.history] == sorted(r.at for r in dead.history)
    assert worker.stderr_text().count("died running apps.tasks.die") == 5

    # ... and the worker goes on: alive, running the next task
    assert worker.proc.poll() is None
    assert tasks.add.delay(2, 2).get(timeout=10) == 4
    wait_for_acks(app)
    assert_queue_empty(app, dead=1)


# -- 5. a Redis outage --------------------------------------------------------------------

OUTAGE_SECONDS = 10.0
OUTAGE_TASKS = 5_000
#: Tasks the producer sends per second: the outage begins part-way through sending.
SEND_RATE = 500.0
OUTAGE_WORKERS = 2
OUTAGE_CONCURRENCY = 2


@pytest.fixture
def appendonly_redis(redis_server: RedisServer, redis_url: str) -> Iterator[RedisServer]:
    """The session's redis-server restarted with ``appendonly yes`` (what it acknowledged
    survives a restart), empty; back to its usual options at teardown."""
    redis_server.start(appendonly=True)
    redis_server.flush()  # an AOF of an earlier run in this directory was just loaded
    yield redis_server
    redis_server.reset()


class Producer(threading.Thread):
    """Sends ``record(i)`` for i < count at ``rate`` per second, timing each ``delay()``."""

    def __init__(self, count: int, rate: float):
        super().__init__(name="producer", daemon=True)
        self.count = count
        self.rate = rate
        self.ids: list[str] = []
        self.calls: list[tuple[float, float]] = []  # (began, returned), UNIX times
        self.error: BaseException | None = None

    def run(self) -> None:
        begin = time.monotonic()
        try:
            for i in range(self.count):
                pause = begin + i / self.rate - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                began = time.time()
                self.ids.append(tasks.record.delay(i).id)
                self.calls.append((began, time.time()))
        except BaseException as exc:  # reported by the test
            self.error = exc


def redis_keys(server: RedisServer, pattern: str) -> set[bytes]:
    with server.client() as raw:
        return set(raw.scan_iter(match=pattern, count=1000))


@pytest.mark.app_env(CONVEYOR_TEST_LEASE_TIMEOUT="2.0")
def test_workers_and_producers_ride_out_a_10_s_redis_outage_and_every_task_runs(
    appendonly_redis: RedisServer,
    app: Conveyor,
    start_worker: StartWorker,
    executions: Executions,
    record_property: Measure,
) -> None:
    # Given Redis with appendonly, two workers with default connection settings,
    workers = [
        start_worker("-c", str(OUTAGE_CONCURRENCY), "-l", "warning") for _ in range(OUTAGE_WORKERS)
    ]
    for worker in workers:
        worker.wait_ready()
    # ... and a producer thread sending 5,000 quick tasks, waiting up to 30 s for the broker
    app.conf.broker_connection_timeout = 30.0
    app.close()
    producer = Producer(OUTAGE_TASKS, SEND_RATE)
    producer.start()

    # When Redis stops part-way through, for 10 s
    wait_until(lambda: len(executions.events("end")) >= 500, 20, "the first 500 tasks", 0.1)
    stopped_at = time.time()
    appendonly_redis.stop()
    try:
        # ... a delay() whose broker_connection_timeout is 1 s is refused promptly,
        # without the password of its URL in the error
        secret = uuid.uuid4().hex
        probe_app = Conveyor(
            "probe",
            broker=f"redis://probe:{secret}@127.0.0.1:{appendonly_redis.port}/0",
            broker_connection_timeout=1.0,
        )
        probe = probe_app.task(name="apps.tasks.record")(lambda x: x)
        asked = time.monotonic()
        with pytest.raises(BrokerUnavailable) as refused:
            probe.delay("during the outage")
        refused_after = time.monotonic() - asked
        probe_app.close()
        time.sleep(max(0.0, stopped_at + OUTAGE_SECONDS - time.time()))
        assert producer.is_alive(), "the producer was not sending during the outage"
    finally:
        # ... and then starts again, with what it had written
        appendonly_redis.start(appendonly=True)
    restarted_at = time.time()

    assert 1.0 <= refused_after < 3.0
    assert "***" in str(refused.value)
    assert secret not in str(refused.value)
    # Then the producer's delay() calls waited for Redis and succeeded, all 5,000 of them
    producer.join(60)
    assert producer.error is None, f"delay() failed: {producer.error!r}"
    assert len(producer.ids) == OUTAGE_TASKS
    began, returned = max(producer.calls, key=lambda call: call[1] - call[0])
    assert began < restarted_at < returned, "no delay() call waited through the outage"
    assert returned - began < 30

    # ... the same worker processes carry on by themselves and run every task to its end
    wait_until(lambda: set(executions.ends()) >= set(producer.ids), 60, "every task to run", 0.25)
    wait_for_acks(app, 30)
    assert_queue_empty(app)
    assert all(w.proc.poll() is None for w in workers)
    after = {e.ppid for e in executions.events("start") if e.at > restarted_at}
    assert after == {w.pid for w in workers}, "a worker did not resume after the outage"
    # ... with every result stored (acknowledged tasks that ran, results that were written)
    assert len(redis_keys(appendonly_redis, "conveyor:result:*")) == OUTAGE_TASKS

    # ... and a task ran twice only around the outage: its worker was cut off while it
    # held it (its first run began before Redis was back and could not be acknowledged),
    # or a delay() whose reply was lost as Redis came back published it again (at least
    # once on the producer's side too; the second copy runs right after the restart)
    starts = executions.starts()
    duplicates = {task_id: n for task_id, n in starts.items() if n > 1}
    record_property("measured: tasks run more than once after a 10 s Redis outage", len(duplicates))
    record_property(
        "measured: outage",
        f"{OUTAGE_TASKS} tasks, Redis down {restarted_at - stopped_at:.1f} s, "
        f"longest delay() {returned - began:.1f} s, short-timeout delay() refused after "
        f"{refused_after:.2f} s",
    )
    assert len(duplicates) <= OUTAGE_WORKERS * OUTAGE_CONCURRENCY, duplicates
    first_start = {}
    for event in executions.events("start"):
        first_start.setdefault(event.task_id, event.at)
    sent = dict(zip(producer.ids, producer.calls, strict=True))
    for task_id in duplicates:
        began, returned = sent[task_id]
        published_twice = began < restarted_at < returned  # its delay() spanned the restart
        cut_off = first_start[task_id] < restarted_at + 1.0
        assert published_twice or cut_off, f"{task_id} ran twice, neither cut off nor resent"


# -- 6. delayed tasks -------------------------------------------------------------------------

COUNTDOWN_TASKS = 10_000
COUNTDOWN_SPREAD = 5.0


def test_10000_countdown_tasks_run_once_each_never_early_and_99_percent_within_a_second(
    app: Conveyor, start_worker: StartWorker, executions: Executions, record_property: Measure
) -> None:
    # Given three workers (threads: the tasks are no-ops, and on a 2-core machine three
    # prefork workers spend as much CPU passing 10,000 jobs to children as running them)
    workers = [start_worker("-P", "threads", "-c", "4", "-l", "warning") for _ in range(3)]
    for worker in workers:
        worker.wait_ready()

    # When 10,000 tasks are sent with countdowns spread over 0-5 s
    rng = random.Random(20240611)
    results = [
        tasks.record_eta.apply_async((i,), countdown=rng.uniform(0, COUNTDOWN_SPREAD))
        for i in range(COUNTDOWN_TASKS)
    ]

    # Then every one runs exactly once
    ids = {r.id for r in results}
    wait_until(lambda: set(executions.ends()) >= ids, 40, "every countdown task to run", 0.25)
    wait_for_acks(app)
    starts = executions.starts()
    assert set(starts) == ids
    assert set(starts.values()) == {1}
    assert_queue_empty(app)
    # ... none before its due time, and 99 % less than a second after it
    due = {r.id: r.get(timeout=10) for r in results}
    lateness = sorted(e.at - due[e.task_id] for e in executions.events("start"))
    early = [late for late in lateness if late < 0]
    assert not early, f"{len(early)} ran early, up to {-early[0]:.3f} s"
    centiles = statistics.quantiles(lateness, n=100)
    p50, p99 = centiles[49], centiles[98]
    record_property(
        "measured: countdown lateness (s)",
        f"p50 {p50:.3f}, p99 {p99:.3f}, max {lateness[-1]:.3f}",
    )
    assert p99 < 1.0
    # ... and the work was spread: each worker ran a fair part
    by_worker = {w.pid: 0 for w in workers}
    for event in executions.events("start"):
        by_worker[event.pid] += 1  # threads: tasks run in the worker process itself
    assert min(by_worker.values()) >= COUNTDOWN_TASKS // 10, by_worker


# -- 7. results -------------------------------------------------------------------------------

RESULT_EXPIRES = 600.0


@pytest.mark.app_env(CONVEYOR_TEST_RESULT_EXPIRES=str(RESULT_EXPIRES))
def test_results_expire_after_result_expires_and_ignore_result_writes_no_key(
    app: Conveyor, start_worker: StartWorker, executions: Executions, redis_server: RedisServer
) -> None:
    # Given a worker whose app keeps results for 600 s
    start_worker("-c", "2").wait_ready()

    # When a task succeeds and another fails
    succeeded = tasks.add.delay(1, 2)
    failed = tasks.fail.delay("for the record")
    assert succeeded.get(timeout=10) == 3
    assert isinstance(failed.get(timeout=10, propagate=False), tasks.Boom)

    # Then each result's key lives exactly result_expires (PTTL, less the time since)
    with redis_server.client() as raw:
        for task_id in (succeeded.id, failed.id):
            ttl = raw.pttl(result_key(task_id))
            assert RESULT_EXPIRES * 1000 - 5_000 <= ttl <= RESULT_EXPIRES * 1000, ttl

    # When tasks run whose results are ignored: by the call, and by the task's declaration
    ignored = [
        tasks.add.apply_async((2, 2), ignore_result=True),
        tasks.record_without_result.delay("nothing kept"),
    ]
    ignored_ids = {r.id for r in ignored}
    wait_until(lambda: set(executions.ends()) >= ignored_ids, 10, "the ignored tasks to run")
    wait_for_acks(app)

    # Then they ran, and no result key was written for them: Redis holds the first two only
    assert redis_keys(redis_server, "conveyor:result:*") == {
        result_key(succeeded.id).encode(),
        result_key(failed.id).encode(),
    }
    assert all(r.state == states.PENDING for r in ignored)


# -- 8. credentials -------------------------------------------------------------------------


def test_worker_banner_and_logs_never_show_the_redis_password_even_through_an_outage(
    app: Conveyor,
    start_worker: StartWorker,
    redis_acl_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a Redis that requires a password, reached as an ACL user whose URL carries it
    assert redis_acl_server.acl_user is not None
    assert redis_acl_server.password is not None
    user, password = redis_acl_server.acl_user
    url = redis_acl_server.url
    assert password in url
    redis_acl_server.flush()
    monkeypatch.setenv("CONVEYOR_BROKER_URL", url)
    tasks.configure()

    # When a worker logging at debug level starts there and runs a task
    worker = start_worker("-c", "1", "-l", "debug").wait_ready()
    assert tasks.add.delay(1, 2).get(timeout=10) == 3
    # ... loses Redis for a while (its connection errors are logged)
    redis_acl_server.stop()
    try:
        wait_until(
            lambda: "Redis connection error" in worker.stderr_text(), 10, "a connection error"
        )
        # ... while a producer with a 1 s connection timeout is refused
        tasks.app.conf.broker_connection_timeout = 1.0
        tasks.app.close()
        with pytest.raises(BrokerUnavailable) as refused:
            tasks.add.delay(3, 4)
    finally:
        redis_acl_server.start()
    # ... gets it back, runs another task, and is stopped with SIGTERM
    assert tasks.add.delay(2, 3).get(timeout=30) == 5
    worker.terminate()
    assert worker.wait(15) == 0

    # Then neither the banner nor any log line shows a password, and the banner names Redis
    log = worker.stderr_text()
    for secret in (password, redis_acl_server.password):
        assert secret not in log
        assert secret not in str(refused.value)
    host = f"127.0.0.1:{redis_acl_server.port}/0"
    assert f"broker:   redis://{user}:***@{host}" in log
    assert f"results:  redis://{user}:***@{host}" in log
    assert "SQLite" not in log
    assert "Redis connection error" in log
    assert "stopped" in log


# -- 9. bad input -----------------------------------------------------------------------------


@pytest.mark.brokers("redis", "sentinel")  # a core case, also behind Sentinel
def test_bad_input_is_dead_lettered_with_its_reason_and_the_worker_goes_on(
    app: Conveyor, start_worker: StartWorker, executions: Executions
) -> None:
    # Given a running worker
    worker = start_worker("-c", "2").wait_ready()

    # When its queue receives bytes that are not a conveyor message,
    app.broker.publish(OutgoingMessage("raw-bytes", "celery", b"\x00\xff not a message"))
    # ... a message of a protocol version it does not know,
    future_id = str(uuid.uuid4())
    future = {"v": 99, "id": future_id, "task": "apps.tasks.add", "args": [1, 2], "kwargs": {}}
    app.broker.publish(OutgoingMessage(future_id, "celery", orjson.dumps(future)))
    # ... and a message naming a task no worker has registered
    unknown = app.send_task("no.such.task", [1])

    # Then each ends in the dead letters, untouched, with its reason
    by_id = {dead.id: dead for dead in dead_letters(app, 3)}
    assert set(by_id) == {"raw-bytes", future_id, unknown.id}
    assert by_id["raw-bytes"].body == b"\x00\xff not a message"
    assert by_id["raw-bytes"].reason.startswith("DecodeError: not a conveyor message: invalid JSON")
    assert by_id[future_id].body == orjson.dumps(future)
    assert by_id[future_id].reason == (
        "DecodeError: message protocol version 99 is not supported by this worker "
        "(it understands version 1)"
    )
    assert by_id[unknown.id].reason == (
        "NotRegistered: task 'no.such.task' is not registered in this worker"
    )
    assert all(dead.deliveries == 1 for dead in by_id.values())
    # ... the callers whose message names its id are told why
    with pytest.raises(DecodeError, match="version 99"):
        app.AsyncResult(future_id).get(timeout=10)
    with pytest.raises(NotRegistered, match=r"no\.such\.task"):
        unknown.get(timeout=10)
    # ... nothing ran, and the worker goes on
    assert not executions.events()
    assert tasks.add.delay(20, 22).get(timeout=10) == 42
    assert worker.proc.poll() is None
    assert worker.stderr_text().count("dead-lettered") == 3
    wait_for_acks(app)
    assert_queue_empty(app, dead=3)


@pytest.mark.app_env(CONVEYOR_TEST_LEASE_TIMEOUT="2.0")
def test_long_task_running_through_a_redis_outage_longer_than_its_lease_runs_once(
    appendonly_redis: RedisServer, app: Conveyor, start_worker: StartWorker, executions: Executions
) -> None:
    # Given two workers on a 2 s lease, one of them running an 8 s task
    workers = [start_worker("-c", "1") for _ in range(2)]
    for worker in workers:
        worker.wait_ready()
    result = tasks.sleep_then_report.delay(8.0)
    [run] = started(executions, 1)

    # When Redis stops for 4 s (every lease expires meanwhile) and comes back
    time.sleep(0.5)
    appendonly_redis.stop()
    time.sleep(4.0)
    appendonly_redis.start(appendonly=True)

    # Then the task is not handed to the idle worker: it runs once, on its worker
    assert result.get(timeout=20)["ppid"] == run.ppid
    time.sleep(1.0)
    assert executions.count(result.id) == 1
