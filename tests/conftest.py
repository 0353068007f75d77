"""Fixtures for every test directory: real Redis servers (see ``redis_server.py``)."""

from __future__ import annotations

import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `redis_server`, any import mode

from redis_server import RedisServer, executable
from redis_topology import ClusterTopology, SentinelTopology, cli_executable


def _started(server: RedisServer) -> RedisServer:
    if executable() is None:
        # Fail, never skip: a CI without Redis must not pass by skipping the Redis tests.
        pytest.fail("redis-server is not on PATH: run `make test` (it installs it)", pytrace=False)
    server.start()
    return server


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session (no password, nothing persisted, ``DEBUG`` allowed
    so that a test can stall it with ``DEBUG SLEEP``); tests may stop it."""
    server = _started(RedisServer(tmp_path_factory.mktemp("redis"), debug_command=True))
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """``redis://127.0.0.1:PORT/0`` on the session's server, running with its options and empty."""
    redis_server.reset()
    return redis_server.url


@pytest.fixture(scope="session")
def redis_acl_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server with a default-user password, an ACL user (its ``url`` logs in as that
    user) and a TLS port (``tls_url``); passwords are fresh each session."""
    server = RedisServer(
        tmp_path_factory.mktemp("redis-acl"),
        password=secrets.token_hex(8),
        acl_user=("conveyor", secrets.token_hex(8)),
        tls=True,
    )
    yield _started(server)
    server.stop()


# -- high-availability topologies (see ``redis_topology.py``) ----------------------------


def _require_redis(*, cli: bool) -> None:
    # Fail, never skip, as ``_started`` does.
    if executable() is None:
        pytest.fail("redis-server is not on PATH: run `make test` (it installs it)", pytrace=False)
    if cli and cli_executable() is None:
        pytest.fail("redis-cli is not on PATH: run `make test` (it installs it)", pytrace=False)


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelTopology]:
    """A master, two replicas and three sentinels watching ``mymaster`` (no passwords);
    tests may fail it over, kill nodes and restart them (``sentinel_url`` heals it)."""
    _require_redis(cli=False)
    topology = SentinelTopology(tmp_path_factory.mktemp("redis-sentinel"))
    topology.start()
    yield topology
    topology.stop()


@pytest.fixture
def sentinel_url(redis_sentinel: SentinelTopology) -> str:
    """``sentinel://127.0.0.1:P1/0;sentinel://...`` on the session's sentinels, every node up,
    the topology healthy (whichever node is master) and empty."""
    redis_sentinel.reset()
    return redis_sentinel.url()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterTopology]:
    """A Redis Cluster of three masters with a replica each (no password); tests may fail
    it over, kill nodes and restart them (``cluster_url`` heals it)."""
    _require_redis(cli=True)
    topology = ClusterTopology(tmp_path_factory.mktemp("redis-cluster"))
    topology.start()
    yield topology
    topology.stop()


@pytest.fixture
def cluster_url(redis_cluster: ClusterTopology) -> str:
    """``redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3/0`` on the session's cluster,
    every node up, the cluster healthy and empty."""
    redis_cluster.reset()
    return redis_cluster.url()
