"""``task_queues`` with real workers: what a worker consumes without ``-Q``, undeclared queues
refused at the send and at the worker's start, routes by routing key, and the start-up
lines about Celery settings conveyor does not need. The app is configured as a Django
project configures Celery (``apps.queue_tasks``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from apps import queue_tasks
from harness import StartWorker, ids_in_queue, wait_until, workers_of

from conveyor import ConfigurationError, Conveyor, states

APP = "apps.queue_tasks"


@pytest.fixture
def queue_app(app: Conveyor) -> Iterator[Conveyor]:
    """``apps.queue_tasks``' app on this test's broker (``app`` sets the environment)."""
    queue_tasks.configure()
    yield queue_tasks.app
    queue_tasks.app.close()


def test_a_worker_without_Q_consumes_every_queue_of_task_queues(
    queue_app: Conveyor, start_worker: StartWorker
) -> None:
    # Given a worker started without -Q, for an app whose settings.py declares three queues
    worker = workers_of(start_worker, APP)("-c", "2", "-P", "threads").wait_ready()

    # When a task is sent to each of them
    results = {q: queue_tasks.where.apply_async(queue=q) for q in ("high", "low", "mail")}

    # Then the worker consumed all three, and says so in its banner
    assert {q: r.get(timeout=15) for q, r in results.items()} == {
        "high": "high",
        "low": "low",
        "mail": "mail",
    }
    assert "queues:   high, low, mail" in worker.stderr_text()


def test_each_celery_setting_conveyor_does_not_need_is_logged_once_at_start(
    queue_app: Conveyor, start_worker: StartWorker
) -> None:
    # Given settings.py with Celery settings conveyor accepts without needing them
    # When a worker starts
    worker = workers_of(start_worker, APP)("-c", "1", "-P", "solo").wait_ready()

    # Then each has exactly one line, with its reason; settings it uses have none
    lines = [line for line in worker.stderr_text().splitlines() if "has no effect" in line]
    assert sorted(line.split("setting ")[1].split()[0] for line in lines) == sorted(
        name.removeprefix("CELERY_").lower() for name in queue_tasks.UNUSED
    )
    assert any("the worker always sets up the root logger" in line for line in lines)


@pytest.mark.app_env(CONVEYOR_TEST_CREATE_MISSING_QUEUES="0")
def test_an_undeclared_queue_is_refused_at_the_send_and_at_the_worker_start(
    queue_app: Conveyor, start_worker: StartWorker
) -> None:
    # Given task_create_missing_queues = False in settings.py
    assert queue_app.conf.task_create_missing_queues is False

    # When a task is sent to a queue that is not declared, it raises and nothing is sent
    with pytest.raises(ConfigurationError, match="queue 'nowhere' is not in task_queues"):
        queue_tasks.where.apply_async(queue="nowhere")
    assert ids_in_queue(queue_app.broker, "nowhere") == set()

    # And a worker told to consume it refuses to start, naming it
    worker = workers_of(start_worker, APP)("-Q", "high,nowhere", "-P", "solo")
    assert worker.wait(20) != 0
    assert "queue 'nowhere' is not in task_queues" in worker.stderr_text()

    # While a declared queue works as before
    workers_of(start_worker, APP)("-Q", "low", "-P", "solo").wait_ready()
    assert queue_tasks.where.apply_async(queue="low").get(timeout=15) == "low"


def test_routes_by_routing_key_reach_the_queue_bound_to_it(
    queue_app: Conveyor, start_worker: StartWorker
) -> None:
    # Given a worker of the "high" queue alone (bound to "high.#")
    workers_of(start_worker, APP)("-Q", "high", "-P", "solo").wait_ready()

    # When a task routed by routing key "high.urgent" is sent, and one with routing_key=
    routed = queue_tasks.urgent.delay()
    keyed = queue_tasks.where.apply_async(routing_key="high.reports")
    low = queue_tasks.where.apply_async(routing_key="low.batch")

    # Then both reach "high" and run there; "low.batch" waits in "low"
    assert routed.get(timeout=15) == "high"
    assert keyed.get(timeout=15) == "high"
    assert wait_until(lambda: ids_in_queue(queue_app.broker, "low"), 5, "the low queue") == {low.id}
    assert low.state == states.PENDING
