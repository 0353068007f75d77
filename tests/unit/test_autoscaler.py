"""``--autoscale``: parsing MAX,MIN and the grow-now, shrink-later rule, on a real pool."""

from __future__ import annotations

import threading
import time

import pytest

from conveyor import states
from conveyor.worker.autoscale import Autoscaler, parse_autoscale
from conveyor.worker.job import Job, Outcome
from conveyor.worker.pools import ThreadPool


@pytest.mark.parametrize(
    ("text", "expected"),
    [("10,3", (10, 3)), ("4", (4, 1)), (" 8 , 2 ", (8, 2)), ("5,0", (5, 1)), ("3,3", (3, 3))],
)
def test_parse_autoscale_reads_max_then_min(text: str, expected: tuple[int, int]) -> None:
    assert parse_autoscale(text) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [("2,5", "below MIN"), ("a,b", "MAX,MIN"), ("1,2,3", "MAX,MIN"), ("", "MAX,MIN")],
)
def test_parse_autoscale_refuses_what_is_not_max_comma_min(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_autoscale(text)


def idle_pool(size: int) -> ThreadPool:
    def execute(job: Job) -> Outcome:
        return Outcome(states.SUCCESS)

    pool = ThreadPool(execute, size, lambda job, outcome: None)
    pool.start()
    return pool


def pool_threads() -> int:
    return sum(t.name.startswith("conveyor-pool-") for t in threading.enumerate())


def test_the_pool_grows_at_once_and_shrinks_only_after_the_keepalive() -> None:
    # Given an autoscaler between 1 and 4 threads, with a keepalive of 0.3 s
    before = pool_threads()
    pool = idle_pool(1)
    scaler = Autoscaler(pool, minimum=1, maximum=4, keepalive=0.3)
    try:
        # When demand rises to 6
        scaler.update(6)

        # Then the pool grows at once, to its maximum
        assert pool.concurrency == 4
        assert pool_threads() - before == 4

        # When demand falls to 2, the pool keeps its size for the keepalive
        scaler.update(2)
        assert pool.concurrency == 4
        time.sleep(0.35)
        scaler.update(2)

        # Then it shrinks to the demand, and its idle threads leave
        assert pool.concurrency == 2
        deadline = time.monotonic() + 2
        while pool_threads() - before > 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pool_threads() - before == 2

        # ... and a burst in between resets the wait
        scaler.update(0)
        scaler.update(3)
        assert pool.concurrency == 3
        time.sleep(0.35)
        scaler.update(3)
        assert pool.concurrency == 3
    finally:
        pool.stop()
