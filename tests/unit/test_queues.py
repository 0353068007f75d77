"""Declared queues (``task_queues``), ``conveyor.Queue``, kombu's queues, and routing by key."""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from conveyor import ConfigurationError, Conveyor, Exchange, Queue
from conveyor.brokers.base import Delivery
from conveyor.config import Settings
from conveyor.queues import Queues, as_queues

MakeApp = Callable[..., Conveyor]


def queued(app: Conveyor, queue: str) -> list[Delivery]:
    """The messages waiting in ``queue`` (leased, then handed back)."""
    deliveries = app.broker.fetch([queue], 100, consumer="test", timeout=0)
    for delivery in deliveries:
        app.broker.release(delivery)
    return deliveries


def kombu_like(name: str, exchange: str = "", exchange_type: str = "direct", key: str = "") -> Any:
    """An object shaped as kombu's ``Queue`` (its ``Exchange('')`` means no exchange)."""
    return SimpleNamespace(
        name=name,
        exchange=SimpleNamespace(name=exchange, type=exchange_type),
        routing_key=key,
        queue_arguments={"x-max-priority": 10},
        bindings=set(),
    )


# --- Queue ---------------------------------------------------------------------------------------


def test_a_queue_keeps_celerys_arguments_and_fills_nothing_in_itself() -> None:
    queue = Queue("video", "media", "media.video", {"x-max-priority": 10}, durable=True)
    assert (queue.name, queue.exchange, queue.routing_key) == ("video", "media", "media.video")
    assert queue.queue_arguments == {"x-max-priority": 10}
    assert queue.options == {"durable": True}
    assert queue == Queue("video", "media", "media.video", {"x-max-priority": 10})
    assert "routing_key='media.video'" in repr(queue)


def test_a_queue_takes_an_exchange_object_with_its_type() -> None:
    queue = Queue("feeds", exchange=SimpleNamespace(name="feed", type="topic"))
    assert (queue.exchange, queue.exchange_type) == ("feed", "topic")


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda: Queue(""), ValueError),
        (lambda: Queue("q", exchange_type="headers"), ValueError),
        (lambda: Queue("q", routing="x"), TypeError),
    ],
)
def test_a_queue_refuses_what_conveyor_cannot_honour(make: Callable[[], Any], error: type) -> None:
    with pytest.raises(error):
        make()


@pytest.mark.parametrize(
    ("bound", "exchange_type", "key", "matches"),
    [
        ("images", "direct", "images", True),
        ("images", "direct", "images.png", False),
        ("images.*", "topic", "images.png", True),
        ("images.*", "topic", "images.png.large", False),
        ("images.#", "topic", "images", True),
        ("images.#", "topic", "images.png.large", True),
        ("*.png", "topic", "images.png", True),
        ("#.png", "topic", "a.b.png", True),
        ("#.png", "topic", "a.b.jpg", False),
        ("anything", "fanout", "whatever", True),
    ],
)
def test_routing_keys_match_as_amqp_exchanges_do(
    bound: str, exchange_type: str, key: str, matches: bool
) -> None:
    assert Queue("q", routing_key=bound, exchange_type=exchange_type).matches(key) is matches


# --- task_queues ---------------------------------------------------------------------------------


def test_task_queues_takes_queues_names_and_kombu_like_objects() -> None:
    # Given queues of every form Celery configs use
    conf = Settings(task_queues=[Queue("a"), "b", kombu_like("c", "media", "topic", "c.*")])
    # Then they are kept as conveyor Queues, an empty kombu exchange as none
    assert conf.task_queues == (
        Queue("a"),
        Queue("b"),
        Queue("c", "media", "c.*", {"x-max-priority": 10}, exchange_type="topic"),
    )
    assert Settings(task_queues=[kombu_like("d")]).task_queues == (
        Queue("d", queue_arguments={"x-max-priority": 10}),
    )


@pytest.mark.skipif(
    importlib.util.find_spec("kombu") is None,
    reason="kombu is not installed (it is not a dependency of conveyor)",
)
def test_task_queues_takes_kombus_own_queue_objects() -> None:
    from kombu import Exchange
    from kombu import Queue as KombuQueue

    conf = Settings(
        task_queues=[KombuQueue("media", Exchange("media", type="topic"), routing_key="media.#")]
    )
    assert conf.task_queues == (Queue("media", "media", "media.#", exchange_type="topic"),)


def test_task_queues_takes_celery_3s_dict_form() -> None:
    conf = Settings(
        CELERY_QUEUES={"cpu": {"exchange": "cpu", "exchange_type": "topic", "binding_key": "cpu.#"}}
    )
    assert conf.task_queues == (Queue("cpu", "cpu", "cpu.#", exchange_type="topic"),)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("celery", "a list of queues"),
        ([Queue("a"), "a"], "queue 'a' is declared twice"),
        ([SimpleNamespace(name="a", bindings={"x", "y"})], "several bindings"),
        ([3], "not 3"),
        ({"a": {"exchange_type": "headers"}}, "exchange type 'headers'"),
    ],
)
def test_a_wrong_task_queues_is_refused_with_the_reason(value: object, why: str) -> None:
    with pytest.raises(ConfigurationError, match="task_queues must be") as raised:
        Settings(task_queues=value)
    assert why in str(raised.value)


def test_an_empty_task_queues_means_the_default_queue_alone() -> None:
    conf = Settings(task_queues=[], task_default_queue="main")
    assert conf.task_queues is None
    assert conf.declared_queues().names == ["main"]


def test_declared_queues_fill_in_celerys_defaults() -> None:
    # Given queues declared without exchange, routing key or type
    conf = Settings(
        task_queues=[Queue("a"), Queue("b", routing_key="b.#")],
        task_default_exchange="tasks",
        task_default_exchange_type="topic",
    )
    # Then each is on the default exchange, with the default type, found by its name
    a, b = conf.declared_queues()
    assert (a.exchange, a.routing_key, a.exchange_type) == ("tasks", "a", "topic")
    assert (b.exchange, b.routing_key, b.exchange_type) == ("tasks", "b.#", "topic")


def test_declared_queues_follow_the_settings_they_come_from() -> None:
    conf = Settings()
    assert conf.declared_queues().names == ["celery"]
    conf.task_queues = ["x", "y"]
    assert conf.declared_queues().names == ["x", "y"]
    del conf.task_queues
    conf.task_default_queue = "main"
    assert conf.declared_queues().names == ["main"]


# --- what a worker consumes ----------------------------------------------------------------------


def test_a_worker_without_Q_consumes_every_declared_queue() -> None:
    conf = Settings(task_queues=["high", "low"])
    assert conf.declared_queues().consumed(None) == ["high", "low"]
    assert Settings(task_default_queue="main").declared_queues().consumed(None) == ["main"]


def test_Q_may_name_any_queue_while_missing_queues_are_created() -> None:
    queues = Settings(task_queues=["high"]).declared_queues()
    assert queues.consumed(["other", "high", "other"]) == ["other", "high"]


def test_Q_naming_an_undeclared_queue_is_refused_when_missing_queues_are_not_created() -> None:
    queues = Settings(task_queues=["high"], task_create_missing_queues=False).declared_queues()
    with pytest.raises(ConfigurationError, match=r"queue 'other' is not in task_queues.*high"):
        queues.consumed(["high", "other"])


# --- sending -------------------------------------------------------------------------------------


def test_sending_to_an_undeclared_queue_raises_and_sends_nothing(make_app: MakeApp) -> None:
    # Given declared queues, and no creation of others
    app = make_app(task_queues=["high", "low"], task_create_missing_queues=False)
    task = app.task(name="proj.add")(lambda x, y: x + y)

    # When a task is sent to a queue that is not declared, or to the undeclared default
    with pytest.raises(ConfigurationError, match="queue 'nowhere' is not in task_queues"):
        task.apply_async((1, 2), queue="nowhere")
    with pytest.raises(ConfigurationError, match="queue 'celery' is not in task_queues"):
        task.delay(1, 2)

    # Then nothing was sent; a declared queue still works
    assert queued(app, "nowhere") == []
    assert queued(app, "celery") == []
    task.apply_async((1, 2), queue="low")
    assert len(queued(app, "low")) == 1


def test_sending_to_any_queue_works_while_missing_queues_are_created(make_app: MakeApp) -> None:
    app = make_app(task_queues=["high"])
    app.send_task("proj.any", queue="elsewhere")
    assert len(queued(app, "elsewhere")) == 1


@pytest.mark.parametrize(
    ("route", "queue"),
    [
        pytest.param({"routing_key": "media.video.encode"}, "video", id="topic-key"),
        pytest.param({"routing_key": "feed.import"}, "feeds", id="direct-key"),
        pytest.param({"exchange": "media", "routing_key": "media.image"}, "images", id="exchange"),
        pytest.param({"queue": "feeds", "routing_key": "media.video.x"}, "feeds", id="queue-wins"),
    ],
)
def test_a_route_by_routing_key_reaches_the_one_bound_queue(
    make_app: MakeApp, route: dict[str, str], queue: str
) -> None:
    # Given queues bound to keys, as in Celery's routing guide
    app = make_app(
        task_queues=[
            Queue(
                "video",
                exchange=SimpleNamespace(name="media", type="topic"),
                routing_key="media.video.#",
            ),
            Queue("images", exchange="media", routing_key="media.image", exchange_type="direct"),
            Queue("feeds", routing_key="feed.import"),
        ],
        task_routes={"proj.*": route},
    )
    # When a routed task is sent
    app.send_task("proj.work")
    # Then it is in the queue its routing key reaches
    assert [d.id for d in queued(app, queue)], queue


def test_apply_async_takes_celerys_routing_key_and_exchange(make_app: MakeApp) -> None:
    app = make_app(
        task_queues=[Queue("a", routing_key="jobs.a"), Queue("b", "other", routing_key="jobs.b")]
    )
    task = app.task(name="proj.job")(lambda: None)
    task.apply_async(routing_key="jobs.a")
    task.apply_async(exchange="other", routing_key="jobs.b")
    assert (len(queued(app, "a")), len(queued(app, "b"))) == (1, 1)


@pytest.mark.parametrize(
    ("key", "error"),
    [
        ("media.audio", r"no queue in task_queues is bound to routing key 'media.audio'"),
        ("media.video", r"routing key 'media.video' matches queues video, any-video"),
    ],
)
def test_a_routing_key_reaching_no_queue_or_several_is_refused(
    make_app: MakeApp, key: str, error: str
) -> None:
    # Where AMQP would drop the message, or copy it to each queue, the send fails instead
    app = make_app(
        task_queues=[
            Queue("video", routing_key="media.video"),
            Queue("any-video", routing_key="*.video", exchange_type="topic"),
            Queue("images", routing_key="media.image.*", exchange_type="topic"),
        ]
    )
    with pytest.raises(ConfigurationError, match=error):
        app.send_task("proj.work", routing_key=key)


def test_without_task_queues_the_default_routing_key_reaches_the_default_queue(
    make_app: MakeApp,
) -> None:
    app = make_app(task_default_queue="main", task_default_routing_key="main.tasks")
    app.send_task("proj.work", routing_key="main.tasks")
    app.send_task("proj.work", exchange="main")  # exchange alone: the default routing key
    assert len(queued(app, "main")) == 2


def test_a_route_may_name_a_queue_object(make_app: MakeApp) -> None:
    app = make_app(task_routes={"proj.*": {"queue": Queue("objects")}})
    app.send_task("proj.work")
    assert len(queued(app, "objects")) == 1


# --- task_routes forms ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "routes",
    [
        pytest.param({re.compile(r"(video|image)\.tasks\..*"): "media"}, id="regex"),
        pytest.param([[("video.*", "media"), ("other.*", "other")]], id="pairs"),
        pytest.param(
            ([(re.compile("nope"), "x"), ("video.tasks.*", {"queue": "media"})],), id="both"
        ),
    ],
)
def test_task_routes_take_celerys_regex_and_pair_list_forms(make_app: MakeApp, routes: Any) -> None:
    app = make_app(task_routes=routes)
    app.send_task("video.tasks.encode")
    assert len(queued(app, "media")) == 1


def test_queues_object_is_usable_alone() -> None:
    queues = Queues([Queue("a", routing_key="x")], default_queue="a", create_missing=False)
    assert "a" in queues
    assert "b" not in queues
    assert queues.destination({}, {"routing_key": "x"}) == "a"
    assert as_queues(("a", "b")) == (Queue("a"), Queue("b"))


def test_an_exchange_names_the_bindings_of_its_queues_and_refuses_unknown_types() -> None:
    media = Exchange("media", type="direct", durable=True)
    video = Queue("videos", media, routing_key="media.video")
    assert (video.exchange, video.exchange_type) == ("media", "direct")
    assert video.matches("media.video")
    assert not video.matches("media.image")
    assert Exchange("media") == media
    with pytest.raises(ValueError, match="headers"):
        Exchange("x", type="headers")
