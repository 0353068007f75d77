"""``app.control``, ``conveyor inspect|control|status|report`` with real worker
processes on SQLite and Redis: the worker registry, the control channel, each
command's reply and its effect on the worker.

Workers are shared between assertions (each start costs a second or two): one test
per group of commands, not one per command.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

import pytest
from apps import tasks
from apps.executions import Executions
from apps.remote_tasks import PASSWORD
from harness import StartWorker, queue_stats, run_conveyor, wait_until, workers_of

from conveyor import Conveyor, states
from conveyor.control import WORKER_TTL

REMOTE_APP = "apps.remote_tasks"
NO_REPLY = "Error: No nodes replied within time constraint"


def name_of(number: int) -> str:
    """The name ``start_worker`` gives the ``number``-th worker of a test (``wN@<host>``)."""
    return f"w{number}@{socket.gethostname()}"


def registered(app: Conveyor, *names: str, timeout: float = 15.0) -> None:
    """Wait until every one of ``names`` is in the registry (it then hears commands)."""
    wait_until(lambda: set(names) <= set(app.control.workers()), timeout, f"{names} registered")


def replies_of(app: Conveyor, command: str, host: str, **arguments: Any) -> Any:
    """The reply of ``host`` to ``command`` (asked of it alone)."""
    replies = app.control.broadcast(command, arguments, destination=[host], reply=True, timeout=5)
    assert replies, f"{host} did not answer {command}"
    return replies[0][host]


def test_two_workers_answer_inspect_each_as_celery_shapes_it(
    app: Conveyor, start_worker: StartWorker
) -> None:
    # Given two workers: w1 holds one task running and one waiting (one slot, room for
    # two) on a queue of its own; w2 consumes the default queue
    start = workers_of(start_worker, REMOTE_APP)
    w1 = start("-c", "1", "--prefetch-multiplier", "2", "-Q", "celery,only1")
    start("-P", "threads", "-c", "2")
    one, two = name_of(1), name_of(2)
    registered(app, one, two)
    running = tasks.sleep_then_record.apply_async((30,), queue="only1")
    waiting = tasks.sleep_then_record.apply_async((30,), queue="only1")
    inspect = app.control.inspect(timeout=5)

    # Then both answer a ping, and a destination limits who does
    assert inspect.ping() == {one: {"ok": "pong"}, two: {"ok": "pong"}}
    began = time.monotonic()
    pongs = app.control.ping(timeout=30)
    assert time.monotonic() - began < 25, "waited for the timeout though both answered"
    assert sorted(pongs, key=str) == [{one: {"ok": "pong"}}, {two: {"ok": "pong"}}]
    assert app.control.inspect(destination=[two], timeout=5).ping() == {two: {"ok": "pong"}}

    # And w1 shows the running task as active, the other as reserved
    def held() -> tuple[Any, Any] | None:
        active, reserved = inspect.active() or {}, inspect.reserved() or {}
        if [t["id"] for t in active.get(one, [])] != [running.id]:
            return None
        if [t["id"] for t in reserved.get(one, [])] != [waiting.id]:
            return None  # not fetched yet
        return active, reserved

    found = wait_until(held, 15, "one task shown as active, the other as reserved")
    assert found is not None
    active, reserved = found
    [task] = active[one]
    assert task["name"] == tasks.sleep_then_record.name
    assert task["args"] == [30]
    assert task["hostname"] == one
    assert isinstance(task["time_start"], float)
    assert task["delivery_info"]["routing_key"] == "only1"
    assert [t["id"] for t in reserved[one]] == [waiting.id]
    assert active[two] == []
    assert reserved[two] == []
    where = inspect.query_task(running.id, waiting.id)
    assert where is not None
    assert {i: s for i, (s, _) in where[one].items()} == {
        running.id: "active",
        waiting.id: "reserved",
    }
    assert where[two] == {}
    assert inspect.scheduled() == {one: [], two: []}

    # And registered, active_queues and the registry describe each worker
    names = inspect.registered()
    assert names is not None
    assert tasks.add.name in names[one]
    assert tasks.add.name in names[two]
    queues = inspect.active_queues()
    assert queues is not None
    assert [q["name"] for q in queues[one]] == ["celery", "only1"]
    assert queues[two][0]["exchange"] == {"name": "celery", "type": "direct"}
    info = app.control.workers()
    assert info[one]["pid"] == w1.pid
    assert info[one]["pool"] == "prefork"
    assert info[two]["pool"] == "threads"
    assert info[two]["concurrency"] == 2

    # And stats count the tasks each ran, by name
    assert tasks.add.apply_async((1, 2), queue="celery").get(timeout=15) == 3

    def counted() -> dict[str, Any] | None:
        stats = inspect.stats() or {}
        done = sum(s.get("total", {}).get(tasks.add.name, 0) for s in stats.values())
        return stats if done == 1 else None

    stats = wait_until(counted, 10, "the add task counted in stats")
    assert stats is not None
    assert stats[one]["pool"]["max-concurrency"] == 1
    assert stats[one]["prefetch_count"] == 2
    assert stats[one]["pid"] == w1.pid
    assert stats[one]["broker"]["transport"] == app.conf.broker_url_resolved().split(":")[0]

    # And conf shows the settings with the password masked
    conf = inspect.conf()
    assert conf is not None
    assert PASSWORD not in json.dumps(conf)
    assert conf[one]["broker_read_url"] == "redis://operator:***@replica.invalid:6379/0"
    assert conf[one]["broker_lease_timeout"] == 2.0


def test_control_commands_change_what_a_worker_does(
    app: Conveyor, start_worker: StartWorker, executions: Executions
) -> None:
    # Given one prefork worker of two slots
    worker = start_worker("-c", "2")
    host = name_of(1)
    registered(app, host)
    inspect = app.control.inspect(destination=[host], timeout=5)

    # When a hard time limit is set for a task, the next run of it is ended there
    ok = replies_of(app, "time_limit", host, task_name=tasks.sleep_then_record.name, hard=1)
    assert ok == {"ok": "time limits set successfully"}
    cut = tasks.sleep_then_record.delay(20)
    cut.get(timeout=15, propagate=False)
    assert cut.state == states.FAILURE
    assert type(cut.result).__name__ == "TimeLimitExceeded"

    # When a rate limit of one a minute is set, a second call waits (held back)
    ok = replies_of(app, "rate_limit", host, task_name=tasks.record.name, rate_limit="1/m")
    assert ok == {"ok": "new rate limit set successfully"}
    first, second = tasks.record.delay("a"), tasks.record.delay("b")
    assert first.get(timeout=15) == "a"
    time.sleep(1.5)
    assert executions.count(second.id) == 0
    assert queue_stats(app.broker).delayed == 1  # held back until a permit frees up

    # When it consumes a new queue, a task there runs; once cancelled, no longer
    extra = tasks.add.apply_async((2, 2), queue="extra")  # (record is rate limited now)
    assert app.control.add_consumer("extra", destination=[host], reply=True, timeout=5) == [
        {host: {"ok": "add consumer extra"}}
    ]
    assert extra.get(timeout=15) == 4
    queues = inspect.active_queues()
    assert queues is not None
    assert [q["name"] for q in queues[host]] == ["celery", "extra"]
    cancelled = app.control.cancel_consumer("extra", destination=[host], reply=True, timeout=5)
    assert cancelled == [{host: {"ok": "no longer consuming from 'extra'"}}]
    time.sleep(1.5)  # a fetch begun before the cancel may still take from the queue
    late = tasks.add.apply_async((3, 3), queue="extra")
    time.sleep(1.5)
    assert late.state == states.PENDING
    assert queue_stats(app.broker, "extra").ready == 1
    assert wait_until(lambda: app.control.workers()[host]["queues"] == ["celery"], 10, "queues")

    # When the pool grows and shrinks, stats show its new size
    assert app.control.pool_grow(2, destination=[host], reply=True, timeout=5) == [
        {host: {"ok": "pool will grow"}}
    ]
    assert (inspect.stats() or {})[host]["pool"]["max-concurrency"] == 4
    assert app.control.pool_shrink(3, destination=[host], reply=True, timeout=5) == [
        {host: {"ok": "pool will shrink"}}
    ]
    shrunk = wait_until(
        lambda: (inspect.stats() or {})[host]["pool"]["max-concurrency"] == 1, 10, "shrunk"
    )
    assert shrunk

    # When it is told to shut down, it stops cleanly and leaves the registry at once
    assert app.control.shutdown(destination=[host], reply=True, timeout=5) == [
        {host: {"ok": "shutting down"}}
    ]
    assert worker.wait(30) == 0
    assert host not in app.control.workers()


def test_a_killed_worker_leaves_the_registry_within_three_heartbeats(
    app: Conveyor, start_worker: StartWorker
) -> None:
    # Given two workers
    killed, stopped = start_worker("-P", "threads"), start_worker("-P", "threads")
    gone, left = name_of(1), name_of(2)
    registered(app, gone, left)

    # When one is killed outright and the other stopped with SIGTERM
    killed.kill_group()
    died = time.monotonic()
    stopped.terminate()
    assert stopped.wait(30) == 0

    # Then the stopped one has left already; the killed one leaves within 3 heartbeats
    assert left not in app.control.workers()
    wait_until(lambda: gone not in app.control.workers(), WORKER_TTL + 4, "the dead worker gone")
    assert time.monotonic() - died <= WORKER_TTL + 4
    assert app.control.inspect(timeout=0.5).ping() is None


def test_with_no_worker_alive_inspect_returns_none_and_the_cli_fails_with_one_line(
    app: Conveyor, conveyor_cli: Any
) -> None:
    began = time.monotonic()
    assert app.control.inspect(timeout=1.0).ping() is None
    assert time.monotonic() - began < 2.0

    for command in (
        ["inspect", "ping", "--timeout", "0.3"],
        ["control", "pool_grow", "--timeout", "0.3"],
        ["status", "--timeout", "0.3"],
    ):
        done = conveyor_cli(*command)
        assert done.returncode == 1, command
        assert done.stderr.strip() == NO_REPLY, command
        assert done.stdout == "", command


def test_the_cli_inspects_and_controls_a_worker(
    app: Conveyor, start_worker: StartWorker, conveyor_cli: Any
) -> None:
    worker = start_worker("-P", "threads", "-c", "2")
    name = name_of(1)
    registered(app, name)

    status = conveyor_cli("status", "--timeout", "5")
    assert status.returncode == 0, status.stderr
    assert f"->  {name}: OK" in status.stdout
    assert status.stdout.rstrip().endswith("1 node online.")

    stats = conveyor_cli("inspect", "stats", "--json", "-d", name, "--timeout", "5")
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)[name]["pool"]["max-concurrency"] == 2

    ping = conveyor_cli("inspect", "ping", "--timeout", "5")
    assert ping.stdout.splitlines() == [f"->  {name}: OK", "        pong"]

    limited = conveyor_cli(
        "control", "rate_limit", tasks.add.name, "10/s", "-j", "-d", name, "--timeout", "5"
    )
    assert json.loads(limited.stdout) == {name: {"ok": "new rate limit set successfully"}}
    unknown = conveyor_cli("control", "rate_limit", "no.such.task", "10/s", "--timeout", "5")
    assert unknown.returncode == 1
    assert f"->  {name}: ERROR" in unknown.stdout

    grown = conveyor_cli("control", "pool_grow", "3", "--timeout", "5")
    assert grown.returncode == 0, grown.stderr
    assert "pool will grow" in grown.stdout
    wait_until(lambda: app.control.workers()[name]["concurrency"] == 5, 6, "the new size")

    revoked = conveyor_cli("control", "revoke", "some-task-id")
    assert revoked.returncode == 0, revoked.stderr
    assert app.AsyncResult("some-task-id").state == states.REVOKED

    shut = conveyor_cli("control", "shutdown", "-d", name, "--timeout", "5")
    assert shut.returncode == 0, shut.stderr
    assert worker.wait(30) == 0


def test_report_shows_versions_and_settings_with_passwords_masked(tmp_path: Any) -> None:
    env = {**os.environ, "CONVEYOR_BROKER_URL": "redis://admin:s3cret-pw@db.invalid:6379/0"}

    done = run_conveyor("report", env=env, app=REMOTE_APP)

    assert done.returncode == 0, done.stderr
    assert "s3cret-pw" not in done.stdout
    assert PASSWORD not in done.stdout
    assert "software -> conveyor:" in done.stdout
    assert "broker_url: 'redis://admin:***@db.invalid:6379/0'" in done.stdout
    assert "broker_read_url: 'redis://operator:***@replica.invalid:6379/0'" in done.stdout


@pytest.mark.parametrize("args", [["inspect", "nope"], ["control", "rate_limit", "only-one"]])
def test_the_cli_refuses_unknown_actions_and_missing_arguments(args: list[str]) -> None:
    done = run_conveyor(*args, env=dict(os.environ), app="apps.tasks")

    assert done.returncode == 2
    assert "Error" in done.stderr
