"""Choosing a broker or result backend by URL."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from conveyor.backends import connect_backend
from conveyor.backends.memory import MemoryResultBackend
from conveyor.backends.redis import RedisResultBackend
from conveyor.backends.sqlite import SqliteResultBackend
from conveyor.brokers import connect_broker
from conveyor.brokers.base import BrokerOptions
from conveyor.brokers.memory import MemoryBroker
from conveyor.brokers.sqlite import SqliteBroker
from conveyor.exceptions import ConfigurationError


def unique_memory_url() -> str:
    return f"memory://{uuid.uuid4().hex}"  # the registry lives as long as the process


def test_the_same_memory_url_reaches_the_same_broker() -> None:
    url = unique_memory_url()

    first, second = connect_broker(url), connect_broker(url)

    assert isinstance(first, MemoryBroker)
    assert second is first
    assert connect_broker(unique_memory_url()) is not first


def test_the_same_memory_url_reaches_the_same_backend() -> None:
    url = unique_memory_url()

    first, second = connect_backend(url), connect_backend(url)

    assert isinstance(first, MemoryResultBackend)
    assert second is first
    assert connect_backend(unique_memory_url()) is not first


def test_sqlite_urls_open_the_sqlite_implementations(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/conveyor.sqlite3"
    options = BrokerOptions(lease_seconds=3)

    broker, backend = connect_broker(url, options), connect_backend(url)

    assert isinstance(broker, SqliteBroker)
    assert broker.options is options
    assert isinstance(backend, SqliteResultBackend)
    broker.close()
    backend.close()


def test_unknown_broker_scheme_names_the_supported_ones_and_hides_passwords() -> None:
    with pytest.raises(ConfigurationError, match="memory://, sqlite://") as raised:
        connect_broker("amqp://guest:secret@localhost//")

    assert "secret" not in str(raised.value)


def test_unknown_backend_scheme_names_the_supported_ones() -> None:
    with pytest.raises(ConfigurationError, match="memory://, sqlite://, redis://") as raised:
        connect_backend("mongodb://:secret@localhost/1")

    assert "secret" not in str(raised.value)


@pytest.mark.parametrize(
    "url", ["redis://:pw@localhost:6379/1", "rediss://u:pw@host/0", "unix:///run/redis.sock?db=2"]
)
def test_redis_urls_open_the_redis_backend_without_connecting(url: str) -> None:
    backend = connect_backend(url)

    assert isinstance(backend, RedisResultBackend)
    assert backend.url == url
    backend.close()


def test_in_memory_sqlite_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot be shared"):
        connect_broker("sqlite://:memory:")
