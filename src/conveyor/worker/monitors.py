"""The worker's monitoring hook: task counters always (``worker/metrics.py``), task
events with ``worker_send_task_events`` (``worker/events.py``), and the one thread that
writes both to the broker (events every 0.1 s, counters every 2 s, both as it stops).

A job's end is named once for both, so that the counters and the events agree::

    the pool's outcome           counted as        event
    SUCCESS                      SUCCESS           task-succeeded
    FAILURE, TIMED_OUT           FAILURE           task-failed
    RETRY                        RETRY             task-retried
    REJECTED (Reject)            REJECTED          task-rejected
    IGNORED (Ignore, replaced)   IGNORED           (none, as Celery)
    LOST, requeued               REJECTED          task-rejected (requeue: true)
    LOST, for good               FAILURE           task-failed (WorkerLostError)
    REVOKED, TERMINATED          (by the revoked moment, with refused messages: REVOKED,
                                 task-revoked)
    not registered here          REJECTED          task-rejected
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from conveyor import events as kinds
from conveyor import states
from conveyor.hooks import Hook
from conveyor.worker import events, metrics
from conveyor.worker.events import EventBuffer
from conveyor.worker.job import IGNORED, LOST, REJECTED, TERMINATED, TIMED_OUT
from conveyor.worker.metrics import TaskCounts

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.brokers.base import Delivery
    from conveyor.message import Message
    from conveyor.task import Task
    from conveyor.worker.job import Job, Outcome


@dataclass(frozen=True, slots=True)
class End:
    """How a job's end is counted (``state``) and told (``event``, None: not told)."""

    state: str
    event: str | None
    #: What the event says of it: ``exception`` for a failure, ``reason`` for a rejection.
    why: str = ""
    requeue: bool = False


_SIMPLE = {
    states.SUCCESS: End(states.SUCCESS, kinds.SUCCEEDED),
    states.FAILURE: End(states.FAILURE, kinds.FAILED),
    states.RETRY: End(states.RETRY, kinds.RETRIED),
    IGNORED: End(IGNORED, None),
}


def ending(job: Job, outcome: Outcome, conf: Any) -> End | None:
    """How the pool's ``outcome`` of ``job`` is counted and told (see the module
    docstring); None for a revoke, which the ``revoked`` moment tells."""
    state = outcome.state
    simple = _SIMPLE.get(state)
    if simple is not None:
        return simple
    if state == TIMED_OUT:
        return End(states.FAILURE, kinds.FAILED, f"TimeLimitExceeded: {outcome.summary}")
    if state == REJECTED:
        return End(REJECTED, kinds.REJECTED, outcome.summary, requeue=outcome.requeue)
    if state == LOST:
        if job.acks_late and conf.task_reject_on_worker_lost:
            return End(REJECTED, kinds.REJECTED, f"worker lost: {outcome.summary}", True)
        return End(states.FAILURE, kinds.FAILED, f"WorkerLostError: {outcome.summary}")
    if state in (states.REVOKED, TERMINATED):
        return None
    return End(state, None)  # a state of a pool's own, counted as it is named


def ran(outcome: Outcome) -> bool:
    """Whether the outcome is of a run that reached its end in the pool (its runtime
    is known): every outcome but a lost process's."""
    return outcome.state != LOST


class Monitoring(Hook):
    """Counts every job's end and, with ``worker_send_task_events``, tells each moment
    of it as a task event (see the module docstring)."""

    def __init__(self, app: Conveyor, hostname: str) -> None:
        self.conf = app.conf
        self.broker = app.broker
        self.hostname = hostname
        self.counts = TaskCounts()
        self.events: EventBuffer | None = None
        if app.conf.worker_send_task_events:
            self.events = EventBuffer(app.conf.event_stream_max)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._flushing = threading.Lock()  # the thread's flush or the last one

    # -- the writer thread ---------------------------------------------------------------

    def worker_ready(self, worker: Any) -> None:
        # started once the pool has forked its children: none inherits the thread
        self._thread = threading.Thread(target=self._run, name="conveyor-telemetry", daemon=True)
        self._thread.start()

    def worker_shutdown(self, worker: Any) -> None:
        """Everything settled by now (the settler has stopped): write what is left."""
        self._stop.set()
        if self.events is not None:
            self.events.full.set()  # wakes the thread
        if self._thread is not None:
            self._thread.join(5.0)
        self.flush()

    def _run(self) -> None:
        counted_at = time.monotonic()
        while not self._stop.is_set():
            if self.events is not None:
                self.events.full.wait(events.FLUSH_EVERY)
            else:
                self._stop.wait(metrics.FLUSH_EVERY)
            if self._stop.is_set():
                return
            with self._flushing:
                if self.events is not None:
                    self.events.flush(self.broker)
                if time.monotonic() - counted_at >= metrics.FLUSH_EVERY:
                    counted_at = time.monotonic()
                    self.counts.flush(self.broker)

    def flush(self) -> None:
        """Write the buffered events and add the counts now."""
        with self._flushing:
            if self.events is not None:
                self.events.flush(self.broker)
            self.counts.flush(self.broker)

    # -- the moments ---------------------------------------------------------------------

    def received(self, job: Job, task: Task[..., Any]) -> None:
        if self.events is not None:
            self.events.put(events.received(job, self.hostname))

    def started(self, job: Job) -> None:
        if self.events is not None:
            self.events.put(events.started(job, self.hostname))

    def finished(self, job: Job, task: Task[..., Any] | None, outcome: Outcome | None) -> None:
        if outcome is None:
            return  # never handed to the pool: it could not be accepted
        name = job.message.task
        if ran(outcome):
            self.counts.observe(name, outcome.runtime)
        end = ending(job, outcome, self.conf)
        if end is None:
            return
        self.counts.count(name, end.state)
        if self.events is not None:
            body = events.ended(job, outcome, end, self.hostname)
            if body is not None:
                self.events.put(body)

    def revoked(self, job: Job, task: Task[..., Any], *, expired: bool, terminated: bool) -> None:
        self.counts.count(job.message.task, states.REVOKED)
        if self.events is not None:
            body = events.revoked(job, self.hostname, expired=expired, terminated=terminated)
            self.events.put(body)

    def rejected(self, delivery: Delivery, error: BaseException) -> None:
        # no task to count it for: the queue's dead letters show it
        if self.events is not None:
            self.events.put(events.rejected(delivery, error, self.hostname))

    def unknown(self, delivery: Delivery, message: Message, error: BaseException) -> None:
        self.counts.count(message.task, REJECTED)
        if self.events is not None:
            self.events.put(events.rejected(delivery, error, self.hostname, message))
