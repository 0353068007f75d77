"""The SQLite broker's monitoring records: worker beats, capped streams, counters.

Kept apart from ``sqlite.py`` (the queues) because they share nothing with it but
the file. Stream cursors are the rows' ``seq`` (AUTOINCREMENT: never reused, so a
cursor stays valid across a stream that expired and was made again). A reader
waiting on a stream is woken by ``Database.wait_for_change``: at once by writes of
its own process, within a few milliseconds (``PRAGMA data_version``) by others'.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from conveyor.brokers.base import StreamEntry, check_finite, check_positive, now
from conveyor.storage.sqlite import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS conveyor_workers (
    name TEXT PRIMARY KEY,
    info BLOB NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS conveyor_stream_entries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS conveyor_stream_entries_stream
    ON conveyor_stream_entries (stream, seq);
-- Streams added to with a ttl (reply streams): deleted, entries and all, once expired.
CREATE TABLE IF NOT EXISTS conveyor_stream_expiry (
    stream TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS conveyor_stream_expiry_at ON conveyor_stream_expiry (expires_at);
CREATE TABLE IF NOT EXISTS conveyor_counters (
    name TEXT PRIMARY KEY,
    value REAL NOT NULL
) WITHOUT ROWID;
"""

#: How often (at most) one process deletes expired worker beats and streams.
SWEEP_SECONDS = 10.0
# A stream is live unless it has an expiry that has passed (params: stream, now).
_LIVE = (
    "NOT EXISTS (SELECT 1 FROM conveyor_stream_expiry"
    " WHERE stream = :stream AND expires_at <= :now)"
)
_EXPIRED_STREAMS = "SELECT stream FROM conveyor_stream_expiry WHERE expires_at <= :now"


def _cursor(after: str) -> int:
    if not (after.isascii() and after.isdigit()):
        raise ValueError(f"not a stream cursor: {after!r}")
    return int(after)


#: Least seconds between two reads of one waiting ``stream_read``.
STREAM_RECHECK = 0.05


class SqliteMonitoring:
    """The monitoring part of the broker contract, on the broker's ``_db``."""

    _db: Database
    _next_monitoring_sweep = 0.0

    def _sweep_monitoring(self, t: float) -> None:
        """Delete expired beats and streams, at most every ``SWEEP_SECONDS``."""
        if t < self._next_monitoring_sweep:
            return
        self._next_monitoring_sweep = t + SWEEP_SECONDS
        with self._db.transaction() as conn:
            conn.execute("DELETE FROM conveyor_workers WHERE expires_at <= ?", (t,))
            params = {"now": t}
            conn.execute(
                f"DELETE FROM conveyor_stream_entries WHERE stream IN ({_EXPIRED_STREAMS})", params
            )
            conn.execute("DELETE FROM conveyor_stream_expiry WHERE expires_at <= :now", params)

    def worker_beat(self, name: str, info: bytes, ttl: float) -> None:
        check_positive("ttl", ttl)
        t = now()
        with self._db.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO conveyor_workers (name, info, expires_at) VALUES (?, ?, ?)",
                (name, bytes(info), t + ttl),
            )
        self._sweep_monitoring(t)

    def worker_gone(self, name: str) -> None:
        with self._db.transaction() as conn:
            conn.execute("DELETE FROM conveyor_workers WHERE name = ?", (name,))

    def workers(self) -> dict[str, bytes]:
        with self._db.snapshot() as conn:
            rows = conn.execute(
                "SELECT name, info FROM conveyor_workers WHERE expires_at > ? ORDER BY name",
                (now(),),
            ).fetchall()
        return {name: bytes(info) for name, info in rows}

    def stream_add(
        self, stream: str, bodies: Sequence[bytes], maxlen: int, ttl: float | None = None
    ) -> None:
        check_positive("maxlen", maxlen)
        if ttl is not None:
            check_positive("ttl", ttl)
        with self._db.transaction() as conn:
            t = now()
            params = {"stream": stream, "now": t}
            expired = conn.execute(
                "DELETE FROM conveyor_stream_expiry WHERE stream = :stream AND expires_at <= :now",
                params,
            ).rowcount
            if expired:  # a stream past its ttl is gone: this add starts a new one
                conn.execute("DELETE FROM conveyor_stream_entries WHERE stream = :stream", params)
            conn.executemany(
                "INSERT INTO conveyor_stream_entries (stream, body) VALUES (?, ?)",
                [(stream, bytes(body)) for body in bodies],
            )
            conn.execute(
                "DELETE FROM conveyor_stream_entries WHERE stream = :stream AND seq <="
                " (SELECT seq FROM conveyor_stream_entries WHERE stream = :stream"
                "  ORDER BY seq DESC LIMIT 1 OFFSET :maxlen)",
                {**params, "maxlen": maxlen},
            )
            if ttl is not None:
                conn.execute(
                    "INSERT OR REPLACE INTO conveyor_stream_expiry (stream, expires_at)"
                    " VALUES (?, ?)",
                    (stream, t + ttl),
                )
        self._sweep_monitoring(t)

    def stream_read(
        self, stream: str, after: str, timeout: float = 0.0, count: int = 1000
    ) -> list[StreamEntry]:
        check_positive("count", count)
        params = {"stream": stream, "after": _cursor(after), "count": count}
        sql = (
            "SELECT seq, body FROM conveyor_stream_entries"
            f" WHERE stream = :stream AND seq > :after AND {_LIVE} ORDER BY seq LIMIT :count"
        )
        deadline = time.monotonic() + timeout
        while True:
            mark = self._db.mark()  # before the read: a write after it ends the wait
            read_at = time.monotonic()
            with self._db.snapshot() as conn:
                rows = conn.execute(sql, {**params, "now": now()}).fetchall()
            if rows or time.monotonic() >= deadline:
                return [StreamEntry(str(seq), bytes(body)) for seq, body in rows]
            self._db.wait_for_change(mark, deadline)
            # On a busy file every commit (each ack) is a change: a waiting reader (a
            # worker's control thread) looks at most every STREAM_RECHECK seconds.
            pause = min(read_at + STREAM_RECHECK, deadline) - time.monotonic()
            if pause > 0:
                time.sleep(pause)

    def stream_last(self, stream: str) -> str:
        with self._db.snapshot() as conn:
            row = conn.execute(
                f"SELECT max(seq) FROM conveyor_stream_entries WHERE stream = :stream AND {_LIVE}",
                {"stream": stream, "now": now()},
            ).fetchone()
        return "0" if row is None or row[0] is None else str(row[0])

    def stream_tail(self, stream: str, count: int) -> list[StreamEntry]:
        if count <= 0:
            return []
        with self._db.snapshot() as conn:
            rows = conn.execute(
                "SELECT seq, body FROM conveyor_stream_entries"
                f" WHERE stream = :stream AND {_LIVE} ORDER BY seq DESC LIMIT :count",
                {"stream": stream, "now": now(), "count": count},
            ).fetchall()
        return [StreamEntry(str(seq), bytes(body)) for seq, body in reversed(rows)]

    def counters_add(self, deltas: Mapping[str, float]) -> None:
        for delta in deltas.values():
            check_finite("delta", delta)
        if not deltas:
            return
        with self._db.transaction() as conn:
            conn.executemany(
                "INSERT INTO conveyor_counters (name, value) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                [(name, float(delta)) for name, delta in deltas.items()],
            )

    def counters(self, prefix: str = "") -> dict[str, float]:
        with self._db.snapshot() as conn:
            rows = conn.execute(
                "SELECT name, value FROM conveyor_counters"
                " WHERE substr(name, 1, length(:prefix)) = :prefix",
                {"prefix": prefix},
            ).fetchall()
        return {name: float(value) for name, value in rows}

    def counters_reset(self) -> None:
        with self._db.transaction() as conn:
            conn.execute("DELETE FROM conveyor_counters")
