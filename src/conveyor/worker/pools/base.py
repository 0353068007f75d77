"""The pool interface: run jobs, report outcomes, give back what has not started."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable

from conveyor.worker.job import Job, Outcome

Execute = Callable[[Job], Outcome]
OnDone = Callable[[Job, Outcome], None]


class Pool(ABC):
    """Runs jobs with bounded concurrency; the consumer does not care how.

    ``on_done(job, outcome)`` is called exactly once per submitted job that
    started, from any thread; a job whose process died reports state LOST.
    """

    name: str

    def __init__(self, execute: Execute, concurrency: int, on_done: OnDone):
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.execute = execute
        self.concurrency = concurrency
        self.on_done = on_done
        #: Set when the pool can no longer run jobs; the worker then exits non-zero.
        self.failed = threading.Event()

    @abstractmethod
    def start(self) -> None:
        """Create the threads or processes. Called once, before any submit."""

    @abstractmethod
    def submit(self, job: Job) -> None:
        """Run ``job`` as soon as a slot is free (jobs wait in order inside the pool)."""

    @abstractmethod
    def take_pending(self) -> list[Job]:
        """Remove and return the submitted jobs that have not started."""

    @abstractmethod
    def running(self) -> list[Job]:
        """The jobs that have started and not reported back."""

    @abstractmethod
    def stop(self) -> None:
        """End the pool now; jobs still running are abandoned (their processes killed
        where the pool owns processes). Their outcomes are not reported."""
