"""``conveyor.testing.start_worker``: a real worker in a thread of the test process."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor import Conveyor, Task, states
from conveyor.testing import start_worker

WORKER_THREADS = ("conveyor-fetcher", "conveyor-settler", "conveyor-heartbeat")


@pytest.fixture
def app() -> Iterator[Conveyor]:
    app = Conveyor("helper", broker=f"memory://unit-helper-{uuid.uuid4().hex}")
    yield app
    app.close()


def worker_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name in WORKER_THREADS]


def test_a_task_sent_inside_the_block_runs_and_returns_its_value(app: Conveyor) -> None:
    # Given a task and a worker running for the app
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    with start_worker(app):
        # When the task is sent
        result = add.delay(2, 3)

        # Then the worker runs it and the result comes back
        assert result.get(timeout=5) == 5
        assert result.state == states.SUCCESS


def test_a_failing_task_reports_its_exception(app: Conveyor) -> None:
    # Given a task that raises
    @app.task
    def explode(reason: str) -> None:
        raise ValueError(reason)

    with start_worker(app):
        # When it is sent and waited for
        result = explode.delay("planned")

        # Then get() re-raises the task's own exception and the state is FAILURE
        with pytest.raises(ValueError, match="planned"):
            result.get(timeout=5)
        assert result.failed()
        assert result.traceback is not None
        assert "ValueError: planned" in result.traceback


def test_a_bound_task_sees_its_request(app: Conveyor) -> None:
    # Given a bound task that returns what its request says
    @app.task(bind=True)
    def introspect(self: Task[..., Any], tag: str) -> dict[str, Any]:
        request = self.request
        return {
            "id": request.id,
            "tag": tag,
            "delivery_count": request.delivery_count,
            "is_eager": request.is_eager,
            "queue": request.queue,
        }

    with start_worker(app):
        # When it is sent
        result = introspect.delay("x")

        # Then it ran as a first delivery of this message, not eagerly
        assert result.get(timeout=5) == {
            "id": result.id,
            "tag": "x",
            "delivery_count": 1,
            "is_eager": False,
            "queue": "celery",
        }


def test_the_worker_serves_the_queues_it_is_given(app: Conveyor) -> None:
    # Given a task routed to its own queue and a worker for that queue
    @app.task(queue="reports")
    def report() -> str:
        return "done"

    with start_worker(app, queues=["reports"]):
        # When the task is sent, Then the worker runs it
        assert report.delay().get(timeout=5) == "done"


def test_leaving_the_block_stops_the_worker(app: Conveyor) -> None:
    # Given a worker that has run a task
    @app.task
    def ping() -> str:
        return "pong"

    with start_worker(app):
        assert ping.delay().get(timeout=5) == "pong"
        assert "conveyor-fetcher" in worker_threads()

    # When the block is left, Then the worker's threads are gone
    assert worker_threads() == []

    # And a task sent afterwards stays in the queue
    ping.delay()
    assert app.broker.stats(["celery"])[0].ready == 1
