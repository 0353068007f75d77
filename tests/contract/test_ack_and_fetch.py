"""``Broker.ack_and_fetch``: a worker's acks and the fetch for the room they free, for
every broker; on Redis, in one round trip, with the results stored by the acks."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from conveyor.backends.base import ResultBackend, ResultWrite
from conveyor.backends.redis import RedisResultBackend
from conveyor.backends.sqlite import SqliteResultBackend
from conveyor.brokers.base import Broker, BrokerOptions, Delivery, OutgoingMessage, QueueStats
from conveyor.brokers.redis import RedisBroker
from conveyor.brokers.sqlite import SqliteBroker
from redis_server import RedisServer

from .conftest import LEASE_SECONDS

#: A hang guard for calls that must not wait, never a speed claim.
PROMPT_SECONDS = 2.0


def msg(id: str, queue: str = "default", priority: int = 0) -> OutgoingMessage:
    return OutgoingMessage(id=id, queue=queue, body=id.encode(), priority=priority)


def take(
    broker: Broker, queues: Sequence[str] = ("default",), limit: int = 100, consumer: str = "c1"
) -> list[Delivery]:
    return broker.fetch(queues, limit, consumer=consumer, timeout=0.0)


def ids(deliveries: Sequence[Delivery]) -> list[str]:
    return [d.id for d in deliveries]


def test_acks_are_applied_and_up_to_limit_more_leased_in_priority_then_publish_order(
    broker: Broker,
) -> None:
    # Given two deliveries held, and more messages ready over two queues
    broker.publish_many([msg("held1"), msg("held2")])
    held = take(broker)
    broker.publish_many(
        [
            msg("x0"),
            msg("y5", priority=5),
            msg("z0"),
            msg("w9", queue="other", priority=9),
            msg("v5", queue="other", priority=5),
        ]
    )

    # When they are acknowledged with a refill of 3 from both queues
    acks, fetched = broker.ack_and_fetch(held, {}, ["default", "other"], 3, consumer="refiller")

    # Then both acks hold, and the 3 best are leased: priority first, then publish order
    assert acks == [True, True]
    assert ids(fetched) == ["w9", "y5", "v5"]
    assert [(d.queue, d.body, d.deliveries) for d in fetched] == [
        ("other", b"w9", 1),
        ("default", b"y5", 1),
        ("other", b"v5", 1),
    ]
    assert len({d.token for d in fetched}) == 3
    assert broker.stats(["default", "other"]) == [
        QueueStats("default", ready=2, in_flight=1),
        QueueStats("other", in_flight=2),
    ]
    # And the acknowledged messages never come back; the leased ones are not fetched again
    assert ids(take(broker, ["default", "other"], consumer="c2")) == ["x0", "z0"]
    assert broker.ack(fetched) == [True, True, True]


def test_limit_zero_acks_and_fetches_nothing(broker: Broker) -> None:
    broker.publish_many([msg("m1"), msg("m2")])
    (delivery,) = take(broker, limit=1)

    assert broker.ack_and_fetch([delivery], {}, ["default"], 0, consumer="c1") == ([True], [])

    assert broker.stats(["default"]) == [QueueStats("default", ready=1)]


def test_a_stale_token_acks_false_and_the_fetch_still_happens(broker: Broker) -> None:
    # Given a delivery whose lease was lost and whose message went to another consumer
    broker.publish(msg("m1"))
    (stale,) = take(broker, consumer="frozen")
    time.sleep(LEASE_SECONDS + 0.1)
    broker.reclaim()
    (current,) = take(broker, consumer="live")
    broker.publish(msg("m2"))

    # When the first holder acks with its old token, with a refill
    acks, fetched = broker.ack_and_fetch([stale], {}, ["default"], 5, consumer="frozen")

    # Then the ack is refused, changing nothing, and the refill is made all the same
    assert acks == [False]
    assert ids(fetched) == ["m2"]
    assert broker.stats(["default"]) == [QueueStats("default", in_flight=2)]
    assert broker.ack([current, *fetched]) == [True, True]


def test_nothing_ready_returns_at_once(broker: Broker) -> None:
    # Given one held delivery, and nothing else ready
    broker.publish(msg("m1"))
    (delivery,) = take(broker)
    started = time.monotonic()

    # When it is acked with a refill, and then a refill is asked with no acks
    first = broker.ack_and_fetch([delivery], {}, ["default"], 10, consumer="c1")
    second = broker.ack_and_fetch([], {}, ["default", "other"], 10, consumer="c1")

    # Then neither waits for a message
    assert time.monotonic() - started < PROMPT_SECONDS
    assert first == ([True], [])
    assert second == ([], [])
    assert broker.stats(["default"]) == [QueueStats("default")]


def test_no_acks_only_fetches(broker: Broker) -> None:
    broker.publish_many([msg("m1"), msg("m2"), msg("m3")])

    acks, fetched = broker.ack_and_fetch([], {}, ["default"], 2, consumer="c1")

    assert (acks, ids(fetched)) == ([], ["m1", "m2"])
    assert broker.stats(["default"]) == [QueueStats("default", ready=1, in_flight=2)]


def test_acks_over_several_queues_answer_in_the_order_given(broker: Broker) -> None:
    # Given deliveries of two queues, one of them stale
    broker.publish_many([msg("a1", "a"), msg("b1", "b"), msg("a2", "a")])
    _, b1, _ = take(broker, ["a", "b"], consumer="frozen")
    time.sleep(LEASE_SECONDS + 0.1)
    broker.reclaim()
    again = take(broker, ["b"], consumer="live")  # b1's lease went elsewhere
    a1_now, a2_now = take(broker, ["a"], consumer="live")
    broker.publish(msg("b2", "b"))

    # When they are acked in an interleaved order, with a refill
    acks, fetched = broker.ack_and_fetch([a1_now, b1, a2_now], {}, ["a", "b"], 5, consumer="live")

    # Then each answer is in its delivery's place
    assert acks == [True, False, True]
    assert ids(fetched) == ["b2"]
    assert broker.ack([*again, *fetched]) == [True, True]
    assert broker.stats(["a", "b"]) == [QueueStats("a"), QueueStats("b")]


def test_a_retried_call_is_accepted_again(broker: Broker) -> None:
    # Given a call whose reply was lost (it is made again with the same deliveries)
    broker.publish_many([msg("m1"), msg("m2"), msg("m3"), msg("m4")])
    held = take(broker, limit=2)
    first = broker.ack_and_fetch(held, {}, ["default"], 1, consumer="c1")

    # When it is made again
    second = broker.ack_and_fetch(held, {}, ["default"], 1, consumer="c1")

    # Then the acks are True both times, and each call leased one more
    assert first[0] == second[0] == [True, True]
    assert ids(first[1]) == ["m3"]
    assert ids(second[1]) == ["m4"]
    assert broker.stats(["default"]) == [QueueStats("default", in_flight=2)]


# -- with the results written by the acks ------------------------------------------------


@pytest.fixture(params=["redis", "sqlite"])
def same_place(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Broker, ResultBackend]]:
    """A broker (short leases) and a result backend keeping their data in one place."""
    options = BrokerOptions(lease_seconds=LEASE_SECONDS)
    if request.param == "redis":
        url = str(request.getfixturevalue("redis_url"))
        pair: tuple[Broker, ResultBackend] = (
            RedisBroker(url, options),
            RedisResultBackend(url),
        )
    else:
        url = f"sqlite:///{tmp_path}/conveyor.sqlite3"
        pair = (SqliteBroker(url, options), SqliteResultBackend(url))
    yield pair
    for closable in pair:
        closable.close()


def writes_of(
    backend: ResultBackend, broker: Broker, results: dict[Delivery, bytes]
) -> dict[str, object]:
    """``writes`` for ``ack_and_fetch``: token -> the backend's write of that result."""
    prepared = backend.writes_for(
        broker, [ResultWrite(d.id, "SUCCESS", payload, 60.0) for d, payload in results.items()]
    )
    assert prepared is not None
    return {d.token: w for d, w in zip(results, prepared, strict=True)}


def test_results_are_stored_with_their_acks_and_the_refill_made(
    same_place: tuple[Broker, ResultBackend],
) -> None:
    broker, backend = same_place
    broker.publish_many([msg("t1"), msg("t2"), msg("t3")])
    held = take(broker, limit=2)
    writes = writes_of(backend, broker, {held[0]: b"1", held[1]: b"2"})

    acks, fetched = broker.ack_and_fetch(held, writes, ["default"], 5, consumer="c1")

    assert acks == [True, True]
    assert ids(fetched) == ["t3"]
    for task_id, payload in (("t1", b"1"), ("t2", b"2")):
        record = backend.get(task_id)
        assert record is not None
        assert (record.state, record.payload) == ("SUCCESS", payload)
    assert backend.get("t3") is None
    assert broker.stats(["default"]) == [QueueStats("default", in_flight=1)]


def test_a_stale_ack_stores_no_result_and_the_refill_is_made(
    same_place: tuple[Broker, ResultBackend],
) -> None:
    # Given a delivery whose lease was lost and whose message went to another consumer
    broker, backend = same_place
    broker.publish(msg("t1"))
    (stale,) = take(broker, consumer="frozen")
    time.sleep(LEASE_SECONDS + 0.1)
    broker.reclaim()
    (current,) = take(broker, consumer="live")
    broker.publish(msg("t2"))
    writes = writes_of(backend, broker, {stale: b"old"})

    # When the first holder acks it with its result, with a refill
    acks, fetched = broker.ack_and_fetch([stale], writes, ["default"], 5, consumer="frozen")

    # Then nothing is stored, the refill is made, and the current holder still acks
    assert acks == [False]
    assert backend.get("t1") is None
    assert ids(fetched) == ["t2"]
    assert broker.ack([current, *fetched]) == [True, True]


# -- Redis: one round trip -----------------------------------------------------------------


@pytest.fixture
def redis_pair(redis_url: str) -> Iterator[tuple[RedisBroker, RedisResultBackend]]:
    broker, backend = RedisBroker(redis_url), RedisResultBackend(redis_url)
    yield broker, backend
    broker.close()
    backend.close()


def count_round_trips(monkeypatch: pytest.MonkeyPatch, broker: RedisBroker) -> list[int]:
    """Counts the pipelines the broker sends (every command of it goes through one)."""
    sent: list[int] = []
    conn = broker._conn
    send = conn.execute_many

    def counted(commands: Sequence[Sequence[Any]], **kwargs: Any) -> list[Any]:
        sent.append(len(commands))
        return send(commands, **kwargs)

    monkeypatch.setattr(conn, "execute_many", counted)
    return sent


def warm_up(broker: Broker) -> None:
    """Scripts loaded, server checked, queues registered: what the first call does once."""
    broker.publish_many([msg("warm-a", "a"), msg("warm-b", "b")])
    broker.ack(take(broker, ["a", "b"]))


def commandstats(server: RedisServer) -> Callable[[], dict[str, Any]]:
    with server.client() as raw:
        raw.config_resetstat()

    def read() -> dict[str, Any]:
        with server.client() as raw:
            return dict(raw.info("commandstats"))

    return read


def test_on_redis_acks_of_several_queues_and_the_fetch_are_one_round_trip(
    redis_pair: tuple[RedisBroker, RedisResultBackend],
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broker, backend = redis_pair
    warm_up(broker)
    broker.publish_many([msg("a1", "a"), msg("b1", "b"), msg("a2", "a"), msg("b2", "b")])
    held = take(broker, ["a", "b"], limit=2)
    writes = writes_of(backend, broker, {held[0]: b"A", held[1]: b"B"})
    stats = commandstats(redis_server)
    sent = count_round_trips(monkeypatch, broker)

    acks, fetched = broker.ack_and_fetch(held, writes, ["a", "b"], 2, consumer="c1")

    assert acks == [True, True]
    assert ids(fetched) == ["a2", "b2"]
    # one pipeline: an ack script per queue, and the fetch script
    assert sent == [3]
    assert stats()["cmdstat_evalsha"]["calls"] == 3
    record = backend.get("a1")
    assert record is not None
    assert record.payload == b"A"


def test_on_redis_a_retried_call_with_results_is_true_both_times_and_stores_once(
    redis_pair: tuple[RedisBroker, RedisResultBackend], redis_server: RedisServer
) -> None:
    broker, backend = redis_pair
    warm_up(broker)
    broker.publish_many([msg("t1"), msg("t2"), msg("t3")])
    (delivery,) = take(broker, limit=1)
    writes = writes_of(backend, broker, {delivery: b"first"})
    stats = commandstats(redis_server)

    first = broker.ack_and_fetch([delivery], writes, ["default"], 1, consumer="c1")
    second = broker.ack_and_fetch([delivery], writes, ["default"], 1, consumer="c1")

    assert first[0] == second[0] == [True]
    assert (ids(first[1]), ids(second[1])) == (["t2"], ["t3"])
    record = backend.get("t1")
    assert record is not None
    assert record.payload == b"first"
    # the result was written (and announced) by the first call only
    counted = stats()
    assert counted["cmdstat_set"]["calls"] == 1
    assert counted["cmdstat_publish"]["calls"] == 1
