"""Settling: what becomes of a job once its pool reports it, in the worker process.

Outcomes queue for the settler thread, which takes them in batches: acks (fenced
by the delivery token) with their results (in the same step where the backend
allows: ``ResultBackend.writes_for``), then the hooks' ``settled`` (the canvas
callbacks). A retry goes to the broker's delayed store, a job whose process died
back to the queue (or the dead letters). A task that raised ``Ignore`` is acked with
no result and no callbacks; one that raised ``Reject`` goes back to its queue or to
the dead letters (acks late; an acked message has nothing left to reject). A
threads-pool thread with nothing else to run settles its own outcome when the
settler is idle: one hand-off less on an idle worker's round trip.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, TypeVar

from conveyor import states
from conveyor.backends.base import ResultWrite
from conveyor.brokers.base import Delivery, Disposition, OutgoingMessage
from conveyor.exceptions import (
    BackendError,
    BrokerError,
    TaskRevokedError,
    TimeLimitExceeded,
    WorkerLostError,
)
from conveyor.hooks import Hooks
from conveyor.result import encode_failure
from conveyor.worker.holdings import Holdings, Refill
from conveyor.worker.job import IGNORED, LOST, REJECTED, TERMINATED, TIMED_OUT, Job, Outcome
from conveyor.worker.logs import task_extra

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.worker.pools import Pool

logger = logging.getLogger("conveyor.worker")

T = TypeVar("T")
_STOP = object()
#: Queued in place of an outcome when an acks-early job starts.
_EARLY_ACK = Outcome("EARLY_ACK")
#: Outcomes settled together at most.
BATCH = 512


@contextmanager
def _no_refill(freed: int) -> Iterator[Refill]:
    yield Refill(0, (), "")


class Settler:
    """Settles the jobs of one worker; ``run`` is its thread, ``stop`` ends it."""

    def __init__(
        self,
        app: Conveyor,
        hostname: str,
        holdings: Holdings,
        hooks: Hooks,
        pool: Pool,
        cold: threading.Event,
    ):
        self.app = app
        self.hostname = hostname
        self.broker = app.broker
        self.backend = app.backend
        self.holdings = holdings
        self.hooks = hooks
        self.pool = pool
        self.cold = cold  # a cold shutdown: stop retrying through outages
        #: Set by the worker once its fetch loop exists: the fetch to make with acks.
        self.refill: Callable[[int], AbstractContextManager[Refill]] = _no_refill
        self._outcomes: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._lock = threading.Lock()  # one batch settles at a time

    # -- what the pool calls -------------------------------------------------------

    def on_done(self, job: Job, outcome: Outcome) -> None:
        """The pool's report of a job (any thread)."""
        # Under load outcomes queue up for the settler, which acks them in batches.
        if self.pool.may_settle_inline() and self._lock.acquire(blocking=False):
            try:
                if self._outcomes.empty():
                    # no refill here: the fetch loop fetches for this room meanwhile,
                    # while this thread's ack is on its way (two round trips in flight)
                    self._settle_batch([(job, outcome)], refill=False)
                    return
            finally:
                self._lock.release()
        self._outcomes.put((job, outcome))

    def on_start(self, job: Job) -> None:
        """A job leaves the pool's queue to run (acks early: acknowledged now, not when
        fetched, so that what a worker holds but has not started can still go back)."""
        self.hooks.started(job)
        if not job.acks_late:
            self._outcomes.put((job, _EARLY_ACK))

    # -- the thread ------------------------------------------------------------------

    def run(self) -> None:
        while True:
            item = self._outcomes.get()
            batch: list[tuple[Job, Outcome]] = []
            stop = item is _STOP
            if not stop:
                batch.append(item)  # type: ignore[arg-type]
            while not stop and len(batch) < BATCH:
                try:
                    item = self._outcomes.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                else:
                    batch.append(item)  # type: ignore[arg-type]
            if batch:
                with self._lock:
                    self._settle_batch(batch)
            if stop:
                return

    def stop(self) -> None:
        """The thread settles what is queued, then returns."""
        self._outcomes.put(_STOP)

    # -- settling ------------------------------------------------------------------------

    def _settle_batch(self, batch: list[tuple[Job, Outcome]], *, refill: bool = True) -> None:
        """Early acks, the hooks' ``finished``, then acks and results; under the lock."""
        early = [job for job, outcome in batch if outcome is _EARLY_ACK]
        if early:
            batch = [(job, outcome) for job, outcome in batch if outcome is not _EARLY_ACK]
            self._ack_early(early)
        if not batch:
            return
        tasks = self.app.tasks
        for job, outcome in batch:
            self.hooks.finished(job, tasks.get(job.message.task), outcome)
        self.holdings.mark_settling(job for job, _ in batch)
        try:
            self._settle([(j, self._pseudo_outcome(j, o)) for j, o in batch], refill)
        except Exception:
            logger.exception("settling %d outcomes failed; leases will expire", len(batch))
        finally:
            # Settled or not, stop holding them: an unsettled delivery's lease
            # then expires and the message is delivered again (at least once).
            self.holdings.release(job for job, _ in batch)

    def _ack_early(self, jobs: list[Job]) -> None:
        deliveries = [j.delivery for j in jobs]
        try:
            # acknowledged, they stop counting against the room: refilled at once
            with self.refill(len(jobs)) as refill:
                acks, fetched = self.through_outage(
                    "ack",
                    lambda: self.broker.ack_and_fetch(
                        deliveries, {}, refill.queues, refill.room, consumer=refill.consumer
                    ),
                )
                self.holdings.set_acked(jobs, acks)
                refill.admit(fetched)
        except Exception:
            logger.exception("acknowledging %d started tasks failed; they may run again", len(jobs))

    def through_outage(self, what: str, call: Callable[[], T]) -> T:
        """``call()``, retried through broker or backend outages until it succeeds.

        Giving up would drop finished work (its lease would expire and the task
        run again), so only a cold shutdown stops the retries.
        """
        delay = 0.5
        failed = False
        while True:
            try:
                result = call()
            except (BrokerError, BackendError) as exc:
                if self.cold.is_set():
                    raise
                if not failed:
                    logger.error("%s failed (%s); retrying until it succeeds", what, exc)
                failed = True
                self.cold.wait(delay)
                delay = min(delay * 2, 5.0)
                continue
            if failed:
                logger.warning("%s succeeded again", what)
            return result

    def _settle(self, batch: list[tuple[Job, Outcome]], refill: bool = True) -> None:
        finished = [(j, o) for j, o in batch if o.state not in (LOST, states.RETRY, REJECTED)]
        # dead_letter_on_failure: a failure for good goes to the dead letters, not away
        dead = [
            j
            for j, o in finished
            if o.state == states.FAILURE and j.dead_letter_on_failure and j.acks_late
        ]
        dead_tokens = {j.delivery.token for j in dead}
        late = [
            j.delivery for j, _ in finished if j.acks_late and j.delivery.token not in dead_tokens
        ]
        expires = self.app.conf.result_expires
        stored = self._fused_writes(finished, late, expires)
        acks: list[bool] = []
        if late:
            # the room these acks free is refilled in the same round trip
            with self.refill(len(batch)) if refill else _no_refill(0) as more:
                acks, fetched = self.through_outage(
                    "ack",
                    lambda: self.broker.ack_and_fetch(
                        late, stored, more.queues, more.room, consumer=more.consumer
                    ),
                )
                more.admit(fetched)
        accepted = dict(zip((d.token for d in late), acks, strict=True))
        for job in dead:
            accepted[job.delivery.token] = self._dead_letter_failure(job)
        writes: list[ResultWrite] = []
        settled: list[tuple[Job, Outcome]] = []
        for job, outcome in finished:
            if not accepted.get(job.delivery.token, True):
                logger.warning("%s finished after its lease was lost: result dropped", job.label)
                continue
            self._log_end(job, outcome)
            if outcome.state == IGNORED:
                continue  # acknowledged: no result, no callbacks (as Celery)
            # (a result in ``stored`` was written with its ack)
            if (
                outcome.payload is not None
                and job.store_result
                and job.delivery.token not in stored
            ):
                writes.append(ResultWrite(job.message.id, outcome.state, outcome.payload, expires))
            settled.append((job, outcome))
        if writes:
            self.through_outage("storing results", lambda: self.backend.store_many(writes))
        if settled:
            self.hooks.settled(settled)
        tasks = self.app.tasks
        for job, outcome in batch:
            if outcome.state == LOST:
                self._settle_lost(job, outcome)
            elif outcome.state == REJECTED:
                self._settle_rejected(job, outcome)
            elif outcome.state == states.RETRY:
                self._settle_retry(job, outcome)
            elif outcome.state == states.REVOKED:
                self.hooks.revoked(job, tasks.get(job.message.task), expired=False, terminated=True)

    @staticmethod
    def _log_end(job: Job, outcome: Outcome) -> None:
        level = logging.INFO if outcome.state in (states.SUCCESS, IGNORED) else logging.ERROR
        if logger.isEnabledFor(level):
            verb = {states.SUCCESS: "succeeded", IGNORED: "ended"}.get(outcome.state, "failed")
            extra = task_extra(job.message.task, job.message.id, runtime=outcome.runtime)
            logger.log(
                level,
                "%s %s in %.4fs: %s",
                job.label,
                verb,
                outcome.runtime,
                outcome.summary,
                extra=extra,
            )

    def _fused_writes(
        self, finished: list[tuple[Job, Outcome]], late: list[Delivery], expires: float
    ) -> dict[str, object]:
        """Token -> result write for the broker to apply with the ack (one step instead
        of two, still fenced: a stale delivery stores nothing), when the backend can
        prepare them for this broker; else nothing."""
        tokens = {d.token for d in late}
        jobs = [
            (job, outcome)
            for job, outcome in finished
            if job.delivery.token in tokens and job.store_result and outcome.payload is not None
        ]
        if not jobs:
            return {}
        writes = [
            ResultWrite(job.message.id, outcome.state, outcome.payload or b"", expires)
            for job, outcome in jobs
        ]
        prepared = self.backend.writes_for(self.broker, writes)
        if prepared is None:
            return {}
        return {job.delivery.token: w for (job, _), w in zip(jobs, prepared, strict=True)}

    def _dead_letter_failure(self, job: Job) -> bool:
        reason = f"failed after {job.message.retries} retries (dead_letter_on_failure)"
        moved = self.through_outage(
            "dead-lettering", lambda: self.broker.dead_letter(job.delivery, reason)
        )
        if moved:
            logger.error("%s moved to the dead letters: %s", job.label, reason)
        return moved

    def _settle_retry(self, job: Job, outcome: Outcome) -> None:
        """Send the next run through the broker's delayed store (no slot waits for it).

        The RETRY state is stored first: the next run, once due, may finish at once,
        and its result must not be overwritten by this one's.
        """
        body, eta = outcome.retry_body, outcome.retry_eta
        assert body is not None
        msg = job.message
        if job.store_result and outcome.payload is not None:
            write = ResultWrite(msg.id, states.RETRY, outcome.payload, self.app.conf.result_expires)
            self.through_outage("storing results", lambda: self.backend.store(write))
        if job.acks_late and not job.acked:
            # fenced: replaces the in-flight message, due at eta, delivery count reset
            if not self.through_outage("retry", lambda: self.broker.retry(job.delivery, body, eta)):
                logger.warning("%s asked to retry after its lease was lost: dropped", job.label)
                return
        else:  # acknowledged already: the next run is a new message
            outgoing = OutgoingMessage(msg.id, msg.queue, body, msg.priority, eta)
            self.through_outage("retry", lambda: self.broker.publish(outgoing))
        logger.info("%s %s", job.label, outcome.summary, extra=task_extra(msg.task, msg.id))

    def _settle_rejected(self, job: Job, outcome: Outcome) -> None:
        """A task that raised ``Reject``: its message back to the queue (the attempt
        counts: past ``broker_max_deliveries`` it is dead-lettered) or to the dead
        letters with the reason. No result is stored, no callbacks are sent."""
        if not job.acks_late or job.acked:
            logger.warning(
                "%s %s; but it was acknowledged when it started (acks early): dropped",
                job.label,
                outcome.summary,
            )
            return
        extra = task_extra(job.message.task, job.message.id)
        if outcome.requeue:
            disposition = self.through_outage("requeue", lambda: self.broker.requeue(job.delivery))
            if disposition is Disposition.REQUEUED:
                logger.info("%s %s", job.label, outcome.summary, extra=extra)
            elif disposition is Disposition.DEAD:
                logger.error(
                    "%s %s; dead-lettered after %d deliveries",
                    job.label,
                    outcome.summary,
                    job.delivery.deliveries,
                    extra=extra,
                )
            return
        reason = outcome.summary
        if self.through_outage(
            "dead-lettering", lambda: self.broker.dead_letter(job.delivery, reason)
        ):
            logger.error("%s %s", job.label, reason, extra=extra)

    def _pseudo_outcome(self, job: Job, outcome: Outcome) -> Outcome:
        """What a pool's own verdict (TIMED_OUT, TERMINATED) is stored as."""
        if outcome.state == TIMED_OUT:
            # ended at its hard limit: a FAILURE, acknowledged (never redelivered: it
            # would only run into the same limit again)
            exc: Exception = TimeLimitExceeded(outcome.summary)
            payload = encode_failure(
                job.message.task, exc, worker=self.hostname, retries=job.message.retries
            )
            return Outcome(states.FAILURE, payload, outcome.runtime, f"TimeLimitExceeded: {exc}")
        if outcome.state == TERMINATED:
            exc = TaskRevokedError(outcome.summary)
            payload = encode_failure(
                job.message.task, exc, state=states.REVOKED, worker=self.hostname
            )
            return Outcome(states.REVOKED, payload, outcome.runtime, f"TaskRevokedError: {exc}")
        return outcome

    def _settle_lost(self, job: Job, outcome: Outcome) -> None:
        if job.acks_late and self.app.conf.task_reject_on_worker_lost:
            disposition = self.through_outage("requeue", lambda: self.broker.requeue(job.delivery))
            if disposition is Disposition.REQUEUED:
                logger.warning("%s lost (%s): returned to the queue", job.label, outcome.summary)
                return
            if disposition is Disposition.STALE:
                return
            reason = (
                f"dead-lettered after {job.delivery.deliveries} deliveries; last: {outcome.summary}"
            )
        else:
            reason = f"worker lost: {outcome.summary}"
        logger.error("%s %s", job.label, reason)
        self.store_end(job, states.FAILURE, WorkerLostError(reason))

    def store_end(self, job: Job, state: str, exc: Exception) -> None:
        """Store a job's end that is not its task's own (revoked, expired, lost for good),
        and let the hooks know it ended so (its error callbacks, its chord)."""
        payload = encode_failure(job.message.task, exc, state=state, worker=self.hostname)
        if job.store_result:
            self.backend.store(
                ResultWrite(job.message.id, state, payload, self.app.conf.result_expires)
            )
        summary = f"{type(exc).__name__}: {exc}"
        self.hooks.settled([(job, Outcome(states.FAILURE, payload, 0.0, summary))])
