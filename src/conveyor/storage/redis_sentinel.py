"""Redis behind Sentinel: Celery's ``sentinel://`` URLs, and clients that follow failovers.

A URL names the sentinels, one ``sentinel://`` part each, joined by ``;``:
``sentinel://:password@host1:26379/0;sentinel://:password@host2:26379/0``. As in
Celery, the password in the URL is the Redis master's; the name of the monitored
master and the sentinels' own connection options (their password, if they have one)
come from the transport options (``broker_transport_options`` or
``result_backend_transport_options``): ``{"master_name": "mymaster",
"sentinel_kwargs": {"password": "..."}}``.

redis-py's Sentinel support asks the sentinels for the master's address whenever it
opens a connection, and turns a write refused by a demoted master (``READONLY``)
into a connection error, so the callers' retries carry them across a failover.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import redis
import redis.asyncio as aredis
import redis.asyncio.sentinel as asentinel
import redis.sentinel
from redis.asyncio.retry import Retry as ARetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from conveyor.config import redact_url
from conveyor.exceptions import ConfigurationError

SCHEME = "sentinel"
DEFAULT_PORT = 26379

#: What a sentinel's own connection may be given in ``sentinel_kwargs``.
_SENTINEL_KWARGS = frozenset(
    {
        "username",
        "password",
        "socket_timeout",
        "socket_connect_timeout",
        "socket_keepalive",
        "ssl",
        "ssl_ca_certs",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_cert_reqs",
    }
)


class _MasterConnection(redis.sentinel.SentinelManagedConnection):
    """A connection to the current master, also when first used by a send.

    redis-py's pool connects a connection (asking the sentinels where the master is)
    when it checks one out; a send on a connection that is not connected connects it
    to its last address, the default ``localhost:6379`` for a new one. conveyor sends
    on connections it keeps itself (``RedisConnection.execute_many``).
    """

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if self._sock is None:
            self.connect()  # type: ignore[no-untyped-call]
        super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]


def is_sentinel_url(url: str) -> bool:
    return url.startswith(f"{SCHEME}://")


@dataclass(frozen=True, slots=True)
class SentinelTarget:
    """The master a ``sentinel://`` URL and its transport options lead to."""

    sentinels: tuple[tuple[str, int], ...]
    master_name: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_kwargs: Mapping[str, Any] = field(default_factory=dict, repr=False)


def parse_sentinel_url(
    url: str, transport_options: Mapping[str, Any], setting: str = "broker_transport_options"
) -> SentinelTarget:
    """The sentinels, master credentials and database of ``url``, with the master's name
    from ``transport_options`` (``setting`` names where they come from, for errors).

    Raises:
        ConfigurationError: a part is not ``sentinel://host[:port][/db]``, the parts
            disagree on the credentials or the database, or no ``master_name`` is given.
    """
    shown = redact_url(url)
    sentinels: list[tuple[str, int]] = []
    credentials: set[tuple[str | None, str | None]] = set()
    dbs: set[int] = set()
    for part in url.split(";"):
        parts = urllib.parse.urlsplit(part.strip())
        if parts.scheme != SCHEME:
            raise ConfigurationError(
                f"{shown!r}: each part must start with sentinel:// "
                "(sentinel://host1:26379;sentinel://host2:26379/0)"
            )
        if parts.query or parts.fragment:
            raise ConfigurationError(
                f"{shown!r}: a sentinel:// URL takes no query: options go in {setting}"
            )
        try:
            host, port = parts.hostname, parts.port or DEFAULT_PORT
        except ValueError:
            raise ConfigurationError(f"{shown!r}: a sentinel's port is not a number") from None
        if not host:
            raise ConfigurationError(f"{shown!r}: a sentinel:// part names no host")
        sentinels.append((host, port))
        user = urllib.parse.unquote(parts.username) if parts.username else None
        password = urllib.parse.unquote(parts.password) if parts.password else None
        if user or password:
            credentials.add((user, password))
        path = parts.path.strip("/")
        if path:
            if not path.isdigit():
                raise ConfigurationError(f"{shown!r}: the database must be a number, got {path!r}")
            dbs.add(int(path))
    if len(credentials) > 1:
        raise ConfigurationError(f"{shown!r}: the parts give different master passwords")
    if len(dbs) > 1:
        raise ConfigurationError(f"{shown!r}: the parts name different databases")
    master_name = transport_options.get("master_name")
    if not master_name or not isinstance(master_name, str):
        raise ConfigurationError(
            f"{shown!r} needs the name of the master the sentinels monitor: "
            f"{setting} = {{'master_name': 'mymaster'}}"
        )
    sentinel_kwargs = dict(transport_options.get("sentinel_kwargs") or {})
    unknown = sorted(set(sentinel_kwargs) - _SENTINEL_KWARGS)
    if unknown:
        raise ConfigurationError(
            f"{setting}['sentinel_kwargs'] has unknown options {unknown}: "
            f"use {', '.join(sorted(_SENTINEL_KWARGS))}"
        )
    user, password = next(iter(credentials), (None, None))
    return SentinelTarget(
        sentinels=tuple(sentinels),
        master_name=master_name,
        db=next(iter(dbs), 0),
        username=user,
        password=password,
        sentinel_kwargs=sentinel_kwargs,
    )


def _master_kwargs(target: SentinelTarget, connection: Mapping[str, Any]) -> dict[str, Any]:
    kwargs = dict(connection)
    kwargs["db"] = target.db
    if target.username:
        kwargs["username"] = target.username
    if target.password:
        kwargs["password"] = target.password
    return kwargs


def _sentinel_kwargs(
    target: SentinelTarget, connection: Mapping[str, Any], no_retry: object
) -> dict[str, Any]:
    # the sentinels get the socket options, never the master's password; no retries of
    # redis-py's own (3, with back-off, per sentinel): the caller's retries are the policy
    kwargs: dict[str, Any] = {k: v for k, v in connection.items() if k.startswith("socket_")}
    kwargs["retry"] = no_retry
    kwargs.update(target.sentinel_kwargs)
    return kwargs


def master_client(
    target: SentinelTarget, **connection: Any
) -> tuple[redis.Redis, list[redis.Redis]]:
    """A client of the current master, each new connection of which asks the sentinels
    where it is; and the clients of the sentinels, to close with it."""
    manager = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
        list(target.sentinels),
        sentinel_kwargs=_sentinel_kwargs(target, connection, Retry(NoBackoff(), 0)),
    )
    kwargs = _master_kwargs(target, connection)
    kwargs.setdefault("connection_class", _MasterConnection)
    client = manager.master_for(target.master_name, **kwargs)  # type: ignore[no-untyped-call]
    return cast("redis.Redis", client), list(manager.sentinels)


def amaster_client(
    target: SentinelTarget, **connection: Any
) -> tuple[aredis.Redis, list[aredis.Redis]]:
    """``master_client`` for one event loop (redis.asyncio)."""
    manager = asentinel.Sentinel(  # type: ignore[no-untyped-call]
        list(target.sentinels),
        sentinel_kwargs=_sentinel_kwargs(target, connection, ARetry(NoBackoff(), 0)),
    )
    client = manager.master_for(target.master_name, **_master_kwargs(target, connection))
    return cast("aredis.Redis", client), list(manager.sentinels)
