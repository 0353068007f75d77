"""``worker --autoscale MAX,MIN`` in real worker processes: grow with demand, shrink back."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from apps import limit_tasks
from harness import StartWorker, wait_until, workers_of

from conveyor import Conveyor

pytestmark = pytest.mark.brokers("sqlite")  # the pool's size is the worker's business


@pytest.fixture
def start_limit_worker(start_worker: StartWorker) -> StartWorker:
    """``start_worker`` for the workers of this module's app."""
    return workers_of(start_worker, "apps.limit_tasks")


def children_of(pid: int) -> set[int]:
    """The live child processes of ``pid`` (from /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] not in ("Z", "X"):
            found.add(int(entry.name))
    return found


@pytest.mark.app_env(CONVEYOR_TEST_AUTOSCALE_KEEPALIVE="1.0")
@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_autoscale_grows_to_meet_a_burst_and_shrinks_back_when_it_is_over(
    app: Conveyor, start_limit_worker: StartWorker, pool: str
) -> None:
    # Given a worker autoscaled between 1 and 4 slots, idle, with one slot
    worker = start_limit_worker("-P", pool, "--autoscale", "4,1").wait_ready()
    assert "autoscale 1 to 4" in worker.stderr_text()
    if pool == "prefork":
        # (the banner comes out before the pool forks: wait for the first child)
        wait_until(lambda: len(children_of(worker.pid)) == 1, 5, "the pool's one child")

    # When four 1 s tasks arrive at once
    began = time.monotonic()
    naps = [limit_tasks.nap_pid.delay(1.0) for _ in range(4)]
    pids = {nap.get(timeout=10) for nap in naps}

    # Then the pool grew at once and ran them side by side (one slot would take 4 s)
    assert time.monotonic() - began < 2.5
    assert "pool grew from 1 to" in worker.stderr_text()
    if pool == "prefork":
        assert len(pids) == 4

    # ... and once demand has stayed low for the keepalive, it shrinks back to one slot
    wait_until(lambda: "pool shrank" in worker.stderr_text(), 10, "the pool to shrink")
    if pool == "prefork":
        wait_until(lambda: len(children_of(worker.pid)) == 1, 5, "one child left")
    # ... and still runs tasks
    assert isinstance(limit_tasks.pid.delay().get(timeout=5), int)


def test_autoscale_with_max_below_min_is_refused_at_start(
    app: Conveyor, start_limit_worker: StartWorker
) -> None:
    # When a worker is started with MAX below MIN
    worker = start_limit_worker("--autoscale", "2,5")

    # Then it exits at once with a usage error naming the option
    assert worker.wait(15) == 2
    assert "--autoscale" in worker.stderr_text()
    assert "below MIN" in worker.stderr_text()
