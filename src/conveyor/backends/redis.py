"""The Redis result backend: one expiring string per task, and a channel that wakes its waiters.

Keys (``prefix`` defaults to ``conveyor``)::

    {prefix}:result:{task_id}   string, PX = the write's ttl (reset by every write)
                                value: STATE SP STORED_AT LF PAYLOAD
                                e.g. b"SUCCESS 1718000000.123456\\n" + payload, where
                                STORED_AT is ``repr(time.time())`` of the writer and
                                PAYLOAD the result layer's opaque bytes
    {prefix}:result:{task_id}   pub/sub channel (channels and keys are separate
                                namespaces): every write PUBLISHes the stored
                                value (empty if over ``INLINE_LIMIT`` bytes)

Round trips: ``store_many`` is one pipeline (SET PX + PUBLISH per record) for
any number of records; a record of up to ``INLINE_LIMIT`` bytes rides on its
notification, so a waiter needs no GET after it. ``wait`` is one GET when the
record is already ready; otherwise it SUBSCRIBEs on this thread's pub/sub
connection (kept open between waits: no connect per wait), reads the
confirmation (so a write after that cannot be missed), GETs, then blocks on the
channel. A pub/sub reconnect re-subscribes and its confirmation triggers a GET
too, so a write during an outage is not missed.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast
from urllib.parse import unquote_plus

from redis.client import PubSub

from conveyor.backends.base import READY_STATES, ResultBackend, ResultWrite, StoredResult
from conveyor.exceptions import BackendError
from conveyor.storage.redis import KeyWrite, RedisConnection

DEFAULT_PREFIX = "conveyor"
#: A waiter without a deadline wakes this often to let the connection's health check run;
#: it reads nothing from Redis when it wakes without a notification.
BLOCK_SECONDS = 5.0
#: Records up to this many bytes are sent with their notification (larger ones are
#: read with a GET, so that a big result does not cross the network twice).
INLINE_LIMIT = 16 * 1024


def pack(state: str, stored_at: float, payload: bytes) -> bytes:
    """The stored value: ``STATE SP STORED_AT LF PAYLOAD``."""
    return b"%s %s\n%s" % (state.encode(), repr(stored_at).encode(), payload)


def unpack(task_id: str, value: bytes) -> StoredResult:
    """A stored value back as a record.

    Raises:
        BackendError: the value was not written by ``pack``.
    """
    header, newline, payload = value.partition(b"\n")
    state, space, stored_at = header.rpartition(b" ")
    try:
        if not (newline and space):
            raise ValueError("no header")
        return StoredResult(task_id, state.decode(), payload, float(stored_at))
    except ValueError:
        raise BackendError(f"the stored result of {task_id!r} is not conveyor's") from None


def ready(record: StoredResult | None) -> bool:
    """Whether ``record`` exists and its state is final."""
    return record is not None and record.state in READY_STATES


def split_prefix(url: str) -> tuple[str, str | None]:
    """``url`` without its ``prefix=`` query parameter, and that parameter's value."""
    base, mark, query = url.partition("?")
    if not mark:
        return url, None
    prefix = None
    kept = []
    for part in query.split("&"):
        name, _, value = part.partition("=")
        if unquote_plus(name) == "prefix":
            prefix = unquote_plus(value)
        else:
            kept.append(part)
    return (f"{base}?{'&'.join(kept)}" if kept else base), prefix


class RedisResultBackend(ResultBackend):
    """Results in Redis, each with a TTL; waiters are woken by pub/sub, never by polling.

    Args:
        url: ``redis://[user:password@]host:port/db``, ``rediss://`` (TLS) or
            ``unix:///path/to/socket?db=N``; ``?prefix=name`` sets the key prefix.
        prefix: the key prefix (overrides the URL's); default ``conveyor``.
        retry_for: seconds to retry a call while Redis cannot be reached, after
            which it raises ``BackendError``.
        transport_options: ``master_name`` (and ``sentinel_kwargs``) for a
            ``sentinel://`` URL (``result_backend_transport_options``).
        replica_acks: replicas that must hold each result write before it returns.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str | None = None,
        retry_for: float = 10.0,
        transport_options: Mapping[str, Any] | None = None,
        replica_acks: int = 0,
    ) -> None:
        self.url = url
        connect_url, url_prefix = split_prefix(url)
        self.prefix = prefix or url_prefix or DEFAULT_PREFIX
        self._conn = RedisConnection(
            connect_url,
            BackendError,
            retry_for=retry_for,
            transport_options=transport_options,
            options_setting="result_backend_transport_options",
            replica_acks=replica_acks,
        )
        self._local = threading.local()

    def _key(self, task_id: str) -> str:
        return f"{self.prefix}:result:{task_id}"

    def _key_writes(self, writes: Sequence[ResultWrite]) -> list[KeyWrite]:
        stored_at = time.time()
        out = []
        for w in writes:
            value = pack(w.state, stored_at, w.payload)
            notify = value if len(value) <= INLINE_LIMIT else b""
            out.append(KeyWrite(self._key(w.task_id), value, max(1, round(w.ttl * 1000)), notify))
        return out

    def store_many(self, writes: Sequence[ResultWrite]) -> None:
        commands: list[tuple[Any, ...]] = []
        for w in self._key_writes(writes):
            commands.append(("SET", w.key, w.value, "PX", w.px_ms))
            commands.append(("PUBLISH", w.key, w.notify))
        if commands:
            # No MULTI: each SET is idempotent, so a retried partial batch is harmless.
            self._conn.call(lambda _: self._conn.execute_many(commands, replicated=True))

    def writes_for(self, broker: object, writes: Sequence[ResultWrite]) -> list[object] | None:
        """Key writes for a Redis broker on this same server (the same URL)."""
        if getattr(broker, "redis_url", None) != self._conn.url:
            return None
        return list(self._key_writes(writes))

    def get(self, task_id: str) -> StoredResult | None:
        key = self._key(task_id)
        value = cast("bytes | None", self._conn.call(lambda _: self._conn.execute("GET", key)))
        return None if value is None else unpack(task_id, value)

    def wait(
        self, task_id: str, timeout: float | None, *, just_sent: bool = False
    ) -> StoredResult | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        if timeout is not None and timeout <= 0:
            return self.get(task_id)
        # A task sent a moment ago has no result yet: subscribe first (and read it
        # once subscribed), rather than read, subscribe and read again.
        record = None if just_sent else self.get(task_id)
        if ready(record):
            return record
        key = self._key(task_id)
        channel = key.encode()
        pubsub = self._pubsub()
        try:
            self._conn.call(lambda _: pubsub.subscribe(key))
            while True:
                left = BLOCK_SECONDS if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    return self.get(task_id)  # not the last read: it may have expired since
                message = self._listen(pubsub, min(left, BLOCK_SECONDS))
                # Messages of channels left by earlier waits may still arrive: skip them.
                if message is None or message.get("channel") != channel:
                    continue
                data = message.get("data")
                if message.get("type") == "message" and isinstance(data, bytes) and data:
                    record = unpack(task_id, data)
                else:
                    # SUBSCRIBE's confirmation (again after a reconnect), or a record too
                    # big to send along: from the confirmation on no write is missed.
                    record = self.get(task_id)
                if ready(record):
                    return record
        finally:
            self._leave(pubsub, key)

    def _listen(self, pubsub: PubSub, seconds: float) -> dict[str, Any] | None:
        """The next pub/sub message within ``seconds``, or None."""
        message = self._conn.call(lambda _: pubsub.get_message(timeout=seconds))
        return cast("dict[str, Any] | None", message)

    def _pubsub(self) -> PubSub:
        """This thread's pub/sub connection (a forked child opens its own)."""
        held: tuple[int, PubSub] | None = getattr(self._local, "pubsub", None)
        if held is not None and held[0] == os.getpid():
            return held[1]
        # redis-py leaves ``pubsub()`` unannotated; it returns a PubSub on the client's pool.
        pubsub = cast("Callable[[], PubSub]", self._conn.client.pubsub)()
        self._local.pubsub = (os.getpid(), pubsub)
        return pubsub

    def _leave(self, pubsub: PubSub, key: str) -> None:
        """Unsubscribe, keeping the connection for the next wait; drop it if that fails."""
        try:
            pubsub.unsubscribe(key)  # type: ignore[no-untyped-call]
        except Exception:  # a broken connection is dropped, not reported
            self._local.pubsub = None
            pubsub.close()

    def forget(self, task_id: str) -> None:
        key = self._key(task_id)
        self._conn.call(lambda client: client.delete(key))

    def close(self) -> None:
        """Close this process's connections."""
        held: tuple[int, PubSub] | None = getattr(self._local, "pubsub", None)
        if held is not None and held[0] == os.getpid():
            held[1].close()
        self._local.pubsub = None
        self._conn.close()
