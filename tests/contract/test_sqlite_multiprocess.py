"""Several worker processes share one SQLite broker file: nothing is delivered twice."""

from __future__ import annotations

import multiprocessing
import time
from multiprocessing.synchronize import Barrier, Event
from pathlib import Path
from typing import Any

import pytest

from conveyor.brokers.base import OutgoingMessage
from conveyor.brokers.sqlite import SqliteBroker

pytestmark = pytest.mark.timeout(60)

MESSAGES = 2000
WORKERS = 4


def drain(url: str, name: str, start: Barrier, results: Any) -> None:
    """A worker: fetch and ack until the queue stays empty; report what it acked."""
    broker = SqliteBroker(url)
    acked: list[str] = []
    refused = 0
    broker.stats(["q"])  # open the file before the start line
    start.wait()
    while deliveries := broker.fetch(["q"], 5, consumer=name, timeout=0.5):
        outcomes = broker.ack(deliveries)
        acked += [d.id for d, ok in zip(deliveries, outcomes, strict=True) if ok]
        refused += outcomes.count(False)
    broker.close()
    results.put((name, acked, refused))


def wait_once(url: str, ready: Event, results: Any) -> None:
    """A consumer that reports when its fetch returned (wall clock, shared by processes)."""
    broker = SqliteBroker(url)
    broker.fetch(["q"], 1, consumer="warm-up", timeout=0)  # open the file before saying ready
    ready.set()
    deliveries = broker.fetch(["q"], 1, consumer="waiter", timeout=10.0)
    results.put((time.time(), [d.id for d in deliveries]))
    broker.close()


def test_processes_sharing_a_file_deliver_every_message_exactly_once(tmp_path: Path) -> None:
    # Given a file holding many messages
    url = f"sqlite:///{tmp_path}/broker.sqlite3"
    broker = SqliteBroker(url)
    broker.publish_many([OutgoingMessage(f"m{i}", "q", b"x") for i in range(MESSAGES)])

    # When several processes drain it at the same time
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(WORKERS)
    results = ctx.Queue()
    workers = [
        ctx.Process(target=drain, args=(url, f"w{n}", start, results)) for n in range(WORKERS)
    ]
    for p in workers:
        p.start()
    reports = [results.get(timeout=50) for _ in workers]
    for p in workers:
        p.join(timeout=10)

    # Then every message was delivered to exactly one of them, and each took part
    acked = [i for _, ids, _ in reports for i in ids]
    assert sorted(acked) == sorted(f"m{i}" for i in range(MESSAGES))
    assert [refused for _, _, refused in reports] == [0] * WORKERS
    assert all(ids for _, ids, _ in reports)
    assert [p.exitcode for p in workers] == [0] * WORKERS
    assert broker.stats(["q"])[0].ready == 0
    broker.close()


def test_a_waiting_consumer_sees_another_processes_publish_within_milliseconds(
    tmp_path: Path,
) -> None:
    # Given a consumer process waiting on an empty queue
    url = f"sqlite:///{tmp_path}/broker.sqlite3"
    broker = SqliteBroker(url)
    ctx = multiprocessing.get_context("spawn")
    ready, results = ctx.Event(), ctx.Queue()
    waiter = ctx.Process(target=wait_once, args=(url, ready, results))
    waiter.start()
    assert ready.wait(timeout=30)
    time.sleep(0.2)

    # When this process publishes
    published_at = time.time()
    broker.publish(OutgoingMessage("m1", "q", b"x"))

    # Then the waiter returns with it well within its data_version poll interval x a few
    returned_at, ids = results.get(timeout=10)
    waiter.join(timeout=10)
    assert ids == ["m1"]
    assert returned_at - published_at < 0.1
    broker.close()
