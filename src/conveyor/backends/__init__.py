"""Result backends: the contract (``base``) and its implementations, chosen by URL scheme."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from conveyor.backends.base import ResultBackend
from conveyor.exceptions import ConfigurationError

__all__ = ["SCHEMES", "connect_backend"]

SCHEMES = ("memory://", "sqlite://", "redis://", "rediss://", "unix://", "sentinel://")

# As for brokers: the producer and an in-process worker must share one
# memory:// backend, so there is one per name for the life of the process.
_memory_backends: dict[str, ResultBackend] = {}
_memory_lock = threading.Lock()


def connect_backend(
    url: str,
    *,
    transport_options: Mapping[str, Any] | None = None,
    replica_acks: int = 0,
    retry_for: float = 10.0,
) -> ResultBackend:
    """The result backend for ``url``: ``memory://[name]``, ``sqlite:///path/to/file.sqlite3``,
    or Redis: ``redis://[user:password@]host:port/db``, ``rediss://...`` (TLS),
    ``unix:///path/to/redis.sock?db=N`` (each may add ``?prefix=name``), or Redis behind
    Sentinel, ``sentinel://host1:26379;sentinel://host2:26379/0`` with
    ``transport_options={"master_name": ...}``. ``replica_acks``: replicas that must
    hold each result write before it returns (Redis ``WAIT``).

    Within one process, every ``memory://`` URL with the same name returns the
    same backend.

    Raises:
        ConfigurationError: the URL's scheme names no known backend.
        ValueError: the URL is malformed for its scheme.
    """
    scheme, sep, rest = url.partition("://")
    if sep and scheme == "memory":
        from conveyor.backends.memory import MemoryResultBackend

        with _memory_lock:
            backend = _memory_backends.get(rest)
            if backend is None:
                backend = _memory_backends[rest] = MemoryResultBackend(url)
            return backend
    if sep and scheme == "sqlite":
        from conveyor.backends.sqlite import SqliteResultBackend

        return SqliteResultBackend(url)
    if sep and scheme in ("redis", "rediss", "unix", "sentinel"):
        from conveyor.backends.redis import RedisResultBackend

        return RedisResultBackend(
            url,
            transport_options=transport_options,
            replica_acks=replica_acks,
            retry_for=retry_for,
        )
    raise ConfigurationError(
        f"no result backend for {scheme + sep!r} URLs: supported schemes are {', '.join(SCHEMES)}"
    )
