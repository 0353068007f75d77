"""The solo pool: runs each job in the consumer's own thread, one at a time."""

from __future__ import annotations

import threading

from conveyor.exceptions import TaskRevokedError
from conveyor.worker.job import Job
from conveyor.worker.limits import Deadlines, PoolLimits, interrupt
from conveyor.worker.pools.base import Execute, OnDone, Pool, run_job


class SoloPool(Pool):
    """No extra threads or processes; ``submit`` returns when the job is done.

    The simplest pool to debug with: a breakpoint or profiler in a task sees
    the worker's own thread. Both time limits raise their exception in that
    thread (best effort); nothing can take the thread back from a task that
    ignores them. One job at a time, whatever the threads that submit: a second
    caller waits for the job running to end.
    """

    name = "solo"
    runs_inline = True

    def __init__(
        self,
        execute: Execute,
        concurrency: int,
        on_done: OnDone,
        limits: PoolLimits | None = None,
    ):
        super().__init__(execute, 1, on_done, limits)
        self._lock = threading.Lock()
        self._one = threading.Lock()  # held while a job runs: never two at once
        self._current: Job | None = None
        self._ident = 0
        self._deadlines = Deadlines()

    def start(self) -> None:
        """Nothing to create."""

    def submit(self, job: Job) -> None:
        with self._one:
            with self._lock:
                self._current = job
                self._ident = threading.get_ident()
            self.on_start(job)
            try:
                with self._deadlines.watch(job):
                    outcome = run_job(self.execute, job)
            finally:
                with self._lock:
                    self._current = None
            self.on_done(job, outcome)

    def terminate(self, job: Job) -> bool:
        """Raise TaskRevokedError in the job's thread (best effort, as a soft limit)."""
        with self._lock:
            running = self._current is job
        return running and interrupt(self._ident, TaskRevokedError, job)

    def take_pending(self) -> list[Job]:
        return []

    def running(self) -> list[Job]:
        with self._lock:
            return [] if self._current is None else [self._current]

    def stop(self) -> None:
        """A job still running ends with the process."""
        self._deadlines.stop()
