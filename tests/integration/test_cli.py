"""The ``conveyor`` command, run as a real process against a real broker (SQLite, Redis)."""

from __future__ import annotations

import json
import re
import uuid

import pytest
from apps import tasks
from harness import RunCli, StartWorker, queue_stats, wait_until

import conveyor
from conveyor import Conveyor


def test_call_sends_a_task_and_result_wait_prints_its_value_as_json(
    app: Conveyor, start_worker: StartWorker, conveyor_cli: RunCli
) -> None:
    # Given a running worker
    start_worker("-c", "2").wait_ready()

    # When a task is sent from the command line
    called = conveyor_cli("call", "apps.tasks.add", "--args", "[1, 2]")

    # Then the command prints the task's id, and the task runs
    assert called.returncode == 0, called.stderr
    task_id = called.stdout.strip()
    assert str(uuid.UUID(task_id)) == task_id
    assert app.AsyncResult(task_id).get(timeout=10) == 3
    # ... and `result --wait` prints its state and value as JSON
    shown = conveyor_cli("result", task_id, "--wait", "--timeout", "10")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == {"id": task_id, "state": "SUCCESS", "result": 3}


def test_result_of_a_failed_task_prints_the_exception_and_exits_non_zero(
    app: Conveyor, start_worker: StartWorker, conveyor_cli: RunCli
) -> None:
    # Given a task that failed, sent with keyword arguments from the command line
    start_worker("-c", "1").wait_ready()
    called = conveyor_cli("call", "apps.tasks.fail", "--kwargs", '{"message": "no luck"}')
    task_id = called.stdout.strip()

    # When its result is asked for
    shown = conveyor_cli("result", task_id, "--wait", "--timeout", "10")

    # Then the JSON names the exception, and the exit code says it failed
    assert shown.returncode == 1
    assert json.loads(shown.stdout) == {
        "id": task_id,
        "state": "FAILURE",
        "exception": "Boom: no luck",
    }


def test_queues_shows_a_table_of_each_queue_and_its_counts(
    app: Conveyor, conveyor_cli: RunCli
) -> None:
    # Given three waiting tasks and one delayed, in the default queue, and one elsewhere
    for i in range(3):
        tasks.record.delay(i)
    tasks.record.apply_async((9,), countdown=600)
    tasks.record.apply_async((0,), queue="reports")

    # When the queues are listed
    shown = conveyor_cli("queues")

    # Then a table shows each queue's ready, delayed, in-flight and dead counts
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"queue\W+ready\W+delayed\W+in flight\W+dead", shown.stdout)
    assert re.search(r"celery\W+3\W+1\W+0\W+0\W", shown.stdout), shown.stdout
    assert re.search(r"reports\W+1\W+0\W+0\W+0\W", shown.stdout), shown.stdout


def test_purge_without_force_asks_and_with_force_deletes_waiting_messages(
    app: Conveyor, conveyor_cli: RunCli
) -> None:
    # Given three waiting tasks and one delayed
    for i in range(3):
        tasks.record.delay(i)
    tasks.record.apply_async((9,), countdown=600)

    # When purge is run with no one to answer its question
    asked = conveyor_cli("purge")

    # Then nothing is deleted
    assert asked.returncode != 0
    assert "Delete waiting messages of celery?" in asked.stdout
    assert queue_stats(app.broker).ready == 3

    # When purge is forced
    purged = conveyor_cli("purge", "-f")

    # Then the waiting and delayed messages are gone
    assert purged.returncode == 0, purged.stderr
    assert purged.stdout.strip() == "purged 4 message(s) from 1 queue(s)"
    stats = queue_stats(app.broker)
    assert (stats.ready, stats.delayed) == (0, 0)


def test_dead_letters_can_be_listed_shown_requeued_and_dropped(
    app: Conveyor, start_worker: StartWorker, conveyor_cli: RunCli
) -> None:
    # Given two dead letters: messages naming a task no worker knows
    worker = start_worker("-c", "1").wait_ready()
    first = app.send_task("no.such.task", [1])
    second = app.send_task("no.such.task", [2])
    wait_until(lambda: len(app.broker.dead_letters()) == 2, 10, "two dead letters")
    worker.terminate()
    assert worker.wait(10) == 0

    # When they are listed
    listed = conveyor_cli("dead", "list")

    # Then each shows with its whole id (to pass to the other commands) and its queue
    assert listed.returncode == 0, listed.stderr
    assert first.id in listed.stdout, listed.stdout
    assert second.id in listed.stdout, listed.stdout
    assert "celery" in listed.stdout

    # When one is shown
    shown = conveyor_cli("dead", "show", first.id)

    # Then its reason, delivery history and body are printed
    assert shown.returncode == 0, shown.stderr
    assert f"id:         {first.id}" in shown.stdout
    assert "reason:     NotRegistered: task 'no.such.task' is not registered" in shown.stdout
    assert "deliveries: 1" in shown.stdout
    assert re.search(r"delivered to w1@\S+/\d+ at ", shown.stdout)
    assert '"task":"no.such.task"' in shown.stdout

    # When one is requeued and the other dropped
    requeued = conveyor_cli("dead", "requeue", first.id)
    dropped = conveyor_cli("dead", "drop", second.id)

    # Then the first waits in its queue again and the second is gone for good
    assert (requeued.returncode, requeued.stdout.strip()) == (0, f"requeued {first.id}")
    assert (dropped.returncode, dropped.stdout.strip()) == (0, f"dropped {second.id}")
    stats = queue_stats(app.broker)
    assert (stats.ready, stats.dead) == (1, 0)
    # ... and a dead letter that is not there is an error
    again = conveyor_cli("dead", "drop", second.id)
    assert again.returncode != 0
    assert f"no dead letter {second.id}" in again.stderr


def test_version_prints_the_package_version_without_an_app(conveyor_cli: RunCli) -> None:
    # When `conveyor version` runs with no -A
    shown = conveyor_cli("version", app=None)

    # Then it prints the version alone
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == f"{conveyor.__version__}\n"


@pytest.mark.parametrize("spec", ["apps.tasks", "apps.tasks:app", "apps.tasks.app"])
def test_app_option_resolves_module_module_colon_attr_and_dotted_forms(
    app: Conveyor, conveyor_cli: RunCli, spec: str
) -> None:
    # When a command names the app in one of the forms Celery users write
    called = conveyor_cli("call", "apps.tasks.add", "--args", "[1, 2]", app=spec)

    # Then the app is found, and the task is sent through its broker
    assert called.returncode == 0, called.stderr
    assert queue_stats(app.broker).ready == 1


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("no_such_module", "cannot import 'no_such_module'"),
        ("apps.tasks:nope", "has no attribute 'nope'"),
        ("apps", "no conveyor app found in 'apps'"),
        ("apps.executions", "no conveyor app found in 'apps.executions'"),
    ],
)
@pytest.mark.parametrize("command", [("queues",), ("worker", "-c", "1")])
@pytest.mark.brokers("sqlite")  # the app is never found, so no broker is reached
def test_bad_app_option_is_one_error_line_and_a_non_zero_exit(
    app: Conveyor, conveyor_cli: RunCli, spec: str, says: str, command: tuple[str, ...]
) -> None:
    # When a command is given an app that cannot be found
    ran = conveyor_cli(*command, app=spec)

    # Then it prints one line saying why, and no traceback
    assert ran.returncode != 0
    lines = ran.stderr.strip().splitlines()
    assert len(lines) == 1, ran.stderr
    assert lines[0].startswith("Error: ")
    assert says in lines[0]
    assert "Traceback" not in ran.stderr + ran.stdout
