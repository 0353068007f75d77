"""Fetching: the loop that leases messages for the worker's free room and admits them.

For all the room it has at once, the loop fetches, verifies and decodes each
message, asks the hooks whether it may run (``admit``: revoked, expired, rate
limits, concurrency caps), holds it, and hands it to the pool. A message that
cannot run goes to the dead letters with the reason, is refused (REVOKED), or is
held back in the broker's delayed store; nothing is ever left held and unsettled.

Under load the room comes from acks: the settler then fetches for it in the same
round trip as the acks (``refill``) and admits what it got here, while the loop
waits; the loop fetches itself when it has room and the settler is not refilling
(an idle worker, an empty queue).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from conveyor import states
from conveyor.backends.base import ResultWrite
from conveyor.brokers.base import Delivery
from conveyor.exceptions import (
    BackendError,
    BrokerError,
    DecodeError,
    NotRegistered,
    TaskRevokedError,
)
from conveyor.hooks import Hooks
from conveyor.message import decode, peek_id
from conveyor.result import encode_failure
from conveyor.signing import verify
from conveyor.worker.holdings import Holdings, Refill
from conveyor.worker.job import Job
from conveyor.worker.logs import task_extra
from conveyor.worker.settling import Settler

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.task import Task
    from conveyor.worker.autoscale import Autoscaler
    from conveyor.worker.pools import Pool

logger = logging.getLogger("conveyor.worker")


class Fetcher:
    """The fetch loop of one worker; a watchdog may start a new loop (``start``), the
    old one then runs nothing more."""

    def __init__(
        self,
        app: Conveyor,
        hostname: str,
        queues: Sequence[str],
        fetch_timeout: float,
        holdings: Holdings,
        hooks: Hooks,
        pool: Pool,
        settler: Settler,
        stop: threading.Event,
        autoscaler: Autoscaler | None = None,
        consumer: str = "",
    ):
        self.app = app
        self.hostname = hostname
        #: The queues fetched from; replaced whole (never changed in place) by
        #: ``add_queue`` / ``cancel_queue``, so the loop reads it without a lock.
        self.queues = list(queues)
        self._queues_lock = threading.Lock()
        self.fetch_timeout = fetch_timeout
        self.holdings = holdings
        self.hooks = hooks
        self.pool = pool
        self.settler = settler
        self.stop = stop
        self.autoscaler = autoscaler
        self.consumer = consumer or hostname
        self.broker = app.broker
        # Stamped whenever the loop is healthy (fetched, or full and waiting for room);
        # the watchdog restarts a loop that stops stamping.
        self.alive = time.monotonic()
        self.started = self.alive
        # Set while the loop runs a job itself (solo): busy, not stuck.
        self.running_job = False
        self._generation = 0
        # Held by whoever fetches for this worker's room (the loop, or the settler
        # refilling with its acks) until what was fetched is admitted: one at a time,
        # so that the worker never holds more than its capacity. A new one for each
        # loop: a replaced loop stuck in a fetch must not stall its successor.
        self._intake = threading.Lock()

    def start(self) -> threading.Thread:
        """Start a fetch loop; an earlier one exits when it next looks (it is stale)."""
        self._generation += 1
        generation = self._generation
        self._intake = threading.Lock()
        # Not a stamp of alive: a restarted loop is alive only once it fetches.
        self.started = time.monotonic()
        thread = threading.Thread(
            target=lambda: self._loop(generation), name="conveyor-fetcher", daemon=True
        )
        thread.start()
        return thread

    def add_queue(self, queue: str) -> bool:
        """Fetch from ``queue`` too, from the next fetch on; False if already fetched."""
        with self._queues_lock:
            if queue in self.queues:
                return False
            self.queues = [*self.queues, queue]
            return True

    def cancel_queue(self, queue: str) -> bool:
        """Stop fetching from ``queue`` from the next fetch on; False if not fetched.

        Raises:
            ValueError: it is the last queue (a worker fetches from one at least).
        """
        with self._queues_lock:
            if queue not in self.queues:
                return False
            if len(self.queues) == 1:
                raise ValueError(f"{queue!r} is the only queue consumed: add another first")
            self.queues = [q for q in self.queues if q != queue]
            return True

    def age(self) -> float:
        """Seconds since the loop last made progress; 0 while it runs a job (solo)."""
        return 0.0 if self.running_job else time.monotonic() - self.alive

    def stuck_for(self) -> float:
        """Seconds the current loop has been stuck (0 while it runs a job itself)."""
        if self.running_job:
            return 0.0
        return time.monotonic() - max(self.alive, self.started)

    def _stamp(self) -> None:
        self.alive = time.monotonic()

    def _loop(self, generation: int) -> None:
        backoff = 0.1
        intake = self._intake
        while not self.stop.is_set() and generation == self._generation:
            self.holdings.wait_for_room(self.stop, self._stamp)
            if self.stop.is_set() or generation != self._generation:
                return
            with intake:
                room = self.holdings.room()  # a refill may have taken it meanwhile
                if room < 1:
                    continue
                try:
                    deliveries = self.broker.fetch(
                        self.queues, room, consumer=self.consumer, timeout=self.fetch_timeout
                    )
                except Exception:
                    logger.exception("fetch failed; retrying in %.1f s", backoff)
                    self.stop.wait(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                backoff = 0.1
                self._stamp()
                self.admit(deliveries, generation)

    @contextlib.contextmanager
    def refill(self, freed: int) -> Iterator[Refill]:
        """The fetch to make with acks that free ``freed`` held jobs: all the room there
        will be, unless the loop is fetching itself (room 0). The loop waits until the
        block ends, by when ``Refill.admit`` has been given what was fetched."""
        generation = self._generation
        intake = self._intake
        if self.pool.runs_inline or self.stop.is_set() or not intake.acquire(blocking=False):
            yield Refill(0, (), self.consumer)
            return
        try:
            room = self.holdings.room() + freed
            yield Refill(max(room, 0), self.queues, self.consumer, self.admit, generation)
        finally:
            intake.release()

    def admit(self, deliveries: Sequence[Delivery], generation: int) -> None:
        """Check fetched deliveries for revokes, then accept each in turn (called with
        the intake held)."""
        if not deliveries:
            return
        try:
            revoked = self._revoked(deliveries)
        except Exception:
            # Unchecked messages must not run: their leases expire and they come back.
            logger.exception("could not check %d messages for revokes", len(deliveries))
            return
        for i, delivery in enumerate(deliveries):
            # A loop the watchdog replaced (it was stuck fetching) runs nothing more:
            # its replacement fetches and runs in its place.
            if self.stop.is_set() or generation != self._generation:
                self._release_unstarted(deliveries[i:])
                return
            try:
                self._accept(delivery, delivery.id in revoked)
            except BaseException as exc:
                self._unaccepted(delivery, exc)

    def _revoked(self, deliveries: Sequence[Delivery]) -> set[str]:
        """The revoked ids of a fetched batch: from the fetch itself where the broker
        looked them up (Redis), else in one round trip."""
        if all(d.revoked is not None for d in deliveries):
            return {d.id for d in deliveries if d.revoked}
        return set(self.broker.revoked([d.id for d in deliveries])) if deliveries else set()

    def _release_unstarted(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            try:
                if self.broker.release(delivery):
                    logger.info("returned message %s to the queue (not started)", delivery.id)
            except Exception as exc:
                logger.warning("could not hand back %s (%s): its lease expires", delivery.id, exc)

    # -- one message ---------------------------------------------------------------------

    def _accept(self, delivery: Delivery, revoked: bool = False) -> None:
        try:
            body = verify(delivery.body, self.app.conf.message_signing_keys)
        except DecodeError as exc:
            # Its id is unverified: a forged message stores no result under a real task's id.
            self._reject(delivery, None, "?", exc)
            return
        try:
            msg = decode(body)
        except DecodeError as exc:
            self._reject(delivery, peek_id(body), "?", exc)
            return
        task = self.app.tasks.get(msg.task)
        if task is None:
            missing = NotRegistered(f"task {msg.task!r} is not registered in this worker")
            self._reject(delivery, msg.id, msg.task, missing)
            self.hooks.unknown(delivery, msg, missing)
            return
        job = Job.for_task(delivery, msg, task, self.app.conf, hostname=self.hostname)
        job.revoked = revoked
        verdict = self.hooks.admit(job, task)
        if verdict is not None:
            if verdict.retry_at is None:
                self._refuse(job, task, verdict.why, expired=verdict.expired)
            elif self.broker.retry(delivery, delivery.body, verdict.retry_at):
                # waits in the broker's delayed store, not in a slot; not a retry of the task
                logger.debug("%s held back (%s)", job.label, verdict.why)
            return
        demand = self.holdings.add(job)
        if logger.isEnabledFor(logging.INFO):
            logger.info("%s received", job.label, extra=task_extra(msg.task, msg.id))
        self.hooks.received(job, task)
        if self.autoscaler is not None:
            self.autoscaler.update(demand)  # grow before submitting: the job starts at once
        if not self.pool.runs_inline:
            self.pool.submit(job)
            return
        self.running_job = True
        try:
            self.pool.submit(job)
        finally:
            self._stamp()  # before the flag drops: never seen stale
            self.running_job = False

    def _refuse(self, job: Job, task: Task[..., Any], why: str, *, expired: bool) -> None:
        """Settle a message that must not run: acked, REVOKED stored, the hooks told."""
        self.broker.ack([job.delivery])
        log = "expired before it could run; not run" if expired else f"{why}; not run"
        logger.info("%s %s", job.label, log)
        self.hooks.revoked(job, task, expired=expired, terminated=False)
        self.settler.store_end(job, states.REVOKED, TaskRevokedError(why))

    def _reject(
        self, delivery: Delivery, task_id: str | None, name: str, exc: BaseException
    ) -> None:
        """Dead-letter a message that cannot run, with the reason; store its FAILURE
        when its id can be trusted, so that ``get()`` raises instead of waiting."""
        reason = f"{type(exc).__name__}: {exc}"
        if self.broker.dead_letter(delivery, reason):
            logger.error("message %s dead-lettered: %s", delivery.id, reason)
        if not isinstance(exc, NotRegistered):
            self.hooks.rejected(delivery, exc)
        if task_id is not None:
            payload = encode_failure(name, exc, worker=self.hostname)
            self.app.backend.store(
                ResultWrite(task_id, states.FAILURE, payload, self.app.conf.result_expires)
            )

    def _unaccepted(self, delivery: Delivery, exc: BaseException) -> None:
        """Settle a delivery that ``_accept`` raised on: never left held (renewed for
        ever, settled never). An outage leaves it to its lease (it comes back); any
        other error would come back with it: the message goes to the dead letters."""
        job = self.holdings.get(delivery.token)
        if job is not None:
            if job.settling:
                return  # it ran (solo) and its outcome is being settled
            self.holdings.release([job])
        if isinstance(exc, BrokerError | BackendError):
            logger.error("could not accept message %s (%s): its lease expires", delivery.id, exc)
            return
        logger.error("could not accept message %s", delivery.id, exc_info=exc)
        try:
            msg = decode(verify(delivery.body, self.app.conf.message_signing_keys))
        except DecodeError:
            msg = None
        try:
            if msg is None:
                self._reject(delivery, None, "?", exc)
                return
            task = self.app.tasks.get(msg.task)
            if task is not None:  # what an admit hook took before failing, given back
                job = job or Job.for_task(delivery, msg, task, self.app.conf, self.hostname)
                self.hooks.finished(job, task, None)
            self._reject(delivery, msg.id, msg.task, exc)
        except Exception as error:
            logger.error("could not dead-letter message %s: %s", delivery.id, error)
