"""Beat's logic on the memory broker, with time injected: entries, slots, misfire
policies, restarts, outages. (Real processes on real brokers: tests/integration.)"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor import Conveyor
from conveyor.beat import Beat, parse_entry
from conveyor.beat.scheduler import (
    MAX_CATCH_UP,
    SLOT_HEADER,
    due_slots,
    mark_key,
    slot_key,
)
from conveyor.brokers.base import Broker
from conveyor.exceptions import BrokerUnavailable, ConfigurationError
from conveyor.message import decode
from conveyor.schedules import schedule

#: A UNIX time on a whole minute: slots of the schedules below fall on it.
T0 = 1_767_225_600.0
UTC = dt.UTC


@pytest.fixture
def app() -> Iterator[Conveyor]:
    name = uuid.uuid4().hex  # a memory broker of its own
    app = Conveyor("beat-test", broker=f"memory://{name}", backend=f"memory://{name}")

    @app.task(name="tick")
    def tick(n: int = 0) -> int:
        return n

    yield app
    app.close()


def sent(app: Conveyor, broker: Broker | None = None) -> list[tuple[str, float, list[Any]]]:
    """(task, slot, args) of every message beat sent so far, in order; takes them."""
    broker = broker or app.broker
    deliveries = broker.fetch(["celery"], 10_000, consumer="test", timeout=0)
    broker.ack(deliveries)
    messages = [decode(d.body) for d in deliveries]
    return [(m.task, m.headers[SLOT_HEADER], m.args) for m in messages]


def beat_at(app: Conveyor, name: str = "b1") -> Beat:
    return Beat(app, hostname=name, clock=lambda: pytest.fail("tick() is given the time"))


# -- entries -----------------------------------------------------------------------


def test_an_entry_in_celerys_format_is_read_with_its_defaults() -> None:
    entry = parse_entry(
        "e", {"task": "x.y", "schedule": dt.timedelta(minutes=5), "args": [1], "kwargs": {"a": 2}}
    )
    assert (entry.task, entry.args, entry.kwargs, entry.options) == ("x.y", (1,), {"a": 2}, {})
    assert entry.schedule == schedule(300)
    assert entry.misfire == "once"
    assert entry.schedule.describe() == "every 5 minutes"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"task": "t", "schedule": 1, "sechedule": 2}, r"unknown key\(s\) \['sechedule'\]"),
        ({"schedule": 1}, "needs 'task'"),
        ({"task": "t"}, "needs 'schedule'"),
        ({"task": "t", "schedule": -1}, "run_every > 0"),
        ({"task": "t", "schedule": {"every": 5}}, "a schedule is"),
        ({"task": "t", "schedule": "often"}, "a cron string"),
        ({"task": "t", "schedule": 1, "misfire": "twice"}, "'misfire' must be one of"),
        ({"task": "t", "schedule": 1, "options": {"routing_key": "x"}}, "unknown option"),
        ({"task": "t", "schedule": 1, "options": {"priority": 11}}, "priority"),
        ({"task": "t", "schedule": 1, "args": "abc"}, "'args' must be a list"),
        ({"task": "", "schedule": 1}, "'task' must be a task name"),
        ("t", "must be a dict"),
    ],
)
def test_a_bad_entry_is_an_error_naming_it(raw: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=rf"beat_schedule entry 'nightly': .*{message}"):
        parse_entry("nightly", raw)


def test_beat_refuses_to_start_with_a_bad_entry_but_not_an_unknown_task(app: Conveyor) -> None:
    app.conf.beat_schedule = {"elsewhere": {"task": "other.service.task", "schedule": 10}}
    assert set(beat_at(app).entries) == {"elsewhere"}
    app.conf.beat_schedule["bad"] = {"task": "tick", "schedule": 10, "option": {}}
    with pytest.raises(ConfigurationError, match="entry 'bad'"):
        beat_at(app)


def test_add_periodic_task_adds_a_celery_entry(app: Conveyor) -> None:
    tick = app.tasks["tick"]
    named = app.add_periodic_task(
        30.0, tick.s(1), name="half-minute", queue="q", misfire="skip", expires=10
    )
    unnamed = app.add_periodic_task(dt.timedelta(hours=1), tick, kwargs={"n": 2})
    by_name = app.add_periodic_task(60, "other.task", args=[3])

    schedule_ = app.conf.beat_schedule
    assert named == "half-minute"
    assert schedule_[named] == {
        "task": "tick",
        "schedule": 30.0,
        "args": (1,),
        "kwargs": {},
        "options": {"queue": "q", "expires": 10},
        "misfire": "skip",
    }
    assert unnamed == "tick(n=2)"
    assert schedule_[unnamed]["kwargs"] == {"n": 2}
    assert schedule_[by_name]["task"] == "other.task"
    assert schedule_[by_name]["args"] == (3,)
    assert set(beat_at(app).entries) == {named, unnamed, by_name}
    with pytest.raises(ConfigurationError, match="entry 'x'"):
        app.add_periodic_task("whenever", tick.s(), name="x")


def test_the_periodic_task_decorator_registers_the_task_and_its_entry(app: Conveyor) -> None:
    @app.periodic_task(dt.timedelta(seconds=15), misfire="all", queue="cleanup")
    def sweep() -> str:
        return "swept"

    assert sweep.queue == "cleanup"
    assert app.tasks[sweep.name] is sweep
    entry = beat_at(app).entries[sweep.name]
    assert (entry.task, entry.schedule, entry.misfire) == (sweep.name, schedule(15), "all")


# -- slots ---------------------------------------------------------------------------


def test_due_slots_are_the_latest_keep_with_a_flag_for_earlier_ones() -> None:
    every_minute = schedule(60)
    assert due_slots(every_minute, UTC, T0, T0 + 59, 1) == ([], False)  # type: ignore[arg-type]
    assert due_slots(every_minute, UTC, T0 - 1, T0, 1) == ([T0], False)  # type: ignore[arg-type]
    # a year of missed slots costs a few dozen steps
    year = 365 * 86400
    slots, earlier = due_slots(every_minute, UTC, T0 - year, T0 + 30, 3)  # type: ignore[arg-type]
    assert slots == [T0 - 120, T0 - 60, T0]
    assert earlier
    assert due_slots(every_minute, UTC, T0 - 121, T0, 5) == (  # type: ignore[arg-type]
        [T0 - 120, T0 - 60, T0],
        False,
    )


def test_keys_name_the_entry_and_the_slot() -> None:
    assert slot_key("e 1", T0 + 0.5) == f"beat:e 1:{T0 + 0.5:.3f}"
    assert mark_key("e 1") == "beat:e 1"


# -- sending once ------------------------------------------------------------------------


def test_several_beats_send_each_slot_once(app: Conveyor) -> None:
    # Given three beats on one broker and an every-second entry
    app.conf.beat_schedule = {"tick": {"task": "tick", "schedule": 1.0, "args": [7]}}
    beats = [beat_at(app, f"b{i}") for i in range(3)]

    # When they all look at each moment for 10 s (none ever sent before: from now on)
    for step in range(40):
        now = T0 + step * 0.25
        for b in beats:
            b.tick(now)

    # Then each slot after the start was sent exactly once, with its slot in the headers
    assert sent(app) == [("tick", T0 + k, [7]) for k in range(1, 10)]
    assert app.broker.advance(mark_key("tick"), None, 1) == T0 + 9


def test_tick_returns_when_the_next_slot_is_due(app: Conveyor) -> None:
    app.conf.beat_schedule = {"four": {"task": "tick", "schedule": 4.0}}
    beat = beat_at(app)
    assert beat.tick(T0 + 0.5) == T0 + 1.5  # capped by beat_max_loop_interval (1 s)
    beat.max_interval = 60
    assert beat.tick(T0 + 0.5) == T0 + 4
    assert beat.tick(T0 + 4.01) == T0 + 8
    assert [slot for _, slot, _ in sent(app)] == [T0 + 4]


def test_a_restart_between_slots_keeps_the_anchored_time(app: Conveyor) -> None:
    # Given a 4 s entry whose beat sent T0 + 4, then stopped
    app.conf.beat_schedule = {"four": {"task": "tick", "schedule": 4.0}}
    first = beat_at(app, "first")
    first.tick(T0 + 3.9)
    first.tick(T0 + 4.0)

    # When a new beat starts 1.5 s later (before the next slot)
    second = beat_at(app, "second")
    second.max_interval = 60
    wake = second.tick(T0 + 5.5)

    # Then it sends nothing at once and next fires at the anchored T0 + 8
    assert wake == T0 + 8
    second.tick(T0 + 7.99)
    second.tick(T0 + 8.0)
    assert [slot for _, slot, _ in sent(app)] == [T0 + 4, T0 + 8]


def test_a_slot_taken_long_ago_is_not_sent_again_by_a_beat_that_was_stopped(
    app: Conveyor,
) -> None:
    # Given a beat that fell asleep, and a later slot sent meanwhile by another
    app.conf.beat_schedule = {"minute": {"task": "tick", "schedule": 60.0, "misfire": "all"}}
    sleeper = beat_at(app, "sleeper")
    sleeper.tick(T0 + 1)
    app.broker.advance(mark_key("minute"), T0 + 300, 3600)

    # When it wakes up and its claims of the earlier slots succeed (theirs expired)
    sleeper.tick(T0 + 310)

    # Then it sends none of the slots before the one already sent
    assert sent(app) == []


# -- misfire policies ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("misfire", "expected"),
    [
        ("once", [T0 + 600]),
        ("skip", []),
        ("all", [T0 + 60 * k for k in range(1, 11)]),
    ],
)
def test_after_downtime_the_misfire_policy_decides_what_is_sent(
    app: Conveyor, misfire: str, expected: list[float]
) -> None:
    # Given an every-minute entry last sent at T0, and no beat for ten and a half minutes
    app.conf.beat_schedule = {"m": {"task": "tick", "schedule": 60, "misfire": misfire}}
    app.broker.advance(mark_key("m"), T0, 3600)

    # When a beat starts
    beat = beat_at(app)
    beat.tick(T0 + 630)

    # Then it sends what the policy says, and the next slot on time
    beat.tick(T0 + 660)
    assert [slot for _, slot, _ in sent(app)] == [*expected, T0 + 660]


def test_skip_still_sends_a_slot_reached_within_its_grace(app: Conveyor) -> None:
    app.conf.beat_schedule = {"m": {"task": "tick", "schedule": 60, "misfire": "skip"}}
    app.broker.advance(mark_key("m"), T0, 3600)
    beat_at(app).tick(T0 + 602)
    assert [slot for _, slot, _ in sent(app)] == [T0 + 600]


def test_misfire_all_sends_at_most_the_latest_hundred(app: Conveyor) -> None:
    app.conf.beat_schedule = {"s": {"task": "tick", "schedule": 1, "misfire": "all"}}
    app.broker.advance(mark_key("s"), T0, 3600)
    beat_at(app).tick(T0 + 1000.5)
    slots = [slot for _, slot, _ in sent(app)]
    assert slots == [T0 + k for k in range(1001 - MAX_CATCH_UP, 1001)]


def test_an_entry_that_never_ran_starts_with_its_next_slot(app: Conveyor) -> None:
    app.conf.beat_schedule = {"m": {"task": "tick", "schedule": 60, "misfire": "all"}}
    beat = beat_at(app)
    beat.tick(T0 + 30)
    beat.tick(T0 + 60)
    assert [slot for _, slot, _ in sent(app)] == [T0 + 60]


# -- changes and outages -------------------------------------------------------------


def test_added_changed_and_removed_entries_are_taken_up(
    app: Conveyor, caplog: pytest.LogCaptureFixture
) -> None:
    beat = beat_at(app)
    beat.tick(T0 + 0.5)
    app.add_periodic_task(1, app.tasks["tick"].s(1), name="a")
    beat.tick(T0 + 0.6)
    beat.tick(T0 + 1.0)
    app.conf.beat_schedule["a"]["args"] = (2,)
    beat.tick(T0 + 2.0)
    app.conf.beat_schedule["bad"] = {"task": "tick"}
    with caplog.at_level(logging.ERROR, "conveyor.beat"):
        beat.tick(T0 + 3.0)
    del app.conf.beat_schedule["a"]
    del app.conf.beat_schedule["bad"]
    beat.tick(T0 + 4.0)
    assert [(slot, args) for _, slot, args in sent(app)] == [
        (T0 + 1, [1]),
        (T0 + 2, [2]),
        (T0 + 3, [2]),
    ]
    assert "entry 'bad': needs 'schedule' (keeping the entries as they were)" in caplog.text


class _Flaky:
    """A broker whose calls named in ``failing`` fail while ``down``."""

    def __init__(self, broker: Broker):
        self.broker = broker
        self.down = False
        self.failing = {"claim", "advance", "publish", "publish_many"}

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.broker, name)
        if name in self.failing and self.down:

            def fail(*args: Any, **kwargs: Any) -> Any:
                raise BrokerUnavailable("connection refused")

            return fail
        return attr


def test_beat_survives_a_broker_outage_and_carries_on(
    app: Conveyor, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a beat whose broker goes away after the first slot
    app.conf.beat_schedule = {"s": {"task": "tick", "schedule": 1.0}}
    flaky = _Flaky(app.broker)
    app._broker = flaky  # type: ignore[assignment]
    beat = beat_at(app)
    beat.tick(T0 + 0.5)
    beat.tick(T0 + 1.0)
    flaky.down = True

    # When it looks during the outage, then after it
    with caplog.at_level(logging.INFO, "conveyor.beat"):
        assert beat.tick(T0 + 2.0) == T0 + 3.0  # retry in a second
        assert beat.tick(T0 + 3.0) == T0 + 4.0
        flaky.down = False
        beat.tick(T0 + 4.2)

    # Then it said so once, sent the latest slot once it could (misfire once), and
    # said it is back
    assert [slot for _, slot, _ in sent(app, flaky.broker)] == [T0 + 1, T0 + 4]
    assert caplog.text.count("cannot reach the broker") == 1
    assert "reachable again" in caplog.text


def test_a_slot_whose_send_failed_is_sent_at_the_next_look_by_its_claimant(
    app: Conveyor,
) -> None:
    # Given a beat that claimed and marked a slot, but could not publish its task
    app.conf.beat_schedule = {"s": {"task": "tick", "schedule": 1.0}}
    flaky = _Flaky(app.broker)
    flaky.failing = {"publish", "publish_many"}
    app._broker = flaky  # type: ignore[assignment]
    beat, other = beat_at(app, "b1"), beat_at(app, "b2")
    beat.tick(T0 + 0.5)
    other.tick(T0 + 0.5)
    flaky.down = True
    assert beat.tick(T0 + 1.0) == T0 + 2.0

    # When the broker takes messages again
    flaky.down = False
    other.tick(T0 + 1.1)
    beat.tick(T0 + 1.2)

    # Then the claimant sent it (once): the other beat left it to its claimant
    assert [slot for _, slot, _ in sent(app, flaky.broker)] == [T0 + 1]
    assert flaky.broker.advance(mark_key("s"), None, 1) == T0 + 1


# -- the command -----------------------------------------------------------------------


@pytest.fixture
def cli_app(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``conveyor -A beatcli ...`` runs here with the app module ``beatcli`` (its
    ``beat_schedule`` given by the test), logging left alone."""
    from click.testing import CliRunner

    from conveyor.cli import cli, common

    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(common, "setup_logging", lambda *a, **k: None)

    def run(schedule: str, *args: str) -> Any:
        name = f"beatcli_{uuid.uuid4().hex}"
        (tmp_path / f"{name}.py").write_text(
            "from conveyor import Conveyor\n"
            f"app = Conveyor('cli', broker='memory://{name}', timezone='Europe/Paris')\n"
            f"app.conf.beat_schedule = {schedule}\n"
        )
        return CliRunner().invoke(cli, ["-A", name, *args])

    return run


def test_beat_list_prints_each_entry_in_the_configured_time_zone(cli_app: Any) -> None:
    listed = cli_app("{'tick': {'task': 'x.tick', 'schedule': 3600}}", "beat", "--list")
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert lines[:5] == [
        "tick",
        "  task:     x.tick",
        "  schedule: every hour",
        "  misfire:  once",
        "  last run: never",
    ]
    assert lines[5].startswith("  next run: ")
    assert lines[5].endswith((":00:00 CET", ":00:00 CEST"))


def test_beat_and_worker_beat_refuse_a_bad_entry_naming_it(cli_app: Any) -> None:
    bad = "{'nightly': {'task': 'x.tick', 'schedule': 60, 'args': 5}}"
    for args in (["beat"], ["beat", "--list"], ["worker", "--beat", "-P", "solo"]):
        refused = cli_app(bad, *args)
        assert refused.exit_code == 1, (args, refused.output)
        assert "Error: beat_schedule entry 'nightly': 'args' must be a list" in refused.output
