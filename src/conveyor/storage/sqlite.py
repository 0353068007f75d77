"""SQLite files shared by processes: per-thread, per-process connections, transactions, waits."""

from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
import urllib.parse
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import NamedTuple

from conveyor.config import redact_url

BUSY_TIMEOUT_SECONDS = 30.0
#: How often a waiter reads ``PRAGMA data_version`` (a few microseconds of shared memory).
POLL_SECONDS = 0.005


def database_path(url: str) -> str:
    """The file named by ``sqlite:///relative.db`` or ``sqlite:////absolute/path.db``.

    Raises:
        ValueError: not a sqlite URL, or an in-memory database, which worker
            processes cannot share.
    """
    parts = urllib.parse.urlsplit(url)
    shown = redact_url(url)  # ?password=... is not a sqlite option, but may be in the URL
    if parts.scheme != "sqlite":
        raise ValueError(f"not a sqlite:// URL: {shown!r}")
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if ":memory:" in (parts.netloc, path) or path.startswith("file::memory:"):
        raise ValueError(
            f"{shown!r}: an in-memory SQLite database cannot be shared by worker processes;"
            " use a file (sqlite:///conveyor.sqlite3) or memory:// in tests"
        )
    if parts.netloc or not path or parts.query or parts.fragment:
        raise ValueError(
            f"{shown!r}: expected sqlite:///relative/path.sqlite3 or sqlite:////absolute/path.sqlite3"
        )
    return urllib.parse.unquote(path)


class _Slot:
    """One thread's connection, tagged with the process that opened it."""

    __slots__ = ("__weakref__", "conn", "pid")

    def __init__(self, conn: sqlite3.Connection, pid: int) -> None:
        self.conn: sqlite3.Connection | None = conn
        self.pid = pid

    def close(self) -> None:
        # A forked child must not touch its parent's connection, closing included.
        if self.conn is not None and self.pid == os.getpid():
            self.conn.close()
            self.conn = None

    def __del__(self) -> None:
        self.close()  # a thread ended: its connection goes with it


# Fork drops the other threads' locals in the child, which would close their
# (parent's) connections there; pinning every slot across the fork prevents it.
_live_slots: weakref.WeakSet[_Slot] = weakref.WeakSet()
_pinned: list[_Slot] = []
_inherited: list[_Slot] = []


def _pin() -> None:
    _pinned[:] = _live_slots


def _unpin_in_parent() -> None:
    _pinned.clear()


def _keep_in_child() -> None:
    _inherited.extend(_pinned)
    _pinned.clear()


os.register_at_fork(before=_pin, after_in_parent=_unpin_in_parent, after_in_child=_keep_in_child)


def _while_busy(
    conn: sqlite3.Connection,
    sql: str,
    pause: tuple[float, float],
    transient: frozenset[int] = frozenset({sqlite3.SQLITE_BUSY}),
) -> None:
    """Execute ``sql``, retried after a random pause in ``pause`` (seconds) while the
    file is busy (or answers another of the ``transient`` codes), up to the busy
    timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
    while True:
        try:
            conn.execute(sql)
            return
        except sqlite3.OperationalError as exc:
            code = exc.sqlite_errorcode & 0xFF  # extended codes too
            if code not in transient or time.monotonic() > deadline:
                raise
        time.sleep(random.uniform(*pause))


def _begin_immediate(conn: sqlite3.Connection) -> None:
    """``BEGIN IMMEDIATE``, waiting for the write lock up to the busy timeout.

    SQLite's own busy handler backs off to sleeps of 25-100 ms, so under
    contention the same few processes win every short window while others
    starve; retrying every fraction of a millisecond keeps workers fair.
    """
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        _while_busy(conn, "BEGIN IMMEDIATE", (0.0001, 0.001))
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")


#: What a switch to WAL retries: see ``_journal_wal``.
_WAL_TRANSIENT = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_IOERR})


def _journal_wal(conn: sqlite3.Connection) -> None:
    """``PRAGMA journal_mode=WAL``, retried while the file is busy.

    On a file not yet in WAL mode (a new one) the switch needs an exclusive lock,
    and SQLite answers SQLITE_BUSY at once, without waiting, while another process
    holds a lock on it: processes that open a new file together would fail. A switch
    that meets another process's last connection closing (which checkpoints and
    deletes the ``-wal`` and ``-shm`` files) can answer SQLITE_IOERR: retried too.
    """
    _while_busy(conn, "PRAGMA journal_mode=WAL", (0.001, 0.005), _WAL_TRANSIENT)


#: Mode of a database file conveyor creates: task arguments and results are private data.
FILE_MODE = 0o600


def _create_private(path: str) -> None:
    """Create the database file, empty, readable by its owner only, unless it exists.

    SQLite gives its -wal and -shm files the mode of the database file, so they are
    private too. An existing file keeps its mode: the operator may have chosen it.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return
    except OSError:
        return  # a missing directory, no permission: sqlite3.connect says so in its words
    os.close(fd)


@dataclass(frozen=True, slots=True)
class RowWrite:
    """A statement the result backend prepared for the broker to run inside its ack's
    transaction, when both keep their tables in one file: the ack and the result are
    one commit, fenced alike (a stale delivery's ack runs nothing)."""

    sql: str
    params: tuple[object, ...]


class Mark(NamedTuple):
    """A point in a database's history to wait from (see ``Database.wait_for_change``)."""

    data_version: int
    local_writes: int


class Database:
    """One SQLite file used by many threads and processes.

    Each thread of each process gets its own connection (re-opened after a
    fork), in WAL mode with a busy timeout; ``schema`` (idempotent DDL) runs
    once per process. ``sqlite3.OperationalError`` (locked past the busy
    timeout, I/O errors) is raised as ``error``.
    """

    def __init__(self, url: str, schema: str, error: type[Exception]) -> None:
        self.path = database_path(url)
        self._schema = schema
        self._error = error
        self._local = threading.local()
        self._slots: weakref.WeakSet[_Slot] = weakref.WeakSet()
        self._reset_for_process()

    def _reset_for_process(self) -> None:
        # Locks held by another thread at fork time would stay held in the child.
        self._pid = os.getpid()
        self._schema_ready = False
        self._schema_lock = threading.Lock()
        self._changed = threading.Condition()
        self._local_writes = 0

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (autocommit; transactions are explicit)."""
        if self._pid != os.getpid():
            self._reset_for_process()
        slot: _Slot | None = getattr(self._local, "slot", None)
        if slot is not None and slot.conn is not None and slot.pid == self._pid:
            return slot.conn
        with self._errors():
            conn = self._open()
        slot = _Slot(conn, self._pid)
        self._local.slot = slot
        self._slots.add(slot)
        _live_slots.add(slot)
        return conn

    def _open(self) -> sqlite3.Connection:
        _create_private(self.path)
        # check_same_thread=False only so that close() may close other threads'
        # connections; each connection is still used by one thread.
        conn = sqlite3.connect(
            self.path,
            timeout=BUSY_TIMEOUT_SECONDS,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            _journal_wal(conn)
            conn.execute("PRAGMA synchronous=NORMAL")  # durable across crashes, not power loss
            with self._schema_lock:
                if not self._schema_ready:
                    conn.executescript(f"BEGIN IMMEDIATE;\n{self._schema}\nCOMMIT;")
                    self._schema_ready = True
        except BaseException:
            conn.close()
            raise
        return conn

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:
            # the extended code (SQLITE_IOERR_SHORT_READ, ...) says which I/O failed
            name = getattr(exc, "sqlite_errorname", "")
            detail = f"{exc} ({name})" if name and name not in str(exc) else str(exc)
            raise self._error(f"SQLite database {self.path!r}: {detail}") from exc

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction, committed on success and rolled back on error.

        ``BEGIN IMMEDIATE`` takes the write lock up front: two writers that
        both started by reading would otherwise deadlock upgrading their locks.
        """
        with self._errors():
            conn = self.connection()
            before = conn.total_changes
            _begin_immediate(conn)
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
        if conn.total_changes != before:
            self._wake()

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every statement inside sees the same state."""
        with self._errors():
            conn = self.connection()
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")

    def _wake(self) -> None:
        # data_version does not move for a connection's own writes, and polling
        # would add latency: waiters of this process are woken directly.
        with self._changed:
            self._local_writes += 1
            self._changed.notify_all()

    def _data_version(self) -> int:
        row = self.connection().execute("PRAGMA data_version").fetchone()
        return int(row[0])

    def mark(self) -> Mark:
        """Now, as a point to wait from; take it *before* reading the state you wait on."""
        with self._errors():
            return Mark(self._data_version(), self._local_writes)

    def wait_for_change(self, since: Mark, until: float | None) -> bool:
        """Block until anyone commits a change after ``since``, or ``time.monotonic()``
        reaches ``until`` (None: no limit). True if something changed.

        Other processes are seen through ``PRAGMA data_version``, read every
        ``POLL_SECONDS``; writes through this object wake the waiter at once.
        """
        with self._errors(), self._changed:
            while True:
                if self._local_writes != since.local_writes:
                    return True
                if self._data_version() != since.data_version:
                    return True
                timeout = POLL_SECONDS
                if until is not None:
                    timeout = min(timeout, until - time.monotonic())
                    if timeout <= 0:
                        return False
                self._changed.wait(timeout)

    def close(self) -> None:
        """Close every connection this process opened to the file, all threads'."""
        for slot in list(self._slots):
            slot.close()
