"""THE pool contract: every pool in ``POOLS`` runs jobs and reports each outcome once.

The jobs are real ``Job``s (a ``Delivery`` of an encoded ``Message``); what a job does is
chosen by its task name and run by ``Perform``, the ``execute`` handed to the pool. Jobs
announce that they started through a pipe and wait on a gate, both made before the
prefork pool forks, so the test steers them in any process without sleeping.

The asyncio pool runs twice: as ``asyncio`` its jobs are coroutines awaited on its loop,
as ``asyncio-sync`` the same jobs are plain functions, which it runs in its threads.

Time limits and recycling: ``Perform`` runs a job's work inside ``limits.interruptible(job)``
and turns a limit's exception into a FAILURE, as the worker's ``execute`` does; its
coroutines honour the soft limit with ``asyncio.timeout``, as ``execute_async`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import queue
import select
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any, Protocol

import orjson
import pytest

from conveyor import states
from conveyor.brokers.base import Delivery
from conveyor.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from conveyor.message import Message, encode
from conveyor.worker.job import LOST, TIMED_OUT, Job, Outcome
from conveyor.worker.limits import HARD_GRACE, PoolLimits, interruptible, rss_kib
from conveyor.worker.pools import POOLS, AsyncExecute, AsyncioPool, Pool, PreforkPool, SoloPool

_fork = multiprocessing.get_context("fork")

#: What "hog" jobs keep, so that their process stays big (only ever a prefork child).
_HOARD: list[bytes] = []


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

    def nap(self, seconds: float) -> None:
        """Block in one C call (``select``) for ``seconds``: an exception raised into the
        thread (``limits.interrupt``) lands only when it returns. ``release`` ends it early,
        so that a thread abandoned by a test does not outlive the test."""
        with contextlib.suppress(OSError, ValueError):
            select.select([self._gate_reader], [], [], seconds)

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

    "raise" raises the exception ``RAISED`` names out of ``execute`` itself, as a broken
    ``execute`` would: the pool must contain it. Kinds that take time: "block" (until
    the lab's gate opens), "sleep" (seconds), "spin" (seconds, in steps of 10 ms: a time
    limit's exception lands between them), "nap" (seconds, in one blocking call: a
    coroutine sleeps instead) and "hog" (keeps that many MiB). A time limit reached in a
    job makes it a FAILURE whose summary names the limit's exception, as in the worker's
    ``execute``.
    """

    def __init__(self, lab: Lab, coroutines: bool = False):
        self.lab = lab
        self.coroutines = coroutines
        #: The thread each job ran in, by job id (for the jobs run in this process).
        self.threads: dict[str, threading.Thread] = {}

    def __call__(self, job: Job) -> Outcome:
        self.lab.announce(job)
        self.threads[job.message.id] = threading.current_thread()
        kind, args = job.message.task, job.message.args
        try:
            # as in execute: time limits raise their exceptions only inside this block
            with interruptible(job):
                if kind == "block":
                    self.lab.wait_for_release()
                elif kind == "sleep":
                    time.sleep(args[0])
                elif kind == "spin":
                    deadline = time.monotonic() + args[0]
                    while time.monotonic() < deadline:
                        time.sleep(0.01)
                elif kind == "nap":
                    self.lab.nap(args[0])
                elif kind == "hog":
                    _HOARD.append(b"\x01" * (args[0] << 20))  # written, so resident
        except (SoftTimeLimitExceeded, TimeLimitExceeded) as exc:
            return _limit_reached(job, exc)
        return self._end(job)

    def is_async(self, job: Job) -> bool:
        return self.coroutines and not job.message.kwargs.get("sync", False)

    async def execute_async(self, job: Job) -> Outcome:
        self.lab.announce(job)
        kind, args = job.message.task, job.message.args
        # as in execute_async: the soft limit cancels the coroutine's work
        soft = asyncio.timeout(job.soft_time_limit)
        try:
            async with soft:
                if kind == "block":
                    await self.lab.released()
                elif kind in ("sleep", "nap"):
                    await asyncio.sleep(args[0])
                elif kind == "spin":
                    deadline = time.monotonic() + args[0]
                    while time.monotonic() < deadline:
                        await asyncio.sleep(0.01)
        except TimeoutError:
            if not soft.expired():
                raise
            return _limit_reached(job, SoftTimeLimitExceeded("soft time limit exceeded"))
        return self._end(job)

    @staticmethod
    def _end(job: Job) -> Outcome:
        kind, args = job.message.task, job.message.args
        if kind == "raise":
            raise RAISED[args[0]]()
        if kind == "fail":
            return Outcome(states.FAILURE, job.message.id.encode(), 0.0, "ValueError: planned")
        if kind == "exit":
            os._exit(args[0])
        if kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if kind == "rss":
            return Outcome(states.SUCCESS, job.message.id.encode(), 0.0, str(rss_kib()))
        return Outcome(states.SUCCESS, job.message.id.encode(), 0.0, f"pid {os.getpid()}")


#: What "raise" jobs raise out of ``execute`` (instead of reporting an outcome), by name.
RAISED: dict[str, type[BaseException]] = {
    "SystemExit": SystemExit,
    "KeyboardInterrupt": KeyboardInterrupt,
    "GeneratorExit": GeneratorExit,
    "CancelledError": asyncio.CancelledError,
    "RuntimeError": RuntimeError,
}


def _limit_reached(job: Job, exc: BaseException) -> Outcome:
    summary = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return Outcome(states.FAILURE, job.message.id.encode(), 0.0, summary)


def make_job(
    job_id: str,
    kind: str = "ok",
    *args: Any,
    sync: bool = False,
    soft_time_limit: float | None = None,
    time_limit: float | None = None,
) -> Job:
    message = Message(id=job_id, task=kind, args=list(args), kwargs={"sync": True} if sync else {})
    delivery = Delivery(job_id, "celery", encode(message), 0, f"token-{job_id}", 1)
    return Job(delivery, message, soft_time_limit=soft_time_limit, time_limit=time_limit)


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


class MakePool(Protocol):
    def __call__(self, concurrency: int, limits: PoolLimits | None = None) -> Harness: ...


#: Every pool under test, by the name its tests show (see the module docstring).
POOL_IDS = [*sorted(POOLS), "asyncio-sync"]
CONCURRENT = ["threads", "prefork", "asyncio", "asyncio-sync"]


def build_pool(
    pool_id: str, lab: Lab, concurrency: int, on_done: Done, limits: PoolLimits | None = None
) -> Pool:
    """The pool ``pool_id`` names, running jobs with a ``Perform`` for its flavour."""
    name, _, flavour = pool_id.partition("-")
    return POOLS[name](Perform(lab, coroutines=flavour != "sync"), concurrency, on_done, limits)


def perform_of(harness: Harness) -> Perform:
    perform = harness.pool.execute
    assert isinstance(perform, Perform)
    return perform


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

    def make(concurrency: int, limits: PoolLimits | None = None) -> Harness:
        done = Done()
        pool = build_pool(pool_name, lab, concurrency, done, limits)
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


@pytest.mark.parametrize("exception", sorted(RAISED))
def test_an_execute_that_raises_anything_reports_a_failure_and_frees_the_slot(
    make_pool: MakePool, lab: Lab, exception: str
) -> None:
    # Given a pool of one slot
    harness = make_pool(1)

    # When a job's execute raises instead of reporting an outcome, even an exception
    # that is not an Exception (SystemExit, KeyboardInterrupt, a CancelledError that
    # no one asked for...)
    harness.submit(make_job("raiser", "raise", exception))
    [(_, pid)] = lab.started(1)

    # Then the job is reported once, a FAILURE naming the exception, with its traceback
    [(job, outcome)] = harness.done.wait(1)
    assert job.message.id == "raiser"
    assert outcome.state == states.FAILURE
    assert outcome.summary.split(":")[0] == exception
    assert outcome.payload is not None
    stored = orjson.loads(outcome.payload)
    assert stored["exc_type"].rpartition(".")[2] == exception
    assert exception in stored["traceback"]

    # And the slot is free, in the same process: the next job runs to success
    harness.submit(make_job("next"))
    assert lab.started(1) == [("next", pid)]
    assert harness.done.wait(2)[1][1].state == states.SUCCESS
    assert harness.pool.running() == []
    assert not harness.pool.failed.is_set()


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


@pytest.mark.parametrize("pool_name", ["solo"])
def test_solo_runs_one_job_at_a_time_even_when_two_threads_submit(
    pool_name: str, make_pool: MakePool, lab: Lab
) -> None:
    # Given the solo pool running a job that blocks, submitted from one thread
    harness = make_pool(1)
    first = threading.Thread(target=harness.pool.submit, args=(make_job("first", "block"),))
    first.start()
    lab.started(1)

    # When another thread submits a job meanwhile (a second fetch loop would)
    second = threading.Thread(target=harness.pool.submit, args=(make_job("second"),))
    second.start()

    # Then it does not start while the first runs, and runs once the first is done
    assert lab.nothing_started(0.5)
    assert [job.message.id for job in harness.pool.running()] == ["first"]
    lab.release()
    assert [job_id for job_id, _ in lab.started(1)] == ["second"]
    first.join(5.0)
    second.join(5.0)
    assert harness.done.ids() == ["first", "second"]


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


# --- time limits ---------------------------------------------------------------------------------


def _limit_watchers() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "conveyor-time-limits"}


def test_a_job_past_its_soft_time_limit_fails_with_soft_time_limit_exceeded(
    make_pool: MakePool, lab: Lab
) -> None:
    # Given a pool of one slot
    harness = make_pool(1)

    # When a job that would loop for 5 s in short steps has a soft time limit of 0.3 s
    started = time.monotonic()
    harness.submit(make_job("looper", "spin", 5.0, soft_time_limit=0.3))
    [(_, looper_pid)] = lab.started(1)

    # Then it fails naming SoftTimeLimitExceeded, at the limit, long before its 5 s are up
    [(job, outcome)] = harness.done.wait(1, timeout=3.0)
    elapsed = time.monotonic() - started
    assert job.message.id == "looper"
    assert outcome.state == states.FAILURE
    assert outcome.summary.startswith("SoftTimeLimitExceeded")
    assert 0.3 <= elapsed < 2.0

    # And the same slot (the same process) then runs the next job to success
    harness.submit(make_job("next"))
    assert lab.started(1) == [("next", looper_pid)]
    assert harness.done.wait(2)[1][1].state == states.SUCCESS


def test_jobs_without_time_limits_run_to_the_end_and_start_no_limit_watcher(
    make_pool: MakePool,
) -> None:
    # Given a pool, and the time-limit watcher threads alive before it
    watchers_before = _limit_watchers()
    harness = make_pool(2)

    # When jobs without time limits run, one of them looping for 0.4 s
    harness.submit(make_job("looper", "spin", 0.4), make_job("ok-1"), make_job("ok-2"))

    # Then all of them run to success
    calls = harness.done.wait(3)
    assert sorted(job.message.id for job, _ in calls) == ["looper", "ok-1", "ok-2"]
    assert {outcome.state for _, outcome in calls} == {states.SUCCESS}
    # And no thread was started to watch limits they do not have
    assert _limit_watchers() <= watchers_before


@pytest.mark.parametrize("pool_name", ["prefork"])
def test_prefork_kills_a_child_past_its_hard_time_limit_and_replaces_it(
    pool_name: str, make_pool: MakePool, lab: Lab
) -> None:
    # Given a prefork pool of two children
    harness = make_pool(2)
    pool = harness.pool
    assert isinstance(pool, PreforkPool)
    pids_before = pool.pids()

    # When a job stuck in one 30 s blocking call has a hard time limit of 0.5 s
    started = time.monotonic()
    harness.submit(make_job("stuck", "nap", 30.0, time_limit=0.5))
    [(_, stuck_pid)] = lab.started(1)

    # Then it is reported TIMED_OUT, once, soon after the limit
    [(job, outcome)] = harness.done.wait(1, timeout=3.0)
    elapsed = time.monotonic() - started
    assert job.message.id == "stuck"
    assert outcome.state == TIMED_OUT
    assert outcome.summary.startswith("hard time limit (0.5 s) exceeded")
    assert 0.5 <= elapsed < 2.0

    # And its child is gone, replaced: two live children, the other one untouched
    with pytest.raises(ProcessLookupError):
        os.kill(stuck_pid, 0)
    pids = pool.pids()
    assert len(pids) == 2
    assert stuck_pid not in pids
    assert set(pids_before) - {stuck_pid} < set(pids)
    for pid in pids:
        os.kill(pid, 0)
    assert not pool.failed.is_set()

    # And new jobs run, in both children
    harness.submit(make_job("after-1", "block"), make_job("after-2", "block"))
    assert {pid for _, pid in lab.started(2)} == set(pids)
    lab.release()
    assert [o.state for _, o in harness.done.wait(3)[1:]] == [states.SUCCESS] * 2
    time.sleep(0.1)
    assert sorted(harness.done.ids()) == ["after-1", "after-2", "stuck"]


@pytest.mark.parametrize("pool_name", ["threads", "asyncio-sync"])
def test_threads_abandons_a_thread_stuck_past_its_hard_time_limit_and_starts_another(
    pool_name: str, make_pool: MakePool, lab: Lab
) -> None:
    # Given a pool of one slot running sync jobs in threads
    harness = make_pool(1)
    perform = perform_of(harness)

    # When its job is stuck in one long blocking call, where no exception can land,
    # with a hard time limit of 0.3 s
    started = time.monotonic()
    harness.submit(make_job("stuck", "nap", 30.0, time_limit=0.3))
    lab.started(1)

    # Then, a grace period after the limit, it is reported TIMED_OUT: its thread abandoned
    [(job, outcome)] = harness.done.wait(1, timeout=0.3 + HARD_GRACE + 2.0)
    elapsed = time.monotonic() - started
    assert job.message.id == "stuck"
    assert outcome.state == TIMED_OUT
    assert outcome.summary.startswith("hard time limit (0.3 s) exceeded")
    assert "abandoned" in outcome.summary
    assert 0.3 + HARD_GRACE <= elapsed < 0.3 + HARD_GRACE + 1.0
    assert harness.pool.running() == []

    # And another thread runs the next job while the abandoned one is still stuck
    stuck = perform.threads["stuck"]
    harness.submit(make_job("next"))
    assert harness.done.wait(2)[1][1].state == states.SUCCESS
    assert perform.threads["next"] is not stuck
    assert stuck.is_alive()

    # And when the abandoned job does return, its outcome is dropped: reported once
    lab.release()
    if pool_name == "threads":  # (asyncio's executor keeps the thread for later work)
        stuck.join(2.0)
        assert not stuck.is_alive()
    time.sleep(0.2)
    assert harness.done.ids() == ["stuck", "next"]


@pytest.mark.parametrize("pool_name", ["solo", "threads", "asyncio-sync"])
def test_a_hard_time_limit_lands_in_a_thread_running_python_and_fails_the_job(
    pool_name: str, make_pool: MakePool, lab: Lab
) -> None:
    # Given a pool of one slot that runs jobs in a thread
    harness = make_pool(1)
    perform = perform_of(harness)

    # When a job that would loop for 5 s in short steps has a hard time limit of 0.3 s
    started = time.monotonic()
    harness.submit(make_job("looper", "spin", 5.0, time_limit=0.3))

    # Then TimeLimitExceeded lands in it: it fails naming it, before any grace period ends
    [(job, outcome)] = harness.done.wait(1, timeout=0.3 + HARD_GRACE)
    assert job.message.id == "looper"
    assert outcome.state == states.FAILURE
    assert outcome.summary.startswith("TimeLimitExceeded")
    assert 0.3 <= time.monotonic() - started < 0.3 + HARD_GRACE

    # And its thread is not abandoned: the next job runs in it
    harness.submit(make_job("next"))
    assert harness.done.wait(2)[1][1].state == states.SUCCESS
    assert perform.threads["next"] is perform.threads["looper"]
    # And nothing more is reported once the grace period is over
    time.sleep(max(0.0, started + 0.3 + HARD_GRACE + 0.2 - time.monotonic()))
    assert harness.done.ids() == ["looper", "next"]


@pytest.mark.parametrize("pool_name", ["asyncio"])
def test_asyncio_cancels_a_coroutine_past_its_hard_time_limit_and_frees_its_slot(
    pool_name: str, make_pool: MakePool, lab: Lab
) -> None:
    # Given an asyncio pool of one slot
    harness = make_pool(1)

    # When a coroutine job that awaits a 30 s sleep has a hard time limit of 0.3 s
    started = time.monotonic()
    harness.submit(make_job("stuck", "nap", 30.0, time_limit=0.3))

    # Then it is reported TIMED_OUT soon after the limit
    [(job, outcome)] = harness.done.wait(1, timeout=2.0)
    elapsed = time.monotonic() - started
    assert job.message.id == "stuck"
    assert outcome.state == TIMED_OUT
    assert outcome.summary.startswith("hard time limit (0.3 s) exceeded")
    assert 0.3 <= elapsed < 1.0

    # And its slot is free: the next job runs to success, and nothing else is reported
    harness.submit(make_job("next"))
    assert harness.done.wait(2)[1][1].state == states.SUCCESS
    assert harness.pool.running() == []
    time.sleep(0.1)
    assert harness.done.ids() == ["stuck", "next"]


# --- prefork: recycling children -----------------------------------------------------------------


@pytest.mark.parametrize("pool_name", ["prefork"])
def test_prefork_replaces_a_child_after_max_tasks_per_child_jobs(
    pool_name: str, make_pool: MakePool, lab: Lab
) -> None:
    # Given a prefork pool of one child, each child retiring after two jobs
    harness = make_pool(1, PoolLimits(max_tasks_per_child=2))
    pool = harness.pool
    assert isinstance(pool, PreforkPool)

    # When five jobs are submitted together
    jobs = [make_job(f"r{i}") for i in range(5)]
    harness.submit(*jobs)

    # Then they start in order, in a new child every two jobs
    started = lab.started(5)
    assert [job_id for job_id, _ in started] == [job.message.id for job in jobs]
    pids = [pid for _, pid in started]
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]
    assert len(set(pids)) == 3

    # And each is reported exactly once, a success: none is lost with a retiring child
    calls = harness.done.wait(5)
    assert {outcome.state for _, outcome in calls} == {states.SUCCESS}
    time.sleep(0.1)
    assert sorted(harness.done.ids()) == [job.message.id for job in jobs]
    # And the pool is left with one live child: the third
    assert pool.pids() == [pids[4]]
    assert not pool.failed.is_set()


@pytest.mark.parametrize("pool_name", ["prefork"])
def test_prefork_replaces_a_child_whose_memory_grew_past_max_memory_per_child(
    pool_name: str, make_pool: MakePool, lab: Lab
) -> None:
    # Given the memory a child uses after a light job (measured in a first pool)
    probe = make_pool(1)
    probe.submit(make_job("probe", "rss"))
    lab.started(1)
    [(_, outcome)] = probe.done.wait(1)
    baseline = int(outcome.summary)
    # And a prefork pool of one child, allowed 20 MiB more than that
    harness = make_pool(1, PoolLimits(max_memory_per_child=baseline + 20 * 1024))

    # When a job that keeps 50 MiB runs between two light jobs
    harness.submit(make_job("light"), make_job("hog", "hog", 50), make_job("after"))

    # Then the light job leaves its child in place, but the hog's child is replaced
    # after it: the next job runs in a new child
    started = lab.started(3)
    assert [job_id for job_id, _ in started] == ["light", "hog", "after"]
    [light, hog, after] = [pid for _, pid in started]
    assert light == hog != after
    calls = harness.done.wait(3)
    assert {outcome.state for _, outcome in calls} == {states.SUCCESS}
    assert isinstance(harness.pool, PreforkPool)
    assert harness.pool.pids() == [after]


@pytest.mark.parametrize("pool_name", ["prefork"])
def test_prefork_keeps_a_child_that_starts_above_max_memory_per_child(
    pool_name: str, make_pool: MakePool, lab: Lab
) -> None:
    # Given a prefork pool whose memory limit (1 KiB) is below what any fresh child uses
    harness = make_pool(1, PoolLimits(max_memory_per_child=1))

    # When three jobs run
    harness.submit(*(make_job(f"m{i}") for i in range(3)))

    # Then they all run in the same child: replacing it after each job would only
    # start another child just as big
    pids = {pid for _, pid in lab.started(3)}
    assert len(pids) == 1
    calls = harness.done.wait(3)
    assert {outcome.state for _, outcome in calls} == {states.SUCCESS}
    assert isinstance(harness.pool, PreforkPool)
    assert harness.pool.pids() == list(pids)


class AskingDone(Done):
    """Also asks the pool, inside each ``on_done``, whether it may settle there."""

    def __init__(self) -> None:
        super().__init__()
        self.pool: Pool | None = None
        self.answers: list[bool] = []

    def __call__(self, job: Job, outcome: Outcome) -> None:
        assert self.pool is not None
        self.answers.append(self.pool.may_settle_inline())
        super().__call__(job, outcome)


def test_only_a_threads_pool_thread_with_nothing_waiting_may_settle_inline(
    pool_name: str, lab: Lab
) -> None:
    # Given a pool of one whose on_done asks it
    done = AskingDone()
    pool = done.pool = build_pool(pool_name, lab, 1, done)
    pool.start()
    try:
        # When one job runs alone (solo runs it inside submit)
        pool.submit(make_job("j1", "ok"))
        done.wait(1)

        # Then only a threads-pool thread may settle it in place; never the caller
        assert done.answers == [pool_name == "threads"]
        assert pool.may_settle_inline() is False
    finally:
        lab.release()
        pool.stop()
