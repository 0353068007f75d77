"""A Redis broker and a Redis result backend on one server: the worker's results are
written by the ack script, in the same round trip, fenced by the delivery token."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from conveyor.backends.base import ResultWrite
from conveyor.backends.redis import RedisResultBackend
from conveyor.brokers.base import Delivery, OutgoingMessage
from conveyor.brokers.redis import RedisBroker
from conveyor.brokers.sqlite import SqliteBroker
from redis_server import RedisServer


@pytest.fixture
def broker(redis_url: str) -> Iterator[RedisBroker]:
    built = RedisBroker(redis_url)
    yield built
    built.close()


@pytest.fixture
def backend(redis_url: str) -> Iterator[RedisResultBackend]:
    built = RedisResultBackend(redis_url)
    yield built
    built.close()


def fetch_one(broker: RedisBroker, message_id: str) -> Delivery:
    broker.publish(OutgoingMessage(message_id, "default", b"{}", 0, None))
    (delivery,) = broker.fetch(["default"], 1, consumer="c", timeout=1.0)
    return delivery


def test_a_current_delivery_is_acked_and_its_result_stored_and_published_in_one_call(
    broker: RedisBroker, backend: RedisResultBackend, redis_server: RedisServer
) -> None:
    broker.ack([fetch_one(broker, "warm-up")])  # the script is loaded
    delivery = fetch_one(broker, "t1")
    (write,) = backend.writes_for(broker, [ResultWrite("t1", "SUCCESS", b"42", 60.0)]) or []
    with redis_server.client() as raw:
        raw.config_resetstat()

    assert broker.ack_storing([delivery], {delivery.token: write}) == [True]

    record = backend.get("t1")
    assert record is not None
    assert (record.state, record.payload) == ("SUCCESS", b"42")
    with redis_server.client() as raw:
        stats = raw.info("commandstats")
        assert 59_000 < raw.pttl("conveyor:result:t1") <= 60_000
    # one script sent (the SET and PUBLISH ran inside it)
    assert stats["cmdstat_evalsha"]["calls"] == 1
    assert stats["cmdstat_set"]["calls"] == 1
    assert stats["cmdstat_publish"]["calls"] == 1
    assert broker.stats(["default"])[0].in_flight == 0


def test_a_stale_delivery_stores_nothing(broker: RedisBroker, backend: RedisResultBackend) -> None:
    # Given a delivery whose lease was lost: released, and delivered again
    stale = fetch_one(broker, "t1")
    assert broker.release(stale) is True
    (current,) = broker.fetch(["default"], 1, consumer="other", timeout=1.0)

    # When the first holder finishes and acks with its result
    (write,) = backend.writes_for(broker, [ResultWrite("t1", "SUCCESS", b"old", 60.0)]) or []
    assert broker.ack_storing([stale], {stale.token: write}) == [False]

    # Then nothing was stored, and the current holder's result still can be
    assert backend.get("t1") is None
    (mine,) = backend.writes_for(broker, [ResultWrite("t1", "SUCCESS", b"new", 60.0)]) or []
    assert broker.ack_storing([current], {current.token: mine}) == [True]
    record = backend.get("t1")
    assert record is not None
    assert record.payload == b"new"


def test_only_a_broker_on_the_same_server_is_given_writes(
    redis_url: str, backend: RedisResultBackend, tmp_path: object
) -> None:
    other_db = RedisBroker(redis_url.rsplit("/", 1)[0] + "/1")
    sqlite = SqliteBroker(f"sqlite:///{tmp_path}/b.sqlite3")
    writes = [ResultWrite("t1", "SUCCESS", b"42", 60.0)]

    assert backend.writes_for(other_db, writes) is None
    assert backend.writes_for(sqlite, writes) is None
    with pytest.raises(NotImplementedError):
        sqlite.ack_storing([], {})
    other_db.close()
    sqlite.close()
