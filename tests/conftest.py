"""Fixtures for every test directory: real Redis servers (see ``redis_server.py``)."""

from __future__ import annotations

import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `redis_server`, any import mode

from redis_server import RedisServer, executable


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
