"""The monitoring section of the broker contract (worker registry, streams, counters,
``QueueStats.oldest_ready_at``), for every broker.

"Another instance" is a second broker on the same file or server (the memory broker
has only itself): what a second process would see.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from conveyor.brokers.base import Broker, BrokerOptions, OutgoingMessage, StreamEntry, now
from conveyor.brokers.memory import MemoryBroker

from .conftest import BrokerFactory

pytestmark = pytest.mark.timeout(60)

#: Bodies a stream or a registry must keep byte for byte.
ODD_BODIES = [b"\xff\xfe\x00binary", b"", "caf\u00e9".encode(), b"\x80" * 300]


@pytest.fixture
def other(broker: Broker, make_broker: BrokerFactory) -> Broker:
    """Another broker on the same store as ``broker``."""
    if isinstance(broker, MemoryBroker):
        return broker
    return make_broker(BrokerOptions())


def bodies(entries: list[StreamEntry]) -> list[bytes]:
    return [e.body for e in entries]


@pytest.fixture
def later() -> Iterator[list[threading.Timer]]:
    """Schedules calls on other threads; waits for them at the end of the test."""
    timers: list[threading.Timer] = []
    yield timers
    for timer in timers:
        timer.cancel()
        timer.join()


def after(timers: list[threading.Timer], seconds: float, fn: object, *args: object) -> None:
    timer = threading.Timer(seconds, fn, args)  # type: ignore[arg-type]
    timers.append(timer)
    timer.start()


# -- worker registry -----------------------------------------------------------


def test_beating_worker_is_listed_with_its_info(broker: Broker, other: Broker) -> None:
    # Given two workers beating, one with non-UTF-8 info
    broker.worker_beat("w1@host", ODD_BODIES[0], ttl=30)
    broker.worker_beat("w2@host", b"{}", ttl=30)

    # Then both are listed with their info, by any broker on the store
    expected = {"w1@host": ODD_BODIES[0], "w2@host": b"{}"}
    assert broker.workers() == expected
    assert other.workers() == expected


def test_later_beat_replaces_the_info(broker: Broker, other: Broker) -> None:
    broker.worker_beat("w1", b"old", ttl=30)

    other.worker_beat("w1", b"new", ttl=30)

    assert broker.workers() == {"w1": b"new"}


def test_worker_whose_beat_expired_is_not_listed(broker: Broker) -> None:
    # Given a worker with a short ttl and one with a long one
    broker.worker_beat("short", b"s", ttl=0.3)
    broker.worker_beat("long", b"l", ttl=30)
    assert set(broker.workers()) == {"short", "long"}

    # When the short ttl passes without a beat
    time.sleep(0.45)

    # Then only the other is listed
    assert broker.workers() == {"long": b"l"}


def test_each_beat_extends_the_ttl(broker: Broker) -> None:
    # Given a worker that beats again before its ttl ran out
    broker.worker_beat("w1", b"1", ttl=0.6)
    time.sleep(0.35)
    broker.worker_beat("w1", b"2", ttl=0.6)

    # When the first beat's ttl has passed, but not the second's
    time.sleep(0.35)

    # Then it is still listed, with the second beat's info
    assert broker.workers() == {"w1": b"2"}


def test_worker_gone_is_forgotten_at_once(broker: Broker, other: Broker) -> None:
    broker.worker_beat("w1", b"1", ttl=30)
    broker.worker_beat("w2", b"2", ttl=30)

    other.worker_gone("w1")
    other.worker_gone("never-seen")  # nothing to forget: no error

    assert broker.workers() == {"w2": b"2"}


def test_a_gone_worker_that_beats_again_is_back(broker: Broker) -> None:
    broker.worker_beat("w1", b"1", ttl=30)
    broker.worker_gone("w1")

    broker.worker_beat("w1", b"again", ttl=30)

    assert broker.workers() == {"w1": b"again"}


def test_no_workers(broker: Broker) -> None:
    assert broker.workers() == {}


# -- streams -------------------------------------------------------------------


def test_stream_entries_are_read_in_order_byte_for_byte(broker: Broker) -> None:
    # Given entries added in two calls, with arbitrary bytes
    broker.stream_add("events", ODD_BODIES[:2], maxlen=100)
    broker.stream_add("events", ODD_BODIES[2:], maxlen=100)

    # When read from the oldest
    entries = broker.stream_read("events", "0")

    # Then each comes back once, in order, with an increasing cursor
    assert bodies(entries) == ODD_BODIES
    assert len({e.id for e in entries}) == len(ODD_BODIES)
    tails = [broker.stream_read("events", e.id) for e in entries]
    assert [bodies(t) for t in tails] == [ODD_BODIES[i + 1 :] for i in range(len(ODD_BODIES))]


def test_reading_after_the_last_cursor_gives_nothing(broker: Broker) -> None:
    broker.stream_add("events", [b"a", b"b"], maxlen=100)
    last = broker.stream_read("events", "0")[-1].id

    assert broker.stream_read("events", last) == []
    assert broker.stream_last("events") == last


def test_stream_last_gives_a_cursor_for_new_entries_only(broker: Broker) -> None:
    # Given an empty stream, then one with old entries
    assert broker.stream_last("events") == "0"
    broker.stream_add("events", [b"old1", b"old2"], maxlen=100)
    cursor = broker.stream_last("events")

    # When new entries are added after the cursor was taken
    broker.stream_add("events", [b"new"], maxlen=100)

    # Then reading after it gives only those
    assert bodies(broker.stream_read("events", cursor)) == [b"new"]


def test_missing_stream_reads_empty(broker: Broker) -> None:
    assert broker.stream_read("nothing", "0") == []
    assert broker.stream_tail("nothing", 10) == []
    assert broker.stream_last("nothing") == "0"


def test_streams_are_separate(broker: Broker) -> None:
    broker.stream_add("a", [b"1"], maxlen=100)
    broker.stream_add("b", [b"2"], maxlen=100)

    assert bodies(broker.stream_read("a", "0")) == [b"1"]
    assert bodies(broker.stream_read("b", "0")) == [b"2"]


def test_count_limits_a_read_and_cursors_page_through(broker: Broker) -> None:
    broker.stream_add("events", [str(i).encode() for i in range(10)], maxlen=100)

    pages = []
    cursor = "0"
    while page := broker.stream_read("events", cursor, count=4):
        pages.append(bodies(page))
        cursor = page[-1].id

    assert pages == [[b"0", b"1", b"2", b"3"], [b"4", b"5", b"6", b"7"], [b"8", b"9"]]


def test_maxlen_keeps_the_newest_entries(broker: Broker) -> None:
    # Given more entries than maxlen, in one call and then one by one
    broker.stream_add("events", [b"1", b"2", b"3", b"4", b"5"], maxlen=3)
    assert bodies(broker.stream_read("events", "0")) == [b"3", b"4", b"5"]
    broker.stream_add("events", [b"6"], maxlen=3)
    broker.stream_add("events", [b"7"], maxlen=3)

    # Then only the newest maxlen are kept
    assert bodies(broker.stream_read("events", "0")) == [b"5", b"6", b"7"]
    assert bodies(broker.stream_tail("events", 10)) == [b"5", b"6", b"7"]


def test_stream_tail_gives_the_newest_oldest_first(broker: Broker) -> None:
    broker.stream_add("events", [b"1", b"2", b"3", b"4"], maxlen=100)

    tail = broker.stream_tail("events", 2)

    assert bodies(tail) == [b"3", b"4"]
    assert tail == broker.stream_read("events", "0")[2:]
    assert broker.stream_tail("events", 0) == []


def test_stream_with_ttl_is_deleted_after_its_last_append(broker: Broker) -> None:
    # Given a reply stream appended to twice, each time with a short ttl
    broker.stream_add("reply:1", [b"a"], maxlen=100, ttl=0.6)
    broker.stream_add("kept", [b"k"], maxlen=100)
    time.sleep(0.35)
    broker.stream_add("reply:1", [b"b"], maxlen=100, ttl=0.6)

    # When the first ttl has passed but not the second: every entry is there
    time.sleep(0.35)
    assert bodies(broker.stream_read("reply:1", "0")) == [b"a", b"b"]

    # When the ttl from the last append has passed: the stream is gone
    time.sleep(0.45)
    assert broker.stream_read("reply:1", "0") == []
    assert broker.stream_tail("reply:1", 10) == []
    assert broker.stream_last("reply:1") == "0"
    # And a stream without a ttl is kept
    assert bodies(broker.stream_read("kept", "0")) == [b"k"]


def test_cursor_stays_valid_across_an_expired_stream(broker: Broker) -> None:
    # Given a cursor into a stream that then expired
    broker.stream_add("reply:1", [b"old"], maxlen=100, ttl=0.2)
    cursor = broker.stream_last("reply:1")
    time.sleep(0.3)

    # When the stream is made again
    broker.stream_add("reply:1", [b"new"], maxlen=100, ttl=30)

    # Then reading after the old cursor finds the new entry (cursors never go back)
    assert bodies(broker.stream_read("reply:1", cursor)) == [b"new"]


def test_stream_read_waits_for_an_entry_added_by_another_thread(
    broker: Broker, later: list[threading.Timer]
) -> None:
    # Given a reader waiting on an empty stream, and an add 0.2 s later
    cursor = broker.stream_last("control")
    after(later, 0.2, broker.stream_add, "control", [b"ping"], 100)

    # When it reads with a long timeout
    started = time.monotonic()
    entries = broker.stream_read("control", cursor, timeout=10)

    # Then it wakes with the entry, long before the timeout
    assert bodies(entries) == [b"ping"]
    assert time.monotonic() - started < 5


def test_stream_read_wakes_for_another_broker_on_the_store(
    broker: Broker, other: Broker, later: list[threading.Timer]
) -> None:
    cursor = broker.stream_last("control")
    after(later, 0.2, other.stream_add, "control", [b"\xffping"], 100)

    started = time.monotonic()
    entries = broker.stream_read("control", cursor, timeout=10)

    assert bodies(entries) == [b"\xffping"]
    assert time.monotonic() - started < 5


def test_stream_read_returns_empty_when_nothing_arrives_within_timeout(broker: Broker) -> None:
    broker.stream_add("events", [b"old"], maxlen=100)
    cursor = broker.stream_last("events")

    started = time.monotonic()
    entries = broker.stream_read("events", cursor, timeout=0.4)
    elapsed = time.monotonic() - started

    assert entries == []
    assert 0.35 <= elapsed < 0.4 + 0.3  # it waited, and no longer than asked (with slack)


def test_stream_read_with_timeout_zero_never_blocks(
    broker: Broker, later: list[threading.Timer]
) -> None:
    # Given an entry that arrives only 1 s from now
    cursor = broker.stream_last("events")
    after(later, 1.0, broker.stream_add, "events", [b"late"], 100)

    # When read with timeout 0 (Redis's BLOCK 0 would wait for it forever)
    started = time.monotonic()
    entries = broker.stream_read("events", cursor, timeout=0)

    # Then the read returned before the entry came
    assert entries == []
    assert time.monotonic() - started < 1.0


def test_stream_read_returns_what_is_there_without_waiting(broker: Broker) -> None:
    broker.stream_add("events", [b"a"], maxlen=100)

    started = time.monotonic()
    entries = broker.stream_read("events", "0", timeout=10)

    assert bodies(entries) == [b"a"]
    assert time.monotonic() - started < 5


def test_brokers_on_one_store_see_the_same_entries(broker: Broker, other: Broker) -> None:
    broker.stream_add("events", [b"1", b"2"], maxlen=100)
    other.stream_add("events", [b"3"], maxlen=100)

    mine = broker.stream_read("events", "0")
    theirs = other.stream_read("events", "0")

    assert mine == theirs
    assert bodies(mine) == [b"1", b"2", b"3"]
    assert broker.stream_last("events") == other.stream_last("events") == mine[-1].id
    assert broker.stream_tail("events", 2) == other.stream_tail("events", 2)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda b: b.stream_read("s", "0", count=0), "count"),
        (lambda b: b.stream_read("s", "abc"), "cursor"),
        (lambda b: b.stream_add("s", [b"x"], maxlen=0), "maxlen"),
        (lambda b: b.stream_add("s", [b"x"], maxlen=10, ttl=0), "ttl"),
        (lambda b: b.worker_beat("w", b"x", ttl=0), "ttl"),
    ],
    ids=["count", "cursor", "maxlen", "stream-ttl", "beat-ttl"],
)
def test_invalid_arguments_are_refused(broker: Broker, call: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call(broker)  # type: ignore[operator]
    assert broker.stream_read("s", "0") == []
    assert broker.workers() == {}


# -- counters ------------------------------------------------------------------


def test_counters_start_at_zero_and_add_deltas(broker: Broker, other: Broker) -> None:
    broker.counters_add({"tasks.sent": 2, "runtime": 0.25})
    other.counters_add({"tasks.sent": 1, "runtime": 1.5})
    broker.counters_add({"runtime": -0.75, "fresh": 0})

    assert broker.counters() == {"tasks.sent": 3.0, "runtime": 1.0, "fresh": 0.0}
    assert other.counters() == broker.counters()


def test_counters_add_atomically_from_many_threads(broker: Broker, other: Broker) -> None:
    # Given eight threads on two brokers of one store, each adding 50 times
    def add(target: Broker) -> None:
        for _ in range(50):
            target.counters_add({"a": 1, "b": 2, "c": 0.5})

    threads = [threading.Thread(target=add, args=(b,)) for b in [broker, other] * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Then no addition was lost
    assert broker.counters() == {"a": 400.0, "b": 800.0, "c": 200.0}


def test_counters_filter_by_prefix(broker: Broker) -> None:
    # Given counters whose names hold pattern characters of SQL LIKE and Redis globs
    broker.counters_add({"tasks.sent": 1, "tasks.done": 2, "workers.up": 3, "a_%*?x": 4, "abx": 5})

    assert broker.counters("tasks.") == {"tasks.sent": 1.0, "tasks.done": 2.0}
    assert broker.counters("a_%*") == {"a_%*?x": 4.0}
    assert broker.counters("none") == {}
    assert len(broker.counters("")) == 5


def test_counters_reset_deletes_every_counter(broker: Broker, other: Broker) -> None:
    broker.counters_add({"a": 5, "b": 1})

    other.counters_reset()

    assert broker.counters() == {}
    broker.counters_add({"a": 1})
    assert broker.counters() == {"a": 1.0}


def test_non_finite_delta_is_refused_and_nothing_added(broker: Broker) -> None:
    with pytest.raises(ValueError, match="delta"):
        broker.counters_add({"a": 1, "b": float("nan")})

    assert broker.counters() == {}


# -- queue latency: oldest_ready_at --------------------------------------------


def msg(id: str, priority: int = 0, eta: float | None = None) -> OutgoingMessage:
    return OutgoingMessage(id=id, queue="q", body=id.encode(), priority=priority, eta=eta)


def oldest(broker: Broker) -> float | None:
    (stats,) = broker.stats(["q"])
    return stats.oldest_ready_at


def published_at(broker: Broker, *messages: OutgoingMessage) -> tuple[float, float]:
    """Publish and return the (before, after) wall-clock bounds of the call."""
    before = now()
    broker.publish_many(messages)
    return before, now()


# The brokers' clocks (Redis's TIME) and this process's agree to a few ms on one machine.
CLOCK = 0.01


def test_oldest_ready_at_is_none_when_nothing_is_ready(broker: Broker) -> None:
    assert oldest(broker) is None
    assert broker.stats(["q", "other"])[1].oldest_ready_at is None


def test_oldest_ready_at_is_when_the_first_ready_message_was_published(broker: Broker) -> None:
    before, end = published_at(broker, msg("first"))
    time.sleep(0.05)
    published_at(broker, msg("second"))

    at = oldest(broker)

    assert at is not None
    assert before - CLOCK <= at <= end + CLOCK


def test_oldest_ready_at_looks_across_priorities(broker: Broker) -> None:
    # Given an old low-priority message and a newer high-priority one (fetched first)
    before, end = published_at(broker, msg("old-low", priority=0))
    time.sleep(0.05)
    published_at(broker, msg("new-high", priority=9))

    # Then the oldest is the low-priority one's time, not the queue head's
    at = oldest(broker)
    assert at is not None
    assert before - CLOCK <= at <= end + CLOCK


def test_delayed_message_counts_only_once_due_and_since_its_due_time(broker: Broker) -> None:
    # Given a message due 0.5 s from now
    due = now() + 0.5
    broker.publish(msg("later", eta=due))

    # Then it is not ready yet
    assert oldest(broker) is None

    # When it is due (nobody fetched it): it is ready since its due time
    time.sleep(0.65)
    at = oldest(broker)
    assert at is not None
    assert abs(at - due) <= CLOCK
    assert broker.stats(["q"])[0].ready == 1


def test_delayed_message_does_not_hide_a_ready_one(broker: Broker) -> None:
    broker.publish(msg("later", eta=now() + 60))
    before, end = published_at(broker, msg("now"))

    at = oldest(broker)

    assert at is not None
    assert before - CLOCK <= at <= end + CLOCK


def test_held_messages_are_in_flight_not_ready(broker: Broker) -> None:
    # Given three messages, two fetched
    broker.publish_many([msg("1"), msg("2"), msg("3")])
    d1, d2 = broker.fetch(["q"], 2, consumer="c", timeout=0)
    (stats,) = broker.stats(["q"])
    assert (stats.ready, stats.in_flight) == (1, 2)
    assert stats.oldest_ready_at is not None

    # When one is acked and the last one fetched too
    broker.ack([d1])
    (d3,) = broker.fetch(["q"], 1, consumer="c", timeout=0)

    # Then two are held, none ready: no oldest
    (stats,) = broker.stats(["q"])
    assert (stats.ready, stats.in_flight, stats.oldest_ready_at) == (0, 2, None)

    # When the rest are settled, nothing is held
    broker.ack([d2])
    broker.dead_letter(d3, "x")
    (stats,) = broker.stats(["q"])
    assert (stats.ready, stats.in_flight, stats.dead) == (0, 0, 1)
