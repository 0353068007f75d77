"""Celery's signals with real worker processes: each sent in the process Celery sends
it in, with Celery's sender and keyword arguments.

The app (``apps.signal_tasks``) connects a receiver to every signal; each call is one
JSON line in a file: the signal, the pid and parent pid it ran in, the sender and the
arguments.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from apps import signal_tasks
from harness import StartBeat, StartWorker, wait_until, workers_of

from conveyor import Conveyor, NotRegistered, states
from conveyor.brokers.base import OutgoingMessage

APP = "apps.signal_tasks"
pytestmark = pytest.mark.brokers("sqlite")

Records = Callable[..., list[dict[str, Any]]]


@pytest.fixture
def records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Records:
    """``records(signal)``: the calls of one signal so far (every process), in order."""
    path = tmp_path / "signals.jsonl"
    monkeypatch.setenv(signal_tasks.ENV, str(path))

    def read(name: str | None = None) -> list[dict[str, Any]]:
        if not path.exists():
            return []
        found = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [r for r in found if name is None or r["signal"] == name]

    return read


@pytest.fixture
def start(start_worker: StartWorker) -> StartWorker:
    return workers_of(start_worker, APP)


def test_publish_signals_run_in_the_sender_and_their_headers_travel_with_the_message(
    app: Conveyor, start: StartWorker, records: Records
) -> None:
    # When a task is sent
    start("-P", "threads", "-c", "1").wait_ready()
    result = signal_tasks.echo_header.delay()

    # Then both publish signals ran here, with the task's name as sender
    me = os.getpid()
    [before] = records("before_task_publish")
    [after] = records("after_task_publish")
    assert (before["pid"], after["pid"]) == (me, me)
    assert before["sender"] == after["sender"] == "apps.signal_tasks.echo_header"
    assert before["kwargs"]["body"]["id"] == result.id
    assert before["kwargs"]["routing_key"] == "celery"
    # ... and the header a receiver added reached the task on the worker
    assert result.get(timeout=15) == "traced:apps.signal_tasks.echo_header"


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_task_signals_run_where_the_task_runs_with_celerys_arguments(
    app: Conveyor, start: StartWorker, records: Records, pool: str
) -> None:
    worker = start("-P", pool, "-c", "2").wait_ready()
    ok = signal_tasks.echo_header.delay()
    bad = signal_tasks.boom.delay()
    retried = signal_tasks.retry_once.delay()
    assert ok.get(timeout=15)
    with pytest.raises(ValueError, match="boom"):
        bad.get(timeout=15)
    assert retried.get(timeout=15) == "done"

    # task_received: in the worker's own process, with the request
    received = {r["request_id"] for r in records("task_received")}
    assert {ok.id, bad.id, retried.id} <= received
    assert {r["pid"] for r in records("task_received")} == {worker.pid}
    # prerun / postrun / success / failure / retry: where the task ran
    runners = {r["pid"] for r in records("task_prerun")}
    if pool == "prefork":
        assert worker.pid not in runners
        assert all(r["ppid"] == worker.pid for r in records("task_prerun"))
    else:
        assert runners == {worker.pid}
    prerun = {r["kwargs"]["task_id"]: r for r in records("task_prerun")}
    assert prerun[ok.id]["sender"] == "task:apps.signal_tasks.echo_header"
    assert prerun[ok.id]["kwargs"]["task"] == "task:apps.signal_tasks.echo_header"
    assert (prerun[ok.id]["kwargs"]["args"], prerun[ok.id]["kwargs"]["kwargs"]) == ([], {})
    postrun = {(r["kwargs"]["task_id"], r["kwargs"]["state"]) for r in records("task_postrun")}
    assert {(ok.id, "SUCCESS"), (bad.id, "FAILURE"), (retried.id, "RETRY")} <= postrun
    assert (retried.id, "SUCCESS") in postrun
    [success] = [r for r in records("task_success") if r["sender"].endswith("echo_header")]
    assert success["kwargs"]["result"] == "traced:apps.signal_tasks.echo_header"
    [failure] = records("task_failure")
    assert failure["kwargs"]["task_id"] == bad.id
    assert failure["kwargs"]["exception"] == "ValueError: boom"
    assert failure["kwargs"]["einfo"] == "ExceptionInfo"
    [retry] = records("task_retry")
    assert retry["sender"] == "task:apps.signal_tasks.retry_once"
    assert retry["kwargs"]["reason"].startswith("Retry")
    assert retry["pid"] in runners


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_worker_signals_mark_its_life_in_the_right_processes(
    app: Conveyor, start: StartWorker, records: Records, pool: str
) -> None:
    # When a worker starts, runs a task and is stopped with SIGTERM
    worker = start("-P", pool, "-c", "2").wait_ready()
    assert signal_tasks.echo_header.delay().get(timeout=15)
    worker.terminate()
    assert worker.wait(30) == 0

    # Then the worker's own signals ran in its process, in order
    mine = [r["signal"] for r in records() if r["pid"] == worker.pid]
    life = [
        "celeryd_init",
        "celeryd_after_setup",
        "worker_init",
        "worker_ready",
        "worker_shutting_down",
        "worker_shutdown",
    ]
    assert [s for s in mine if s in life] == life
    [init] = records("celeryd_init")
    assert init["sender"].startswith("w1@")
    [down] = records("worker_shutting_down")
    assert down["kwargs"] == {"sig": "SIGTERM", "how": "Warm", "exitcode": 0}
    # ... and each process that ran tasks started and stopped as one
    inits = records("worker_process_init")
    shutdowns = records("worker_process_shutdown")
    if pool == "prefork":
        assert len(inits) == 2
        assert all(r["ppid"] == worker.pid for r in inits)
        assert {r["pid"] for r in shutdowns} == {r["pid"] for r in inits}
        assert all(r["kwargs"]["pid"] == r["pid"] for r in shutdowns)
    else:
        assert [r["pid"] for r in inits] == [worker.pid]
        assert [r["pid"] for r in shutdowns] == [worker.pid]
    # ... and the loggers were announced once set up
    assert {r["pid"] for r in records("after_setup_logger")} >= {worker.pid}
    assert records("after_setup_task_logger")


def test_revoked_expired_unknown_and_rejected_messages_are_signalled_by_the_worker(
    app: Conveyor, start: StartWorker, records: Records
) -> None:
    # Given a revoked task, an expired one, one no worker knows and a body that is no message
    revoked = signal_tasks.echo_header.apply_async(countdown=1)
    app.control.revoke(revoked.id)
    expired = signal_tasks.echo_header.apply_async(expires=0.01)
    unknown = app.send_task("apps.signal_tasks.nobody")
    app.broker.publish(OutgoingMessage("garbage", "celery", b"\xff not json", 0, None))

    # When a worker meets them
    worker = start("-P", "threads", "-c", "1").wait_ready()
    wait_until(lambda: len(records("task_revoked")) == 2, 15, "two revoked signals")
    wait_until(lambda: records("task_unknown") and records("task_rejected"), 15, "the others")

    # Then each was signalled from the worker's process
    signalled = {r["kwargs"]["expired"]: r for r in records("task_revoked")}
    assert set(signalled) == {True, False}
    assert all(r["pid"] == worker.pid for r in records("task_revoked"))
    assert all(r["sender"] == "task:apps.signal_tasks.echo_header" for r in signalled.values())
    [missing] = records("task_unknown")
    assert (missing["kwargs"]["name"], missing["kwargs"]["id"]) == (
        "apps.signal_tasks.nobody",
        unknown.id,
    )
    [rejected] = records("task_rejected")
    assert "DecodeError" in rejected["kwargs"]["exc"]
    assert app.AsyncResult(expired.id).state == states.REVOKED
    with pytest.raises(NotRegistered):
        unknown.get(timeout=5)


def test_on_after_configure_adds_periodic_tasks_and_beat_init_runs_in_beat(
    app: Conveyor, start_beat: StartBeat, start: StartWorker, records: Records
) -> None:
    # Given the Periodic Tasks guide's pattern: add_periodic_task in on_after_configure
    worker = start("-P", "threads", "-c", "1").wait_ready()
    beat = start_beat(app=APP).wait_ready()

    # Then beat runs the entry, and beat_init ran in beat's process
    wait_until(
        lambda: any(
            r["kwargs"]["task"] == "task:apps.signal_tasks.echo_header"
            for r in records("task_prerun")
        ),
        15,
        "the periodic task to run",
    )
    assert [r["pid"] for r in records("beat_init")] == [beat.pid]
    configured = {r["pid"] for r in records("on_after_configure")}
    assert {worker.pid, beat.pid} <= configured


def test_a_receiver_that_raises_is_logged_and_the_task_runs_on(
    app: Conveyor, start: StartWorker, records: Records
) -> None:
    def broken(**kwargs: Any) -> None:
        raise RuntimeError("receiver bug")

    from conveyor.signals import before_task_publish

    before_task_publish.connect(broken)
    try:
        result = signal_tasks.echo_header.delay()
    finally:
        before_task_publish.disconnect(broken)
    start("-P", "threads", "-c", "1").wait_ready()
    assert result.get(timeout=15) == "traced:apps.signal_tasks.echo_header"
