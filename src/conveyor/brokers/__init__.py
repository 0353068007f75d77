"""Brokers: the contract (``base``) and its implementations, chosen by URL scheme."""

from __future__ import annotations

import threading

from conveyor.brokers.base import Broker, BrokerOptions, safe_url
from conveyor.exceptions import ConfigurationError

__all__ = ["SCHEMES", "connect_broker"]

SCHEMES = ("memory://", "sqlite://", "redis://", "rediss://", "unix://", "sentinel://")

# memory:// only works if the producer and the worker thread of one process
# reach the same broker object, and they build theirs separately from the same
# URL: so one broker per name, for the life of the process.
_memory_brokers: dict[str, Broker] = {}
_memory_lock = threading.Lock()


def connect_broker(url: str, options: BrokerOptions | None = None) -> Broker:
    """The broker for ``url``: ``memory://[name]``, ``sqlite:///path/to/file.sqlite3``,
    ``redis://[user:password@]host:port/db``, ``rediss://...``, ``unix:///path``, or
    Redis behind Sentinel: ``sentinel://host1:26379;sentinel://host2:26379/0`` (with
    ``options.transport_options["master_name"]``).

    Within one process, every ``memory://`` URL with the same name returns the
    same broker (made with the options of the first call).

    Raises:
        ConfigurationError: the URL's scheme names no known broker.
        ValueError: the URL is malformed for its scheme.
    """
    scheme, sep, rest = url.partition("://")
    if sep and scheme == "memory":
        from conveyor.brokers.memory import MemoryBroker

        with _memory_lock:
            broker = _memory_brokers.get(rest)
            if broker is None:
                broker = _memory_brokers[rest] = MemoryBroker(url, options)
            return broker
    if sep and scheme == "sqlite":
        from conveyor.brokers.sqlite import SqliteBroker

        return SqliteBroker(url, options)
    if sep and scheme in ("redis", "rediss", "unix", "sentinel"):
        from conveyor.brokers.redis import RedisBroker

        retry_for = (options or BrokerOptions()).connection_timeout
        return RedisBroker(url, options, retry_for=retry_for)
    raise ConfigurationError(
        f"no broker for {safe_url(url)!r}: supported schemes are {', '.join(SCHEMES)}"
    )
