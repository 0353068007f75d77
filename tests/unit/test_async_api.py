"""The async producer API: ``adelay``/``aapply_async`` send, ``aget`` waits, from async code;
and the event loops async tasks run on.

A real worker runs in a thread of this process (``conveyor.testing.start_worker``) on a
memory broker of the test's own.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from conveyor import Conveyor, states
from conveyor.exceptions import EncodeError, TimeoutError
from conveyor.testing import start_worker


@pytest.fixture
def app() -> Iterator[Conveyor]:
    app = Conveyor("async-api", broker=f"memory://unit-async-api-{uuid.uuid4().hex}")
    yield app
    app.close()


def test_a_task_sent_with_adelay_comes_back_through_aget(app: Conveyor) -> None:
    # Given a task and a worker
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    async def round_trip() -> int:
        # When async code sends it and awaits its result
        result = await add.adelay(2, 3)
        value: int = await result.aget(timeout=5)
        return value

    with start_worker(app):
        # Then the value comes back
        assert asyncio.run(round_trip()) == 5


def test_an_async_task_sent_with_aapply_async_runs_on_the_asyncio_pool(app: Conveyor) -> None:
    # Given an async task and a worker with the asyncio pool
    @app.task
    async def double(x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    async def round_trip() -> tuple[int, str]:
        # When async code sends it with options and awaits it
        result = await double.aapply_async((21,), priority=5)
        value: int = await result.aget(timeout=5)
        return value, result.state

    with start_worker(app, pool="asyncio", concurrency=4):
        # Then the value comes back and the task succeeded
        assert asyncio.run(round_trip()) == (42, states.SUCCESS)


def test_aget_reraises_the_exception_of_a_failed_task(app: Conveyor) -> None:
    # Given a task that raises
    @app.task
    async def explode(reason: str) -> None:
        raise ValueError(reason)

    async def send_and_wait() -> None:
        result = await explode.adelay("planned")
        await result.aget(timeout=5)

    with start_worker(app, pool="asyncio"), pytest.raises(ValueError, match="planned"):
        # When it is sent and awaited, Then aget raises the task's own exception
        asyncio.run(send_and_wait())


def test_adelay_with_arguments_that_do_not_fit_raises_at_the_call_and_sends_nothing(
    app: Conveyor,
) -> None:
    # Given a task of two parameters
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    # When it is sent from async code with three arguments, or one that is not JSON
    async def send(*args: object) -> None:
        await add.adelay(*args)

    # Then the await raises at once, and no message was published
    with pytest.raises(TypeError, match="add"):
        asyncio.run(send(1, 2, 3))
    with pytest.raises(EncodeError):
        asyncio.run(send(1, object()))
    [stats] = app.broker.stats([app.conf.task_default_queue])
    assert stats.ready == 0


def test_aget_of_a_task_nobody_runs_times_out(app: Conveyor) -> None:
    # Given a task sent while no worker runs
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    async def wait_briefly() -> None:
        result = await add.adelay(1, 2)
        await result.aget(timeout=0.2)

    # When its result is awaited with a timeout, Then aget raises TimeoutError after it
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        asyncio.run(wait_briefly())
    assert 0.2 <= time.monotonic() - started < 2.0


def test_the_event_loop_keeps_running_while_aget_waits(app: Conveyor) -> None:
    # Given a task that takes 0.5 s, and a worker
    @app.task
    def slow(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    async def wait_beside_a_ticker() -> tuple[float, int]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        try:
            # When async code sends it and awaits the result beside a ticker
            result = await slow.adelay(0.5)
            value: float = await result.aget(timeout=5)
        finally:
            ticker.cancel()
        return value, ticks

    with start_worker(app):
        value, ticks = asyncio.run(wait_beside_a_ticker())

    # Then the ticker kept ticking through the wait (about 50 ticks in 0.5 s), where a
    # blocking get() would have let it tick not at all
    assert value == 0.5
    assert ticks >= 20


def test_a_pool_threads_event_loop_is_closed_when_the_thread_ends(app: Conveyor) -> None:
    # Given an async task that keeps the loop it ran on, run by a threads-pool worker
    loops: list[asyncio.AbstractEventLoop] = []

    @app.task
    async def keep_loop() -> None:
        loops.append(asyncio.get_running_loop())

    with start_worker(app, pool="threads", concurrency=1):
        keep_loop.delay().get(timeout=5)
        keep_loop.delay().get(timeout=5)

    # Then both runs used the thread's one loop
    assert loops[0] is loops[1]
    # And when the worker has stopped and its pool thread has ended, the loop is closed
    # (by its thread, not left to the garbage collector's "unclosed event loop")
    deadline = time.monotonic() + 5
    while not loops[0].is_closed():
        assert time.monotonic() < deadline, "the loop was not closed"
        time.sleep(0.01)
    assert not any(t.name.startswith("conveyor-pool-") for t in threading.enumerate())
