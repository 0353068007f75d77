"""The Redis broker's monitoring records: worker registry, streams, counters.

One key per call (see ``keys.py``): the registry hash ``P:workers`` (a script, so
that expiries follow the server's clock), real Redis streams ``P:stream:<name>``
(cursors are stream ids; a read with a timeout is ``XREAD BLOCK``, at most
``MAX_BLOCK`` seconds per command so the socket timeout is never reached, and its
last ``TICK`` polling, as Redis ends a BLOCK up to a timer tick late), and the
hash ``P:counters`` (``HINCRBYFLOAT`` in one MULTI/EXEC).

Retried after a lost reply, a beat or a ``worker_gone`` changes nothing twice; a
``stream_add`` or ``counters_add`` may be applied twice (an event shown twice, a
counter a little high), which monitoring prefers to losing them.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import redis
from redis.exceptions import ResponseError

from conveyor.brokers.base import StreamEntry, check_finite, check_positive
from conveyor.brokers.redis.keys import counters_key, stream_key, workers_key
from conveyor.storage.redis import RedisConnection, as_str

T = TypeVar("T")

#: Longest single XREAD BLOCK (well under the connections' socket timeout).
MAX_BLOCK = 5.0
#: How late Redis may end a BLOCK (its timer runs ``hz`` 10 times a second).
TICK = 0.1
_CURSOR = re.compile(r"\d+(-\d+)?")


def _ms(seconds: float) -> int:
    """Seconds as whole milliseconds, rounded up, at least 1 (0 means "forever" to
    Redis's BLOCK and is an error to PX)."""
    return max(math.ceil(seconds * 1000), 1)


def _pairs(reply: Any) -> list[tuple[Any, Any]]:
    """A map reply as pairs: a dict (RESP3) or a flat list (RESP2)."""
    if isinstance(reply, dict):
        return list(reply.items())
    return list(zip(reply[::2], reply[1::2], strict=True))


def _entries(raw: Any) -> list[StreamEntry]:
    """Stream entries ``[[id, [field, value, ...]], ...]`` as StreamEntry (field ``b``)."""
    out = []
    for entry_id, fields in raw or ():
        body = dict(_pairs(fields)).get(b"b", b"")
        out.append(StreamEntry(as_str(entry_id), bytes(body)))
    return out


def _xread_entries(reply: Any) -> list[StreamEntry]:
    """The entries of a one-stream XREAD reply (None: nothing arrived)."""
    if not reply:
        return []
    if isinstance(reply, dict):  # RESP3: {stream: entries}
        return _entries(next(iter(reply.values())))
    return _entries(reply[0][1])


class RedisMonitoring:
    """The monitoring part of the broker contract, on the broker's connection."""

    prefix: str
    _conn: RedisConnection

    def _run(
        self, name: str, keys: Sequence[str], args: Sequence[Any], retry_for: float | None = None
    ) -> Any:
        raise NotImplementedError

    def _call(
        self,
        fn: Callable[[redis.Redis], T],
        *,
        retry_for: float | None = None,
        blocking: float = 0.0,
    ) -> T:
        raise NotImplementedError

    def _execute(self, *args: Any, blocking: float = 0.0) -> Any:
        return self._call(lambda _: self._conn.execute(*args), blocking=blocking)

    def worker_beat(self, name: str, info: bytes, ttl: float) -> None:
        px = _ms(check_positive("ttl", ttl))
        self._run("workers", [workers_key(self.prefix)], ["beat", name, bytes(info), px])

    def worker_gone(self, name: str) -> None:
        self._run("workers", [workers_key(self.prefix)], ["gone", name])

    def workers(self) -> dict[str, bytes]:
        flat = self._run("workers", [workers_key(self.prefix)], ["list"])
        return {as_str(name): bytes(info) for name, info in _pairs(flat)}

    def stream_add(
        self, stream: str, bodies: Sequence[bytes], maxlen: int, ttl: float | None = None
    ) -> None:
        check_positive("maxlen", maxlen)
        px = "" if ttl is None else _ms(check_positive("ttl", ttl))
        if bodies:
            key = stream_key(self.prefix, stream)
            self._run("stream", [key], [int(maxlen), px, *(bytes(b) for b in bodies)])

    def stream_read(
        self, stream: str, after: str, timeout: float = 0.0, count: int = 1000
    ) -> list[StreamEntry]:
        check_positive("count", count)
        if not _CURSOR.fullmatch(after):
            raise ValueError(f"not a stream cursor: {after!r}")
        key = stream_key(self.prefix, stream)
        deadline = time.monotonic() + timeout
        pause = 0.005
        while True:
            left = deadline - time.monotonic()
            # BLOCK 0 would wait forever, and Redis ends a BLOCK on its timer tick: the
            # last TICK of the wait is spent polling.
            seconds = min(left - TICK, MAX_BLOCK)
            block = ["BLOCK", _ms(seconds)] if seconds > 0 else []
            reply = self._execute(
                "XREAD", "COUNT", int(count), *block, "STREAMS", key, after, blocking=seconds
            )
            entries = _xread_entries(reply)
            left = deadline - time.monotonic()
            if entries or left <= 0:
                return entries
            if left <= TICK:
                time.sleep(min(left, pause))
                pause = min(pause * 2, 0.04)

    def stream_last(self, stream: str) -> str:
        newest = _entries(
            self._execute("XREVRANGE", stream_key(self.prefix, stream), "+", "-", "COUNT", 1)
        )
        return newest[0].id if newest else "0"

    def stream_tail(self, stream: str, count: int) -> list[StreamEntry]:
        if count <= 0:
            return []
        key = stream_key(self.prefix, stream)
        return _entries(self._execute("XREVRANGE", key, "+", "-", "COUNT", int(count)))[::-1]

    def counters_add(self, deltas: Mapping[str, float]) -> None:
        for delta in deltas.values():
            check_finite("delta", delta)
        if not deltas:
            return
        key = counters_key(self.prefix)
        commands: list[tuple[Any, ...]] = [("MULTI",)]
        commands += [("HINCRBYFLOAT", key, name, repr(float(d))) for name, d in deltas.items()]
        commands.append(("EXEC",))
        replies = self._call(lambda _: self._conn.execute_many(commands))
        for reply in replies[-1] or ():
            if isinstance(reply, ResponseError):
                raise reply

    def counters(self, prefix: str = "") -> dict[str, float]:
        flat = self._execute("HGETALL", counters_key(self.prefix))
        found = ((as_str(name), float(value)) for name, value in _pairs(flat))
        return {name: value for name, value in found if name.startswith(prefix)}

    def counters_reset(self) -> None:
        self._execute("DEL", counters_key(self.prefix))
