"""The snippets of Celery's Routing Tasks user guide (``apps.guide_routing``): each task
lands in the queue the guide says, and a worker consuming that queue runs it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from apps import guide_routing
from harness import StartWorker, ids_in_queue, workers_of

from conveyor import Conveyor

pytestmark = pytest.mark.brokers("sqlite")


@pytest.fixture
def routing_app(app: Conveyor) -> Iterator[Conveyor]:
    """The guide's app, on this test's broker (``app`` set the environment)."""
    yield guide_routing.app
    guide_routing.app.close()


def test_each_route_of_the_guide_puts_its_task_in_its_queue(routing_app: Conveyor) -> None:
    sent = {
        "feed_tasks": guide_routing.import_feed.delay("http://cnn.com/rss"),
        "web": guide_routing.render_page.delay(),
        "media": guide_routing.resize_image.delay(),
        "compress": guide_routing.compress_video.delay(),
        "default": guide_routing.add.delay(),
        # "Sending a task to a queue by routing key": through the declared bindings
        "images": guide_routing.add.apply_async(exchange="media", routing_key="media.image"),
        "videos": guide_routing.add.apply_async(routing_key="media.video"),
    }
    explicit = guide_routing.import_feed.apply_async(
        args=["http://cnn.com/rss"], queue="feed_tasks", routing_key="feed.import"
    )

    for queue, result in sent.items():
        assert result.id in ids_in_queue(routing_app.broker, queue), queue
    assert explicit.id in ids_in_queue(routing_app.broker, "feed_tasks")


def test_a_worker_started_on_one_queue_runs_the_tasks_routed_there(
    routing_app: Conveyor, start_worker: StartWorker
) -> None:
    # "Now you can start server z to only process the feeds queue"
    workers_of(start_worker, "apps.guide_routing")("-Q", "feed_tasks", "-P", "threads").wait_ready()

    feed = guide_routing.import_feed.delay("http://cnn.com/rss")
    other = guide_routing.add.delay()

    assert feed.get(timeout=15) == "feed_tasks"
    assert other.id in ids_in_queue(routing_app.broker, "default")
