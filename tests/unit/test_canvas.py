"""The canvas: signatures, partial arguments, ``|``, chain, group and chord, what they
put in message headers, eager mode, and the callbacks an in-process worker sends."""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import conveyor
from conveyor import (
    Conveyor,
    GroupResult,
    Signature,
    Task,
    chain,
    chord,
    chunks,
    current,
    group,
    signature,
    states,
    xmap,
    xstarmap,
)
from conveyor.backends.base import ResultWrite
from conveyor.canvas import CHAIN, CHORD, GROUP_ID, GROUP_INDEX, LINK, LINK_ERROR
from conveyor.exceptions import ChordError, TimeoutError
from conveyor.message import Message, decode
from conveyor.result import AsyncResult, EagerResult, encode_success
from conveyor.testing import start_worker


class Tasks:
    """A test app's tasks, and what the ones that record saw (they run in threads)."""

    def __init__(self, app: Conveyor):
        self.app = app
        self.lock = threading.Lock()
        self.seen: list[tuple[Any, ...]] = []

        @app.task
        def add(x: int, y: int) -> int:
            return x + y

        @app.task
        def total(values: list[int]) -> int:
            self.note("total", values)
            return sum(values)

        @app.task
        def fail(x: Any = None) -> None:
            raise ValueError(f"failed with {x}")

        @app.task
        def on_error(task_id: str, exc_type: str, message: str) -> None:
            self.note("on_error", task_id, exc_type, message)

        @app.task
        def record(*args: Any) -> Any:
            self.note("record", *args)
            return args[0] if args else None

        @app.task(name="unit.not_json")
        def not_json(x: Any) -> Any:
            return x

        self.add, self.total, self.fail = add, total, fail
        self.on_error, self.record = on_error, record

    def note(self, *event: Any) -> None:
        with self.lock:
            self.seen.append(event)

    def events(self, kind: str) -> list[tuple[Any, ...]]:
        with self.lock:
            return [event[1:] for event in self.seen if event[0] == kind]


@pytest.fixture
def app() -> Iterator[Conveyor]:
    app = Conveyor("unit", broker=f"memory://unit-canvas-{uuid.uuid4().hex}")
    yield app
    app.close()


@pytest.fixture
def t(app: Conveyor) -> Tasks:
    return Tasks(app)


@pytest.fixture
def other_app(app: Conveyor) -> Iterator[Conveyor]:
    """A second app, created after ``app``: the default one, unless one is set."""
    other = Conveyor("other", broker=f"memory://unit-canvas-other-{uuid.uuid4().hex}")
    yield other
    other.close()


@pytest.fixture
def default_app() -> Iterator[Callable[[Conveyor], None]]:
    """``default_app(app)`` makes ``app`` the default; it is unset after the test."""
    yield Conveyor.set_default
    current.set_default_app(None)


def succeeded(app: Conveyor, *results: AsyncResult | GroupResult) -> None:
    """Store a success for each task, as a worker that ran it would (without children)."""
    for result in results:
        payload = encode_success("unit", None)
        app.backend.store(ResultWrite(result.id, states.SUCCESS, payload, 60))


def take(app: Conveyor, queue: str = "celery") -> list[Message]:
    """Every ready message of ``queue``, fetched, acknowledged and decoded, in order."""
    deliveries = app.broker.fetch([queue], 1000, consumer="unit-test", timeout=0)
    app.broker.ack(deliveries)
    return [decode(d.body) for d in deliveries]


def wait_for(probe: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = threading.Event()
    timer = threading.Timer(timeout, deadline.set)
    timer.start()
    try:
        while not deadline.is_set():
            value = probe()
            if value:
                return value
            deadline.wait(0.01)
    finally:
        timer.cancel()
    raise AssertionError("timed out")


# --- the public API ----------------------------------------------------------------------------


def test_the_canvas_is_importable_from_the_top_level() -> None:
    for name in ("chain", "chord", "group", "signature", "Signature", "GroupResult"):
        assert name in conveyor.__all__
    assert conveyor.chain is chain
    assert conveyor.GroupResult is GroupResult


# --- building signatures -----------------------------------------------------------------------


def test_s_keeps_the_task_name_partial_arguments_and_the_app(app: Conveyor, t: Tasks) -> None:
    sig = t.add.s(2, y=3)

    assert isinstance(sig, Signature)
    assert isinstance(sig, dict)  # as in Celery: a signature is a dict
    assert sig.task == t.add.name == sig["task"]
    assert sig.args == (2,)
    assert sig.kwargs == {"y": 3}
    assert sig.options == {}
    assert sig.immutable is False
    assert sig.app is app
    assert sig.type is t.add
    assert repr(sig) == f"{t.add.name}(2, y=3)"


def test_si_is_immutable_and_signature_takes_options(t: Tasks) -> None:
    assert t.add.si(1, 2).immutable is True
    sig = t.add.signature((1, 2), {}, countdown=10, queue="math")
    assert (sig.args, sig.options) == ((1, 2), {"countdown": 10, "queue": "math"})
    assert t.add.signature((1, 2), immutable=True).immutable is True


def test_signature_by_name_with_args_kwargs_options_and_immutable(app: Conveyor) -> None:
    sig = signature(
        "shop.tasks.charge", args=(1,), kwargs={"x": 2}, options={"queue": "q"}, immutable=True
    )
    assert (sig.task, sig.args, sig.kwargs) == ("shop.tasks.charge", (1,), {"x": 2})
    assert sig.options == {"queue": "q"}
    assert sig.immutable is True
    assert sig.app is app  # no app of its own: the default one, the app created last
    # extra keyword arguments are options, as in Celery; app.signature binds the app
    assert app.signature("shop.tasks.charge", (1,), countdown=5).options == {"countdown": 5}
    assert app.signature("shop.tasks.charge").app is app


def test_signature_of_a_task_object_and_of_a_dict(t: Tasks, other_app: Conveyor) -> None:
    assert signature(t.add, args=(1, 2)) == t.add.s(1, 2)
    roundtrip = signature(t.add.s(1, 2).set(queue="q").to_dict())
    assert roundtrip == t.add.s(1, 2).set(queue="q")
    assert roundtrip.app is other_app  # a dict carries no app: the default one (the last)


def test_set_updates_options_and_returns_the_signature(t: Tasks) -> None:
    sig = t.add.s(1)
    assert sig.set(queue="math", priority=7) is sig
    assert sig.options == {"queue": "math", "priority": 7}
    sig.set(immutable=True)
    assert sig.immutable is True


def test_a_signature_without_an_app_cannot_be_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a process with no app at all
    monkeypatch.setattr(current, "_chosen", None)
    monkeypatch.setattr(current, "_latest", None)

    # Then a signature built from a name alone has nothing to send with
    with pytest.raises(TypeError, match="has no app"):
        signature("shop.tasks.charge").delay()


def test_a_name_only_signature_sends_with_the_default_app(
    app: Conveyor, other_app: Conveyor, default_app: Callable[[Conveyor], None]
) -> None:
    # Given two apps, the second created last
    sig = signature("shop.tasks.charge", args=(2, 2))

    # Then a signature without one goes to the app created last
    assert sig.app is other_app
    sig.delay()
    assert [m.task for m in take(other_app)] == ["shop.tasks.charge"]

    # And once an app is set as the default, to that one, whatever was created later
    default_app(app)
    Conveyor("later", broker="memory://unit-canvas-later").close()
    result = signature("shop.tasks.charge", args=(2, 2)).delay()
    [msg] = take(app)
    assert (msg.id, msg.task, msg.args) == (result.id, "shop.tasks.charge", [2, 2])
    assert take(other_app) == []


# --- partial arguments -------------------------------------------------------------------------


def test_given_arguments_come_before_the_partial_ones(t: Tasks) -> None:
    # as in Celery: a chained task gets its parent's result as its FIRST argument
    sig = t.add.s(10)
    clone = sig.clone((5,), {"extra": 1}, queue="q")
    assert clone.args == (5, 10)
    assert clone.kwargs == {"extra": 1}
    assert clone.options == {"queue": "q"}
    assert sig.args == (10,)  # the original is unchanged


def test_an_immutable_signature_ignores_given_arguments(t: Tasks) -> None:
    clone = t.add.si(1, 2).clone((99,), {"y": 100})
    assert (clone.args, clone.kwargs) == ((1, 2), {})


def test_calling_a_signature_runs_the_task_here(t: Tasks) -> None:
    assert t.add.s(2)(40) == 42


def test_clone_is_deep(t: Tasks) -> None:
    sig = t.add.s(1)
    sig.link(t.record.s())
    clone = sig.clone()
    clone.options[LINK][0].set(queue="elsewhere")
    assert sig.options[LINK][0].options == {}


def test_one_signature_repeated_in_a_group_makes_distinct_tasks(app: Conveyor, t: Tasks) -> None:
    sig = t.add.s(1, 1)
    result = group([sig] * 3).apply_async()
    assert isinstance(result, GroupResult)
    assert len({r.id for r in result.results}) == 3
    assert len({m.id for m in take(app)}) == 3
    assert sig.options == {}  # the caller's signature is left as it was


def test_task_id_of_a_chord_names_its_body(app: Conveyor, t: Tasks) -> None:
    result = chord([t.add.s(1, 1)], t.total.s()).apply_async(task_id="the-sum")
    [msg] = take(app)
    assert result.id == "the-sum" == msg.headers[CHORD]["body"]["options"]["task_id"]
    assert msg.id != "the-sum"


def test_link_and_link_error_add_callbacks_once(t: Tasks) -> None:
    sig = t.add.s(1, 2)
    callback, errback = t.record.s(), t.on_error.s()
    assert sig.link(callback) is callback
    assert sig.link_error(errback) is errback
    sig.link(callback)
    assert sig.options == {LINK: [callback], LINK_ERROR: [errback]}
    assert t.add.s(1, 2).on_error(errback).options == {LINK_ERROR: [errback]}


# --- composing -----------------------------------------------------------------------------------


def test_pipes_build_one_flat_chain(t: Tasks) -> None:
    a, b, c, d = t.add.s(1, 1), t.add.s(2), t.add.s(3), t.add.s(4)

    assert isinstance(a | b, chain)
    assert (a | b).tasks == [a, b]
    assert (a | b | c).tasks == [a, b, c]
    assert (a | (b | c)).tasks == [a, b, c]
    assert ((a | b) | (c | d)).tasks == [a, b, c, d]
    assert chain(a, b, c).tasks == chain([a, b, c]).tasks == chain(x for x in (a, b, c)).tasks
    assert repr(a | b) == f"{t.add.name}(1, 1) | {t.add.name}(2)"


def test_group_pipe_task_is_a_chord_and_chord_pipe_task_extends_the_body(t: Tasks) -> None:
    header = group(t.add.s(1, 1), t.add.s(2, 2))
    made = header | t.total.s()
    assert isinstance(made, chord)
    assert made.header is header
    assert made.body == t.total.s()
    longer = made | t.record.s()
    assert isinstance(longer, chord)
    assert isinstance(longer.body, chain)
    assert longer.body.tasks == [t.total.s(), t.record.s()]


def test_group_takes_signatures_a_list_or_a_generator(t: Tasks) -> None:
    sigs = [t.add.s(i, i) for i in range(3)]
    assert group(*sigs).tasks == group(sigs).tasks == group(s for s in sigs).tasks == sigs
    assert len(group(sigs)) == 3
    assert group(t.add.s(1, 1)).tasks == [t.add.s(1, 1)]


def test_chord_header_from_a_list_and_body_later(t: Tasks) -> None:
    made = chord([t.add.s(1, 1), t.add.s(2, 2)])
    assert isinstance(made.header, group)
    assert made.body is None
    assert len(made.tasks) == 2


def test_group_link_links_the_first_task_with_an_immutable_copy(t: Tasks) -> None:
    # as Celery's group.link: the callback cannot get every value, so it gets none
    made = group(t.add.s(1, 1), t.add.s(2, 2))
    callback = t.record.s("x")
    made.link(callback)
    assert made.tasks[0].options[LINK] == [t.record.si("x")]
    assert LINK not in made.tasks[1].options
    assert callback.immutable is False  # the caller's signature is left as it was
    with pytest.raises(ValueError, match="no task"):
        group().link(callback)


def test_group_link_error_links_every_task(t: Tasks) -> None:
    made = group(t.add.s(1, 1), chain(t.add.s(2, 2), t.add.s(3)))
    made.link_error(t.on_error.s())
    assert made.tasks[0].options[LINK_ERROR] == [t.on_error.s()]
    nested = made.tasks[1]
    assert isinstance(nested, chain)
    assert all(task.options[LINK_ERROR] == [t.on_error.s()] for task in nested.tasks)


def test_chain_link_goes_to_the_last_task_and_link_error_to_every_task(t: Tasks) -> None:
    made = chain(t.add.s(1, 1), t.add.s(2))
    made.link(t.record.s())
    made.link_error(t.on_error.s())
    assert LINK not in made.tasks[0].options
    assert made.tasks[1].options[LINK] == [t.record.s()]
    assert all(task.options[LINK_ERROR] == [t.on_error.s()] for task in made.tasks)


@pytest.mark.parametrize(
    "build",
    [
        lambda t: chain(t.add.s(1, 1), t.add.s(2).set(queue="q"), t.add.si(3, 3)),
        lambda t: group(t.add.s(i, i) for i in range(3)),
        lambda t: chord([t.add.s(1, 1), chain(t.add.s(2, 2), t.add.s(1))], t.total.s()),
        lambda t: chain(t.add.s(1, 1), group(t.add.s(1), t.add.s(2)), t.total.s()),
    ],
    ids=["chain", "group", "chord", "nested"],
)
def test_every_kind_survives_a_round_trip_through_a_dict(
    t: Tasks, build: Callable[[Tasks], Signature]
) -> None:
    original = build(t)
    again = signature(original.to_dict())
    assert type(again) is type(original)
    assert again.to_dict() == original.to_dict()
    assert again == original


# --- on the wire ---------------------------------------------------------------------------------


def test_link_and_link_error_travel_in_the_message_headers(app: Conveyor, t: Tasks) -> None:
    # When a task is sent with a callback and an error callback
    result = t.add.apply_async((1, 2), link=t.record.s("x"), link_error=[t.on_error.si()])

    # Then its message carries them, as plain signature dicts, the callback with its
    # task id chosen (it will be the task's child)
    [msg] = take(app)
    assert msg.id == result.id
    [link] = msg.headers[LINK]
    assert link == {
        "task": t.record.name,
        "args": ["x"],
        "kwargs": {},
        "options": {"task_id": link["options"]["task_id"]},
        "subtask_type": None,
        "immutable": False,
    }
    assert msg.headers[LINK_ERROR] == [t.on_error.si().to_dict()]


def test_a_signature_s_own_links_travel_too(app: Conveyor, t: Tasks) -> None:
    sig = t.add.s(1, 2)
    sig.link(t.record.s())
    sig.apply_async(link=t.record.si("also"))
    [msg] = take(app)
    sent = [signature(link) for link in msg.headers[LINK]]
    assert [(s.task, s.args, s.immutable) for s in sent] == [
        (t.record.name, (), False),
        (t.record.name, ("also",), True),
    ]
    assert len({s.id for s in sent}) == 2


def test_a_chain_sends_its_first_task_carrying_the_rest_with_their_ids(
    app: Conveyor, t: Tasks
) -> None:
    # When a chain of three is sent
    result = chain(t.add.s(1, 1), t.add.s(2), t.add.s(3)).apply_async()

    # Then one message is sent: the first task, carrying the other two in order
    [msg] = take(app)
    assert (msg.task, msg.args) == (t.add.name, [1, 1])
    rest = msg.headers[CHAIN]
    assert [step["args"] for step in rest] == [[2], [3]]
    # And every id was chosen up front: the result is the last task's, with parents
    assert isinstance(result, AsyncResult)
    assert result.id == rest[1]["options"]["task_id"]
    assert result.parent is not None
    assert result.parent.id == rest[0]["options"]["task_id"]
    assert result.parent.parent is not None
    assert result.parent.parent.id == msg.id
    assert result.parent.parent.parent is None


def test_options_of_a_chain_call_go_to_its_first_task_and_task_id_names_the_last(
    app: Conveyor, t: Tasks
) -> None:
    result = chain(t.add.s(1, 1), t.add.s(2)).apply_async(queue="first", task_id="the-end")
    [msg] = take(app, "first")
    assert result.id == "the-end" == msg.headers[CHAIN][0]["options"]["task_id"]


def test_a_group_publishes_all_its_tasks_at_once_with_group_id_and_index(
    app: Conveyor, t: Tasks, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a broker that counts publish calls
    calls: list[int] = []
    publish_many = app.broker.publish_many

    def counting(messages: Any) -> Any:
        calls.append(len(messages))
        return publish_many(messages)

    monkeypatch.setattr(app.broker, "publish_many", counting)

    # When a group of five is sent
    result = group(t.add.s(i, i) for i in range(5)).apply_async()

    # Then one publish carried all five, each with the group id and its index
    assert calls == [5]
    messages = take(app)
    assert isinstance(result, GroupResult)
    assert [m.id for m in messages] == [r.id for r in result.results]
    assert [m.headers[GROUP_INDEX] for m in messages] == [0, 1, 2, 3, 4]
    assert {m.headers[GROUP_ID] for m in messages} == {result.id}


def test_a_chord_header_task_carries_the_chord_id_size_and_body(app: Conveyor, t: Tasks) -> None:
    # When a chord of three header tasks is sent
    result = chord([t.add.s(i, i) for i in range(3)], t.total.s().set(queue="sums"))()

    # Then each header message carries the chord: its id, its size and its body
    messages = take(app)
    assert len(messages) == 3
    header = result.parent
    assert isinstance(header, GroupResult)
    for i, msg in enumerate(messages):
        info = msg.headers[CHORD]
        assert info["id"] == header.id
        assert info["size"] == 3
        assert info["body"]["task"] == t.total.name
        assert info["body"]["options"]["queue"] == "sums"
        assert info["body"]["options"]["task_id"] == result.id
        assert "ids" not in info  # header ids follow the pattern <chord id>-<index>
        assert msg.id == f"{header.id}-{i}" == header.results[i].id
        assert msg.ignore_result is False
    assert take(app, "sums") == []  # the body is not sent yet


def test_a_chord_header_chain_carries_the_chord_on_its_last_task(app: Conveyor, t: Tasks) -> None:
    result = chord([chain(t.add.s(1, 1), t.add.s(1)), t.add.s(2, 2)], t.total.s())()
    first, second = take(app)
    header = result.parent
    assert isinstance(header, GroupResult)
    assert CHORD not in first.headers
    [step] = first.headers[CHAIN]
    assert step["options"]["task_id"] == f"{header.id}-0"
    assert step["options"][CHORD]["size"] == 2
    assert second.id == f"{header.id}-1"


def test_chord_with_given_header_ids_lists_them(app: Conveyor, t: Tasks) -> None:
    chord([t.add.s(1, 1).set(task_id="mine"), t.add.s(2, 2)], t.total.s())()
    messages = take(app)
    assert messages[0].id == "mine"
    assert messages[0].headers[CHORD]["ids"] == ["mine", messages[1].id]


def test_a_group_in_a_chord_header_is_flattened_into_it(app: Conveyor, t: Tasks) -> None:
    # When a chord's header holds a group and a task (and another's header is a group)
    result = chord([group(t.add.s(1, 1), t.add.s(2, 2)), t.add.s(3, 3)], t.total.s())()
    chord(group(t.add.s(4, 4), t.add.s(5, 5)), t.total.s())()

    # Then each header task is counted on its own, in order
    messages = take(app)
    first, second = messages[:3], messages[3:]
    chord_id = first[0].headers[CHORD]["id"]
    assert [m.args for m in first] == [[1, 1], [2, 2], [3, 3]]
    assert [m.id for m in first] == [f"{chord_id}-{i}" for i in range(3)]
    assert all(m.headers[CHORD]["size"] == 3 for m in first)
    assert [m.headers[GROUP_INDEX] for m in first] == [0, 1, 2]
    assert [m.args for m in second] == [[4, 4], [5, 5]]
    assert all(m.headers[CHORD]["size"] == 2 for m in second)
    header = result.parent
    assert isinstance(header, GroupResult)
    assert [r.id for r in header.results] == [m.id for m in first]


def test_a_chord_header_refuses_a_chain_that_ends_with_a_group(t: Tasks) -> None:
    with pytest.raises(TypeError, match="ends with a group"):
        chord([chain(t.add.s(1, 1), group(t.add.s(1))), t.add.s(1, 1)], t.total.s())()


def test_times_in_options_travel_as_unix_seconds(app: Conveyor, t: Tasks) -> None:
    when = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    chain(t.add.s(1, 1), t.add.s(2).set(eta=when, expires=dt.timedelta(minutes=5)))()
    [msg] = take(app)
    options = msg.headers[CHAIN][0]["options"]
    assert options["eta"] == when.timestamp()
    assert options["expires"] == 300.0


def test_arguments_that_are_not_json_fail_at_send_time(t: Tasks) -> None:
    with pytest.raises(TypeError, match="JSON"):
        chain(t.add.s(1, 1), t.record.s(object()))()


def test_publishing_blocks_nest_and_an_exception_drops_the_inner_block(
    app: Conveyor, t: Tasks
) -> None:
    with app.publishing() as outer:
        t.add.delay(1, 1)
        with contextlib.suppress(RuntimeError), app.publishing():
            t.add.delay(2, 2)
            raise RuntimeError
        with app.publishing():
            t.add.delay(3, 3)
        assert take(app) == []  # nothing is published before the outermost block ends
        assert len(outer) == 2
    assert [m.args for m in take(app)] == [[1, 1], [3, 3]]


# --- map, starmap, chunks, nested groups --------------------------------------------------------


def test_map_and_starmap_are_one_immutable_call_of_a_built_in_task(t: Tasks) -> None:
    mapped = t.record.map([1, 2])
    assert isinstance(mapped, xmap)
    assert (mapped.task, mapped.subtask_type, mapped.immutable) == ("conveyor.map", "xmap", True)
    assert mapped.kwargs == {"task": t.record.s(), "it": [1, 2]}
    assert repr(mapped) == f"[{t.record.name}(x) for x in [1, 2]]"

    starred = t.add.starmap(zip(range(3), range(3), strict=True))
    assert isinstance(starred, xstarmap)
    assert starred.task == "conveyor.starmap"
    assert starred.kwargs["it"] == [(0, 0), (1, 1), (2, 2)]
    # a dict (as in a message's headers) gives the same signature back
    again = signature(starred.to_dict())
    assert isinstance(again, xstarmap)
    assert again.kwargs == {"task": t.add.s(), "it": [[0, 0], [1, 1], [2, 2]]}


def test_a_map_is_one_message_of_the_built_in_task_routed_as_its_task(app: Conveyor) -> None:
    @app.task(queue="math")
    def square(x: int) -> int:
        return x * x

    # When the map of a task that goes to the queue "math" is sent
    result = square.map([1, 2, 3]).apply_async()

    # Then one message goes there, of the built-in task, with the task and the items
    [msg] = take(app, "math")
    assert (msg.id, msg.task, msg.args) == (result.id, "conveyor.map", [])
    assert msg.kwargs == {"task": square.s().to_dict(), "it": [1, 2, 3]}
    # And a queue given to the call wins
    square.starmap([(2,)]).apply_async(queue="elsewhere")
    assert [m.task for m in take(app, "elsewhere")] == ["conveyor.starmap"]


def test_every_app_has_the_built_in_tasks_but_lists_only_its_own(app: Conveyor, t: Tasks) -> None:
    for name in ("conveyor.map", "conveyor.starmap"):
        assert name in app.tasks
        assert app.tasks[name] is app.get_task(name) is app.tasks.get(name)
        assert name not in list(app.tasks)
    assert t.add.name in list(app.tasks)
    assert app.tasks.get("no.such.task") is None


def test_chunks_split_the_items_into_starmap_parts_sent_as_a_group(app: Conveyor, t: Tasks) -> None:
    made = t.add.chunks(zip(range(10), range(10), strict=True), 3)
    assert isinstance(made, chunks)

    # .group() gives one starmap task per part of 3 (the last one shorter)
    parts = made.group()
    assert isinstance(parts, group)
    assert all(isinstance(part, xstarmap) for part in parts.tasks)
    assert [len(part.kwargs["it"]) for part in parts.tasks] == [3, 3, 3, 1]

    # Calling it sends those four messages at once, and gives a GroupResult of them
    result = made()
    assert isinstance(result, GroupResult)
    messages = take(app)
    assert [m.task for m in messages] == ["conveyor.starmap"] * 4
    assert [m.id for m in messages] == [r.id for r in result.results]
    assert messages[-1].kwargs["it"] == [[9, 9]]
    assert isinstance(signature(made.to_dict()), chunks)
    with pytest.raises(ValueError, match="at least 1"):
        t.add.chunks([(1, 1)], 0)


def test_group_skew_gives_growing_countdowns(t: Tasks) -> None:
    made = group(t.add.s(i, i) for i in range(5)).skew(start=1, stop=3)
    assert [task.options["countdown"] for task in made.tasks] == [1.0, 2.0, 3.0, 3.0, 3.0]
    halves = group(t.add.s(1, 1), t.add.s(2, 2)).skew(step=0.5)
    assert [task.options["countdown"] for task in halves.tasks] == [1.0, 1.5]


def test_a_group_inside_a_group_is_flattened_with_its_options(app: Conveyor, t: Tasks) -> None:
    # When a group holding a group (with its own queue) and a task is sent
    inner = group(t.add.s(1, 1), t.add.s(2, 2)).set(queue="inner")
    result = group(inner, t.add.s(3, 3))()

    # Then its result is flat, one result per task, and the inner tasks kept the queue
    assert isinstance(result, GroupResult)
    assert all(isinstance(r, AsyncResult) for r in result.results)
    inside, outside = take(app, "inner"), take(app)
    assert [m.args for m in inside + outside] == [[1, 1], [2, 2], [3, 3]]
    assert [m.headers[GROUP_INDEX] for m in inside + outside] == [0, 1, 2]
    assert {m.headers[GROUP_ID] for m in inside + outside} == {result.id}


# --- children and saved group results -----------------------------------------------------------


def test_sending_with_links_knows_the_task_s_children_before_it_runs(
    app: Conveyor, t: Tasks
) -> None:
    # When a task is sent with two callbacks
    result = t.add.apply_async((1, 1), link=[t.record.s(), t.add.s(5)])
    [msg] = take(app)
    link_ids = [signature(link).id for link in msg.headers[LINK]]

    # Then it has no children until it succeeded
    assert result.children == []
    succeeded(app, result)
    # And then the handle that sent it knows them: the callbacks, with the ids sent
    assert [child.id for child in result.children] == link_ids
    assert all(child.app is app for child in result.children)
    # While another handle knows only what a worker recorded (nothing, here)
    assert app.AsyncResult(result.id).children == []


def test_freezing_chooses_the_ids_of_the_links_too(app: Conveyor, t: Tasks) -> None:
    sig = t.add.s(1, 1)
    sig.link(t.record.s())
    result = sig.freeze()
    [link] = sig.options[LINK]
    assert isinstance(result, AsyncResult)
    assert link.id is not None
    succeeded(app, result)
    assert [child.id for child in result.children] == [link.id]


def test_each_result_of_a_chain_knows_the_next_step_as_its_child(app: Conveyor, t: Tasks) -> None:
    last = chain(t.add.s(1, 1), t.add.s(2), group(t.add.s(3), t.add.s(4)))()
    assert isinstance(last, GroupResult)
    second = last.parent
    assert isinstance(second, AsyncResult)
    first = second.parent
    assert isinstance(first, AsyncResult)
    succeeded(app, first, second)
    assert first.children == [second]
    [group_child] = second.children
    assert group_child == last


def test_a_saved_group_result_is_restored_by_its_id(
    app: Conveyor, t: Tasks, default_app: Callable[[Conveyor], None]
) -> None:
    # Given a group (one member a chain) whose result is saved
    result = group(t.add.s(1, 1), chain(t.add.s(2, 2), t.add.s(3)))()
    assert isinstance(result, GroupResult)
    assert result.save() is result

    # Then it is restored by id, its members' parents too, from the class or the app
    restored = GroupResult.restore(result.id, app=app)
    assert restored == result
    assert restored is not None
    sent_step, restored_step = result.results[1].parent, restored.results[1].parent
    assert sent_step is not None
    assert restored_step is not None
    assert restored_step.id == sent_step.id
    assert app.GroupResult.restore(result.id) == result
    default_app(app)
    assert GroupResult.restore(result.id) == result
    # And the record is not a task's result under the group id
    assert app.AsyncResult(result.id).state == states.PENDING
    assert GroupResult.restore("no-such-group", app=app) is None
    # And delete() removes it
    restored.delete()
    assert app.GroupResult.restore(result.id) is None
    assert isinstance(app.GroupResult("g", []), GroupResult)


def test_a_saved_group_result_lives_as_long_as_results(app: Conveyor, t: Tasks) -> None:
    app.conf.result_expires = 1.0
    result = group(t.add.s(1, 1))()
    assert isinstance(result, GroupResult)
    result.save()
    assert app.GroupResult.restore(result.id) is not None
    wait_for(lambda: app.GroupResult.restore(result.id) is None)


def test_a_group_result_revokes_every_task(app: Conveyor, t: Tasks) -> None:
    result = group(t.add.s(1, 1), chain(t.add.s(2, 2), t.add.s(3)))()
    assert isinstance(result, GroupResult)
    result.revoke()
    assert [r.state for r in result.results] == [states.REVOKED, states.REVOKED]


# --- eager mode ----------------------------------------------------------------------------------


@pytest.fixture
def eager(app: Conveyor) -> Conveyor:
    app.conf.task_always_eager = True
    return app


def test_eager_chain_group_and_chord_give_their_results(eager: Conveyor, t: Tasks) -> None:
    result = chain(t.add.s(1, 1), t.add.s(2), t.add.s(3))()
    assert isinstance(result, EagerResult)
    assert result.get() == 7
    assert result.parent is not None
    assert result.parent.get() == 4
    assert (t.add.s(1, 1) | t.add.s(2)).delay().get() == 4
    assert group(t.add.s(i, i) for i in range(5))().get() == [0, 2, 4, 6, 8]
    assert chord([t.add.s(i, i) for i in range(5)], t.total.s())().get() == 20
    assert chord([t.add.s(i, i) for i in range(3)])(t.total.s()).get() == 6
    assert chain(t.add.s(1, 1), group(t.add.s(1), t.add.s(2)), t.total.s())().get() == 7
    assert take(eager) == []  # nothing went through the broker


def test_eager_chain_stops_at_a_failure(eager: Conveyor, t: Tasks) -> None:
    result = chain(t.add.s(1, 1), t.fail.s(), t.record.s())()
    assert result.failed()
    with pytest.raises(ValueError, match="failed with 2"):
        result.get()
    assert t.events("record") == []


def test_eager_links_and_error_callbacks_run(eager: Conveyor, t: Tasks) -> None:
    t.add.apply_async((1, 1), link=t.record.s())
    failed = t.fail.apply_async(("x",), link_error=t.on_error.s())
    assert t.events("record") == [(2,)]
    assert t.events("on_error") == [(failed.id, "ValueError", "failed with x")]


def test_eager_chord_with_a_failure_calls_the_body_error_callback_once(
    eager: Conveyor, t: Tasks
) -> None:
    body = t.total.s().on_error(t.on_error.s())
    result = chord([t.add.s(1, 1), t.fail.s(1), t.fail.s(2)], body)()
    assert result.failed()
    with pytest.raises(ChordError, match="failed with 1"):
        result.get()
    [(_culprit, exc_type, message)] = t.events("on_error")
    assert (exc_type, message) == ("ValueError", "failed with 1")
    assert t.events("total") == []


def test_eager_map_starmap_chunks_and_groups_inside_canvases(eager: Conveyor, t: Tasks) -> None:
    assert ~t.total.map([[1, 2], range(10)]) == [3, 45]
    assert t.add.starmap(zip(range(4), range(4), strict=True)).delay().get() == [0, 2, 4, 6]
    assert t.add.chunks(zip(range(5), range(5), strict=True), 2)().get() == [[0, 2], [4, 6], [8]]
    header = [group(t.add.s(1, 1), t.add.s(2, 2)), t.add.s(3, 3)]
    assert chord(header, t.total.s())().get() == 12
    assert (t.add.s(1, 1) | group(t.add.s(10), t.add.s(20)) | t.record.s())().get() == [12, 22]
    linked = group(t.add.s(1, 1), t.add.s(2, 2))
    linked.link(t.record.s("once"))
    assert linked().get() == [2, 4]
    assert t.events("record") == [([12, 22],), ("once",)]
    assert take(eager) == []


def test_eager_links_are_the_children_of_their_task(eager: Conveyor, t: Tasks) -> None:
    result = t.add.apply_async((2, 2), link=t.add.s(16))
    [child] = result.children
    assert child.get() == 20
    last = chain(t.add.s(1, 1), t.add.s(2))()
    assert last.parent is not None
    assert last.parent.children == [last]


# --- with a worker (in this process) -----------------------------------------------------------


def test_a_worker_runs_chain_group_and_chord(app: Conveyor, t: Tasks) -> None:
    with start_worker(app, concurrency=4):
        result = chain(t.add.s(1, 1), t.add.s(2), t.add.s(3))()
        assert result.get(timeout=5) == 7
        assert result.parent is not None
        assert result.parent.get(timeout=5) == 4
        assert group(t.add.s(i, i) for i in range(20))().get(timeout=5) == [
            i + i for i in range(20)
        ]
        made = chord([t.add.s(i, i) for i in range(10)], t.total.s())()
        assert made.get(timeout=5) == 90
        assert isinstance(made.parent, GroupResult)
        assert made.parent.completed_count() == 10
        assert t.events("total") == [([i + i for i in range(10)],)]


def test_a_worker_runs_nested_canvases(app: Conveyor, t: Tasks) -> None:
    with start_worker(app, concurrency=4):
        # a group inside a chain (it becomes a chord of the rest)
        assert chain(t.add.s(1, 1), group(t.add.s(1), t.add.s(2)), t.total.s())().get(5) == 7
        # a chain ending with a group
        assert chain(t.add.s(1, 1), group(t.add.s(1), t.add.s(2)))().get(timeout=5) == [3, 4]
        # chains inside a group
        nested = group(chain(t.add.s(1, 1), t.add.s(1)), chain(t.add.s(2, 2), t.add.s(2)))
        assert nested().get(timeout=5) == [3, 6]
        # a chord inside a chain, and chains in a chord's header
        inner = chord([t.add.s(1), chain(t.add.s(2), t.add.s(10))], t.total.s())
        assert chain(t.add.s(1, 1), inner, t.add.s(100))().get(timeout=5) == 3 + 14 + 100
        # an empty chord calls its body with []
        assert chord([], t.total.s())().get(timeout=5) == 0
        # an immutable step ignores its parent's result
        assert chain(t.add.s(1, 1), t.add.si(5, 5))().get(timeout=5) == 10


def test_a_worker_sends_links_and_error_callbacks(app: Conveyor, t: Tasks) -> None:
    with start_worker(app, concurrency=2):
        good = t.add.apply_async((2, 2), link=t.record.s("partial"), link_error=t.on_error.s())
        bad = t.fail.apply_async(("x",), link=t.record.s(), link_error=t.on_error.s())
        wait_for(lambda: t.events("record") and t.events("on_error"))
        assert good.get(timeout=5) == 4
        assert t.events("record") == [(4, "partial")]
        assert t.events("on_error") == [(bad.id, "ValueError", "failed with x")]


def test_a_failure_in_a_chain_fails_every_step_ahead(app: Conveyor, t: Tasks) -> None:
    with start_worker(app, concurrency=2):
        result = chain(t.add.s(1, 1), t.fail.s(), t.record.s(), t.record.s())()
        with pytest.raises(ValueError, match="failed with 2"):
            result.get(timeout=5)
        assert result.parent is not None
        assert result.parent.failed()
        assert t.events("record") == []


def test_a_failed_chord_header_calls_the_error_callback_once_and_never_the_body(
    app: Conveyor, t: Tasks
) -> None:
    with start_worker(app, concurrency=4):
        body = t.total.s().on_error(t.on_error.s())
        header = [t.add.s(1, 1), t.fail.s(1), t.add.s(2, 2), t.fail.s(2)]
        result = chord(header, body)()
        with pytest.raises(ChordError):
            result.get(timeout=5)
        wait_for(lambda: t.events("on_error"))
        parts = result.parent
        assert isinstance(parts, GroupResult)
        wait_for(parts.ready)
        assert parts.failed()
        assert not parts.successful()
        assert parts.completed_count() == 2
        [(culprit, exc_type, message)] = t.events("on_error")
        assert culprit in (parts.results[1].id, parts.results[3].id)
        assert (exc_type, message[:-1]) == ("ValueError", "failed with ")
        assert t.events("total") == []


def test_a_callback_whose_arguments_do_not_fit_gets_that_failure(app: Conveyor, t: Tasks) -> None:
    with start_worker(app, concurrency=2):
        result = chain(t.add.s(1, 1), t.add.s(1, 2))()  # add(2, 1, 2): one too many
        with pytest.raises(TypeError, match="too many positional arguments"):
            result.get(timeout=5)


def test_group_result_get_keeps_order_and_times_out(app: Conveyor, t: Tasks) -> None:
    result = group(t.add.s(1, 1), t.add.s(2, 2))()
    assert isinstance(result, GroupResult)
    assert not result.ready()
    assert result.waiting()
    assert result.completed_count() == 0
    with pytest.raises(TimeoutError, match="0 of 2"):
        result.get(timeout=0.05)
    with start_worker(app):
        assert result.get(timeout=5) == [2, 4]
    assert result.ready()
    assert result.successful()
    assert not result.failed()
    assert len(result) == 2
    assert [r.id for r in result] == [r.id for r in result.results]


def test_bound_tasks_in_a_chain_see_their_parent(app: Conveyor) -> None:
    @app.task(bind=True)
    def who(self: Task[..., Any], value: Any) -> dict[str, Any]:
        return {"parent_id": self.request.parent_id, "root_id": self.request.root_id}

    @app.task
    def one() -> int:
        return 1

    with start_worker(app):
        result = chain(one.s(), who.s())()
        seen = result.get(timeout=5)
    assert result.parent is not None
    assert seen == {"parent_id": result.parent.id, "root_id": result.parent.id}
    assert AsyncResult(result.parent.id, app).get(timeout=1) == 1
    assert result.state == states.SUCCESS


def test_a_worker_records_the_children_it_sent_with_the_task_s_result(
    app: Conveyor, t: Tasks
) -> None:
    with start_worker(app, concurrency=2):
        # When a task with a callback and a chain run
        result = t.add.apply_async((2, 2), link=t.add.s(16))
        assert result.get(timeout=5) == 4
        last = chain(t.add.s(1, 1), t.add.s(2))()
        assert last.get(timeout=5) == 4

        # Then a handle made from the task's id alone reads its children back
        fresh = app.AsyncResult(result.id)
        [child] = wait_for(lambda: fresh.children)
        assert child.id == result.children[0].id
        assert child.get(timeout=5) == 20
        assert fresh.get(timeout=1) == 4  # the value is still there
        assert last.parent is not None
        assert wait_for(lambda: app.AsyncResult(last.parent.id).children) == [last]
