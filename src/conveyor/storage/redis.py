"""Redis connections shared by the Redis broker and result backend.

One connection pool per process (re-created after fork), socket timeouts and
TCP keepalive on every connection, and ``call_with_retry``: any connection
error is retried with jittered exponential backoff until a deadline, then
raised as the caller's "unavailable" error. Lua scripts are atomic, so a
retried call was either applied whole or not at all.

Errors a retry cannot fix are raised at once, as the caller's "unavailable"
error naming the cause: refused credentials (a wrong password, an unknown ACL
user, NOAUTH), and a ``rediss://`` URL whose server speaks no TLS or whose
certificate is not trusted (the TLS handshake runs within the connect timeout).

The hot path (scripts, result writes and reads) runs through ``execute`` on
connections kept in a plain deque: on loopback, checking a connection out of
redis-py's pool and back costs about as much as the command itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import re
import socket
import ssl
import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import hiredis
import redis
import redis.asyncio as aredis
from redis.connection import ConnectionInterface, SSLConnection
from redis.exceptions import AuthenticationError, ReadOnlyError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.sentinel import MasterNotFoundError

from conveyor.config import redact_url
from conveyor.exceptions import ConfigurationError, ConveyorError
from conveyor.storage.redis_sentinel import (
    SentinelTarget,
    amaster_client,
    is_sentinel_url,
    master_client,
    parse_sentinel_url,
)

logger = logging.getLogger("conveyor.redis")

T = TypeVar("T")

#: Errors after which the same call may succeed on a new connection.
TRANSIENT = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)

SOCKET_TIMEOUT = 10.0
CONNECT_TIMEOUT = 5.0
#: Behind Sentinel: the longest blocking read, and how often an idle consumer asks the
#: sentinels where the master is (see ``RedisConnection.follow_master``).
FOLLOW_SECONDS = 1.0
#: Milliseconds one ``WAIT`` for replicas blocks before the next is sent (see
#: ``RedisConnection.execute_many``); between two, a client behind Sentinel checks that
#: the master it writes to is still the master.
WAIT_SLICE_MS = 250


class ServerDemoted(RedisConnectionError):
    """The server refused a write as a replica (``READONLY``): a failover demoted the
    master this connection reached. Nothing was written; the call may be retried on a
    new connection, which finds the new master."""


def _demoted(exc: ResponseError) -> ServerDemoted:
    return ServerDemoted(f"the server is now a replica ({exc})")


def _was_demoted(exc: ResponseError) -> bool:
    """A write refused by a replica, or a blocking read ended by a demotion (Redis
    answers ``UNBLOCKED ... instance state changed`` to blocked clients)."""
    return isinstance(exc, ReadOnlyError) or str(exc).startswith("UNBLOCKED")


class TLSRefused(RedisConnectionError):
    """A ``rediss://`` connection that cannot be made however often it is tried: the
    server speaks plain Redis, or its certificate is not trusted."""


class _TLSConnection(SSLConnection):
    """redis-py's TLS connection, with the TLS handshake inside the connect timeout.

    redis-py runs the handshake under the socket's read timeout. A plain Redis port
    never answers a TLS hello, so ``rediss://`` to it would wait that long per
    attempt, and then be retried as if the server were down.
    """

    def _connect(self) -> socket.socket:
        read_timeout = self.socket_timeout
        # The TCP connect leaves this on the socket, so the handshake runs under it too.
        self.socket_timeout = self.socket_connect_timeout
        try:
            sock: socket.socket = super()._connect()  # type: ignore[no-untyped-call]
        except ssl.SSLCertVerificationError as exc:
            raise TLSRefused(
                f"the TLS certificate of {self.host}:{self.port} is not trusted "
                f"({exc.verify_message}): pass its CA with ?ssl_ca_certs=/path/to/ca.pem"
            ) from exc
        except OSError as exc:
            if not isinstance(exc, ConnectionRefusedError) and _speaks_plain_redis(
                self.host, self.port, self.socket_connect_timeout
            ):
                raise TLSRefused(
                    f"{self.host}:{self.port} speaks plain Redis, not TLS: use redis://, "
                    "or rediss:// with the server's TLS port"
                ) from exc
            if isinstance(exc, ssl.SSLError) and not isinstance(exc, _SSL_CUT_SHORT):
                where = f"{self.host}:{self.port}"
                raise TLSRefused(f"TLS handshake with {where} failed: {exc}") from exc
            raise
        finally:
            self.socket_timeout = read_timeout
        sock.settimeout(read_timeout)
        return sock


#: Connection errors no retry fixes (checked first: they subclass redis-py's ConnectionError).
PERMANENT = (AuthenticationError, TLSRefused)

#: TLS errors of a connection cut during the handshake (a restarting server): retried.
_SSL_CUT_SHORT = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)


def _speaks_plain_redis(host: str, port: int, timeout: float | None) -> bool:
    """Whether ``host:port`` answers a plain-text PING as Redis does (``+PONG``, or an
    error such as ``-NOAUTH``); a TLS server answers with a TLS record, or not at all."""
    try:
        with socket.create_connection((host, port), timeout=min(timeout or 2.0, 2.0)) as probe:
            probe.sendall(b"PING\r\n")
            return probe.recv(1) in (b"+", b"-")
    except OSError:
        return False


def _sentinels_refused(exc: Exception) -> bool:
    """Whether no sentinel named the master because they refused the credentials."""
    return isinstance(exc, MasterNotFoundError) and "AuthenticationError" in str(exc)


def _brief(exc: Exception) -> str:
    """``exc`` for a log line: redis-py lists each sentinel's client after the reason."""
    text = str(exc)
    return text.split(" : ", 1)[0] if isinstance(exc, MasterNotFoundError) else text


def _refusal(exc: Exception) -> str:
    """Why a connection error will not go away by retrying (never a password)."""
    if _sentinels_refused(exc):
        return (
            "the sentinels refused the credentials: give theirs in the transport options' "
            "sentinel_kwargs = {'password': ...} (the URL's password is the master's)"
        )
    if isinstance(exc, AuthenticationError):
        return (
            f"authentication failed ({exc}): check the user name and password in the URL "
            "and the server's ACL"
        )
    return f"TLS failed: {exc}"


# Celery's URLs name the verify modes as Python's constants; redis-py reads the short names.
_CELERY_CERT_REQS = re.compile(
    r"([?&]ssl_cert_reqs=)(?:ssl\.)?CERT_(NONE|OPTIONAL|REQUIRED)\b", re.IGNORECASE
)


def _with_redis_py_names(url: str) -> str:
    """``url`` with ``ssl_cert_reqs=CERT_REQUIRED`` (Celery's spelling) as ``required``."""
    return _CELERY_CERT_REQS.sub(lambda m: m.group(1) + m.group(2).lower(), url)


def _malformed(url: str, exc: ValueError) -> ConfigurationError:
    reason = str(exc)
    if reason.startswith("Port could not be cast"):  # it quotes part of the netloc
        reason = "its port is not a number"
    return ConfigurationError(
        f"cannot read the Redis URL {redact_url(url)!r}: {reason} (in a password, "
        "percent-encode '/', '?', '#' and '@')"
    )


class RedisConnection:
    """A per-process Redis client for one URL, with retrying calls.

    Args:
        url: ``redis://[user:password@]host:port/db``, ``rediss://`` (TLS),
            ``unix:///path/to/socket``, or sentinels (``sentinel://host:26379;...``,
            see ``conveyor.storage.redis_sentinel``).
        unavailable: the exception class raised once retries run out.
        retry_for: seconds to keep retrying a failing call.
        transport_options: ``master_name`` and ``sentinel_kwargs`` for Sentinel.
        options_setting: the setting ``transport_options`` come from (for errors).
        replica_acks: replicas that must hold a write sent with ``replicated=True``
            before the call returns (``WAIT``); 0: none.
    """

    def __init__(
        self,
        url: str,
        unavailable: type[ConveyorError],
        retry_for: float = 10.0,
        *,
        transport_options: Mapping[str, Any] | None = None,
        options_setting: str = "broker_transport_options",
        replica_acks: int = 0,
    ):
        self.url = url
        self.unavailable = unavailable
        self.retry_for = retry_for
        self.replica_acks = replica_acks
        self._sentinel: SentinelTarget | None = None
        if is_sentinel_url(url):
            self._sentinel = parse_sentinel_url(url, transport_options or {}, options_setting)
        self._lock = threading.Lock()
        self._pid = -1
        self._client: redis.Redis | None = None
        self._sentinels: list[redis.Redis] = []  # the sentinels' clients, behind Sentinel
        self._follow_at = 0.0  # when follow_master asks the sentinels next (monotonic)
        self._master_seen: tuple[Any, ...] | None = None
        # Idle connections for ``execute`` (the hot path): a deque is safe to pop and
        # append from any thread without a lock. Emptied after a fork.
        self._idle: deque[ConnectionInterface] = deque()
        self._idle_pid = -1
        # Per event loop: its client and the async generator whose closing closes it.
        self._aclients: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[aredis.Redis, AsyncIterator[None]]
        ] = weakref.WeakKeyDictionary()

    @property
    def client(self) -> redis.Redis:
        """This process's client (a forked child gets a fresh pool, never the parent's sockets)."""
        pid = os.getpid()
        if self._client is None or self._pid != pid:
            with self._lock:
                if self._client is None or self._pid != pid:
                    # TCP keepalive is a TCP option: unix-socket connections refuse it.
                    tcp: dict[str, Any] = {}
                    if not self.url.startswith("unix://"):
                        tcp["socket_keepalive"] = True
                    if self.url.startswith("rediss://"):
                        tcp["connection_class"] = _TLSConnection
                    options: dict[str, Any] = dict(
                        socket_timeout=SOCKET_TIMEOUT,
                        socket_connect_timeout=CONNECT_TIMEOUT,
                        health_check_interval=30,
                        retry_on_timeout=False,
                        # CLIENT SETINFO costs two round trips per connection and
                        # Redis 7.0 rejects it anyway
                        driver_info=None,
                        **tcp,
                    )
                    if self._sentinel is not None:
                        self._client, self._sentinels = master_client(self._sentinel, **options)
                    else:
                        try:
                            self._client = redis.Redis.from_url(
                                _with_redis_py_names(self.url), **options
                            )
                        except ValueError as exc:
                            raise _malformed(self.url, exc) from None
                    self._pid = pid
        return self._client

    def call(self, fn: Callable[[redis.Redis], T], *, retry_for: float | None = None) -> T:
        """``fn(client)``, retried with jittered backoff on connection errors for
        ``retry_for`` seconds from the first failure (default: this connection's),
        then ``unavailable``."""
        backoff = _Backoff(self, retry_for)
        while True:
            try:
                return fn(self.client)
            except PERMANENT as exc:
                raise backoff.refused(exc) from None
            except TRANSIENT as exc:
                if _sentinels_refused(exc):
                    raise backoff.refused(exc) from None
                time.sleep(backoff.next_delay(exc))

    async def aexecute(
        self, *args: Any, retry_for: float | None = None, replicated: bool = False
    ) -> Any:
        """One command from a coroutine, on the running event loop's own client, with
        the retries of ``call``; no thread is involved. ``replicated``: as for
        ``execute_many``."""
        backoff = _Backoff(self, retry_for)
        # packed by hiredis: redis-py's asyncio client packs in Python, per argument
        packed = hiredis.pack_command(args)
        wait = replicated and self.replica_acks > 0
        while True:
            try:
                return await self._asend(packed, wait)
            except PERMANENT as exc:
                raise backoff.refused(exc) from None
            except TRANSIENT as exc:
                if _sentinels_refused(exc):
                    raise backoff.refused(exc) from None
                await asyncio.sleep(backoff.next_delay(exc))

    async def _asend(self, packed: bytes, wait: bool) -> Any:
        pool = (await self._aclient()).connection_pool
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            if wait:
                wait_command: tuple[Any, ...] = ("WAIT", self.replica_acks, WAIT_SLICE_MS)
                packed += hiredis.pack_command(wait_command)
            await conn.send_packed_command(packed, check_health=False)
            try:
                reply = await conn.read_response()
            except ResponseError as exc:
                if _was_demoted(exc):
                    raise _demoted(exc) from exc
                reply = exc
            if wait:
                deadline = time.monotonic() + self.retry_for
                acked = await _aread_wait(conn)
                while not self._replicated(acked, deadline):
                    if self._sentinel is not None and await _amaster_moved(pool, conn):
                        raise ServerDemoted("the sentinels name another master")
                    await conn.send_command("WAIT", self.replica_acks, WAIT_SLICE_MS)
                    acked = await _aread_wait(conn)
            if isinstance(reply, ResponseError):
                raise reply
            return reply
        except ResponseError:
            raise  # an answer: the connection is fine
        except BaseException:
            await conn.disconnect()  # the next use reconnects
            raise
        finally:
            await pool.release(conn)

    async def _aclient(self) -> aredis.Redis:
        """The running loop's client, made on first use and closed when the loop shuts
        its async generators down (``asyncio.run`` does), or when it is collected."""
        loop = asyncio.get_running_loop()
        held = self._aclients.get(loop)
        if held is None:
            tcp: dict[str, Any] = {}
            if not self.url.startswith("unix://"):
                tcp["socket_keepalive"] = True
            options: dict[str, Any] = dict(
                socket_timeout=SOCKET_TIMEOUT,
                socket_connect_timeout=CONNECT_TIMEOUT,
                retry_on_timeout=False,
                driver_info=None,
                **tcp,
            )
            sentinels: list[aredis.Redis] = []
            if self._sentinel is not None:
                client, sentinels = amaster_client(self._sentinel, **options)
            else:
                try:
                    client = aredis.Redis.from_url(_with_redis_py_names(self.url), **options)
                except ValueError as exc:
                    raise _malformed(self.url, exc) from None
            keeper = _close_with_loop(client, *sentinels)
            held = self._aclients[loop] = (client, keeper)
            # started, so that the loop tracks it: its shutdown closes the client
            await anext(keeper)
        return held[0]

    def longest_block(self, longest: float) -> float:
        """How long one blocking read may last: behind Sentinel, short enough that an idle
        consumer soon looks again at which server is master (``follow_master``)."""
        return longest if self._sentinel is None else min(longest, FOLLOW_SECONDS)

    def follow_master(self) -> None:
        """Behind Sentinel, at most every ``FOLLOW_SECONDS``: ask the sentinels which
        server is master and, if it moved, drop every connection to the old one.

        A failover leaves the old master running, and taking reads and writes, until the
        sentinels demote it some seconds later. A writer with replica acks notices
        (``_await_replicas``); a consumer that finds nothing to fetch writes nothing,
        and would wait on the old master until its demotion.
        """
        if self._sentinel is None or time.monotonic() < self._follow_at:
            return
        self._follow_at = time.monotonic() + FOLLOW_SECONDS
        pool: Any = self.client.connection_pool  # a SentinelConnectionPool
        address = tuple(pool.get_master_address())
        if self._master_seen is not None and address != self._master_seen:
            logger.warning("the sentinels name a new master: %s:%s", *address)
            self._drop_idle()
        self._master_seen = address

    def execute(self, *args: Any, replicated: bool = False) -> Any:
        """One command on an idle connection, without redis-py's pool bookkeeping (its
        checkout costs as much as the command on loopback). No retries: run it inside
        ``call``."""
        return self.execute_many([args], replicated=replicated)[0]

    def execute_many(
        self,
        commands: Sequence[Sequence[Any]],
        *,
        raise_errors: bool = True,
        replicated: bool = False,
    ) -> list[Any]:
        """Commands sent together (a pipeline, no MULTI) on an idle connection of this
        process; their replies. A command's error reply is raised after every reply
        is read (``raise_errors=False``: returned in its place).

        ``replicated``: with ``replica_acks``, return only once that many replicas hold
        what the commands wrote (a ``WAIT`` in the same round trip, then more while
        they lag, up to ``retry_for``).
        """
        wait = replicated and self.replica_acks > 0
        sent = [*commands, ("WAIT", self.replica_acks, WAIT_SLICE_MS)] if wait else commands
        conn = self._checkout()
        replies: list[Any] = []
        error: ResponseError | None = None
        try:
            conn.send_packed_command(conn.pack_commands(sent))  # type: ignore[no-untyped-call]
            for _ in sent:
                try:
                    replies.append(conn.read_response())
                except ResponseError as exc:  # an answer: the connection is fine
                    if _was_demoted(exc):
                        raise _demoted(exc) from exc
                    error = error or exc
                    replies.append(exc)
            if wait:
                self._await_replicas(conn, replies.pop())
        except BaseException as exc:
            conn.disconnect()  # type: ignore[no-untyped-call]  # the next use reconnects
            if isinstance(exc, TRANSIENT):
                self._drop_idle()
            raise
        finally:
            self._idle.append(conn)
        if error is not None and raise_errors:
            raise error
        return replies

    def _await_replicas(self, conn: ConnectionInterface, acked: Any) -> None:
        """More ``WAIT`` on ``conn`` until ``replica_acks`` replicas hold its writes.

        Behind Sentinel, a master that lacks them may be one a failover has just left
        behind: its replicas follow the new master, and the sentinels demote it only
        seconds later, while it still takes writes that its demotion will erase. If the
        sentinels name another master, the call fails as a connection error, and its
        retry runs on the new master.
        """
        deadline = time.monotonic() + self.retry_for
        while not self._replicated(acked, deadline):
            if self._sentinel is not None and _master_moved(self.client.connection_pool, conn):
                raise ServerDemoted("the sentinels name another master")
            conn.send_command("WAIT", self.replica_acks, WAIT_SLICE_MS)  # type: ignore[no-untyped-call]
            try:
                acked = conn.read_response()
            except ResponseError as exc:
                raise _demoted(exc) if _was_demoted(exc) else exc from exc

    def _replicated(self, acked: Any, deadline: float) -> bool:
        """Whether a ``WAIT`` reply counts ``replica_acks`` replicas; ``unavailable`` once
        ``deadline`` passed without them (the write is on the master, but may not
        survive a failover)."""
        if isinstance(acked, ResponseError):
            raise acked
        if isinstance(acked, int) and acked >= self.replica_acks:
            return True
        if time.monotonic() >= deadline:
            raise self.unavailable(
                f"Redis at {redact_url(self.url)}: {acked} of {self.replica_acks} "
                f"replicas acknowledged a write within {self.retry_for:g} s "
                "(broker_replica_acks)"
            )
        return False

    def _drop_idle(self) -> None:
        """Disconnect every idle connection after one failed: when Redis restarted they
        are all dead, and each would otherwise fail once more, one call after another
        (every failure another retry, another outage to wait out before reclaiming).
        redis-py's pool drops its idle connections too; those in use fail on their own."""
        while True:
            try:
                idle = self._idle.pop()
            except IndexError:
                break
            idle.disconnect()  # type: ignore[no-untyped-call]  # dropped: new ones are made
        with contextlib.suppress(Exception):
            self.client.connection_pool.disconnect(inuse_connections=False)

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
                for client in (self._client, *self._sentinels):
                    client.close()
                    client.connection_pool.disconnect()
            self._client = None
            self._sentinels = []
            if self._idle_pid == pid:
                while self._idle:
                    self._idle.pop().disconnect()  # type: ignore[no-untyped-call]
            self._idle_pid = -1


class _Backoff:
    """The retry policy of one call: jittered exponential delays for ``retry_for``
    seconds from its first failure (a long blocking call still gets its retries)."""

    def __init__(self, conn: RedisConnection, retry_for: float | None):
        self.conn = conn
        self.window = conn.retry_for if retry_for is None else retry_for
        self.deadline = 0.0
        self.delay = 0.05
        self.attempt = 0

    def refused(self, exc: Exception) -> ConveyorError:
        return self.conn.unavailable(f"Redis at {redact_url(self.conn.url)}: {_refusal(exc)}")

    def next_delay(self, exc: Exception) -> float:
        """Seconds to wait before the next attempt; raises ``unavailable`` past the window."""
        self.attempt += 1
        if self.attempt == 1:
            self.deadline = time.monotonic() + self.window
            logger.warning("Redis connection error (%s); retrying", _brief(exc))
        left = self.deadline - time.monotonic()
        if left <= 0:
            where = redact_url(self.conn.url)
            raise self.conn.unavailable(
                f"Redis at {where} unavailable after {self.attempt} attempts: {_brief(exc)}"
            ) from None
        wait = min(left, self.delay * random.uniform(0.5, 1.5))
        self.delay = min(self.delay * 2, 2.0)
        return wait


async def _aread_wait(conn: Any) -> Any:
    """A ``WAIT`` reply; a demotion that cut the wait short is a connection error."""
    try:
        return await conn.read_response()
    except ResponseError as exc:
        if _was_demoted(exc):
            raise _demoted(exc) from exc
        raise


def _master_moved(pool: Any, conn: Any) -> bool:
    """Whether the sentinels (asked through a sentinel pool) name a master other than
    the one ``conn`` reached; False when they cannot say."""
    try:
        address = pool.get_master_address()
    except (MasterNotFoundError, *TRANSIENT):
        return False
    return (conn.host, conn.port) != tuple(address)


async def _amaster_moved(pool: Any, conn: Any) -> bool:
    """``_master_moved`` for a redis.asyncio sentinel pool."""
    try:
        address = await pool.get_master_address()
    except (MasterNotFoundError, *TRANSIENT):
        return False
    return (conn.host, conn.port) != tuple(address)


async def _close_with_loop(*clients: aredis.Redis) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for client in clients:
            with contextlib.suppress(Exception):
                await client.aclose()


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
