"""THE pool contract: every pool in ``POOLS`` runs jobs and reports each outcome once.

The jobs are real ``Job``s (a ``Delivery`` of an encoded ``Message``); what a job does is
chosen by its task name and run by ``Perform``, the ``execute`` handed to the pool. Jobs
announce that they started through a pipe and wait on a gate, both made before the
prefork pool forks, so the test steers them in any process without sleeping.

The asyncio pool runs twice: as ``asyncio`` its jobs are coroutines awaited on its loop,
as ``asyncio-sync`` the same jobs are plain functions, which it runs in its threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from conveyor import states
from conveyor.brokers.base import Delivery
from conveyor.message import Message, encode
from conveyor.worker.job import LOST, Job, Outcome
from conveyor.worker.pools import POOLS, AsyncExecute, AsyncioPool, Pool, PreforkPool, SoloPool

_fork = multiprocessing.get_context("fork")


class Lab:
    """What jobs share with the test across threads and forked children."""

    def __init__(self) -> None:
        self._reader, self._writer = _fork.Pipe(duplex=False)
        self._lock = _fork.Lock()
        # A pipe, not a multiprocessing.Event: a child killed while waiting on an Event
        # leaves its semaphores so that the next set() blocks for ever.
        self._gate_reader, self._gate_writer = _fork.Pipe(duplex=False)
        self._released = False

    def release(self) -> None:
        """Let every "block" job finish, now and later (the byte is never read)."""
        if not self._released:
            self._released = True
            self._gate_writer.send_bytes(b"go")

    def wait_for_release(self, timeout: float = 5.0) -> None:
        with contextlib.suppress(OSError):
            self._gate_reader.poll(timeout)

    async def released(self, timeout: float = 5.0) -> None:
        """``wait_for_release`` for a coroutine: looks at the gate without blocking the loop."""
        deadline = time.monotonic() + timeout
        with contextlib.suppress(OSError):
            while not self._gate_reader.poll(0) and time.monotonic() < deadline:
                await asyncio.sleep(0.005)

    def announce(self, job: Job) -> None:
        # OSError: a pool thread may start a job after a failed test closed the lab
        with self._lock, contextlib.suppress(OSError):
            self._writer.send((job.message.id, os.getpid()))

    def started(self, count: int, timeout: float = 5.0) -> list[tuple[str, int]]:
        """The next ``count`` (job id, pid) announcements, in the order the jobs started."""
        deadline = time.monotonic() + timeout
        seen: list[tuple[str, int]] = []
        while len(seen) < count:
            if not self._reader.poll(max(0.0, deadline - time.monotonic())):
                raise AssertionError(f"only {seen} started within {timeout} s")
            seen.append(self._reader.recv())
        return seen

    def nothing_started(self, within: float = 0.2) -> bool:
        return not self._reader.poll(within)

    def close(self) -> None:
        for end in (self._reader, self._writer, self._gate_reader, self._gate_writer):
            end.close()


class Perform:
    """The pool's ``execute``: runs a test job, as its task name says, with its args.

    With ``coroutines`` it is an ``AsyncExecute`` too: the asyncio pool awaits each job
    on its loop (``asyncio.sleep``, a gate watched without blocking), except the ones
    made with ``sync=True``, which it calls in a thread as it would a sync task.
    """

    def __init__(self, lab: Lab, coroutines: bool = False):
        self.lab = lab
        self.coroutines = coroutines

    def __call__(self, job: Job) -> Outcome:
        self.lab.announce(job)
        kind, args = job.message.task, job.message.args
        if kind == "block":
            self.lab.wait_for_release()
        elif kind == "sleep":
            time.sleep(args[0])
        return self._end(job)

    def is_async(self, job: Job) -> bool:
        return self.coroutines and not job.message.kwargs.get("sync", False)

    async def execute_async(self, job: Job) -> Outcome:
        self.lab.announce(job)
        kind, args = job.message.task, job.message.args
        if kind == "block":
            await self.lab.released()
        elif kind == "sleep":
            await asyncio.sleep(args[0])
        return self._end(job)

    @staticmethod
    def _end(job: Job) -> Outcome:
        kind, args = job.message.task, job.message.args
        if kind == "fail":
            return Outcome(states.FAILURE, job.message.id.encode(), 0.0, "ValueError: planned")
        if kind == "exit":
            os._exit(args[0])
        if kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        return Outcome(states.SUCCESS, job.message.id.encode(), 0.0, f"pid {os.getpid()}")


def make_job(job_id: str, kind: str = "ok", *args: Any, sync: bool = False) -> Job:
    message = Message(id=job_id, task=kind, args=list(args), kwargs={"sync": True} if sync else {})
    delivery = Delivery(job_id, "celery", encode(message), 0, f"token-{job_id}", 1)
    return Job(delivery, message)


class Done:
    """The pool's ``on_done``: records every call, lets the test wait for them."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.calls: list[tuple[Job, Outcome]] = []

    def __call__(self, job: Job, outcome: Outcome) -> None:
        with self._cond:
            self.calls.append((job, outcome))
            self._cond.notify_all()

    def wait(self, count: int, timeout: float = 5.0) -> list[tuple[Job, Outcome]]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.calls) >= count, timeout):
                raise AssertionError(f"{len(self.calls)} of {count} jobs reported in {timeout} s")
            return list(self.calls)

    def ids(self) -> list[str]:
        with self._cond:
            return [job.message.id for job, _ in self.calls]


class Harness:
    """A started pool, its ``on_done`` recorder, and one submitting thread for solo."""

    def __init__(self, pool: Pool, done: Done):
        self.pool = pool
        self.done = done
        self._feed: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._feeder: threading.Thread | None = None
        if isinstance(pool, SoloPool):
            # solo's submit runs the job before it returns: like the worker's fetcher,
            # one other thread submits, so the test thread stays free to look
            self._feeder = threading.Thread(target=self._feed_solo, daemon=True)
            self._feeder.start()

    def _feed_solo(self) -> None:
        while (job := self._feed.get()) is not None:
            self.pool.submit(job)

    def submit(self, *jobs: Job) -> None:
        for job in jobs:
            if self._feeder is None:
                self.pool.submit(job)
            else:
                self._feed.put(job)

    def close(self) -> None:
        if self._feeder is not None:
            self._feed.put(None)
            self._feeder.join(5.0)
        self.pool.stop()


MakePool = Callable[[int], Harness]
#: Every pool under test, by the name its tests show (see the module docstring).
POOL_IDS = [*sorted(POOLS), "asyncio-sync"]
CONCURRENT = ["threads", "prefork", "asyncio", "asyncio-sync"]


def build_pool(pool_id: str, lab: Lab, concurrency: int, on_done: Done) -> Pool:
    """The pool ``pool_id`` names, running jobs with a ``Perform`` for its flavour."""
    name, _, flavour = pool_id.partition("-")
    return POOLS[name](Perform(lab, coroutines=flavour != "sync"), concurrency, on_done)


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = Lab()
    yield lab
    lab.close()


@pytest.fixture(params=POOL_IDS)
def pool_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def make_pool(pool_name: str, lab: Lab) -> Iterator[MakePool]:
    harnesses: list[Harness] = []

    def make(concurrency: int) -> Harness:
        done = Done()
        pool = build_pool(pool_name, lab, concurrency, done)
        pool.start()
        harnesses.append(Harness(pool, done))
        return harnesses[-1]

    yield make
    lab.release()  # let any job still blocked finish before the pipe closes
    for harness in harnesses:
        harness.close()


# --- every pool --------------------------------------------------------------------------------


def test_every_submitted_job_is_reported_exactly_once_with_its_outcome(
    make_pool: MakePool,
) -> None:
    # Given a pool
    harness = make_pool(2)
    jobs = [make_job(f"j{i}", "fail" if i % 3 == 0 else "ok") for i in range(6)]

    # When jobs are submitted
    harness.submit(*jobs)

    # Then each is reported once, as the same Job, with the outcome its run returned
    calls = harness.done.wait(len(jobs))
    by_id = {job.message.id: (job, outcome) for job, outcome in calls}
    assert sorted(by_id) == sorted(j.message.id for j in jobs)
    for submitted in jobs:
        job, outcome = by_id[submitted.message.id]
        assert job is submitted
        expected = states.FAILURE if submitted.message.task == "fail" else states.SUCCESS
        assert outcome.state == expected
        assert outcome.payload == submitted.message.id.encode()
    # And no job is reported a second time
    time.sleep(0.1)
    assert len(harness.done.ids()) == len(jobs)
    assert not harness.pool.failed.is_set()


def test_running_reports_a_started_job_until_it_is_done(make_pool: MakePool, lab: Lab) -> None:
    # Given a pool running a job that blocks
    harness = make_pool(1)
    blocker = make_job("blocker", "block")
    harness.submit(blocker)
    lab.started(1)

    # Then the pool reports it as running
    assert harness.pool.running() == [blocker]

    # When it finishes, Then it is no longer running once its outcome is reported
    lab.release()
    harness.done.wait(1)
    assert harness.pool.running() == []


def test_waiting_jobs_start_in_the_order_they_were_submitted(make_pool: MakePool, lab: Lab) -> None:
    # Given a pool of one slot, busy with a job that blocks
    harness = make_pool(1)
    harness.submit(make_job("first", "block"))
    lab.started(1)

    # When more jobs are submitted, they wait
    harness.submit(*(make_job(f"next-{i}") for i in range(4)))
    assert lab.nothing_started()

    # Then, once the slot frees, they start in submission order
    lab.release()
    assert [job_id for job_id, _ in lab.started(4)] == [f"next-{i}" for i in range(4)]
    harness.done.wait(5)


@pytest.mark.parametrize("pool_name", CONCURRENT)
def test_concurrency_below_one_is_refused(pool_name: str, lab: Lab) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        build_pool(pool_name, lab, 0, Done())


@pytest.mark.parametrize("pool_name", ["solo"])
def test_solo_runs_the_job_before_submit_returns(pool_name: str, make_pool: MakePool) -> None:
    # Given the solo pool
    harness = make_pool(4)

    # When a job is submitted from this thread
    harness.pool.submit(make_job("inline"))

    # Then it has run and been reported already, so nothing is ever pending
    assert harness.done.ids() == ["inline"]
    assert harness.pool.take_pending() == []
    assert harness.pool.concurrency == 1


# --- pools with several slots --------------------------------------------------------------------


@pytest.mark.parametrize("pool_name", CONCURRENT)
def test_two_slow_jobs_run_at_the_same_time(pool_name: str, make_pool: MakePool) -> None:
    # Given a pool of two slots
    harness = make_pool(2)

    # When two jobs of 0.4 s are submitted together
    started = time.monotonic()
    harness.submit(make_job("a", "sleep", 0.4), make_job("b", "sleep", 0.4))
    harness.done.wait(2)

    # Then both are done in well under the 0.8 s they take one after the other
    assert time.monotonic() - started < 0.7


@pytest.mark.parametrize("pool_name", CONCURRENT)
def test_jobs_beyond_concurrency_wait_inside_the_pool(
    pool_name: str, make_pool: MakePool, lab: Lab
) -> None:
    # Given a pool of two slots, both busy
    harness = make_pool(2)
    busy = [make_job("busy-1", "block"), make_job("busy-2", "block")]
    harness.submit(*busy)
    assert {job_id for job_id, _ in lab.started(2)} == {"busy-1", "busy-2"}

    # When three more jobs are submitted
    waiting = [make_job(f"wait-{i}") for i in range(3)]
    harness.submit(*waiting)

    # Then none of them starts while the slots are busy
    assert lab.nothing_started()
    assert sorted(j.message.id for j in harness.pool.running()) == ["busy-1", "busy-2"]

    # And they run once the slots free up
    lab.release()
    calls = harness.done.wait(5)
    assert sorted(job.message.id for job, _ in calls) == sorted(
        [*(j.message.id for j in busy), *(j.message.id for j in waiting)]
    )


@pytest.mark.parametrize("pool_name", CONCURRENT)
def test_take_pending_returns_the_unstarted_jobs_and_they_never_run(
    pool_name: str, make_pool: MakePool, lab: Lab
) -> None:
    # Given a pool of one slot, busy, with two jobs waiting
    harness = make_pool(1)
    blocker = make_job("blocker", "block")
    harness.submit(blocker)
    lab.started(1)
    waiting = [make_job("w1"), make_job("w2")]
    harness.submit(*waiting)

    # When the pending jobs are taken back
    taken = harness.pool.take_pending()

    # Then they are the waiting jobs, in order, and nothing is left pending
    assert taken == waiting
    assert taken[0] is waiting[0]
    assert harness.pool.take_pending() == []
    assert harness.pool.running() == [blocker]

    # And after the running job finishes, they never run
    lab.release()
    harness.done.wait(1)
    assert lab.nothing_started()
    assert harness.done.ids() == ["blocker"]


# --- prefork: children that die ------------------------------------------------------------------


@pytest.mark.parametrize("pool_name", ["prefork"])
@pytest.mark.parametrize(
    ("kind", "arg", "how"),
    [
        pytest.param("exit", 3, "exit code 3", id="os-exit-3"),
        pytest.param("kill", None, f"signal {int(signal.SIGKILL)}", id="sigkill"),
    ],
)
def test_a_child_that_dies_reports_its_job_lost_and_is_replaced(
    pool_name: str, make_pool: MakePool, lab: Lab, kind: str, arg: int | None, how: str
) -> None:
    # Given a prefork pool of two children
    harness = make_pool(2)
    pool = harness.pool
    assert isinstance(pool, PreforkPool)

    # When the child running a job dies
    doomed = make_job("doomed", kind, *([] if arg is None else [arg]))
    harness.submit(doomed)
    [(_, dead_pid)] = lab.started(1)

    # Then the job is reported LOST, naming how the child ended
    [(job, outcome)] = harness.done.wait(1)
    assert job is doomed
    assert outcome.state == LOST
    assert outcome.payload is None
    assert outcome.summary == f"worker process exited ({how})"

    # And the pool is back to two live children, without the dead one
    pids = pool.pids()
    assert len(pids) == 2
    assert dead_pid not in pids
    for pid in pids:
        os.kill(pid, 0)  # raises if there is no such process
    assert not pool.failed.is_set()

    # And new jobs still run, in both children
    harness.submit(make_job("after-1", "block"), make_job("after-2", "block"))
    assert {pid for _, pid in lab.started(2)} == set(pids)
    lab.release()
    assert [o.state for _, o in harness.done.wait(3)[1:]] == [states.SUCCESS] * 2


@pytest.mark.parametrize("pool_name", ["prefork"])
def test_stop_kills_a_running_child_and_reports_nothing(
    pool_name: str, make_pool: MakePool, lab: Lab
) -> None:
    # Given a prefork child running a job that would block for seconds
    harness = make_pool(1)
    harness.submit(make_job("endless", "block"))
    [(_, pid)] = lab.started(1)

    # When the pool is stopped
    started = time.monotonic()
    harness.pool.stop()

    # Then it returns at once, the child is gone, and the abandoned job is not reported
    assert time.monotonic() - started < 1.0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert harness.done.ids() == []


# --- asyncio: coroutines on one loop, sync jobs in threads ---------------------------------------


@pytest.mark.parametrize("pool_name", ["asyncio"])
def test_a_hundred_coroutine_jobs_run_at_once_without_a_thread_each(
    pool_name: str, make_pool: MakePool, lab: Lab
) -> None:
    # Given an asyncio pool of a hundred slots
    threads_before = threading.active_count()
    harness = make_pool(100)

    # When a hundred coroutine jobs of 0.3 s are submitted together
    started = time.monotonic()
    harness.submit(*(make_job(f"c{i}", "sleep", 0.3) for i in range(100)))
    lab.started(100)
    threads_while_running = threading.active_count()
    calls = harness.done.wait(100)

    # Then they all ran at once, in far less than the 30 s they take one after the other
    assert time.monotonic() - started < 1.5
    assert {outcome.state for _, outcome in calls} == {states.SUCCESS}
    # And on the pool's one loop thread: no thread was started per job
    assert threads_while_running <= threads_before + 1


@pytest.mark.parametrize("pool_name", ["asyncio"])
def test_a_sync_job_runs_in_a_thread_and_does_not_stall_the_coroutines(
    pool_name: str, make_pool: MakePool
) -> None:
    # Given an asyncio pool of three slots, running a sync job that sleeps for 1 s
    harness = make_pool(3)
    started = time.monotonic()
    harness.submit(make_job("sync-sleeper", "sleep", 1.0, sync=True))

    # When two coroutine jobs of 0.2 s are submitted beside it
    harness.submit(make_job("c1", "sleep", 0.2), make_job("c2", "sleep", 0.2))

    # Then both are done long before the sync job
    first_two = harness.done.wait(2)
    assert time.monotonic() - started < 0.8
    assert sorted(job.message.id for job, _ in first_two[:2]) == ["c1", "c2"]
    # And the sync job still finishes, reported once
    assert [job.message.id for job, _ in harness.done.wait(3)][2:] == ["sync-sleeper"]


@pytest.mark.parametrize("pool_name", ["asyncio"])
def test_stop_cancels_running_coroutines_and_reports_nothing(
    pool_name: str, make_pool: MakePool, lab: Lab
) -> None:
    # Given an asyncio pool running a coroutine job that would wait for seconds
    harness = make_pool(1)
    harness.submit(make_job("endless", "block"))
    lab.started(1)

    # When the pool is stopped
    started = time.monotonic()
    harness.pool.stop()

    # Then it returns at once, its loop thread is gone, and the job is not reported
    assert time.monotonic() - started < 1.0
    assert "conveyor-asyncio" not in [t.name for t in threading.enumerate()]
    assert harness.done.ids() == []


def test_given_a_plain_execute_the_asyncio_pool_runs_every_job_in_its_threads(lab: Lab) -> None:
    # Given an asyncio pool handed a plain function, which it cannot await
    perform = Perform(lab, coroutines=True)
    threads: list[str] = []

    def execute(job: Job) -> Outcome:
        threads.append(threading.current_thread().name)
        return perform(job)

    assert not isinstance(execute, AsyncExecute)
    done = Done()
    pool = AsyncioPool(execute, 2, done)
    pool.start()
    try:
        # When jobs are submitted
        pool.submit(make_job("p1"))
        pool.submit(make_job("p2"))

        # Then they run, each in one of the pool's threads, and are reported
        assert sorted(job.message.id for job, _ in done.wait(2)) == ["p1", "p2"]
        assert threads
        assert all(name.startswith("conveyor-asyncio-sync") for name in threads)
    finally:
        pool.stop()
