"""``app.control`` against a real worker in a thread, on a ``memory://`` broker: the
registry, the control channel, each command's reply and effect."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from conveyor import Conveyor
from conveyor.control.protocol import (
    CONTROL_MAXLEN,
    CONTROL_STREAM,
    HEARTBEAT_SECONDS,
    Command,
    reply_stream,
)
from conveyor.control.settings import MASK, visible_settings
from conveyor.testing import start_worker
from conveyor.worker import Worker, WorkerOptions

SIGNING_KEY = "k" * 40
MakeApp = Callable[..., Conveyor]


def wait_for(probe: Any, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


@pytest.fixture
def worker(app: Conveyor) -> Iterator[Worker]:
    """A threads worker of ``app``, in the registry and listening."""
    with start_worker(app, concurrency=2) as running:
        assert wait_for(lambda: running.hostname in app.control.workers())
        yield running


def test_ping_answers_at_once_when_every_registered_worker_replied(
    app: Conveyor, worker: Worker
) -> None:
    # Given a worker in the registry
    # When it is pinged with a long timeout
    began = time.monotonic()
    replies = app.control.ping(timeout=20)

    # Then its pong comes back, and the call does not wait for the timeout
    assert replies == [{worker.hostname: {"ok": "pong"}}]
    assert time.monotonic() - began < 10


def test_the_registry_describes_the_worker(app: Conveyor, worker: Worker) -> None:
    info = app.control.workers()[worker.hostname]

    assert info["name"] == worker.hostname
    assert info["pool"] == "threads"
    assert info["concurrency"] == 2
    assert info["queues"] == ["celery"]
    assert info["freq"] == HEARTBEAT_SECONDS
    assert info["active"] == 0
    assert info["processed"] == 0
    assert info["prefetch"] == worker.capacity
    assert abs(info["heartbeat"] - time.time()) < 30


def test_a_stopped_worker_leaves_the_registry_at_once(app: Conveyor) -> None:
    with start_worker(app) as running:
        assert wait_for(lambda: running.hostname in app.control.workers())

    assert running.hostname not in app.control.workers()


def test_inspect_with_no_worker_returns_none_after_the_timeout(app: Conveyor) -> None:
    began = time.monotonic()

    assert app.control.inspect(timeout=0.3).ping() is None
    assert time.monotonic() - began < 1.3


def test_destination_limits_who_answers(app: Conveyor, worker: Worker) -> None:
    assert app.control.inspect(destination=[worker.hostname]).ping() == {
        worker.hostname: {"ok": "pong"}
    }
    assert app.control.inspect(destination="someone@else", timeout=0.3).ping() is None


def test_an_expired_command_is_not_run(app: Conveyor, worker: Worker) -> None:
    # Given a command whose time has passed, put on the stream by hand
    late = Command("late-1", "ping", reply=True, expires=time.time() - 1)
    app.broker.stream_add(CONTROL_STREAM, [late.encode()], maxlen=CONTROL_MAXLEN)

    # When the worker has seen it (it answers a later ping)
    assert app.control.ping()

    # Then it did not answer the expired one
    assert app.broker.stream_read(reply_stream("late-1"), "0", timeout=0.2) == []


def test_a_failing_or_unknown_command_replies_an_error_and_the_worker_keeps_listening(
    app: Conveyor, worker: Worker
) -> None:
    unknown = app.control.broadcast("no_such_command", reply=True)
    missing = app.control.broadcast("rate_limit", {}, reply=True)  # no task_name

    assert unknown == [{worker.hostname: {"error": "unknown command 'no_such_command'"}}]
    assert missing is not None
    assert "bad arguments" in missing[0][worker.hostname]["error"]
    assert app.control.ping() == [{worker.hostname: {"ok": "pong"}}]


def test_active_reserved_and_query_task_show_held_jobs(app: Conveyor) -> None:
    # Given one slot, room to hold two, and a task that waits for the test
    release = threading.Event()

    @app.task
    def hold(n: int) -> int:
        release.wait(10)
        return n

    app.conf.worker_prefetch_multiplier = 2
    with start_worker(app, concurrency=1) as running:
        first, second = hold.delay(1), hold.delay(2)
        try:
            inspect = app.control.inspect()
            # When both are held (one runs, one waits for the slot)
            active = wait_for(lambda: (inspect.active() or {}).get(running.hostname))
            reserved = wait_for(lambda: (inspect.reserved() or {}).get(running.hostname))

            # Then each is shown where it is, as Celery shows a request
            [task] = active
            assert task["id"] == first.id
            assert task["name"] == hold.name
            assert task["args"] == [1]
            assert task["kwargs"] == {}
            assert task["hostname"] == running.hostname
            assert task["time_start"] is not None
            assert task["delivery_info"]["routing_key"] == "celery"
            assert [t["id"] for t in reserved] == [second.id]
            found = inspect.query_task(first.id, second.id)
            assert found is not None
            states = {i: state for i, (state, _) in found[running.hostname].items()}
            assert states == {first.id: "active", second.id: "reserved"}
            assert inspect.scheduled() == {running.hostname: []}
        finally:
            release.set()
        assert first.get(timeout=5) == 1
        assert second.get(timeout=5) == 2


def test_stats_count_tasks_by_name_and_describe_the_pool(app: Conveyor, worker: Worker) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    for i in range(3):
        assert add.delay(i, i).get(timeout=5) == 2 * i

    def counted() -> Any:
        stats = (app.control.inspect().stats() or {}).get(worker.hostname, {})
        return stats if stats.get("total", {}).get(add.name) == 3 else None

    stats = wait_for(counted)
    assert stats, "the total never reached 3"
    assert stats["pool"]["max-concurrency"] == 2
    assert stats["prefetch_count"] == worker.capacity
    assert stats["broker"]["transport"] == "memory"
    assert "utime" in stats["rusage"]
    assert wait_for(lambda: app.control.workers()[worker.hostname]["processed"] == 3, 8)


def test_registered_lists_the_tasks_with_attributes_asked_for(
    app: Conveyor, worker: Worker
) -> None:
    @app.task(rate_limit="5/s")
    def limited() -> None:
        pass

    registered = app.control.inspect().registered("rate_limit")

    assert registered is not None
    assert f"{limited.name} [rate_limit=5/s]" in registered[worker.hostname]


def test_revoked_lists_the_ids_the_worker_refused(app: Conveyor, worker: Worker) -> None:
    @app.task
    def echo(x: int) -> int:
        return x

    task_id = "revoked-before-it-ran"
    app.revoke(task_id)
    echo.apply_async((1,), task_id=task_id)

    assert wait_for(
        lambda: task_id in (app.control.inspect().revoked() or {}).get(worker.hostname, [])
    )


def test_rate_limit_and_time_limit_change_the_task_in_the_worker(
    app: Conveyor, worker: Worker
) -> None:
    @app.task
    def job() -> None:
        pass

    set_rate = app.control.rate_limit(job.name, "10/m", reply=True)
    bad_rate = app.control.rate_limit(job.name, "fast", reply=True)
    set_time = app.control.time_limit(job.name, soft=1.5, hard=3, reply=True)
    unknown = app.control.time_limit("no.such.task", hard=1, reply=True)

    assert set_rate == [{worker.hostname: {"ok": "new rate limit set successfully"}}]
    assert bad_rate is not None
    assert "invalid rate limit" in bad_rate[0][worker.hostname]["error"]
    assert set_time == [{worker.hostname: {"ok": "time limits set successfully"}}]
    assert unknown == [{worker.hostname: {"error": "unknown task"}}]
    # the worker shares the app's task objects here: the change is visible
    assert (job.rate_limit, job.soft_time_limit, job.time_limit) == ("10/m", 1.5, 3)
    disabled = app.control.rate_limit(job.name, None, reply=True)
    assert disabled == [{worker.hostname: {"ok": "rate limit disabled successfully"}}]
    assert job.rate_limit is None


def test_consumers_can_be_added_and_cancelled_but_not_the_last(
    app: Conveyor, worker: Worker
) -> None:
    host = worker.hostname

    assert app.control.add_consumer("extra", reply=True) == [{host: {"ok": "add consumer extra"}}]
    assert worker.fetcher.queues == ["celery", "extra"]
    names = [q["name"] for q in (app.control.inspect().active_queues() or {})[host]]
    assert names == ["celery", "extra"]
    assert wait_for(lambda: app.control.workers()[host]["queues"] == ["celery", "extra"], 8)
    cancelled = app.control.cancel_consumer("celery", reply=True)
    assert cancelled == [{host: {"ok": "no longer consuming from 'celery'"}}]
    last = app.control.cancel_consumer("extra", reply=True)
    assert last is not None
    assert "only queue" in last[0][host]["error"]
    assert worker.fetcher.queues == ["extra"]


def test_pool_grow_and_shrink_resize_the_pool_and_the_prefetch(
    app: Conveyor, worker: Worker
) -> None:
    host = worker.hostname

    assert app.control.pool_grow(2, reply=True) == [{host: {"ok": "pool will grow"}}]
    assert (worker.pool.concurrency, worker.capacity) == (4, 4)
    assert app.control.pool_shrink(3, reply=True) == [{host: {"ok": "pool will shrink"}}]
    assert (worker.pool.concurrency, worker.capacity) == (1, 1)


def test_a_solo_pool_refuses_to_grow(app: Conveyor) -> None:
    with start_worker(app, pool="solo") as running:
        assert wait_for(lambda: running.hostname in app.control.workers())
        reply = app.control.pool_grow(reply=True)

    assert reply == [{running.hostname: {"error": "the solo pool cannot grow"}}]


def test_shutdown_asks_the_worker_to_stop(app: Conveyor, worker: Worker) -> None:
    assert app.control.shutdown(reply=True) == [{worker.hostname: {"ok": "shutting down"}}]
    assert worker._shutdown.is_set()


@contextmanager
def named_worker(app: Conveyor, hostname: str) -> Iterator[Worker]:
    """A threads worker called ``hostname`` (``start_worker`` names by thread)."""
    options = WorkerOptions(["celery"], 1, pool="threads", hostname=hostname, fetch_timeout=0.2)
    running = Worker(app, options)
    running.start()
    try:
        yield running
    finally:
        running.request_shutdown()
        running.shutdown()


def test_limit_stops_reading_replies_early(app: Conveyor) -> None:
    with named_worker(app, "one@here"), named_worker(app, "two@here"):
        assert wait_for(lambda: {"one@here", "two@here"} <= set(app.control.workers()))
        both = app.control.broadcast("ping", reply=True, timeout=5)
        first = app.control.broadcast("ping", reply=True, timeout=5, limit=1)

    assert both is not None
    assert len(both) == 2
    assert first is not None
    assert len(first) == 1


def test_settings_are_shown_with_secrets_masked(make_app: MakeApp) -> None:
    app = make_app(
        message_signing_keys=[SIGNING_KEY],
        broker_read_url="redis://operator:hunter2-secret@replica:6379/0",
        broker_transport_options={"sentinel_kwargs": {"password": "hunter3"}, "master_name": "m"},
    )

    shown = visible_settings(app.conf)

    text = repr(shown)
    assert "hunter2" not in text
    assert "hunter3" not in text
    assert SIGNING_KEY not in text
    assert shown["message_signing_keys"] == MASK
    assert shown["broker_read_url"] == "redis://operator:***@replica:6379/0"
    assert shown["broker_transport_options"]["master_name"] == "m"
    assert shown["broker_url"].startswith("memory://")
    assert "task_default_queue" not in shown
    assert visible_settings(app.conf, with_defaults=True)["task_default_queue"] == "celery"


def test_with_autoscale_grow_and_shrink_move_its_bounds(app: Conveyor) -> None:
    # Given an autoscaled pool of 2 to 3 threads
    options = WorkerOptions(
        ["celery"], 3, pool="threads", hostname="auto@here", fetch_timeout=0.2, autoscale=(3, 2)
    )
    running = Worker(app, options)
    running.start()
    try:
        assert wait_for(lambda: "auto@here" in app.control.workers())
        scaler = running.autoscaler
        assert scaler is not None

        # When it grows past its maximum, the maximum (and what the worker holds) follows
        assert app.control.pool_grow(2, reply=True) == [{"auto@here": {"ok": "pool will grow"}}]
        assert (running.pool.concurrency, scaler.maximum, running.capacity) == (4, 4, 4)

        # When it shrinks below its minimum, the minimum follows
        assert app.control.pool_shrink(3, reply=True) == [{"auto@here": {"ok": "pool will shrink"}}]
        assert (running.pool.concurrency, scaler.minimum, scaler.maximum) == (1, 1, 4)
    finally:
        running.request_shutdown()
        running.shutdown()
