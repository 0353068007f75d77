"""The embedded default broker: one SQLite file shared by the worker processes of one machine."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TypeVar

from conveyor.brokers.base import (
    Broker,
    BrokerOptions,
    DeadLetter,
    Delivery,
    DeliveryRecord,
    Disposition,
    OutgoingMessage,
    QueueStats,
    Reclaimed,
    check_finite,
    check_positive,
    check_priority,
    gcra,
    now,
)
from conveyor.brokers.sqlite_monitoring import SCHEMA as MONITORING_SCHEMA
from conveyor.brokers.sqlite_monitoring import SqliteMonitoring
from conveyor.exceptions import BrokerUnavailable
from conveyor.storage.sqlite import Database, RowWrite

# ``due_at`` is when a message became (or becomes) ready: it is the message's
# place in its queue, so a delayed message queues up behind what was published
# before it came due. A message handed back (release, requeue, lost lease)
# keeps its place. ``token`` is set only while in flight.
SCHEMA = """
CREATE TABLE IF NOT EXISTS conveyor_messages (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('ready', 'delayed', 'inflight')),
    due_at REAL NOT NULL,
    body BLOB NOT NULL,
    token TEXT,
    consumer TEXT,
    lease_until REAL,
    deliveries INTEGER NOT NULL DEFAULT 0,
    history TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS conveyor_messages_ready
    ON conveyor_messages (queue, priority DESC, due_at, seq) WHERE state = 'ready';
CREATE INDEX IF NOT EXISTS conveyor_messages_delayed
    ON conveyor_messages (queue, due_at) WHERE state = 'delayed';
CREATE INDEX IF NOT EXISTS conveyor_messages_leases
    ON conveyor_messages (lease_until) WHERE state = 'inflight';
CREATE UNIQUE INDEX IF NOT EXISTS conveyor_messages_tokens
    ON conveyor_messages (token) WHERE token IS NOT NULL;
CREATE TABLE IF NOT EXISTS conveyor_dead_letters (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    body BLOB NOT NULL,
    reason TEXT NOT NULL,
    deliveries INTEGER NOT NULL,
    died_at REAL NOT NULL,
    history TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS conveyor_dead_letters_id ON conveyor_dead_letters (id);
CREATE INDEX IF NOT EXISTS conveyor_dead_letters_queue ON conveyor_dead_letters (queue, seq);
CREATE INDEX IF NOT EXISTS conveyor_dead_letters_died ON conveyor_dead_letters (died_at);
-- Tokens whose lease expired and was reclaimed: their late ack or settle is refused,
-- while any other token that no longer holds its message settled it earlier itself.
CREATE TABLE IF NOT EXISTS conveyor_lost_tokens (
    token TEXT PRIMARY KEY,
    lost_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS conveyor_lost_tokens_age ON conveyor_lost_tokens (lost_at);
"""
# Coordination records (see Broker.revoke and below): one table per kind, each row
# with the time it stops mattering (``time.time()``). Reads ignore expired rows;
# writes delete those of their key, and sweep their table now and then.
SCHEMA += """
CREATE TABLE IF NOT EXISTS conveyor_revoked (
    id TEXT PRIMARY KEY,
    terminate INTEGER NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS conveyor_revoked_expiry ON conveyor_revoked (expires_at);
CREATE TABLE IF NOT EXISTS conveyor_rates (
    key TEXT PRIMARY KEY,
    tat REAL NOT NULL  -- theoretical arrival time (GCRA): forgotten once past
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS conveyor_rates_expiry ON conveyor_rates (tat);
CREATE TABLE IF NOT EXISTS conveyor_slots (
    key TEXT NOT NULL,
    holder TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (key, holder)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS conveyor_slots_expiry ON conveyor_slots (expires_at);
CREATE TABLE IF NOT EXISTS conveyor_claims (
    key TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS conveyor_claims_expiry ON conveyor_claims (expires_at);
CREATE TABLE IF NOT EXISTS conveyor_rate_grants (
    key TEXT NOT NULL,
    request TEXT NOT NULL,
    expires_at REAL NOT NULL,  -- the tat it granted: a retry until then is answered 0
    PRIMARY KEY (key, request)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS conveyor_rate_grants_expiry ON conveyor_rate_grants (expires_at);
CREATE TABLE IF NOT EXISTS conveyor_tallies (
    key TEXT NOT NULL,
    member TEXT NOT NULL,
    expires_at REAL NOT NULL,  -- the same for every member of a key
    PRIMARY KEY (key, member)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS conveyor_tallies_expiry ON conveyor_tallies (expires_at);
CREATE TABLE IF NOT EXISTS conveyor_marks (
    key TEXT PRIMARY KEY,
    value REAL NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS conveyor_marks_expiry ON conveyor_marks (expires_at);
"""
SCHEMA += MONITORING_SCHEMA
# Each coordination table, with its expiry column.
_EXPIRY_COLUMNS = {
    "conveyor_revoked": "expires_at",
    "conveyor_rates": "tat",
    "conveyor_slots": "expires_at",
    "conveyor_claims": "expires_at",
    "conveyor_rate_grants": "expires_at",
    "conveyor_tallies": "expires_at",
    "conveyor_marks": "expires_at",
}
#: How often (at most) one process sweeps a coordination table of expired rows.
SWEEP_SECONDS = 10.0
_REVOKE = """
INSERT INTO conveyor_revoked (id, terminate, expires_at) VALUES (?1, ?2, ?3)
ON CONFLICT (id) DO UPDATE SET
    terminate = CASE WHEN expires_at > ?4 THEN max(terminate, excluded.terminate)
                ELSE excluded.terminate END,
    expires_at = max(expires_at, excluded.expires_at)
"""

_CLAIM = """
UPDATE conveyor_messages
SET state = 'inflight', token = lower(hex(randomblob(12))), consumer = :consumer,
    lease_until = :lease_until, deliveries = deliveries + 1,
    history = json_insert(history, '$[#]', json_array(:consumer, :now))
WHERE seq IN (SELECT seq FROM ({candidates}) ORDER BY priority DESC, due_at, seq LIMIT :limit)
RETURNING id, queue, body, priority, token, deliveries, due_at, seq
"""
# One index range per queue, merged: SQLite would sort every ready row of an IN list.
_CANDIDATES = """SELECT * FROM (SELECT seq, priority, due_at FROM conveyor_messages
    WHERE state = 'ready' AND queue = :q{i} ORDER BY priority DESC, due_at, seq LIMIT :limit)"""
_NEXT_DUE = (
    "SELECT min(due_at) AS due FROM conveyor_messages WHERE state = 'delayed' AND queue = :q{i}"
)
_PEEK = """SELECT
    EXISTS (SELECT 1 FROM conveyor_messages WHERE state = 'ready' AND queue IN ({names})),
    (SELECT min(due) FROM ({next_due}))"""
_UNLEASE = "token = NULL, consumer = NULL, lease_until = NULL"
_HAND_BACK = f"state = 'ready', {_UNLEASE}"
_BURY = """
INSERT INTO conveyor_dead_letters (id, queue, priority, body, reason, deliveries, died_at, history)
SELECT id, queue, priority, body, {reason}, deliveries, :now, history
FROM conveyor_messages WHERE {where} ORDER BY seq
"""
_EXPIRED = "state = 'inflight' AND lease_until < :now"
_REMEMBER_LOST = (
    "INSERT OR REPLACE INTO conveyor_lost_tokens (token, lost_at)"
    f" SELECT token, :now FROM conveyor_messages WHERE {_EXPIRED}"
)
#: How long a reclaimed token is remembered (see conveyor_lost_tokens).
LOST_MEMORY_SECONDS = 3600.0
_LEASE_EXPIRED = "'lease expired after ' || deliveries || ' deliveries (consumer gone)'"
# Message ids may repeat (a reused task id): dead letters are settled oldest first.
_OLDEST_DEAD = "SELECT seq FROM conveyor_dead_letters WHERE id = ? ORDER BY seq LIMIT 1"
_CHUNK = 500  # bound on host parameters per statement

_T = TypeVar("_T")


def _marks(n: int) -> str:
    return ", ".join("?" * n)


def _mark(conn: sqlite3.Connection, key: str, t: float) -> float | None:
    """The unexpired mark of ``key`` at time ``t`` (see ``advance``), or None."""
    row = conn.execute(
        "SELECT value FROM conveyor_marks WHERE key = ? AND expires_at > ?", (key, t)
    ).fetchone()
    return None if row is None else float(row[0])


def _chunks(items: Sequence[_T]) -> Iterable[Sequence[_T]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _lost(conn: sqlite3.Connection, tokens: Sequence[str]) -> set[str]:
    """The tokens among ``tokens`` whose lease expired and was reclaimed."""
    found: set[str] = set()
    for chunk in _chunks(tokens):
        sql = f"SELECT token FROM conveyor_lost_tokens WHERE token IN ({_marks(len(chunk))})"
        found.update(row[0] for row in conn.execute(sql, chunk))
    return found


class SqliteBroker(SqliteMonitoring, Broker):
    """A broker in one SQLite file (WAL), safe for several processes and threads.

    Args:
        url: ``sqlite:///relative.sqlite3`` or ``sqlite:////absolute/path.sqlite3``.
        options: lease length and delivery limit.

    Raises:
        ValueError: the URL names no file (``:memory:`` cannot be shared).
    """

    def __init__(
        self, url: str = "sqlite:///conveyor.sqlite3", options: BrokerOptions | None = None
    ):
        self.url = url
        self.options = options or BrokerOptions()
        self._db = Database(url, SCHEMA, BrokerUnavailable)
        self._next_sweep: dict[str, float] = {}  # coordination table -> when (now())

    # -- producing -------------------------------------------------------------

    def publish_many(self, messages: Sequence[OutgoingMessage]) -> None:
        for message in messages:
            check_priority(message.priority)
        with self._db.transaction() as conn:
            t = now()  # inside the write lock: due_at then follows commit order
            conn.executemany(
                "INSERT INTO conveyor_messages (id, queue, priority, state, due_at, body)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (
                        m.id,
                        m.queue,
                        m.priority,
                        "delayed" if m.eta is not None and m.eta > t else "ready",
                        max(m.eta or t, t),
                        m.body,
                    )
                    for m in messages
                ],
            )

    # -- consuming -------------------------------------------------------------

    def fetch(
        self, queues: Sequence[str], limit: int, *, consumer: str, timeout: float
    ) -> list[Delivery]:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit!r}")
        names = {f"q{i}": q for i, q in enumerate(dict.fromkeys(queues))}
        if not names:
            return []
        deadline = time.monotonic() + timeout
        while True:
            mark = self._db.mark()
            # Read first: an idle consumer must not take the write lock on every wake-up.
            ready, next_due = self._peek(names)
            if ready or (next_due is not None and next_due <= now()):
                deliveries = self._claim(names, limit, consumer)
                if deliveries:
                    return deliveries
            if time.monotonic() >= deadline:
                return []
            until = deadline
            if next_due is not None:
                until = min(until, time.monotonic() + max(next_due - now(), 0.0))
            self._db.wait_for_change(mark, until)

    def _peek(self, names: dict[str, str]) -> tuple[bool, float | None]:
        """Whether ``names``' queues hold a ready message; when the next delayed one is due."""
        sql = _PEEK.format(
            names=", ".join(f":{name}" for name in names),
            next_due=" UNION ALL ".join(_NEXT_DUE.format(i=i) for i in range(len(names))),
        )
        with self._db.snapshot() as conn:
            ready, next_due = conn.execute(sql, names).fetchone()
        return bool(ready), next_due

    def _claim(self, names: dict[str, str], limit: int, consumer: str) -> list[Delivery]:
        with self._db.transaction() as conn:
            return self._claim_in(conn, names, limit, consumer)

    def _claim_in(
        self, conn: sqlite3.Connection, names: dict[str, str], limit: int, consumer: str
    ) -> list[Delivery]:
        """Promote the due delayed messages of the queues, then lease the best ready ones."""
        candidates = " UNION ALL ".join(_CANDIDATES.format(i=i) for i in range(len(names)))
        t = now()
        conn.execute(
            "UPDATE conveyor_messages SET state = 'ready' WHERE state = 'delayed'"
            f" AND queue IN ({', '.join(f':{name}' for name in names)}) AND due_at <= :now",
            {**names, "now": t},
        )
        params = {
            **names,
            "consumer": consumer,
            "lease_until": t + self.options.lease_seconds,
            "now": t,
            "limit": limit,
        }
        rows = conn.execute(_CLAIM.format(candidates=candidates), params).fetchall()
        rows.sort(key=lambda r: (-r[3], r[6], r[7]))  # RETURNING has no order
        return [Delivery(*row[:6]) for row in rows]

    @property
    def sqlite_path(self) -> str:
        """The file this broker keeps its tables in (a result backend on the same file can
        have its writes applied with the acks)."""
        return self._db.path

    def ack(self, deliveries: Sequence[Delivery]) -> list[bool]:
        return self.ack_storing(deliveries, {})

    def ack_storing(
        self, deliveries: Sequence[Delivery], writes: Mapping[str, object]
    ) -> list[bool]:
        with self._db.transaction() as conn:
            return self._ack_in(conn, deliveries, writes)

    def ack_and_fetch(
        self,
        deliveries: Sequence[Delivery],
        writes: Mapping[str, object],
        queues: Sequence[str],
        limit: int,
        *,
        consumer: str,
    ) -> tuple[list[bool], list[Delivery]]:
        """See ``Broker.ack_and_fetch``: one transaction, so one commit for both."""
        names = {f"q{i}": q for i, q in enumerate(dict.fromkeys(queues))}
        with self._db.transaction() as conn:
            acks = self._ack_in(conn, deliveries, writes)
            fetched = self._claim_in(conn, names, limit, consumer) if limit > 0 and names else []
        return acks, fetched

    def _ack_in(
        self, conn: sqlite3.Connection, deliveries: Sequence[Delivery], writes: Mapping[str, object]
    ) -> list[bool]:
        done: set[str] = set()
        for chunk in _chunks(deliveries):
            sql = (
                f"DELETE FROM conveyor_messages WHERE token IN ({_marks(len(chunk))})"
                " RETURNING token"
            )
            done.update(row[0] for row in conn.execute(sql, [d.token for d in chunk]))
        for token in done:
            write = writes.get(token)
            if write is not None:
                assert isinstance(write, RowWrite), "writes_for() of another broker"
                conn.execute(write.sql, write.params)
        # A token that holds nothing any more acknowledged its message earlier,
        # unless its lease was lost.
        lost = _lost(conn, [d.token for d in deliveries if d.token not in done])
        return [d.token not in lost for d in deliveries]

    @staticmethod
    def _settled_earlier(conn: sqlite3.Connection, delivery: Delivery) -> bool:
        """A settle call whose token holds nothing: True if this token settled the
        message itself earlier (answer as then), False if its lease was lost."""
        return not _lost(conn, [delivery.token])

    def release(self, delivery: Delivery) -> bool:
        with self._db.transaction() as conn:
            rows = conn.execute(
                f"UPDATE conveyor_messages SET {_HAND_BACK}, deliveries = deliveries - 1,"
                " history = json_remove(history, '$[#-1]') WHERE token = ? RETURNING seq",
                (delivery.token,),
            ).fetchall()
            return bool(rows) or self._settled_earlier(conn, delivery)

    def requeue(self, delivery: Delivery) -> Disposition:
        with self._db.transaction() as conn:
            row = conn.execute(
                "SELECT deliveries FROM conveyor_messages WHERE token = ?", (delivery.token,)
            ).fetchone()
            if row is None:
                if self._settled_earlier(conn, delivery):
                    return Disposition.REQUEUED
                return Disposition.STALE
            if row[0] >= self.options.max_deliveries:
                reason = f"delivered {row[0]} times; the last attempt was lost"
                params = {"token": delivery.token, "reason": reason, "now": now()}
                self._bury(conn, "token = :token", params, ":reason")
                return Disposition.DEAD
            conn.execute(
                f"UPDATE conveyor_messages SET {_HAND_BACK} WHERE token = ?", (delivery.token,)
            )
            return Disposition.REQUEUED

    def retry(self, delivery: Delivery, body: bytes, eta: float | None) -> bool:
        with self._db.transaction() as conn:
            t = now()
            delayed = eta is not None and eta > t
            rows = conn.execute(
                f"UPDATE conveyor_messages SET {_UNLEASE}, state = ?, due_at = ?, body = ?,"
                " deliveries = 0 WHERE token = ? RETURNING seq",
                ("delayed" if delayed else "ready", eta if delayed else t, body, delivery.token),
            ).fetchall()
            return bool(rows) or self._settled_earlier(conn, delivery)

    def renew(self, deliveries: Sequence[Delivery]) -> set[str]:
        kept: set[str] = set()
        with self._db.transaction() as conn:
            lease_until = now() + self.options.lease_seconds
            for chunk in _chunks(deliveries):
                sql = (
                    "UPDATE conveyor_messages SET lease_until = ?"
                    f" WHERE token IN ({_marks(len(chunk))}) RETURNING token"
                )
                kept.update(
                    row[0] for row in conn.execute(sql, [lease_until, *(d.token for d in chunk)])
                )
            lost = _lost(conn, [d.token for d in deliveries if d.token not in kept])
        return {d.id for d in deliveries if d.token in lost}

    def reclaim(self) -> list[Reclaimed]:
        self._trim()
        with self._db.snapshot() as conn:  # a look before taking the write lock
            sql = f"SELECT 1 FROM conveyor_messages WHERE {_EXPIRED} LIMIT 1"
            if conn.execute(sql, {"now": now()}).fetchone() is None:
                return []
        with self._db.transaction() as conn:
            params = {"now": now(), "max": self.options.max_deliveries}
            conn.execute(_REMEMBER_LOST, params)
            dead = self._bury(conn, f"{_EXPIRED} AND deliveries >= :max", params, _LEASE_EXPIRED)
            back = conn.execute(
                f"UPDATE conveyor_messages SET {_HAND_BACK} WHERE {_EXPIRED}"
                " RETURNING id, queue, deliveries",
                params,
            ).fetchall()
        return [Reclaimed(i, q, Disposition.DEAD, n) for i, q, n in dead] + [
            Reclaimed(i, q, Disposition.REQUEUED, n) for i, q, n in back
        ]

    def _trim(self) -> None:
        """Forget old reclaimed tokens; drop dead letters past their expiry or beyond
        each queue's cap, oldest first (at most every ``SWEEP_SECONDS``)."""
        t = now()
        if t < self._next_sweep.get("dead", 0.0):
            return
        self._next_sweep["dead"] = t + SWEEP_SECONDS
        with self._db.transaction() as conn:
            conn.execute(
                "DELETE FROM conveyor_lost_tokens WHERE lost_at < ?", (t - LOST_MEMORY_SECONDS,)
            )
            conn.execute(
                "DELETE FROM conveyor_dead_letters WHERE died_at < ?",
                (t - self.options.dead_letter_expires,),
            )
            conn.execute(
                "DELETE FROM conveyor_dead_letters WHERE seq IN (SELECT seq FROM"
                " (SELECT seq, row_number() OVER (PARTITION BY queue ORDER BY seq DESC) AS n"
                "  FROM conveyor_dead_letters) WHERE n > ?)",
                (self.options.dead_letter_max,),
            )

    def _bury(
        self, conn: sqlite3.Connection, where: str, params: Mapping[str, object], reason: str
    ) -> list[tuple[str, str, int]]:
        """Move the messages matching ``where`` to the dead letters; their id, queue, count."""
        conn.execute(_BURY.format(reason=reason, where=where), params)
        sql = f"DELETE FROM conveyor_messages WHERE {where} RETURNING id, queue, deliveries"
        return conn.execute(sql, params).fetchall()

    # -- dead letters ----------------------------------------------------------

    def dead_letter(self, delivery: Delivery, reason: str) -> bool:
        params = {"token": delivery.token, "reason": reason, "now": now()}
        with self._db.transaction() as conn:
            buried = bool(self._bury(conn, "token = :token", params, ":reason"))
            return buried or self._settled_earlier(conn, delivery)

    def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        where = "" if queue is None else "WHERE queue = :queue"
        return self._dead_letters(where, {"queue": queue, "limit": limit})

    def get_dead(self, message_id: str) -> DeadLetter | None:
        found = self._dead_letters("WHERE id = :id", {"id": message_id, "limit": 1})
        return found[0] if found else None

    def purge_dead(self, queue: str | None = None) -> int:
        where = "" if queue is None else "WHERE queue = :queue"
        total = 0
        while True:  # in batches: the write lock is never held for long
            with self._db.transaction() as conn:
                cursor = conn.execute(
                    "DELETE FROM conveyor_dead_letters WHERE seq IN"
                    f" (SELECT seq FROM conveyor_dead_letters {where} LIMIT {_CHUNK})",
                    {"queue": queue},
                )
            total += cursor.rowcount
            if cursor.rowcount < _CHUNK:
                return total

    def _dead_letters(self, where: str, params: Mapping[str, object]) -> list[DeadLetter]:
        sql = (
            "SELECT id, queue, body, priority, reason, deliveries, died_at, history"
            f" FROM conveyor_dead_letters {where} ORDER BY seq LIMIT :limit"
        )
        with self._db.snapshot() as conn:
            rows = conn.execute(sql, params).fetchall()
        return [
            DeadLetter(
                id=id_,
                queue=queue_,
                body=body,
                priority=priority,
                reason=reason,
                deliveries=deliveries,
                died_at=died_at,
                history=tuple(DeliveryRecord(c, at) for c, at in json.loads(history)),
            )
            for id_, queue_, body, priority, reason, deliveries, died_at, history in rows
        ]

    def requeue_dead(self, message_id: str) -> bool:
        with self._db.transaction() as conn:
            row = conn.execute(
                f"DELETE FROM conveyor_dead_letters WHERE seq = ({_OLDEST_DEAD})"
                " RETURNING id, queue, priority, body",
                (message_id,),
            ).fetchone()
            if row is None:
                return False
            conn.execute(
                "INSERT INTO conveyor_messages (id, queue, priority, state, due_at, body)"
                " VALUES (?, ?, ?, 'ready', ?, ?)",
                (*row[:3], now(), row[3]),
            )
        return True

    def drop_dead(self, message_id: str) -> bool:
        with self._db.transaction() as conn:
            sql = f"DELETE FROM conveyor_dead_letters WHERE seq = ({_OLDEST_DEAD})"
            return conn.execute(sql, (message_id,)).rowcount > 0

    # -- inspection ------------------------------------------------------------

    def stats(self, queues: Iterable[str] | None = None) -> list[QueueStats]:
        names = None if queues is None else list(dict.fromkeys(queues))
        where, params = "", []
        if names is not None:
            where, params = f"WHERE queue IN ({_marks(len(names))})", names
        t = now()
        counts: dict[str, list[int]] = {}
        oldest: dict[str, float] = {}
        with self._db.snapshot() as conn:
            # A due delayed message is ready: it is only waiting for a fetch to promote it,
            # and its due time is when it became ready.
            for queue, ready, delayed, in_flight, first in conn.execute(
                "SELECT queue, sum(state = 'ready' OR (state = 'delayed' AND due_at <= ?1)),"
                " sum(state = 'delayed' AND due_at > ?1), sum(state = 'inflight'),"
                " min(CASE WHEN state = 'ready' OR (state = 'delayed' AND due_at <= ?1)"
                "     THEN due_at END)"
                f" FROM conveyor_messages {where} GROUP BY queue",  # its ? are numbered 2...
                [t, *params],
            ):
                counts[queue] = [ready, delayed, in_flight, 0]
                if first is not None:
                    oldest[queue] = first
            sql = f"SELECT queue, count(*) FROM conveyor_dead_letters {where} GROUP BY queue"
            for queue, dead in conn.execute(sql, params):
                counts.setdefault(queue, [0, 0, 0, 0])[3] = dead
        out = []
        for q in sorted(counts) if names is None else names:
            ready, delayed, in_flight, dead = counts.get(q, (0, 0, 0, 0))
            out.append(QueueStats(q, ready, delayed, in_flight, dead, oldest.get(q)))
        return out

    def purge(self, queue: str) -> int:
        with self._db.transaction() as conn:
            cursor = conn.execute(
                "DELETE FROM conveyor_messages WHERE queue = ? AND state IN ('ready', 'delayed')",
                (queue,),
            )
            return cursor.rowcount

    # -- coordination ----------------------------------------------------------

    def _sweep(self, conn: sqlite3.Connection, table: str, t: float) -> None:
        """Delete the expired rows of ``table``, at most every ``SWEEP_SECONDS``."""
        if t >= self._next_sweep.get(table, 0.0):
            self._next_sweep[table] = t + SWEEP_SECONDS
            conn.execute(f"DELETE FROM {table} WHERE {_EXPIRY_COLUMNS[table]} <= ?", (t,))

    def revoke(self, task_ids: Sequence[str], ttl: float, *, terminate: bool = False) -> None:
        check_positive("ttl", ttl)
        if not task_ids:
            return
        with self._db.transaction() as conn:
            t = now()
            conn.executemany(_REVOKE, [(i, int(terminate), t + ttl, t) for i in task_ids])
            self._sweep(conn, "conveyor_revoked", t)

    def revoked(self, task_ids: Sequence[str]) -> dict[str, bool]:
        found: dict[str, bool] = {}
        with self._db.snapshot() as conn:
            t = now()
            for chunk in _chunks(list(dict.fromkeys(task_ids))):
                sql = (
                    "SELECT id, terminate FROM conveyor_revoked"
                    f" WHERE expires_at > ? AND id IN ({_marks(len(chunk))})"
                )
                found.update((i, bool(flag)) for i, flag in conn.execute(sql, [t, *chunk]))
        return found

    def rate_acquire(
        self, key: str, limit: int, period: float, *, request: str | None = None
    ) -> float:
        check_positive("limit", limit)
        check_positive("period", period)
        with self._db.transaction() as conn:
            t = now()
            if (
                request is not None
                and conn.execute(
                    "SELECT 1 FROM conveyor_rate_grants WHERE key = ? AND request = ?"
                    " AND expires_at > ?",
                    (key, request, t),
                ).fetchone()
            ):
                return 0.0
            row = conn.execute("SELECT tat FROM conveyor_rates WHERE key = ?", (key,)).fetchone()
            new_tat, wait = gcra(None if row is None else row[0], t, limit, period)
            if not wait:
                conn.execute(
                    "INSERT OR REPLACE INTO conveyor_rates (key, tat) VALUES (?, ?)", (key, new_tat)
                )
                if request is not None:
                    conn.execute(
                        "INSERT OR REPLACE INTO conveyor_rate_grants (key, request, expires_at)"
                        " VALUES (?, ?, ?)",
                        (key, request, new_tat),
                    )
                    self._sweep(conn, "conveyor_rate_grants", t)
                self._sweep(conn, "conveyor_rates", t)
        return wait

    def slot_acquire(self, key: str, limit: int, holder: str, ttl: float) -> bool:
        check_positive("limit", limit)
        check_positive("ttl", ttl)
        with self._db.transaction() as conn:
            t = now()
            conn.execute("DELETE FROM conveyor_slots WHERE key = ? AND expires_at <= ?", (key, t))
            held, mine = conn.execute(
                "SELECT count(*), coalesce(sum(holder = ?), 0) FROM conveyor_slots WHERE key = ?",
                (holder, key),
            ).fetchone()
            if not mine and held >= limit:
                return False
            conn.execute(
                "INSERT OR REPLACE INTO conveyor_slots (key, holder, expires_at) VALUES (?, ?, ?)",
                (key, holder, t + ttl),
            )
            self._sweep(conn, "conveyor_slots", t)
        return True

    def slot_renew(self, key: str, holders: Sequence[str], ttl: float) -> None:
        check_positive("ttl", ttl)
        if not holders:
            return
        with self._db.transaction() as conn:
            t = now()
            conn.executemany(
                "UPDATE conveyor_slots SET expires_at = ?"
                " WHERE key = ? AND holder = ? AND expires_at > ?",
                [(t + ttl, key, holder, t) for holder in holders],
            )

    def slot_release(self, key: str, holder: str) -> None:
        with self._db.transaction() as conn:
            conn.execute("DELETE FROM conveyor_slots WHERE key = ? AND holder = ?", (key, holder))

    def claim(self, key: str, owner: str, ttl: float) -> str | None:
        check_positive("ttl", ttl)
        with self._db.transaction() as conn:
            t = now()
            row = conn.execute(
                "SELECT owner FROM conveyor_claims WHERE key = ? AND expires_at > ?", (key, t)
            ).fetchone()
            if row is not None:
                return None if row[0] == owner else str(row[0])
            conn.execute(
                "INSERT OR REPLACE INTO conveyor_claims (key, owner, expires_at) VALUES (?, ?, ?)",
                (key, owner, t + ttl),
            )
            self._sweep(conn, "conveyor_claims", t)
        return None

    def release_claim(self, key: str, owner: str) -> bool:
        with self._db.transaction() as conn:
            cursor = conn.execute(
                "DELETE FROM conveyor_claims WHERE key = ? AND owner = ? AND expires_at > ?",
                (key, owner, now()),
            )
            return cursor.rowcount > 0

    def tally(self, key: str, member: str, ttl: float) -> int:
        check_positive("ttl", ttl)
        with self._db.transaction() as conn:
            t = now()
            conn.execute("DELETE FROM conveyor_tallies WHERE key = ? AND expires_at <= ?", (key, t))
            conn.execute(
                "INSERT OR IGNORE INTO conveyor_tallies (key, member, expires_at) VALUES (?, ?, ?)",
                (key, member, t + ttl),
            )
            conn.execute("UPDATE conveyor_tallies SET expires_at = ? WHERE key = ?", (t + ttl, key))
            ((count,),) = conn.execute(
                "SELECT count(*) FROM conveyor_tallies WHERE key = ?", (key,)
            ).fetchall()
            self._sweep(conn, "conveyor_tallies", t)
        return int(count)

    def advance(self, key: str, value: float | None, ttl: float) -> float | None:
        check_positive("ttl", ttl)
        if value is None:
            with self._db.snapshot() as conn:
                return _mark(conn, key, now())
        check_finite("value", value)
        with self._db.transaction() as conn:
            t = now()
            previous = _mark(conn, key, t)
            if previous is None or value > previous:
                conn.execute(
                    "INSERT OR REPLACE INTO conveyor_marks (key, value, expires_at)"
                    " VALUES (?, ?, ?)",
                    (key, value, t + ttl),
                )
                self._sweep(conn, "conveyor_marks", t)
        return previous

    def close(self) -> None:
        """Close this process's connections to the file."""
        self._db.close()
