"""Celery's task classes and what tasks do to their own run, with real workers on SQLite
and Redis: handlers called where the task runs with Celery's arguments, custom states,
Ignore and Reject, replace, error callbacks written for Celery, shared tasks, waiting
inside a task, task loggers, and Flask's ``__call__`` override passed as ``task_cls``.

The app is ``apps.task_class_tasks``; its tasks write what they see as JSON lines
(``events``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from apps import task_class_tasks as t
from apps.tasks import add, fail
from harness import StartWorker, wait_until, workers_of

from conveyor import Conveyor, chain, chord, current, states
from conveyor.exceptions import ChordError, TimeLimitExceeded

APP = "apps.task_class_tasks"

Events = Callable[..., list[dict[str, Any]]]


@pytest.fixture
def events(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Events:
    """``events(name)``: the event lines written so far, by every process, in order."""
    path = tmp_path / "events.jsonl"
    monkeypatch.setenv(t.EVENTS, str(path))

    def read(name: str | None = None) -> list[dict[str, Any]]:
        if not path.exists():
            return []
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [line for line in lines if name is None or line["event"] == name]

    return read


@pytest.fixture
def start(start_worker: StartWorker) -> StartWorker:
    return workers_of(start_worker, APP)


# -- handlers -------------------------------------------------------------------------------


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_handlers_run_where_the_task_runs_with_celerys_arguments(
    app: Conveyor, start: StartWorker, events: Events, pool: str
) -> None:
    # Given a worker, and tasks whose base class defines every handler
    worker = start("-P", pool, "-c", "1").wait_ready()

    # When one succeeds, one fails and one retries once then succeeds
    ok = t.handled_add.delay(2, 3)
    bad = t.handled_fail.delay("broken")
    retried = t.handled_retry.apply_async((7,))
    assert ok.get(timeout=15) == 5
    with pytest.raises(ValueError, match="broken"):
        bad.get(timeout=15)
    assert retried.get(timeout=15) == 7

    # Then each handler ran once per moment, with Celery's arguments
    by_id = {e["task_id"]: e for e in events("before_start")}
    assert by_id[ok.id]["args"] == [2, 3]
    assert by_id[ok.id]["kwargs"] == {}
    [success] = [e for e in events("on_success") if e["task_id"] == ok.id]
    assert (success["retval"], success["args"], success["kwargs"]) == (5, [2, 3], {})
    [failure] = events("on_failure")
    assert failure["task_id"] == bad.id
    assert failure["exc"] == "ValueError: broken"
    assert failure["args"] == ["broken"]
    assert (failure["einfo"], failure["traceback"]) == ("ExceptionInfo", True)
    [retry] = events("on_retry")
    assert (retry["task_id"], retry["exc"], retry["args"]) == (retried.id, "KeyError: 'again'", [7])
    returns = {(e["task_id"], e["status"]) for e in events("after_return")}
    assert returns == {(ok.id, "SUCCESS"), (bad.id, "FAILURE"), (retried.id, "SUCCESS")}
    # ... in the process that ran the task: a prefork child, else the worker itself
    runners = {e["pid"] for e in events() if e["event"] != "ran"}
    if pool == "prefork":
        assert worker.pid not in runners
        assert {e["ppid"] for e in events()} == {worker.pid}
    else:
        assert runners == {worker.pid}


def test_a_task_written_as_a_class_runs_on_the_worker(app: Conveyor, start: StartWorker) -> None:
    start("-P", "threads", "-c", "1").wait_ready()
    assert t.multiply.delay(6, 7).get(timeout=15) == 42
    assert t.multiply.name == "apps.task_class_tasks.multiply"


# -- states ---------------------------------------------------------------------------------


def test_a_waiting_client_sees_the_tasks_own_state_and_its_meta(
    app: Conveyor, start: StartWorker, tmp_path: Path
) -> None:
    # Given a task that reports PROGRESS, then waits for the test's go-ahead
    start("-P", "prefork", "-c", "1").wait_ready()
    gate = tmp_path / "go"
    result = t.progress.delay(str(gate))

    # Then a client sees the custom state and its meta while it runs
    wait_until(lambda: result.state == "PROGRESS", 15, "the PROGRESS state")
    assert result.status == "PROGRESS"
    assert result.info == {"current": 1, "total": 2}
    assert result.result == {"current": 1, "total": 2}
    assert not result.ready()

    # When it is let go, Then its return value replaces the state
    gate.touch()
    assert result.get(timeout=15) == "done"
    assert result.state == states.SUCCESS


def test_started_carries_the_pid_and_hostname_of_the_process_that_runs_it(
    app: Conveyor, start: StartWorker, tmp_path: Path
) -> None:
    worker = start("-P", "prefork", "-c", "1").wait_ready()
    gate = tmp_path / "go"
    result = t.started.delay(str(gate))
    wait_until(lambda: result.state == states.STARTED, 15, "the STARTED state")
    info = result.info
    assert info["hostname"].startswith("w1@")
    gate.touch()
    assert result.get(timeout=15) == info["pid"]
    assert info["pid"] != worker.pid


def test_the_info_of_a_failure_is_the_exception(app: Conveyor, start: StartWorker) -> None:
    start("-P", "threads", "-c", "1").wait_ready()
    result = fail.delay("nope")
    with pytest.raises(ValueError, match="nope"):
        result.get(timeout=15)
    assert isinstance(result.info, ValueError)
    assert str(result.info) == "nope"


# -- Ignore and Reject ------------------------------------------------------------------------


def test_ignore_acks_the_message_and_stores_nothing_nor_calls_back(
    app: Conveyor, start: StartWorker, events: Events
) -> None:
    # Given a task that raises Ignore, with a callback linked
    start("-P", "threads", "-c", "1").wait_ready()
    result = t.ignored.apply_async(link=t.json_errback.si("x", "y", "z"))

    # When it has run
    wait_until(lambda: events("ran"), 15, "the task to run")
    wait_until(lambda: app.broker.stats(["celery"])[0].in_flight == 0, 15, "the ack")

    # Then nothing was stored, nothing was left in the queue, and no callback ran
    assert result.state == states.PENDING
    stats = app.broker.stats(["celery"])[0]
    assert (stats.ready, stats.delayed, stats.dead) == (0, 0, 0)
    assert events("json_errback") == []


def test_a_result_stored_by_hand_before_ignore_is_the_result(
    app: Conveyor, start: StartWorker
) -> None:
    start("-P", "threads", "-c", "1").wait_ready()
    assert t.stores_then_ignores.delay(["tweet"]).get(timeout=15) == ["tweet"]


def test_reject_with_requeue_sends_the_message_back_and_the_attempt_counts(
    app: Conveyor, start: StartWorker, events: Events
) -> None:
    start("-P", "prefork", "-c", "1").wait_ready()
    result = t.reject_once.delay()
    assert result.get(timeout=15) == 2
    assert [e["delivery"] for e in events("ran")] == [1, 2]


def test_reject_without_requeue_dead_letters_the_message_with_the_reason(
    app: Conveyor, start: StartWorker
) -> None:
    start("-P", "threads", "-c", "1").wait_ready()
    result = t.reject_for_good.delay("bad input")
    [dead] = wait_until(lambda: app.broker.dead_letters("celery"), 15, "the dead letter")
    assert dead.id == result.id
    assert "bad input" in dead.reason
    assert result.state == states.PENDING


# -- replace ----------------------------------------------------------------------------------


def test_a_replaced_task_takes_the_replacements_value_and_keeps_its_callbacks(
    app: Conveyor, start: StartWorker, events: Events
) -> None:
    # Given a worker, and a task that replaces itself with add(x, 10), a link on it
    start("-P", "threads", "-c", "2").wait_ready()
    result = t.replaced_by_add.apply_async((5,), link=add.s(1000))

    # Then its own id holds the replacement's value
    assert result.get(timeout=15) == 15
    # ... and its link ran with that value, as its child
    [child] = wait_until(lambda: result.children, 15, "the task's children")
    assert child.get(timeout=15) == 1015


def test_a_task_replaced_with_a_chain_or_a_group_inside_a_chain(
    app: Conveyor, start: StartWorker
) -> None:
    start("-P", "threads", "-c", "2").wait_ready()
    # a chain: (3 + 1) + 100, then the chain the replaced task was part of goes on
    assert chain(t.replaced_by_chain.s(3), add.s(1)).delay().get(timeout=15) == 105
    # a group: the replaced task's value is the list of the group's values
    assert t.replaced_by_group.delay(3).get(timeout=15) == [0, 2, 4]
    # a chord's header task: its replacement counts for the chord, with its value
    assert chord([t.replaced_by_add.s(1), add.s(2, 2)], t.summed.s()).delay().get(15) == 15


# -- error callbacks ----------------------------------------------------------------------------


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_errbacks_get_celerys_arguments_or_the_id_or_json_by_their_parameters(
    app: Conveyor, start: StartWorker, events: Events, pool: str
) -> None:
    # Given a failing task with three kinds of error callback linked
    worker = start("-P", pool, "-c", "1").wait_ready()
    result = fail.apply_async(
        ("boom",),
        link_error=[t.celery_errback.s(), t.id_errback.s(), t.json_errback.s()],
    )
    with pytest.raises(ValueError, match="boom"):
        result.get(timeout=15)
    wait_until(lambda: events("json_errback") and events("id_errback"), 15, "the sent ones")

    # Then Celery's kind was called where the task ran, after its failure was stored
    [called] = events("celery_errback")
    assert called["request_id"] == result.id
    assert called["request_args"] == ["boom"]
    assert called["exc"] == "Boom: boom"
    assert called["traceback"].startswith("Traceback")
    assert called["stored"] == states.FAILURE
    if pool == "prefork":
        assert called["ppid"] == worker.pid
    # ... the one-argument kind got the id, the JSON kind (task_id, exc_type, message)
    assert [e["task_id"] for e in events("id_errback")] == [result.id]
    [sent] = events("json_errback")
    assert (sent["task_id"], sent["exc_type"], sent["message"]) == (
        result.id,
        "apps.tasks.Boom",
        "boom",
    )


def test_the_worker_calls_celery_style_errbacks_the_tasks_process_could_not(
    app: Conveyor, start: StartWorker, events: Events
) -> None:
    # Given a task ended at its hard time limit (prefork kills its process)
    worker = start("-P", "prefork", "-c", "1").wait_ready()
    result = t.overruns.apply_async(link_error=t.celery_errback.s())
    with pytest.raises(TimeLimitExceeded):
        result.get(timeout=15)

    # Then the worker called the errback itself, with the stored failure, as Celery's
    # main process does
    [called] = wait_until(lambda: events("celery_errback"), 15, "the errback")
    assert (called["pid"], called["request_id"]) == (worker.pid, result.id)
    assert called["exc"].startswith("TimeLimitExceeded")
    assert called["stored"] == states.FAILURE


def test_a_chords_body_errbacks_get_the_chord_error_by_their_parameters(
    app: Conveyor, start: StartWorker, events: Events
) -> None:
    # Given a chord whose header fails, its body linked to both kinds of errback
    start("-P", "threads", "-c", "2").wait_ready()
    body = t.summed.s().on_error(t.celery_errback.s()).on_error(t.id_errback.s())
    result = chord([fail.s("header"), add.s(1, 1)], body).delay()
    with pytest.raises(ChordError):
        result.get(timeout=15)

    # Then Celery's kind got a request of the body's, the ChordError and no traceback
    [called] = wait_until(lambda: events("celery_errback"), 15, "the errback")
    assert called["request_id"] == result.id
    assert called["exc"].startswith("ChordError")
    assert called["traceback"] is None
    # ... and the one-argument kind the body's id, as Celery gives it
    [by_id] = wait_until(lambda: events("id_errback"), 15, "the id errback")
    assert by_id["task_id"] == result.id


# -- shared tasks, waiting inside a task, task loggers ------------------------------------------


def test_a_shared_task_runs_on_the_worker_and_sends_with_the_default_app(
    app: Conveyor, start: StartWorker
) -> None:
    start("-P", "threads", "-c", "1").wait_ready()
    app.set_default()
    try:
        assert t.shared_mul.name == "apps.task_class_tasks.shared_mul"
        assert t.shared_mul.delay(6, 7).get(timeout=15) == 42
        assert app.tasks["apps.task_class_tasks.shared_mul"].app is app
    finally:
        current.set_default_app(None)


def test_get_inside_a_task_raises_unless_told_it_is_safe(app: Conveyor, start: StartWorker) -> None:
    start("-P", "prefork", "-c", "2").wait_ready()
    with pytest.raises(RuntimeError, match=r"Never call result\.get\(\) within a task"):
        t.waits_inside.delay(2).get(timeout=15)
    assert t.waits_inside_allowed.delay(2).get(timeout=15) == 4


def test_a_result_sent_with_ignore_result_gets_none_at_once(
    app: Conveyor, start: StartWorker
) -> None:
    start("-P", "threads", "-c", "1").wait_ready()
    assert add.apply_async((1, 2), ignore_result=True).get(timeout=0.5) is None
    assert add.apply_async((1, 2), ignore_result=False).get(timeout=15) == 3


def test_a_task_loggers_records_carry_the_task_name_and_id(
    app: Conveyor, start: StartWorker
) -> None:
    worker = start("-P", "prefork", "-c", "1", "--log-format", "json").wait_ready()
    result = t.logs.delay(3)
    assert result.get(timeout=15) == 3

    def logged() -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in worker.stderr_text().splitlines() if line[:1] == "{"]
        return [line for line in lines if line.get("logger") == "apps.task_class_tasks"]

    [line] = wait_until(logged, 15, "the task's log line")
    assert line["message"] == "adding 3"
    assert (line["task_name"], line["task_id"]) == ("apps.task_class_tasks.logs", result.id)


# -- Flask's pattern ----------------------------------------------------------------------------


@pytest.fixture
def flask_app(app: Conveyor) -> Iterator[Conveyor]:
    """The Flask-style app, on this test's broker (its workers read the same environment)."""
    made: Conveyor = t.flask_app
    made.close()
    yield made
    made.close()


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_flasks_task_cls_runs_every_task_inside_the_app_context(
    flask_app: Conveyor, start_worker: StartWorker, pool: str
) -> None:
    start_worker("-P", pool, "-c", "1", app=f"{APP}:flask_app").wait_ready()
    task = flask_app.tasks["flask.in_app_context"]
    assert isinstance(task, t.FlaskTask)
    assert task.delay().get(timeout=15) == "web-app"
