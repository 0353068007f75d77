"""The threads pool: a fixed set of threads taking jobs from one queue."""

from __future__ import annotations

import collections
import threading

from conveyor.worker.job import Job
from conveyor.worker.pools.base import Execute, OnDone, Pool


class ThreadPool(Pool):
    """``concurrency`` daemon threads; suits I/O-bound tasks that release the GIL."""

    name = "threads"

    def __init__(self, execute: Execute, concurrency: int, on_done: OnDone):
        super().__init__(execute, concurrency, on_done)
        self._cond = threading.Condition()
        self._pending: collections.deque[Job] = collections.deque()
        self._running: dict[int, Job] = {}
        self._stopping = False
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for i in range(self.concurrency):
            thread = threading.Thread(target=self._work, name=f"conveyor-pool-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _work(self) -> None:
        ident = threading.get_ident()
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                job = self._pending.popleft()
                self._running[ident] = job
            try:
                outcome = self.execute(job)
            finally:
                with self._cond:
                    self._running.pop(ident, None)
            self.on_done(job, outcome)

    def submit(self, job: Job) -> None:
        with self._cond:
            self._pending.append(job)
            self._cond.notify()

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
