"""The SQLite connection helper: URLs, connections per thread, transactions, change waits."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.exceptions import BrokerError
from conveyor.storage import sqlite as sqlite_storage
from conveyor.storage.sqlite import Database, database_path

SCHEMA = "CREATE TABLE IF NOT EXISTS items (name TEXT);"


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path}/db.sqlite3", SCHEMA, BrokerError)
    yield database
    database.close()


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///conveyor.sqlite3", "conveyor.sqlite3"),
        ("sqlite:///data/conveyor.sqlite3", "data/conveyor.sqlite3"),
        ("sqlite:////var/lib/conveyor.sqlite3", "/var/lib/conveyor.sqlite3"),
        ("sqlite:///with%20space.db", "with space.db"),
    ],
)
def test_database_path_reads_relative_and_absolute_urls(url: str, path: str) -> None:
    assert database_path(url) == path


@pytest.mark.parametrize("url", ["sqlite://:memory:", "sqlite:///:memory:"])
def test_in_memory_databases_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="cannot be shared"):
        database_path(url)


@pytest.mark.parametrize(
    "url", ["sqlite://", "sqlite:///", "sqlite://host/db.sqlite3", "redis://localhost/0"]
)
def test_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="sqlite"):
        database_path(url)


def test_each_thread_has_its_own_connection(db: Database) -> None:
    mine = db.connection()
    theirs: list[sqlite3.Connection] = []
    thread = threading.Thread(target=lambda: theirs.append(db.connection()))
    thread.start()
    thread.join()

    assert db.connection() is mine
    assert theirs[0] is not mine


def test_close_closes_every_threads_connection(db: Database) -> None:
    # Given a connection opened by another, still running, thread
    opened, closed, done = threading.Event(), threading.Event(), threading.Event()
    errors: list[Exception] = []

    def other() -> None:
        conn = db.connection()
        opened.set()
        closed.wait()
        try:
            conn.execute("SELECT 1")
        except sqlite3.ProgrammingError as exc:
            errors.append(exc)
        done.set()

    thread = threading.Thread(target=other)
    thread.start()
    opened.wait()

    # When the database is closed from this thread
    db.close()
    closed.set()
    thread.join()

    # Then that connection is closed too
    assert len(errors) == 1


def test_transaction_rolls_back_on_error(db: Database) -> None:
    def insert_then_fail() -> None:
        with db.transaction() as conn:
            conn.execute("INSERT INTO items VALUES ('lost')")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        insert_then_fail()

    with db.snapshot() as conn:
        assert conn.execute("SELECT count(*) FROM items").fetchone() == (0,)


def test_sqlite_operational_errors_are_raised_as_the_given_error(db: Database) -> None:
    with pytest.raises(BrokerError, match="no such table"), db.transaction() as conn:
        conn.execute("SELECT * FROM missing")


def test_wait_for_change_wakes_on_a_write_from_another_connection(tmp_path: Path) -> None:
    # Given two Database objects on one file (as two processes would have)
    url = f"sqlite:///{tmp_path}/db.sqlite3"
    waiter, writer = Database(url, SCHEMA, BrokerError), Database(url, SCHEMA, BrokerError)
    mark = waiter.mark()

    def write() -> None:
        with writer.transaction() as conn:
            conn.execute("INSERT INTO items VALUES ('x')")

    timer = threading.Timer(0.1, write)
    timer.start()
    started = time.monotonic()

    # When one waits, Then it wakes soon after the other commits
    assert waiter.wait_for_change(mark, time.monotonic() + 5) is True
    assert time.monotonic() - started < 0.5
    timer.join()
    # And without a change it waits until the deadline
    assert waiter.wait_for_change(waiter.mark(), time.monotonic() + 0.1) is False
    waiter.close()
    writer.close()


class _FailsFirst:
    """A connection whose first ``execute`` fails with the given SQLite error code."""

    def __init__(self, code: int):
        self.code = code
        self.calls = 0

    def execute(self, sql: str) -> None:
        self.calls += 1
        if self.calls == 1:
            error = sqlite3.OperationalError("disk I/O error")
            error.sqlite_errorcode = self.code  # type: ignore[attr-defined]
            raise error


def test_the_switch_to_wal_retries_an_io_error_of_a_file_another_process_closes() -> None:
    # SQLITE_IOERR_SHORT_READ: an extended code of SQLITE_IOERR
    conn = _FailsFirst(sqlite3.SQLITE_IOERR | (2 << 8))
    sqlite_storage._journal_wal(conn)  # type: ignore[arg-type]
    assert conn.calls == 2


def test_a_transaction_does_not_retry_an_io_error() -> None:
    conn = _FailsFirst(sqlite3.SQLITE_IOERR)
    with pytest.raises(sqlite3.OperationalError):
        sqlite_storage._while_busy(conn, "BEGIN IMMEDIATE", (0.0, 0.0))  # type: ignore[arg-type]
    assert conn.calls == 1
