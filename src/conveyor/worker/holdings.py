"""What a worker holds: every delivery it fetched and has not settled, by token.

The fetch loop waits here for room (the worker holds at most ``capacity``
unacknowledged deliveries: as in Celery, a job acknowledged when it started no
longer counts, so that the next one waits ready beside it), the heartbeat renews
what is held, the settler and shutdown take jobs out. One condition guards it
all; ``Job.settling`` and ``Job.acked`` are only changed under it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from conveyor.brokers.base import Delivery
from conveyor.worker.job import Job


@dataclass
class Refill:
    """A fetch made with acks for the room they free: up to ``room`` messages from
    ``queues`` for ``consumer`` (room 0: no fetch), handed to ``admit`` once fetched."""

    room: int
    queues: Sequence[str]
    consumer: str
    admit_to: Callable[[Sequence[Delivery], int], None] | None = None
    generation: int = 0

    def admit(self, deliveries: Sequence[Delivery]) -> None:
        if self.admit_to is not None and deliveries:
            self.admit_to(deliveries, self.generation)


class Holdings:
    """The held jobs (token -> Job) and the room left for more."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.cond = threading.Condition()
        self._jobs: dict[str, Job] = {}
        self._acked = 0  # held jobs with ``acked`` set

    def __len__(self) -> int:
        with self.cond:
            return len(self._jobs)

    def add(self, job: Job) -> int:
        """Hold ``job``; returns how many are held now."""
        with self.cond:
            self._jobs[job.delivery.token] = job
            return len(self._jobs)

    def get(self, token: str) -> Job | None:
        with self.cond:
            return self._jobs.get(token)

    def release(self, jobs: Iterable[Job]) -> None:
        """Stop holding these jobs (settled, given back) and wake whoever waits for room."""
        with self.cond:
            for job in jobs:
                self._drop(job)
            self.cond.notify_all()

    def _drop(self, job: Job) -> bool:
        # caller holds the condition
        if self._jobs.pop(job.delivery.token, None) is None:
            return False
        if job.acked:
            self._acked -= 1
        return True

    def take(self, job: Job) -> bool:
        """Stop holding ``job`` unless it is being settled; True if this call took it."""
        with self.cond:
            if job.settling or not self._drop(job):
                return False
            self.cond.notify_all()
            return True

    def room(self) -> int:
        """How many more unacknowledged jobs may be held now (negative while over)."""
        with self.cond:
            return self._room()

    def _room(self) -> int:
        # caller holds the condition
        return self.capacity - (len(self._jobs) - self._acked)

    def jobs(self) -> list[Job]:
        with self.cond:
            return list(self._jobs.values())

    def unacked(self) -> list[Delivery]:
        """The deliveries whose leases must be kept alive (acked early ones need none)."""
        with self.cond:
            return [job.delivery for job in self._jobs.values() if not job.acked]

    def mark_settling(self, jobs: Iterable[Job]) -> None:
        """These jobs are being settled: a renewal that finds them gone is not a lost
        lease, and shutdown leaves them to the settler."""
        with self.cond:
            for job in jobs:
                job.settling = True

    def set_acked(self, jobs: Iterable[Job], acks: Iterable[bool]) -> None:
        with self.cond:
            for job, accepted in zip(jobs, acks, strict=True):
                if accepted and not job.acked and job.delivery.token in self._jobs:
                    self._acked += 1
                job.acked = accepted
            self.cond.notify_all()

    def wait_for_room(self, stop: threading.Event, beat: Callable[[], None]) -> int:
        """Block until fewer than ``capacity`` unacknowledged jobs are held (or
        ``stop``); calls ``beat`` while it waits (the fetch loop is healthy, only full).
        Returns the room left."""
        with self.cond:
            while self._room() < 1 and not stop.is_set():
                beat()
                self.cond.wait(0.5)
            return self._room()

    def wait_empty(self, until: float, give_up: threading.Event) -> list[Job]:
        """Wait until nothing is held, ``until`` (monotonic) passes or ``give_up`` is
        set; returns what is still held."""
        with self.cond:
            while self._jobs and not give_up.is_set() and time.monotonic() < until:
                self.cond.wait(0.1)
            return list(self._jobs.values())

    def wake(self) -> None:
        with self.cond:
            self.cond.notify_all()
