"""Concurrent sends of one process, against a real redis-server: coroutines' ``adelay``
published natively on their event loop, threads' ``delay`` sent together; each message
stored exactly once, in far fewer script calls than messages."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from conveyor import Conveyor, Task
from conveyor.brokers.base import OutgoingMessage
from redis_server import RedisServer

QUEUE = "celery"
COROUTINES = 64
THREADS = 32
ROUNDS = 4
#: A hang guard for polls and joins, never a speed claim.
WAIT = 10.0


@pytest.fixture
def producer(redis_url: str) -> Iterator[Conveyor]:
    """An app on the session's redis-server (broker and results), closed after."""
    app = Conveyor("async-publish", broker=redis_url, backend=redis_url)
    yield app
    app.close()


@pytest.fixture
def inspector(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """One connection to look at the server with (it counts itself in CLIENT LIST)."""
    with redis_server.client() as client:
        yield client


def record_task(app: Conveyor) -> Task[[int], int]:
    @app.task(name="tests.async_publish.record")
    def record(i: int) -> int:
        return i

    return record


def queued_ids(app: Conveyor) -> list[str]:
    """The ids of every ready message of the queue, once per copy stored."""
    deliveries = app.broker.fetch([QUEUE], 100_000, consumer="inspector", timeout=0)
    return [d.id for d in deliveries]


def script_calls(inspector: redis.Redis) -> int:
    stats: dict[str, Any] = inspector.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def clients(inspector: redis.Redis) -> int:
    return len(inspector.client_list())


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# -- coroutines ----------------------------------------------------------------------------


def test_coroutines_sending_at_once_are_published_together_on_the_loop(
    producer: Conveyor, inspector: redis.Redis, record_property: Callable[[str, object], None]
) -> None:
    # Given a task, the broker in use already (a warm-up send from this thread)
    record = record_task(producer)
    record.delay(-1)
    queued_ids(producer)  # (leased: out of the way)
    baseline = clients(inspector)

    async def send_all() -> tuple[list[str], bool, int]:
        async def sender(n: int) -> list[str]:
            return [(await record.adelay(n * ROUNDS + r)).id for r in range(ROUNDS)]

        sent = await asyncio.gather(*(sender(n) for n in range(COROUTINES)))
        no_thread = asyncio.get_running_loop()._default_executor is None  # type: ignore[attr-defined]
        return [i for ids in sent for i in ids], no_thread, clients(inspector)

    for run in range(2):
        inspector.config_resetstat()

        # When 64 coroutines each await adelay() 4 times, in one asyncio.run
        sent, no_thread, clients_during = asyncio.run(send_all())

        # Then they were sent without a thread, in far fewer script calls than messages
        calls = script_calls(inspector)
        record_property(f"measured: script calls for 256 adelay(), run {run + 1}", calls)
        assert no_thread, "a thread was used (the loop's default executor was created)"
        assert len(sent) == COROUTINES * ROUNDS
        assert calls <= len(sent) // 8
        # And the loop's own client, connected while it ran, was closed when it ended
        assert clients_during > baseline
        wait_for(lambda: clients(inspector) == baseline, "the asyncio client to disconnect")

        # And every message is in the queue exactly once
        assert producer.broker.stats([QUEUE])[0].ready == len(sent)
        assert Counter(queued_ids(producer)) == Counter(sent)


def test_the_first_send_of_a_process_from_a_coroutine_uses_no_thread_either(
    producer: Conveyor,
) -> None:
    # Given a new app, which has not talked to Redis yet
    record = record_task(producer)

    async def send() -> tuple[str, bool]:
        result = await record.adelay(1)
        return result.id, asyncio.get_running_loop()._default_executor is None  # type: ignore[attr-defined]

    # When its first send is made from a coroutine
    sent, no_thread = asyncio.run(send())

    # Then it is published without a thread
    assert queued_ids(producer) == [sent]
    assert no_thread, "a thread was used (the loop's default executor was created)"


def test_a_bad_priority_fails_its_own_coroutine_only(producer: Conveyor) -> None:
    record = record_task(producer)
    record.delay(-1)
    queued_ids(producer)  # (leased: out of the way)

    async def send_all() -> list[Any]:
        calls = [
            record.aapply_async((i,), priority=42 if i == COROUTINES // 2 else None)
            for i in range(COROUTINES)
        ]
        return await asyncio.gather(*calls, return_exceptions=True)

    outcomes = asyncio.run(send_all())

    bad = outcomes.pop(COROUTINES // 2)
    assert isinstance(bad, ValueError)
    assert not any(isinstance(outcome, BaseException) for outcome in outcomes)
    assert Counter(queued_ids(producer)) == Counter(outcome.id for outcome in outcomes)


# -- threads ---------------------------------------------------------------------------------


def run_threads(count: int, target: Callable[[int], None]) -> list[BaseException | None]:
    """``target(n)`` in ``count`` threads released together; what each raised."""
    start = threading.Barrier(count)
    errors: list[BaseException | None] = [None] * count

    def run(n: int) -> None:
        start.wait(WAIT)
        try:
            target(n)
        except BaseException as exc:
            errors[n] = exc

    threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
        assert not thread.is_alive(), "a sending thread never returned"
    return errors


def test_threads_sending_at_once_are_sent_together(
    producer: Conveyor, inspector: redis.Redis, record_property: Callable[[str, object], None]
) -> None:
    # Given a task, the broker in use already
    record = record_task(producer)
    record.delay(-1)
    queued_ids(producer)  # (leased: out of the way)
    inspector.config_resetstat()
    sent: list[list[str]] = [[] for _ in range(THREADS)]

    # When 32 threads each call delay() 4 times, all at once
    def send(n: int) -> None:
        sent[n] = [record.delay(n * ROUNDS + r).id for r in range(ROUNDS)]

    errors = run_threads(THREADS, send)

    # Then each message is stored exactly once, by fewer script calls than messages
    calls = script_calls(inspector)
    record_property("measured: script calls for 128 delay() from 32 threads", calls)
    assert errors == [None] * THREADS
    messages = [i for ids in sent for i in ids]
    assert len(messages) == THREADS * ROUNDS
    assert calls < len(messages)
    assert Counter(queued_ids(producer)) == Counter(messages)


def test_a_bad_priority_fails_its_own_thread_only(producer: Conveyor) -> None:
    # Given a task, the broker in use already
    record = record_task(producer)
    record.delay(-1)
    queued_ids(producer)  # (leased: out of the way)
    sent: dict[int, str] = {}
    bad_call, bad_publish = 0, 1
    bad_id = uuid.uuid4().hex

    # When, among 32 threads sending at once, one asks for priority 42 through the
    # task and another publishes a message of priority 42 to the broker itself
    def send(n: int) -> None:
        if n == bad_call:
            record.apply_async((n,), priority=42)
        elif n == bad_publish:
            producer.broker.publish(OutgoingMessage(bad_id, QUEUE, b"{}", priority=42))
        else:
            sent[n] = record.delay(n).id

    errors = run_threads(THREADS, send)

    # Then those two raise ValueError, and every other thread's message was stored
    assert isinstance(errors[bad_call], ValueError)
    assert isinstance(errors[bad_publish], ValueError)
    assert errors[2:] == [None] * (THREADS - 2)
    assert Counter(queued_ids(producer)) == Counter(sent.values())
