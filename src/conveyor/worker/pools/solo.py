"""The solo pool: runs each job in the consumer's own thread, one at a time."""

from __future__ import annotations

import threading

from conveyor.worker.job import Job
from conveyor.worker.pools.base import Execute, OnDone, Pool


class SoloPool(Pool):
    """No extra threads or processes; ``submit`` returns when the job is done.

    The simplest pool to debug with: a breakpoint or profiler in a task sees
    the worker's own thread.
    """

    name = "solo"

    def __init__(self, execute: Execute, concurrency: int, on_done: OnDone):
        super().__init__(execute, 1, on_done)
        self._lock = threading.Lock()
        self._current: Job | None = None

    def start(self) -> None:
        """Nothing to create."""

    def submit(self, job: Job) -> None:
        with self._lock:
            self._current = job
        try:
            outcome = self.execute(job)
        finally:
            with self._lock:
                self._current = None
        self.on_done(job, outcome)

    def take_pending(self) -> list[Job]:
        return []

    def running(self) -> list[Job]:
        with self._lock:
            return [] if self._current is None else [self._current]

    def stop(self) -> None:
        """A job still running ends with the process."""
