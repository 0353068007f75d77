"""Fixtures that run each contract suite against every implementation."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conveyor.backends.base import ResultBackend
from conveyor.backends.memory import MemoryResultBackend
from conveyor.backends.redis import RedisResultBackend
from conveyor.backends.sqlite import SqliteResultBackend
from conveyor.brokers.base import Broker, BrokerOptions
from conveyor.brokers.memory import MemoryBroker
from conveyor.brokers.redis import RedisBroker
from conveyor.brokers.sqlite import SqliteBroker

BrokerFactory = Callable[[BrokerOptions], Broker]

# Short leases keep the lease tests to about a second of sleeping.
LEASE_SECONDS = 0.5
MAX_DELIVERIES = 3

#: How the Sentinel entries reach the master: Celery's transport options, and every write
#: held by a replica before it returns (as a production deployment behind Sentinel would).
SENTINEL_OPTIONS = {"master_name": "mymaster"}


def _sentinel_broker(options: BrokerOptions, request: pytest.FixtureRequest) -> Broker:
    options = dataclasses.replace(options, transport_options=SENTINEL_OPTIONS, replica_acks=1)
    return RedisBroker(request.getfixturevalue("sentinel_url"), options)


# One entry per implementation: (id, build(tmp_path, options, request)); the request
# reaches a server fixture only for the implementations that need one.
BROKERS: list[tuple[str, Callable[[Path, BrokerOptions, pytest.FixtureRequest], Broker]]] = [
    ("memory", lambda tmp, options, request: MemoryBroker("memory://", options)),
    (
        "sqlite",
        lambda tmp, options, request: SqliteBroker(f"sqlite:///{tmp}/broker.sqlite3", options),
    ),
    (
        "redis",
        lambda tmp, options, request: RedisBroker(request.getfixturevalue("redis_url"), options),
    ),
    ("redis-sentinel", lambda tmp, options, request: _sentinel_broker(options, request)),
]
# Backends take the test's request too, to reach a server fixture only when they need one.
BACKENDS: list[tuple[str, Callable[[Path, pytest.FixtureRequest], ResultBackend]]] = [
    ("memory", lambda tmp, request: MemoryResultBackend("memory://")),
    ("sqlite", lambda tmp, request: SqliteResultBackend(f"sqlite:///{tmp}/results.sqlite3")),
    ("redis", lambda tmp, request: RedisResultBackend(request.getfixturevalue("redis_url"))),
    (
        "redis-sentinel",
        lambda tmp, request: RedisResultBackend(
            request.getfixturevalue("sentinel_url"),
            transport_options=SENTINEL_OPTIONS,
            replica_acks=1,
        ),
    ),
]


@pytest.fixture(params=[build for _, build in BROKERS], ids=[name for name, _ in BROKERS])
def make_broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BrokerFactory]:
    """Builds brokers of one implementation with the given options; closes them after."""
    build: Callable[[Path, BrokerOptions, pytest.FixtureRequest], Broker] = request.param
    made: list[Broker] = []

    def make(options: BrokerOptions) -> Broker:
        made.append(build(tmp_path, options, request))
        return made[-1]

    yield make
    for broker in made:
        broker.close()


@pytest.fixture
def broker(make_broker: BrokerFactory) -> Broker:
    """A broker with a short lease and a low delivery limit."""
    return make_broker(BrokerOptions(lease_seconds=LEASE_SECONDS, max_deliveries=MAX_DELIVERIES))


@pytest.fixture(params=[build for _, build in BACKENDS], ids=[name for name, _ in BACKENDS])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ResultBackend]:
    """A result backend of each implementation."""
    built: ResultBackend = request.param(tmp_path, request)
    yield built
    built.close()
