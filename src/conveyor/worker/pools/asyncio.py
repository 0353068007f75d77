"""The asyncio pool: one event loop runs up to ``concurrency`` coroutine tasks at once.

The loop has a thread of its own, so the consumer's threads never run task code.
A job whose task is a coroutine function runs as an asyncio Task on that loop; any
other job runs in one of the pool's threads, so that a ``time.sleep`` in a sync task
does not stall the coroutines. Both kinds share the ``concurrency`` slots.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, ParamSpec, Protocol, TypeVar, runtime_checkable

from conveyor.worker.job import LOST, TERMINATED, Job, Outcome, being_cancelled, crashed
from conveyor.worker.limits import HARD_GRACE, Deadlines, PoolLimits
from conveyor.worker.pools.base import Execute, OnDone, Pool, run_job, timed_out

logger = logging.getLogger("conveyor.worker")

P = ParamSpec("P")
T = TypeVar("T")


@runtime_checkable
class AsyncExecute(Protocol):
    """An ``execute`` that can also await a job on an event loop (``JobRunner`` is one).

    Given a plain ``execute``, the pool runs every job in its threads.
    """

    def __call__(self, job: Job) -> Outcome: ...

    def is_async(self, job: Job) -> bool:
        """True if the job should be awaited with ``execute_async`` rather than called."""
        ...

    async def execute_async(self, job: Job) -> Outcome: ...


class AsyncioPool(Pool):
    """One event loop for coroutine tasks, up to ``concurrency`` threads for sync ones."""

    name = "asyncio"
    #: Seconds ``stop`` gives cancelled coroutines to unwind before the loop closes.
    stop_timeout = 1.0

    def __init__(
        self,
        execute: Execute,
        concurrency: int,
        on_done: OnDone,
        limits: PoolLimits | None = None,
    ):
        super().__init__(execute, concurrency, on_done, limits)
        self._async = execute if isinstance(execute, AsyncExecute) else None
        self._lock = threading.Lock()
        self._pending: collections.deque[Job] = collections.deque()
        self._running: list[Job] = []
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._threads = _DaemonThreads(concurrency, "conveyor-asyncio-sync")
        # on the loop only: each running job's asyncio task, and those being terminated
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._terminating: set[str] = set()
        # sync tasks in the pool's threads: both limits raised in the thread (best effort);
        # ``_outlast`` abandons one still running a grace period after its hard limit
        self._deadlines = Deadlines()

    # -- life cycle ----------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="conveyor-asyncio", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            try:
                _cancel_and_wait(loop, self.stop_timeout)
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                asyncio.set_event_loop(None)
                loop.close()
                with self._lock:
                    if not self._stopping:
                        logger.critical("the asyncio pool's event loop stopped")
                        self.failed.set()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
        if self._loop is not None and self._thread is not None:
            # The loop thread cancels what still runs once run_forever returns.
            with contextlib.suppress(RuntimeError):  # already closed: the loop died
                self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(self.stop_timeout + 1.0)
        # A sync task still running keeps its (daemon) thread until it returns.
        self._threads.shutdown(wait=False, cancel_futures=True)
        self._deadlines.stop()

    # -- jobs ------------------------------------------------------------------------

    def terminate(self, job: Job) -> bool:
        """Cancel a running ``async def`` job (a sync one cannot be stopped: False)."""
        if self._async is None or not self._async.is_async(job):
            return False
        with self._lock:
            if job not in self._running or self._stopping or self._loop is None:
                return False
            loop = self._loop

        def cancel() -> None:
            task = self._tasks.get(job.delivery.token)
            if task is not None and not task.done():
                self._terminating.add(job.delivery.token)
                task.cancel()

        loop.call_soon_threadsafe(cancel)
        return True

    def resize(self, concurrency: int) -> int:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        with self._lock:
            self.concurrency = concurrency
            self._threads.max_threads = concurrency
            if not self._stopping and self._loop is not None:
                self._loop.call_soon_threadsafe(self._drain)
        return concurrency

    def submit(self, job: Job) -> None:
        with self._lock:
            self._pending.append(job)
            if self._stopping or self._loop is None:
                return
            self._loop.call_soon_threadsafe(self._drain)

    def take_pending(self) -> list[Job]:
        with self._lock:
            jobs = list(self._pending)
            self._pending.clear()
            return jobs

    def running(self) -> list[Job]:
        with self._lock:
            return list(self._running)

    def _drain(self) -> None:
        # on the loop: start waiting jobs, in order, while there are free slots
        while True:
            with self._lock:
                if self._stopping or not self._pending or len(self._running) >= self.concurrency:
                    return
                job = self._pending.popleft()
                self._running.append(job)
            self.on_start(job)
            task = asyncio.get_running_loop().create_task(self._run(job), name=job.label)
            self._tasks[job.delivery.token] = task

    async def _run(self, job: Job) -> None:
        try:
            if self._async is not None and self._async.is_async(job):
                outcome = await self._run_coroutine(self._async, job)
            else:
                loop = asyncio.get_running_loop()
                future = loop.run_in_executor(self._threads, self._run_sync, job)
                outcome = await (future if job.time_limit is None else self._outlast(future, job))
        except asyncio.CancelledError as exc:
            current = asyncio.current_task()
            if current is None or not being_cancelled():
                outcome = crashed(job, exc)  # the job's own, not a cancellation of it
            elif job.delivery.token not in self._terminating or self._stopping:
                raise
            else:
                current.uncancel()
                logger.warning("%s revoked: cancelled", job.label)
                outcome = Outcome(TERMINATED, summary="revoked with terminate=True; cancelled")
        except Exception as exc:
            # execute reports task errors in its outcome: this is the pool's own failure
            logger.exception("the asyncio pool could not run %s", job.label)
            outcome = Outcome(LOST, summary=f"the pool could not run it: {exc!r}")
        except BaseException as exc:  # never out of the loop: asyncio re-raises SystemExit
            outcome = crashed(job, exc)
        finally:
            self._tasks.pop(job.delivery.token, None)
            self._terminating.discard(job.delivery.token)
        with self._lock:
            self._running.remove(job)
            if self._stopping:
                return
        self.on_done(job, outcome)
        self._drain()

    async def _run_coroutine(self, runner: AsyncExecute, job: Job) -> Outcome:
        """Await the job's coroutine; at its hard time limit, cancel it and free the slot
        at once (a coroutine that ignores the cancellation runs on, abandoned)."""
        if job.time_limit is None:
            return await _contained(runner, job)
        inner = asyncio.ensure_future(_contained(runner, job))
        try:
            done, _ = await asyncio.wait({inner}, timeout=job.time_limit)
        except asyncio.CancelledError:
            inner.cancel()  # the pool is stopping
            raise
        if done:
            return inner.result()
        inner.cancel()
        inner.add_done_callback(_ignore_outcome)
        logger.error("%s reached its hard time limit (%s s): cancelled", job.label, job.time_limit)
        return timed_out(job, "cancelled")

    async def _outlast(self, future: asyncio.Future[Outcome], job: Job) -> Outcome:
        """Wait for a sync job with a hard limit: TimeLimitExceeded is raised in its thread
        at the limit; if it has not ended ``HARD_GRACE`` later, it is abandoned and the
        executor may start a thread in its place."""
        assert job.time_limit is not None
        done, _ = await asyncio.wait({future}, timeout=job.time_limit + HARD_GRACE)
        if done:
            return future.result()
        self._threads.max_threads += 1
        future.add_done_callback(_ignore_outcome)
        logger.error(
            "%s still running after its hard time limit (%s s): thread abandoned and replaced",
            job.label,
            job.time_limit,
        )
        return timed_out(job, "the thread did not stop; abandoned")

    def _run_sync(self, job: Job) -> Outcome:
        with self._deadlines.watch(job):
            return run_job(self.execute, job)


async def _contained(runner: AsyncExecute, job: Job) -> Outcome:
    """``runner.execute_async(job)``; anything it raises is the job's FAILURE, except
    the cancellation of this very job (the pool stopping, a terminate, the hard limit).

    A SystemExit or KeyboardInterrupt must never leave an asyncio task: the event loop
    re-raises them, and its thread, with every job on it, would end.
    """
    try:
        return await runner.execute_async(job)
    except asyncio.CancelledError as exc:
        if being_cancelled():
            raise
        return crashed(job, exc)
    except BaseException as exc:
        return crashed(job, exc)


def _ignore_outcome(task: asyncio.Future[Outcome]) -> None:
    # an abandoned coroutine's outcome: its job was settled at the hard limit
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as never retrieved


def _cancel_and_wait(loop: asyncio.AbstractEventLoop, timeout: float) -> None:
    """Cancel every task of ``loop`` (not running) and let them unwind for ``timeout``."""
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.wait(tasks, timeout=timeout))


class _DaemonThreads(concurrent.futures.Executor):
    """Up to ``max_threads`` daemon threads, started as work needs them.

    Not a ``ThreadPoolExecutor``: its threads are joined at interpreter exit, so a
    sync task still running would hold a stopped worker open. The pool abandons
    such a task instead, as the threads pool does.
    """

    def __init__(self, max_threads: int, name: str):
        #: Threads to start at most; lowering it stops no thread already started.
        self.max_threads = max_threads
        self._name = name
        self._work: queue.SimpleQueue[_WorkItem | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._shutdown = False

    def submit(
        self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot run more work after shutdown")
            self._work.put(_WorkItem(future, lambda: fn(*args, **kwargs)))
            if not self._idle.acquire(blocking=False) and len(self._threads) < self.max_threads:
                thread = threading.Thread(
                    target=self._serve, name=f"{self._name}-{len(self._threads)}", daemon=True
                )
                thread.start()
                self._threads.append(thread)
        return future

    def _serve(self) -> None:
        while (item := self._work.get()) is not None:
            item.run()
            del item  # drop the finished work before waiting for more
            self._idle.release()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            threads = list(self._threads)
        if cancel_futures:
            while True:
                try:
                    item = self._work.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    item.future.cancel()
        for _ in threads:
            self._work.put(None)
        if wait:
            for thread in threads:
                thread.join()


class _WorkItem:
    __slots__ = ("call", "future")

    def __init__(self, future: concurrent.futures.Future[Any], call: Callable[[], Any]):
        self.future = future
        self.call = call

    def run(self) -> None:
        if not self.future.set_running_or_notify_cancel():
            return
        try:
            result = self.call()
        except BaseException as exc:
            self.future.set_exception(exc)
        else:
            self.future.set_result(result)
