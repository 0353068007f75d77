"""A task sent with ``delay`` runs in a real prefork worker and its result comes back."""

from __future__ import annotations

import socket

import pytest
from apps import tasks
from apps.executions import Executions
from harness import StartWorker

from conveyor import Conveyor, states
from conveyor.brokers.base import safe_url


def test_delay_then_get_returns_the_value_computed_in_a_prefork_child(
    app: Conveyor, start_worker: StartWorker, executions: Executions
) -> None:
    # Given a worker with the prefork pool
    worker = start_worker("-c", "2", "-P", "prefork").wait_ready()

    # When a task is sent with delay()
    result = tasks.add.delay(2, 3)

    # Then get() returns its value, and it ran in a child of the worker process
    assert result.get(timeout=10) == 5
    assert result.state == states.SUCCESS
    [run] = executions.events("start")
    assert run.task_id == result.id
    assert run.ppid == worker.pid
    assert run.pid != worker.pid


def test_get_reraises_the_exception_type_the_task_raised(
    app: Conveyor, start_worker: StartWorker
) -> None:
    # Given a worker
    start_worker("-c", "2").wait_ready()

    # When a task that raises is sent
    result = tasks.fail.delay("it broke")

    # Then get() raises the task's own exception class, with its message and remote traceback
    with pytest.raises(tasks.Boom, match="it broke") as raised:
        result.get(timeout=10)
    assert result.state == states.FAILURE
    assert "Remote traceback" in "".join(getattr(raised.value, "__notes__", []))
    assert result.traceback is not None
    assert "raise Boom(message)" in result.traceback
    # and propagate=False hands the exception back instead
    assert isinstance(result.get(timeout=10, propagate=False), tasks.Boom)


def test_bound_task_sees_its_request_id_retries_delivery_count_queue_and_hostname(
    app: Conveyor, start_worker: StartWorker
) -> None:
    # Given a worker named w-bind consuming two queues
    start_worker("-c", "1", "-Q", "celery,other", "-n", "w-bind@%h").wait_ready()

    # When a bound task is sent to the second queue
    result = tasks.whoami.apply_async(queue="other")

    # Then self.request describes this very delivery
    assert result.get(timeout=10) == {
        "id": result.id,
        "task": "apps.tasks.whoami",
        "retries": 0,
        "delivery_count": 1,
        "queue": "other",
        "hostname": f"w-bind@{socket.gethostname()}",
        "is_eager": False,
    }


@pytest.mark.brokers("sqlite")  # the Redis banner: test_redis_guarantees.py
def test_banner_names_the_sqlite_broker_and_warns_it_is_embedded(
    app: Conveyor, start_worker: StartWorker, broker_url: str
) -> None:
    # Given the default configuration: results beside the messages in one SQLite file
    # When a worker starts
    worker = start_worker("-c", "2", "--prefetch-multiplier", "3").wait_ready()

    # Then its banner says which broker and result store it uses, and what that means
    banner = worker.stderr_text()
    assert f"broker:   {broker_url}" in banner
    assert "embedded SQLite" in banner
    assert f"results:  {broker_url}" in banner
    assert "holds at most 6 unacknowledged messages" in banner
    assert "apps.tasks.sleep_then_record" in banner


def test_safe_url_masks_the_password_and_keeps_the_rest() -> None:
    # Given a URL with credentials (a Redis ACL user)
    url = "redis://user:secret@host:6379/0"

    # When it is made safe for a banner or a log line
    shown = safe_url(url)

    # Then the password is gone and everything else is as it was
    assert shown == "redis://user:***@host:6379/0"
    assert "secret" not in shown
    assert safe_url("sqlite:////tmp/conveyor.sqlite3") == "sqlite:////tmp/conveyor.sqlite3"
