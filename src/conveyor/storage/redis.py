"""Redis connections shared by the Redis broker and result backend.

One connection pool per process (re-created after fork), socket timeouts and
TCP keepalive on every connection, and ``call_with_retry``: any connection
error is retried with jittered exponential backoff until a deadline, then
raised as the caller's "unavailable" error. Lua scripts are atomic, so a
retried call was either applied whole or not at all.

The hot path (scripts, result writes and reads) runs through ``execute`` on
connections kept in a plain deque: on loopback, checking a connection out of
redis-py's pool and back costs about as much as the command itself.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
from redis.connection import ConnectionInterface
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from conveyor.config import redact_url
from conveyor.exceptions import ConveyorError

logger = logging.getLogger("conveyor.redis")

T = TypeVar("T")

#: Errors after which the same call may succeed on a new connection.
TRANSIENT = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)

SOCKET_TIMEOUT = 10.0
CONNECT_TIMEOUT = 5.0


class RedisConnection:
    """A per-process Redis client for one URL, with retrying calls.

    Args:
        url: ``redis://[user:password@]host:port/db``, ``rediss://`` (TLS) or
            ``unix:///path/to/socket``.
        unavailable: the exception class raised once retries run out.
        retry_for: seconds to keep retrying a failing call.
    """

    def __init__(
        self,
        url: str,
        unavailable: type[ConveyorError],
        retry_for: float = 10.0,
    ):
        self.url = url
        self.unavailable = unavailable
        self.retry_for = retry_for
        self._lock = threading.Lock()
        self._pid = -1
        self._client: redis.Redis | None = None
        # Idle connections for ``execute`` (the hot path): a deque is safe to pop and
        # append from any thread without a lock. Emptied after a fork.
        self._idle: deque[ConnectionInterface] = deque()
        self._idle_pid = -1

    @property
    def client(self) -> redis.Redis:
        """This process's client (a forked child gets a fresh pool, never the parent's sockets)."""
        pid = os.getpid()
        if self._client is None or self._pid != pid:
            with self._lock:
                if self._client is None or self._pid != pid:
                    # TCP keepalive is a TCP option: unix-socket connections refuse it.
                    tcp = {} if self.url.startswith("unix://") else {"socket_keepalive": True}
                    self._client = redis.Redis.from_url(
                        self.url,
                        socket_timeout=SOCKET_TIMEOUT,
                        socket_connect_timeout=CONNECT_TIMEOUT,
                        health_check_interval=30,
                        retry_on_timeout=False,
                        # CLIENT SETINFO costs two round trips per connection and
                        # Redis 7.0 rejects it anyway
                        driver_info=None,
                        **tcp,
                    )
                    self._pid = pid
        return self._client

    def call(self, fn: Callable[[redis.Redis], T], *, retry_for: float | None = None) -> T:
        """``fn(client)``, retried with jittered backoff on connection errors for
        ``retry_for`` seconds from the first failure (default: this connection's),
        then ``unavailable``."""
        window = self.retry_for if retry_for is None else retry_for
        deadline = 0.0  # set at the first failure: a long blocking call still gets retries
        delay = 0.05
        attempt = 0
        while True:
            try:
                return fn(self.client)
            except TRANSIENT as exc:
                attempt += 1
                if attempt == 1:
                    deadline = time.monotonic() + window
                left = deadline - time.monotonic()
                if left <= 0:
                    where = redact_url(self.url)
                    raise self.unavailable(
                        f"Redis at {where} unavailable after {attempt} attempts: {exc}"
                    ) from None
                if attempt == 1:
                    logger.warning("Redis connection error (%s); retrying", exc)
                time.sleep(min(left, delay * random.uniform(0.5, 1.5)))
                delay = min(delay * 2, 2.0)

    def execute(self, *args: Any) -> Any:
        """One command on an idle connection, without redis-py's pool bookkeeping (its
        checkout costs as much as the command on loopback). No retries: run it inside
        ``call``."""
        return self.execute_many([args])[0]

    def execute_many(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Commands sent together (a pipeline, no MULTI) on an idle connection of this
        process; their replies. A command's error reply is raised after every reply
        is read."""
        conn = self._checkout()
        replies: list[Any] = []
        error: ResponseError | None = None
        try:
            conn.send_packed_command(conn.pack_commands(commands))  # type: ignore[no-untyped-call]
            for _ in commands:
                try:
                    replies.append(conn.read_response())
                except ResponseError as exc:  # an answer: the connection is fine
                    error = error or exc
                    replies.append(exc)
        except BaseException:
            conn.disconnect()  # type: ignore[no-untyped-call]  # the next use reconnects
            raise
        finally:
            self._idle.append(conn)
        if error is not None:
            raise error
        return replies

    def _checkout(self) -> ConnectionInterface:
        pid = os.getpid()
        if self._idle_pid != pid:
            with self._lock:
                if self._idle_pid != pid:
                    self._idle = deque()  # a forked child never uses the parent's sockets
                    self._idle_pid = pid
        try:
            return self._idle.pop()
        except IndexError:
            return self.client.connection_pool.make_connection()

    def close(self) -> None:
        with self._lock:
            pid = os.getpid()
            if self._client is not None and self._pid == pid:
                self._client.close()
                self._client.connection_pool.disconnect()
            self._client = None
            if self._idle_pid == pid:
                while self._idle:
                    self._idle.pop().disconnect()  # type: ignore[no-untyped-call]
            self._idle_pid = -1


@dataclass(frozen=True, slots=True)
class KeyWrite:
    """A result write ready for a Redis script: ``SET key value PX px_ms``, then
    ``PUBLISH key notify``. The result backend prepares them; the broker applies them
    with its ack when both live on one server (one round trip, fenced by the ack)."""

    key: str
    value: bytes
    px_ms: int
    notify: bytes


def as_str(value: Any) -> str:
    """A Redis reply as text."""
    return value.decode() if isinstance(value, bytes) else str(value)
