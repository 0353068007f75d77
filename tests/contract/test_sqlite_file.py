"""What the SQLite implementations promise beyond the contracts: one file, forks, sweeping."""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import pytest

from conveyor.backends.base import ResultWrite
from conveyor.backends.sqlite import SqliteResultBackend
from conveyor.brokers.base import OutgoingMessage
from conveyor.brokers.sqlite import SqliteBroker


def publish_from_child(broker: SqliteBroker) -> None:
    broker.publish(OutgoingMessage("from-child", "q", b"x"))


def test_broker_and_backend_share_one_file(tmp_path: Path) -> None:
    # Given a broker and a result backend on the same file (the default setup)
    url = f"sqlite:///{tmp_path}/conveyor.sqlite3"
    broker, backend = SqliteBroker(url), SqliteResultBackend(url)

    # When both are used
    broker.publish(OutgoingMessage("t1", "q", b"task"))
    (delivery,) = broker.fetch(["q"], 1, consumer="c", timeout=0)
    backend.store(ResultWrite("t1", "SUCCESS", b"result", ttl=60))
    broker.ack([delivery])

    # Then each keeps its own records
    record = backend.get("t1")
    assert record is not None
    assert record.payload == b"result"
    assert broker.stats() == []
    broker.close()
    backend.close()


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs os.fork")
def test_a_forked_child_opens_its_own_connection(tmp_path: Path) -> None:
    # Given a broker whose connection is open in this process
    broker = SqliteBroker(f"sqlite:///{tmp_path}/broker.sqlite3")
    broker.publish(OutgoingMessage("from-parent", "q", b"x"))

    # When a forked child publishes through the same broker object
    child = multiprocessing.get_context("fork").Process(target=publish_from_child, args=(broker,))
    child.start()
    child.join(timeout=30)

    # Then both messages are stored, and the parent's connection still works
    assert child.exitcode == 0
    got = broker.fetch(["q"], 10, consumer="c", timeout=0)
    assert sorted(d.id for d in got) == ["from-child", "from-parent"]
    assert broker.ack(got) == [True, True]
    broker.close()


def test_expired_results_are_deleted_by_later_writes(tmp_path: Path) -> None:
    # Given records that have expired
    path = tmp_path / "results.sqlite3"
    writer = SqliteResultBackend(f"sqlite:///{path}")
    writer.store_many([ResultWrite(f"t{i}", "SUCCESS", b"", ttl=0.05) for i in range(10)])
    time.sleep(0.1)

    # When a process writes another record (its first write sweeps)
    later = SqliteResultBackend(f"sqlite:///{path}")
    later.store(ResultWrite("fresh", "SUCCESS", b"", ttl=60))

    # Then the expired rows are gone from the file, not only hidden
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT task_id FROM conveyor_results").fetchall() == [("fresh",)]
    writer.close()
    later.close()
