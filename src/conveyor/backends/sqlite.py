"""The embedded default result backend: task records in a SQLite file, often the broker's."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from conveyor.backends.base import READY_STATES, ResultBackend, ResultWrite, StoredResult
from conveyor.exceptions import BackendError
from conveyor.storage.sqlite import Database, RowWrite

SCHEMA = """
CREATE TABLE IF NOT EXISTS conveyor_results (
    task_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    payload BLOB NOT NULL,
    stored_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS conveyor_results_expiry ON conveyor_results (expires_at);
"""

_UPSERT = (
    "INSERT INTO conveyor_results (task_id, state, payload, stored_at, expires_at)"
    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (task_id) DO UPDATE SET"
    " state = excluded.state, payload = excluded.payload,"
    " stored_at = excluded.stored_at, expires_at = excluded.expires_at"
)

#: Expired records are deleted by writers, at most this many per sweep...
SWEEP_LIMIT = 500
#: ...once every this many seconds per process.
SWEEP_SECONDS = 5.0


class SqliteResultBackend(ResultBackend):
    """Results in one SQLite file (WAL), shared by every process of the machine.

    Args:
        url: ``sqlite:///relative.sqlite3`` or ``sqlite:////absolute/path.sqlite3``;
            the broker's file is fine, the tables are distinct.

    Raises:
        ValueError: the URL names no file (``:memory:`` cannot be shared).
    """

    def __init__(self, url: str = "sqlite:///conveyor.sqlite3") -> None:
        self.url = url
        self._db = Database(url, SCHEMA, BackendError)
        self._sweep_lock = threading.Lock()
        self._next_sweep = 0.0

    def store_many(self, writes: Sequence[ResultWrite]) -> None:
        with self._db.transaction() as conn:
            t = time.time()
            conn.executemany(
                _UPSERT, [(w.task_id, w.state, w.payload, t, t + w.ttl) for w in writes]
            )
            if self._sweep_due():
                # A bounded sweep keeps every write short; the next ones finish the job.
                conn.execute(
                    "DELETE FROM conveyor_results WHERE rowid IN (SELECT rowid FROM"
                    " conveyor_results WHERE expires_at <= ? LIMIT ?)",
                    (t, SWEEP_LIMIT),
                )

    def writes_for(self, broker: object, writes: Sequence[ResultWrite]) -> list[object] | None:
        """Row writes for a SQLite broker on this same file: the worker's ack and its
        results then commit together, so no crash can come between them."""
        if getattr(broker, "sqlite_path", None) != self._db.path:
            return None
        self._db.connection()  # the results table exists before the broker writes to it
        t = time.time()
        return [RowWrite(_UPSERT, (w.task_id, w.state, w.payload, t, t + w.ttl)) for w in writes]

    def _sweep_due(self) -> bool:
        with self._sweep_lock:
            clock = time.monotonic()
            if clock < self._next_sweep:
                return False
            self._next_sweep = clock + SWEEP_SECONDS
            return True

    def get(self, task_id: str) -> StoredResult | None:
        with self._db.snapshot() as conn:
            row = conn.execute(
                "SELECT task_id, state, payload, stored_at FROM conveyor_results"
                " WHERE task_id = ? AND expires_at > ?",
                (task_id, time.time()),
            ).fetchone()
        return None if row is None else StoredResult(*row)

    def wait(
        self, task_id: str, timeout: float | None, *, just_sent: bool = False
    ) -> StoredResult | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            mark = self._db.mark()  # before the read, so no write slips between
            record = self.get(task_id)
            if record is not None and record.state in READY_STATES:
                return record
            if deadline is not None and time.monotonic() >= deadline:
                return record
            self._db.wait_for_change(mark, deadline)

    def forget(self, task_id: str) -> None:
        with self._db.transaction() as conn:
            conn.execute("DELETE FROM conveyor_results WHERE task_id = ?", (task_id,))

    def close(self) -> None:
        """Close this process's connections to the file."""
        self._db.close()
