"""The threads pool: a fixed set of threads taking jobs from one queue."""

from __future__ import annotations

import collections
import logging
import threading

from conveyor.exceptions import TaskRevokedError
from conveyor.worker.job import Job
from conveyor.worker.limits import Deadlines, PoolLimits, interrupt
from conveyor.worker.pools.base import Execute, OnDone, Pool, run_job, timed_out

logger = logging.getLogger("conveyor.worker")


class ThreadPool(Pool):
    """``concurrency`` daemon threads; suits I/O-bound tasks that release the GIL.

    Time limits: see ``conveyor.worker.limits``. A task still running a second after
    its hard limit is abandoned: its outcome is recorded, another thread takes its
    slot, and the runaway thread ends unreported whenever the task returns.
    """

    name = "threads"

    def __init__(
        self,
        execute: Execute,
        concurrency: int,
        on_done: OnDone,
        limits: PoolLimits | None = None,
    ):
        super().__init__(execute, concurrency, on_done, limits)
        self._cond = threading.Condition()
        self._pending: collections.deque[Job] = collections.deque()
        self._running: dict[int, Job] = {}
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._live = 0  # threads taking jobs (not abandoned, not told to leave)
        self._deadlines = Deadlines(on_overrun=self._abandon)
        self._local = threading.local()  # .worker: this thread is one of ours

    def start(self) -> None:
        with self._cond:
            for _ in range(self.concurrency):
                self._add_thread()

    def _add_thread(self) -> None:
        # caller holds the lock
        self._live += 1
        thread = threading.Thread(
            target=self._work, name=f"conveyor-pool-{len(self._threads)}", daemon=True
        )
        thread.start()
        self._threads.append(thread)

    def _work(self) -> None:
        ident = threading.get_ident()
        self._local.worker = True
        while True:
            with self._cond:
                while not self._pending and not self._stopping and self._live <= self.concurrency:
                    self._cond.wait()
                if self._stopping:
                    return
                if self._live > self.concurrency:  # the pool shrank: this thread leaves
                    self._live -= 1
                    return
                job = self._pending.popleft()
                self._running[ident] = job
            self.on_start(job)
            try:
                with self._deadlines.watch(job):
                    outcome = run_job(self.execute, job)
            finally:
                with self._cond:
                    abandoned = self._running.get(ident) is not job
                    if not abandoned:
                        del self._running[ident]
            if abandoned:
                logger.warning("%s ended after it was abandoned: outcome dropped", job.label)
                return
            try:
                self.on_done(job, outcome)
            except Exception:  # the worker's failure: this thread still takes jobs
                logger.exception("reporting the outcome of %s failed", job.label)

    def _abandon(self, job: Job, ident: int) -> None:
        # the time-limit watcher: the job is still running a grace period after its hard limit
        with self._cond:
            if self._running.get(ident) is not job or self._stopping:
                return
            del self._running[ident]
            self._live -= 1  # the runaway thread ends unreported whenever it returns
            self._add_thread()
        logger.error(
            "%s still running after its hard time limit (%s s): thread abandoned and replaced",
            job.label,
            job.time_limit,
        )
        self.on_done(job, timed_out(job, "the thread did not stop; abandoned"))

    def resize(self, concurrency: int) -> int:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        with self._cond:
            self.concurrency = concurrency
            while self._live < concurrency:
                self._add_thread()
            self._cond.notify_all()  # idle threads beyond the new size leave
            return concurrency

    def terminate(self, job: Job) -> bool:
        """Raise TaskRevokedError in the job's thread (best effort, as a soft limit)."""
        with self._cond:
            idents = [i for i, j in self._running.items() if j is job]
        return bool(idents) and interrupt(idents[0], TaskRevokedError, job)

    def submit(self, job: Job) -> None:
        with self._cond:
            self._pending.append(job)
            self._cond.notify()

    def may_settle_inline(self) -> bool:
        return getattr(self._local, "worker", False) and not self._pending

    def take_pending(self) -> list[Job]:
        with self._cond:
            jobs = list(self._pending)
            self._pending.clear()
            return jobs

    def running(self) -> list[Job]:
        with self._cond:
            return list(self._running.values())

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._deadlines.stop()
