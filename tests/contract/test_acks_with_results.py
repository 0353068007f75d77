"""A broker and a result backend that keep their data in one place (one Redis server,
one SQLite file): the worker's results are written with its acks, in one step,
fenced by the delivery token, so no crash can come between an ack and its result."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.backends.base import ResultBackend, ResultWrite
from conveyor.backends.redis import RedisResultBackend
from conveyor.backends.sqlite import SqliteResultBackend
from conveyor.brokers.base import Broker, BrokerOptions, Delivery, OutgoingMessage
from conveyor.brokers.redis import RedisBroker
from conveyor.brokers.sqlite import SqliteBroker
from redis_server import RedisServer


@pytest.fixture(params=["redis", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "redis":
        return str(request.getfixturevalue("redis_url"))
    return f"sqlite:///{tmp_path}/conveyor.sqlite3"


@pytest.fixture
def broker(url: str) -> Iterator[Broker]:
    built: Broker = RedisBroker(url) if url.startswith("redis") else SqliteBroker(url)
    yield built
    built.close()


@pytest.fixture
def backend(url: str) -> Iterator[ResultBackend]:
    built: ResultBackend = (
        RedisResultBackend(url) if url.startswith("redis") else SqliteResultBackend(url)
    )
    yield built
    built.close()


@pytest.fixture
def redis_broker(redis_url: str) -> Iterator[RedisBroker]:
    built = RedisBroker(redis_url)
    yield built
    built.close()


@pytest.fixture
def redis_backend(redis_url: str) -> Iterator[RedisResultBackend]:
    built = RedisResultBackend(redis_url)
    yield built
    built.close()


def fetch_one(broker: Broker, message_id: str) -> Delivery:
    broker.publish(OutgoingMessage(message_id, "default", b"{}", 0, None))
    (delivery,) = broker.fetch(["default"], 1, consumer="c", timeout=1.0)
    return delivery


def test_a_current_delivery_is_acked_and_its_result_stored_and_published_in_one_call(
    redis_broker: RedisBroker, redis_backend: RedisResultBackend, redis_server: RedisServer
) -> None:
    broker, backend = redis_broker, redis_backend
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


def test_a_current_delivery_is_acked_and_its_result_stored_in_one_step(
    broker: Broker, backend: ResultBackend
) -> None:
    delivery = fetch_one(broker, "t1")
    (write,) = backend.writes_for(broker, [ResultWrite("t1", "SUCCESS", b"42", 60.0)]) or []

    assert broker.ack_storing([delivery], {delivery.token: write}) == [True]

    record = backend.get("t1")
    assert record is not None
    assert (record.state, record.payload) == ("SUCCESS", b"42")
    assert broker.stats(["default"])[0].in_flight == 0


def test_a_stale_delivery_stores_nothing(url: str, backend: ResultBackend) -> None:
    # Given a delivery whose lease expired and was reclaimed, and delivered again
    options = BrokerOptions(lease_seconds=0.2)
    broker: Broker = (
        RedisBroker(url, options) if url.startswith("redis") else SqliteBroker(url, options)
    )
    stale = fetch_one(broker, "t1")
    time.sleep(0.3)
    broker.reclaim()
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
    broker.close()


def test_only_a_broker_on_the_same_server_or_file_is_given_writes(
    redis_url: str, tmp_path: Path
) -> None:
    redis_backend = RedisResultBackend(redis_url)
    sqlite_backend = SqliteResultBackend(f"sqlite:///{tmp_path}/a.sqlite3")
    other_db = RedisBroker(redis_url.rsplit("/", 1)[0] + "/1")
    other_file = SqliteBroker(f"sqlite:///{tmp_path}/b.sqlite3")
    writes = [ResultWrite("t1", "SUCCESS", b"42", 60.0)]

    for backend in (redis_backend, sqlite_backend):
        assert backend.writes_for(other_db, writes) is None
        assert backend.writes_for(other_file, writes) is None
    for closable in (redis_backend, sqlite_backend, other_db, other_file):
        closable.close()
