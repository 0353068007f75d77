"""``conveyor.dispatch.Signal`` (Celery's and Django's signal API) and ``conveyor.hooks``."""

from __future__ import annotations

import gc
import logging
from typing import Any

import pytest

from conveyor.dispatch import Signal
from conveyor.hooks import Hook, Hooks, Verdict


def test_receivers_are_called_with_the_signal_the_sender_and_the_arguments() -> None:
    signal = Signal("test")
    calls: list[dict[str, Any]] = []

    @signal.connect
    def receiver(**kwargs: Any) -> str:
        calls.append(kwargs)
        return "seen"

    responses = signal.send("sender", value=1)

    assert calls == [{"signal": signal, "sender": "sender", "value": 1}]
    assert responses == [(receiver, "seen")]


def test_a_sender_filter_matches_names_by_value_and_objects_by_identity() -> None:
    signal = Signal("test")
    seen: list[object] = []
    task_object = object()

    @signal.connect(sender="proj.tasks.add")
    def by_name(sender: object, **kwargs: Any) -> None:
        seen.append(("name", sender))

    @signal.connect(sender=task_object)
    def by_object(sender: object, **kwargs: Any) -> None:
        seen.append(("object", sender))

    signal.send("".join(["proj.tasks.", "add"]))  # an equal string, not the same object
    signal.send("proj.tasks.other")
    signal.send(task_object)
    signal.send(object())

    assert seen == [("name", "proj.tasks.add"), ("object", task_object)]


def test_connecting_twice_or_with_the_same_dispatch_uid_calls_once() -> None:
    signal = Signal("test")
    calls: list[str] = []

    def one(**kwargs: Any) -> None:
        calls.append("one")

    def two(**kwargs: Any) -> None:
        calls.append("two")

    signal.connect(one)
    signal.connect(one)
    signal.connect(two, dispatch_uid="uid")
    signal.connect(lambda **kw: calls.append("three"), dispatch_uid="uid", weak=False)
    signal.send(None)

    assert calls == ["one", "two"]


def test_disconnect_stops_the_calls() -> None:
    signal = Signal("test")
    calls: list[str] = []

    def receiver(**kwargs: Any) -> None:
        calls.append("called")

    signal.connect(receiver, sender="s")
    assert signal.disconnect(receiver) is False  # connected for "s", not for any sender
    assert signal.disconnect(receiver, sender="s") is True
    signal.send("s")

    assert calls == []
    assert not signal.has_receivers("s")


def test_receivers_are_held_weakly_unless_told_otherwise() -> None:
    signal = Signal("test")
    calls: list[str] = []

    def make() -> Any:
        def receiver(**kwargs: Any) -> None:
            calls.append("weak")

        return receiver

    class Listener:
        def on(self, **kwargs: Any) -> None:
            calls.append("method")

    listener = Listener()
    signal.connect(make())
    signal.connect(listener.on)
    signal.connect(make(), weak=False)
    gc.collect()
    signal.send(None)
    del listener
    gc.collect()
    signal.send(None)

    assert calls == ["method", "weak", "weak"]


def test_a_receiver_that_raises_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    signal = Signal("test")
    calls: list[str] = []

    @signal.connect
    def broken(**kwargs: Any) -> None:
        raise RuntimeError("receiver bug")

    @signal.connect
    def fine(**kwargs: Any) -> None:
        calls.append("fine")

    with caplog.at_level(logging.ERROR, logger="conveyor.signals"):
        responses = signal.send(None)

    assert calls == ["fine"]
    assert isinstance(responses[0][1], RuntimeError)
    assert "receiver bug" in caplog.text


# -- hooks ------------------------------------------------------------------------------------


class Recorder(Hook):
    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    def worker_ready(self, worker: Any) -> None:
        self.log.append(f"{self.name}:ready")


class Broken(Hook):
    def worker_ready(self, worker: Any) -> None:
        raise RuntimeError("hook bug")


class Refuses(Hook):
    def admit(self, job: Any, task: Any) -> Verdict | None:
        return Verdict("no")


def test_hooks_are_called_in_order_and_one_that_raises_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log: list[str] = []
    hooks = Hooks([Recorder("a", log), Broken(), Recorder("b", log)])
    hooks.add(Recorder("first", log), first=True)

    with caplog.at_level(logging.ERROR, logger="conveyor.hooks"):
        hooks.worker_ready(None)

    assert log == ["first:ready", "a:ready", "b:ready"]
    assert "Broken.worker_ready raised" in caplog.text


def test_a_moment_no_hook_overrides_costs_nothing_and_unknown_moments_fail() -> None:
    hooks = Hooks([Hook()])
    hooks.before_run(None, None, None)  # nobody overrides it: a no-op
    with pytest.raises(AttributeError):
        hooks.no_such_moment  # noqa: B018


def test_admit_answers_the_first_objection() -> None:
    refusing = Refuses()
    hooks = Hooks([Hook(), refusing])
    assert hooks.admit(None, None) == Verdict("no")  # type: ignore[arg-type]
    hooks.remove(refusing)
    assert hooks.admit(None, None) is None  # type: ignore[arg-type]
