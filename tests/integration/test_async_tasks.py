"""``async def`` tasks in real ``conveyor worker`` processes, under every pool.

The workers load ``apps.async_tasks`` (the integration app, plus its async tasks).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from apps import async_tasks
from apps.tasks import Boom
from harness import StartWorker, ids_in_queue, queue_stats, wait_until, workers_of

from conveyor import Conveyor, states

ASYNC_APP = "apps.async_tasks"
POOLS = ("solo", "threads", "prefork", "asyncio")


@pytest.fixture
def start_async_worker(start_worker: StartWorker) -> StartWorker:
    """``start_worker`` for the workers of this module's app."""
    return workers_of(start_worker, ASYNC_APP)


def test_two_hundred_async_tasks_of_0_2_s_finish_in_under_2_s_on_one_asyncio_worker(
    app: Conveyor, start_async_worker: StartWorker, record_property: Callable[[str, object], None]
) -> None:
    # Given one asyncio worker of concurrency 200, warmed up by one task
    start_async_worker("-P", "asyncio", "-c", "200").wait_ready()
    assert async_tasks.async_add.delay(1, 1).get(timeout=15) == 2

    # When 200 async tasks that each await asyncio.sleep(0.2) are sent
    started, sent_at = time.monotonic(), time.time()
    results = [async_tasks.async_nap.delay(0.2) for _ in range(200)]

    # Then every result is in within 2 s of the first send (0.2 s each, all at once)
    woke_at = [result.get(timeout=15) for result in results]
    elapsed = time.monotonic() - started
    record_property("measured: 200 x asyncio.sleep(0.2), -P asyncio -c 200 (s)", round(elapsed, 2))
    assert elapsed < 2.0, f"took {elapsed:.2f} s"
    assert all(result.state == states.SUCCESS for result in results)
    # And each task did sleep its 0.2 s
    assert min(woke_at) >= sent_at + 0.2


@pytest.mark.parametrize("pool", POOLS)
def test_an_async_task_returns_its_value_and_a_failing_one_reraises_its_type(
    app: Conveyor, start_async_worker: StartWorker, pool: str
) -> None:
    # Given a worker with this pool
    start_async_worker("-P", pool, "-c", "2").wait_ready()

    # When an async task and a failing async task are sent
    good = async_tasks.async_add.delay(2, 3)
    bad = async_tasks.async_fail.delay("it broke, asynchronously")

    # Then the first returns its value
    assert good.get(timeout=15) == 5
    assert good.state == states.SUCCESS
    # And the second re-raises the task's own exception class, with its message
    with pytest.raises(Boom, match="it broke, asynchronously"):
        bad.get(timeout=15)
    assert bad.state == states.FAILURE
    assert bad.traceback is not None
    assert "raise Boom(message)" in bad.traceback


def test_a_blocking_sync_task_does_not_delay_async_tasks_on_the_asyncio_pool(
    app: Conveyor, start_async_worker: StartWorker
) -> None:
    # Given an asyncio worker running a sync task that blocks its thread for 1 s
    start_async_worker("-P", "asyncio", "-c", "20").wait_ready()
    assert async_tasks.async_add.delay(1, 1).get(timeout=15) == 2
    blocking = async_tasks.blocking_stamp.delay(1.0)

    # When ten async tasks of 0.1 s are sent beside it
    naps = [async_tasks.async_nap.delay(0.1) for _ in range(10)]

    # Then all ten finish while the sync task is still sleeping: it runs in a thread,
    # not on the loop the async tasks share
    nap_ends = [result.get(timeout=15) for result in naps]
    blocking_end = blocking.get(timeout=15)
    assert max(nap_ends) < blocking_end - 0.5


@pytest.mark.parametrize("pool", POOLS)
def test_each_thread_or_process_runs_its_async_tasks_on_one_lasting_loop(
    app: Conveyor, start_async_worker: StartWorker, pool: str
) -> None:
    # Given a worker with this pool and one slot
    start_async_worker("-P", pool, "-c", "1").wait_ready()

    # When an async task that reports its event loop runs five times, one after another
    seen: list[dict[str, Any]] = [
        async_tasks.loop_identity.delay().get(timeout=15) for _ in range(5)
    ]

    # Then every run saw the same loop, in the same thread and process: no loop per task
    assert len({(s["loop"], s["name"], s["thread"], s["pid"]) for s in seen}) == 1


def test_async_code_sends_tasks_with_adelay_and_awaits_their_results_with_aget(
    app: Conveyor, start_async_worker: StartWorker
) -> None:
    # Given an asyncio worker
    start_async_worker("-P", "asyncio", "-c", "20").wait_ready()

    async def produce() -> list[Any]:
        # When async code sends ten tasks with adelay and awaits them all with aget
        sent = await asyncio.gather(*(async_tasks.async_add.adelay(i, i) for i in range(10)))
        return list(await asyncio.gather(*(result.aget(timeout=15) for result in sent)))

    # Then every value comes back
    assert asyncio.run(produce()) == [i + i for i in range(10)]


def test_sigterm_returns_tasks_still_running_at_the_timeout_and_the_asyncio_worker_exits(
    app: Conveyor, start_async_worker: StartWorker
) -> None:
    # Given an asyncio worker with a 1 s shutdown timeout, running an async task and a
    # sync task (in its thread) that would each take 30 s
    worker = start_async_worker("-P", "asyncio", "-c", "4", "--shutdown-timeout", "1")
    worker.wait_ready()
    running = {async_tasks.async_nap.delay(30).id, async_tasks.blocking_stamp.delay(30).id}
    wait_until(lambda: queue_stats(app.broker).in_flight == 2, 10, "both tasks to be taken")

    # When it gets SIGTERM
    started = time.monotonic()
    worker.terminate()

    # Then it exits cleanly without waiting for them: the coroutine is cancelled and
    # the sync task's thread abandoned
    assert worker.wait(15) == 0
    assert time.monotonic() - started < 10
    # And both messages are back in the queue, for another worker to run
    assert ids_in_queue(app.broker) == running
