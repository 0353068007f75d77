"""The result-backend contract suite: ``conveyor.backends.base``, for every backend."""

from __future__ import annotations

import threading
import time

from conveyor.backends.base import ResultBackend, ResultWrite

DAY = 86400.0


def write(
    task_id: str, state: str = "SUCCESS", payload: bytes = b"42", ttl: float = DAY
) -> ResultWrite:
    return ResultWrite(task_id=task_id, state=state, payload=payload, ttl=ttl)


def store_later(
    backend: ResultBackend, delay: float, *writes: ResultWrite
) -> tuple[threading.Thread, list[float]]:
    """Stores ``writes`` from another thread, ``delay`` seconds apart; and when each write began."""
    stored_at: list[float] = []

    def run() -> None:
        for w in writes:
            time.sleep(delay)
            stored_at.append(time.monotonic())
            backend.store(w)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, stored_at


def test_stored_record_is_returned(backend: ResultBackend) -> None:
    before = time.time()

    backend.store(write("t1", "SUCCESS", b"\x00result"))

    record = backend.get("t1")
    assert record is not None
    assert (record.task_id, record.state, record.payload) == ("t1", "SUCCESS", b"\x00result")
    assert before <= record.stored_at <= time.time()


def test_get_of_an_unknown_task_is_none(backend: ResultBackend) -> None:
    assert backend.get("nobody") is None


def test_a_write_replaces_the_earlier_record(backend: ResultBackend) -> None:
    backend.store(write("t1", "STARTED", b""))

    backend.store(write("t1", "FAILURE", b"boom"))

    record = backend.get("t1")
    assert record is not None
    assert (record.state, record.payload) == ("FAILURE", b"boom")


def test_store_many_stores_every_record(backend: ResultBackend) -> None:
    backend.store_many([write(f"t{i}", payload=str(i).encode()) for i in range(20)])

    records = [backend.get(f"t{i}") for i in range(20)]
    assert [r.payload if r else None for r in records] == [str(i).encode() for i in range(20)]


def test_an_expired_record_is_never_returned(backend: ResultBackend) -> None:
    # Given a record with a short TTL
    backend.store(write("t1", ttl=0.2))
    assert backend.get("t1") is not None

    # When its TTL has passed
    time.sleep(0.3)

    # Then neither get nor wait return it
    assert backend.get("t1") is None
    assert backend.wait("t1", timeout=0.05) is None


def test_every_write_renews_the_expiry(backend: ResultBackend) -> None:
    backend.store(write("t1", "STARTED", ttl=0.2))

    backend.store(write("t1", "SUCCESS", ttl=DAY))
    time.sleep(0.3)

    assert backend.get("t1") is not None


def test_wait_returns_a_ready_record_at_once(backend: ResultBackend) -> None:
    backend.store(write("t1", "SUCCESS"))
    started = time.monotonic()

    record = backend.wait("t1", timeout=5.0)

    assert record is not None
    assert record.state == "SUCCESS"
    assert time.monotonic() - started < 0.1


def test_wait_returns_promptly_after_a_write_from_another_thread(backend: ResultBackend) -> None:
    # Given a waiter, and a task that reports STARTED then SUCCESS from another thread
    thread, stored_at = store_later(backend, 0.1, write("t1", "STARTED"), write("t1", "SUCCESS"))

    # When it waits
    record = backend.wait("t1", timeout=5.0)
    returned = time.monotonic()
    thread.join()

    # Then it skips the unready state and returns within milliseconds of the final write
    assert record is not None
    assert record.state == "SUCCESS"
    assert len(stored_at) == 2
    assert 0 <= returned - stored_at[1] < 0.05


def test_wait_without_timeout_returns_after_the_write(backend: ResultBackend) -> None:
    thread, _ = store_later(backend, 0.1, write("t1", "FAILURE"))

    record = backend.wait("t1", timeout=None)
    thread.join()

    assert record is not None
    assert record.state == "FAILURE"


def test_wait_timeout_returns_the_unready_record(backend: ResultBackend) -> None:
    backend.store(write("t1", "STARTED"))
    started = time.monotonic()

    record = backend.wait("t1", timeout=0.2)

    assert record is not None
    assert record.state == "STARTED"
    assert 0.19 <= time.monotonic() - started < 0.6


def test_wait_timeout_without_a_record_returns_none(backend: ResultBackend) -> None:
    started = time.monotonic()

    assert backend.wait("nobody", timeout=0.2) is None

    assert 0.19 <= time.monotonic() - started < 0.6


def test_forget_deletes_the_record(backend: ResultBackend) -> None:
    backend.store(write("t1"))

    backend.forget("t1")

    assert backend.get("t1") is None
    backend.forget("t1")  # a no-op once gone


def test_waits_in_turn_on_one_thread_each_get_their_own_record(backend: ResultBackend) -> None:
    # Given waits one after another on one thread (a kept connection may still carry
    # notifications of the earlier ones)
    for i in range(5):
        thread, _ = store_later(backend, 0.02, write(f"t{i}", payload=str(i).encode()))
        record = backend.wait(f"t{i}", timeout=5.0)
        thread.join()

        # Then each returns its own task's record, never another's
        assert record is not None
        assert (record.task_id, record.payload) == (f"t{i}", str(i).encode())


def test_a_waiter_gets_a_large_record_promptly(backend: ResultBackend) -> None:
    payload = b"x" * 200_000
    thread, stored_at = store_later(backend, 0.1, write("t1", payload=payload))

    record = backend.wait("t1", timeout=5.0)
    returned = time.monotonic()
    thread.join()

    assert record is not None
    assert record.payload == payload
    assert 0 <= returned - stored_at[0] < 0.05


def test_a_wait_told_the_task_was_just_sent_still_finds_a_record_already_there(
    backend: ResultBackend,
) -> None:
    # Given a record written before the wait (a task faster than its sender)
    backend.store(write("t1", "SUCCESS"))
    started = time.monotonic()

    # When the sender waits, saying the task was sent a moment ago
    record = backend.wait("t1", timeout=5.0, just_sent=True)

    # Then the record is returned at once all the same
    assert record is not None
    assert record.state == "SUCCESS"
    assert time.monotonic() - started < 0.1


def test_a_wait_told_the_task_was_just_sent_returns_promptly_after_the_write(
    backend: ResultBackend,
) -> None:
    thread, stored_at = store_later(backend, 0.1, write("t1", "SUCCESS"))

    record = backend.wait("t1", timeout=5.0, just_sent=True)
    returned = time.monotonic()
    thread.join()

    assert record is not None
    assert 0 <= returned - stored_at[0] < 0.05
