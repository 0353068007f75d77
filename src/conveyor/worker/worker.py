"""The worker: fetches deliveries, hands them to a pool, settles each outcome.

Threads of a worker process and what each owns::

    main        signals, supervision (watchdog, heartbeat file), the shutdown sequence
    fetcher     broker.fetch for free capacity, decode, policy checks, pool.submit
    settler     outcomes -> ack (fenced) -> store results, in batches
    heartbeat   lease renewal for everything held; reclaim of dead consumers' leases
    services    optional, started and stopped with the worker (``--beat``: the scheduler)

The worker holds at most ``concurrency x prefetch_multiplier`` unacknowledged
deliveries (solo: one), and fetches for all free slots at once. It knows the
broker and backend contracts only.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

from conveyor import states
from conveyor.backends.base import ResultWrite
from conveyor.brokers.base import Delivery, Disposition, OutgoingMessage
from conveyor.exceptions import (
    BackendError,
    BrokerError,
    DecodeError,
    NotRegistered,
    TaskRevokedError,
    TimeLimitExceeded,
    WorkerLostError,
)
from conveyor.message import decode, peek_id
from conveyor.result import encode_failure
from conveyor.signals import SignalRelay
from conveyor.signing import verify
from conveyor.worker.admission import Admission
from conveyor.worker.autoscale import KEEPALIVE, Autoscaler
from conveyor.worker.callbacks import Callbacks
from conveyor.worker.heartbeat import Heartbeat
from conveyor.worker.job import LOST, TERMINATED, TIMED_OUT, Job, JobRunner, Outcome
from conveyor.worker.limits import PoolLimits
from conveyor.worker.liveness import HeartbeatFile
from conveyor.worker.logs import task_extra
from conveyor.worker.pools import POOLS, Pool

if TYPE_CHECKING:
    from conveyor.app import Conveyor

logger = logging.getLogger("conveyor.worker")

_STOP = object()
#: Seconds between two checks of running tasks for revokes with terminate=True.
REVOKE_CHECK_EVERY = 0.5
#: Queued for the settler, in place of an outcome, when an acks-early job starts.
_EARLY_ACK = Outcome("EARLY_ACK")
T = TypeVar("T")


@dataclass(slots=True)
class WorkerOptions:
    """How a worker runs; defaults come from the app's settings."""

    queues: Sequence[str]
    concurrency: int
    pool: str = "prefork"
    prefetch_multiplier: int = 1
    hostname: str = ""
    shutdown_timeout: float = 25.0
    fetch_timeout: float = 1.0
    #: Seconds without a successful fetch (while there is room) before the fetch
    #: loop is restarted; never while it runs a task itself (solo).
    watchdog_timeout: float = 60.0
    #: Where to keep the heartbeat file for ``conveyor worker-health`` (None: nowhere).
    heartbeat_file: str | None = None
    #: ``(maximum, minimum)`` pool size with ``--autoscale`` (``concurrency`` is then
    #: ignored); None: a fixed size.
    autoscale: tuple[int, int] | None = None
    #: Seconds demand stays low before an autoscaled pool shrinks.
    autoscale_keepalive: float = KEEPALIVE


def default_hostname() -> str:
    return f"conveyor@{socket.gethostname()}"


class Service(Protocol):
    """Something that runs beside the worker's own threads (``worker --beat``'s
    scheduler): started with the worker, stopped as its shutdown begins."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


class Worker:
    """Consumes ``options.queues`` with a pool; ``run()`` until SIGTERM/SIGINT."""

    def __init__(self, app: Conveyor, options: WorkerOptions, services: Sequence[Service] = ()):
        self.app = app
        self.options = options
        self.services = list(services)
        self.hostname = options.hostname or default_hostname()
        self.consumer_id = f"{self.hostname}/{os.getpid()}"
        # With autoscale, fetch for the largest pool: demand above the pool's size is
        # what makes it grow.
        slots = options.autoscale[0] if options.autoscale else options.concurrency
        self.capacity = slots * options.prefetch_multiplier
        self.broker = app.broker
        self.backend = app.backend
        pool_cls = POOLS[options.pool]
        limits = PoolLimits(
            max_tasks_per_child=app.conf.worker_max_tasks_per_child,
            max_memory_per_child=app.conf.worker_max_memory_per_child,
        )
        size = options.autoscale[1] if options.autoscale else options.concurrency
        self.pool: Pool = pool_cls(JobRunner(app, self.hostname), size, self._on_done, limits)
        if self.pool.runs_inline:
            # Solo runs each job inside the fetch loop: a prefetched delivery would wait
            # there, unheld, its lease not renewed, while the jobs before it run.
            self.capacity = 1
        self.autoscaler = (
            Autoscaler(
                self.pool, options.autoscale[1], options.autoscale[0], options.autoscale_keepalive
            )
            if options.autoscale
            else None
        )
        self.pool.on_start = self._on_start
        self.callbacks = Callbacks(app, self.hostname)
        self.admission = Admission(
            self.broker, app.conf.task_default_rate_limit, self.broker.options.lease_seconds
        )
        self._cond = threading.Condition()
        self._held: dict[str, Job] = {}  # token -> job, everything not yet settled
        self._outcomes: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._settle_lock = threading.Lock()  # one batch settles at a time
        self._stop_fetching = threading.Event()
        self._shutdown = threading.Event()
        self._cold = threading.Event()
        self._threads: list[threading.Thread] = []
        self.heartbeat = Heartbeat(
            self.broker, self.held_deliveries, self._lease_lost, self._renew_slots
        )
        self.exit_code = 0
        # The fetch loop stamps this whenever it is healthy (fetched, or full and
        # waiting for a slot); the watchdog restarts a loop that stops stamping.
        self.fetch_alive = time.monotonic()
        self._fetch_started = self.fetch_alive
        self._fetch_generation = 0
        # Set while the fetch loop runs a job itself (solo): busy, not stuck.
        self._fetch_running_job = False
        self.liveness = HeartbeatFile(options.heartbeat_file) if options.heartbeat_file else None

    # -- running -------------------------------------------------------------------

    def start(self) -> None:
        """Start the pool and the worker threads (the pool first: prefork forks)."""
        self.pool.start()
        self._threads = [self._start_fetcher(), self._spawn(self._settle_loop, "conveyor-settler")]
        self._spawn(self._watch_revokes, "conveyor-revokes")
        self.heartbeat.start()
        for service in self.services:
            service.start()

    @staticmethod
    def _spawn(target: Callable[[], None], name: str) -> threading.Thread:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        return thread

    def _start_fetcher(self) -> threading.Thread:
        self._fetch_generation += 1
        generation = self._fetch_generation
        # Not a stamp of fetch_alive: a restarted loop is alive only once it fetches.
        self._fetch_started = time.monotonic()
        return self._spawn(lambda: self._fetch_loop(generation), "conveyor-fetcher")

    def _fetch_age(self) -> float:
        """Seconds since the fetch loop last made progress; 0 while it runs a job (solo)."""
        if self._fetch_running_job:
            return 0.0
        return time.monotonic() - self.fetch_alive

    def _watch_fetcher(self) -> None:
        if self._fetch_running_job:
            return  # a long task, not a stuck fetch: a second loop would run a second task
        now = time.monotonic()
        if now - max(self.fetch_alive, self._fetch_started) > self.options.watchdog_timeout:
            # The stuck loop exits on its own if it ever returns (its generation is old).
            stalled = now - self.fetch_alive
            logger.critical("no fetch has succeeded for %.0f s: restarting the fetch loop", stalled)
            self._threads[0] = self._start_fetcher()

    def run(self) -> int:
        """Run until a shutdown signal; returns the process exit code."""
        if threading.current_thread() is threading.main_thread():
            SignalRelay(self._on_signal).install()
        self.start()
        while not self._shutdown.wait(0.2):
            if self.pool.failed.is_set() or not all(t.is_alive() for t in self._threads):
                # Never half-dead: exit non-zero so a supervisor starts a fresh worker.
                logger.critical("the worker cannot run tasks any more: exiting")
                self.exit_code = 1
                break
            self._watch_fetcher()
            if self.autoscaler is not None:
                with self._cond:
                    demand = len(self._held)
                self.autoscaler.update(demand)
            if self.liveness is not None:
                self.liveness.update(self._fetch_age())
        self.shutdown()
        return self.exit_code

    def request_shutdown(self, cold: bool = False) -> None:
        """Begin a warm shutdown; a second request (or ``cold=True``) makes it cold."""
        if cold or self._shutdown.is_set():
            self._cold.set()
        self._shutdown.set()
        self._stop_fetching.set()
        with self._cond:
            self._cond.notify_all()  # a fetch loop waiting for a free slot stops now

    def _on_signal(self, signum: int) -> None:
        """SIGTERM / SIGINT, in the signal relay's thread (see ``conveyor.signals``)."""
        name = signal.Signals(signum).name
        if self._shutdown.is_set():
            logger.warning("%s again: cold shutdown, returning running tasks to the queue", name)
        else:
            logger.warning(
                "%s: warm shutdown (running tasks may take up to %.0f s; again for cold)",
                name,
                self.options.shutdown_timeout,
            )
        self.request_shutdown()

    def shutdown(self) -> None:
        """Stop fetching, return unstarted messages, let running ones finish until
        ``shutdown_timeout``, return what still runs (acks late), stop.

        Unstarted messages go back as if never delivered (``release``); a started one
        keeps its attempt (``requeue``), so that a task that always outlives the
        timeout ends in the dead letters after ``broker_max_deliveries`` stops.
        """
        self._stop_fetching.set()
        for service in self.services:
            service.stop()
        deadline = time.monotonic() + self.options.shutdown_timeout
        # The fetcher returns within fetch_timeout; solo's once the task it runs ends.
        join = self.options.fetch_timeout + 5
        if self.pool.runs_inline:
            join = max(self.options.fetch_timeout + 1, self.options.shutdown_timeout)
        for thread in self._threads[:1]:
            thread.join(join)
        self._give_back(self.pool.take_pending(), "not started", started=False)
        with self._cond:
            while self._held and not self._cold.is_set() and time.monotonic() < deadline:
                self._cond.wait(0.1)
        with self._cond:
            still = list(self._held.values())
        if still:
            why = "cold shutdown" if self._cold.is_set() else "shutdown timeout reached"
            self._give_back(still, f"still running at {why}", started=True)
        self._outcomes.put(_STOP)
        self._threads[1].join(5)
        self.heartbeat.stop()
        self.pool.stop()
        if self.liveness is not None:
            self.liveness.remove()
        logger.info("worker %s stopped", self.hostname)

    def _give_back(self, jobs: list[Job], why: str, *, started: bool) -> None:
        for job in jobs:
            with self._cond:
                if job.settling or self._held.pop(job.delivery.token, None) is None:
                    continue  # settled (or being settled) meanwhile
                self._cond.notify_all()
            if job.acked:
                continue
            try:
                if not started:
                    if self.broker.release(job.delivery):
                        logger.info("returned %s to the queue (%s)", job.label, why)
                else:
                    self._requeue_started(job, why)
            except Exception as exc:
                logger.error("could not return %s (%s): its lease expires instead", job.label, exc)

    def _requeue_started(self, job: Job, why: str) -> None:
        """Hand back a job that started: the attempt counts, as a lost one does."""
        disposition = self.broker.requeue(job.delivery)
        if disposition is Disposition.REQUEUED:
            logger.warning("returned %s to the queue (%s); the attempt counts", job.label, why)
        elif disposition is Disposition.DEAD:
            reason = f"dead-lettered after {job.delivery.deliveries} deliveries; last: {why}"
            logger.error("%s %s", job.label, reason)
            self._store(job, states.FAILURE, WorkerLostError(reason))

    def _watch_revokes(self) -> None:
        """Stop running tasks revoked with terminate=True (checked twice a second, one
        round trip for everything running, only while something runs)."""
        stopped: set[str] = set()
        while not self._shutdown.wait(REVOKE_CHECK_EVERY):
            running = self.pool.running()
            if not running:
                stopped.clear()
                continue
            try:
                revoked = self.broker.revoked([job.message.id for job in running])
            except Exception as exc:
                logger.debug("could not check running tasks for revokes: %s", exc)
                continue
            for job in running:
                token = job.delivery.token
                if revoked.get(job.message.id) and token not in stopped:
                    stopped.add(token)
                    if not self.pool.terminate(job):
                        logger.warning(
                            "%s was revoked with terminate=True, but the %s pool cannot "
                            "stop it: it runs to its end",
                            job.label,
                            self.pool.name,
                        )

    def _renew_slots(self) -> None:
        with self._cond:
            held = [(j.message.task, j.delivery) for j in self._held.values()]
        tasks = self.app.tasks
        self.admission.renew([(tasks[name], d) for name, d in held if name in tasks])

    def held_deliveries(self) -> list[Delivery]:
        with self._cond:
            return [job.delivery for job in self._held.values() if not job.acked]

    def _lease_lost(self, message_id: str) -> None:
        with self._cond:
            jobs = [
                j for j in self._held.values() if j.delivery.id == message_id and not j.settling
            ]
        for job in jobs:
            logger.warning("lease of %s was lost; its result will be refused", job.label)

    # -- fetching ------------------------------------------------------------------

    def _fetch_loop(self, generation: int) -> None:
        backoff = 0.1
        while not self._stop_fetching.is_set() and generation == self._fetch_generation:
            with self._cond:
                while len(self._held) >= self.capacity and not self._stop_fetching.is_set():
                    self.fetch_alive = time.monotonic()
                    self._cond.wait(0.5)
                room = self.capacity - len(self._held)
            if self._stop_fetching.is_set() or generation != self._fetch_generation:
                return
            try:
                deliveries = self.broker.fetch(
                    self.options.queues,
                    room,
                    consumer=self.consumer_id,
                    timeout=self.options.fetch_timeout,
                )
            except Exception:
                logger.exception("fetch failed; retrying in %.1f s", backoff)
                self._stop_fetching.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            self.fetch_alive = time.monotonic()
            try:
                revoked = self.admission.revoked(deliveries)
            except Exception:
                # Unchecked messages must not run: their leases expire and they come back.
                logger.exception("could not check %d messages for revokes", len(deliveries))
                continue
            for i, delivery in enumerate(deliveries):
                # A loop the watchdog replaced (it was stuck fetching) runs nothing more:
                # its replacement fetches and runs in its place.
                if self._stop_fetching.is_set() or generation != self._fetch_generation:
                    self._release_unstarted(deliveries[i:])
                    return
                try:
                    self._accept(delivery, delivery.id in revoked)
                except BaseException as exc:
                    self._unaccepted(delivery, exc)

    def _release_unstarted(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            try:
                self.broker.release(delivery)
            except Exception as exc:
                logger.warning("could not hand back %s (%s): its lease expires", delivery.id, exc)

    def _unaccepted(self, delivery: Delivery, exc: BaseException) -> None:
        """Settle a delivery that ``_accept`` raised on: never left held (renewed for
        ever, settled never). An outage leaves it to its lease (it comes back); any
        other error would come back with it: the message goes to the dead letters."""
        with self._cond:
            job = self._held.get(delivery.token)
            if job is not None and job.settling:
                return  # it ran (solo) and its outcome is being settled
            if job is not None:
                del self._held[delivery.token]
                self._cond.notify_all()
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
            else:  # its concurrency slot too, if the check took one before failing
                self.admission.finished(self.app.tasks.get(msg.task), delivery)
                self._reject(delivery, msg.id, msg.task, exc)
        except Exception as error:
            logger.error("could not dead-letter message %s: %s", delivery.id, error)

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
            return
        conf = self.app.conf
        acks_late = conf.task_acks_late if task.acks_late is None else task.acks_late
        ignore = msg.ignore_result or bool(task.ignore_result)
        track = conf.task_track_started if task.track_started is None else task.track_started
        soft = conf.task_soft_time_limit if task.soft_time_limit is None else task.soft_time_limit
        hard = conf.task_time_limit if task.time_limit is None else task.time_limit
        job = Job(
            delivery,
            msg,
            acks_late=acks_late,
            store_result=not ignore,
            track_started=track,
            soft_time_limit=soft,
            time_limit=hard,
            dead_letter_on_failure=task.dead_letter_on_failure,
        )
        if msg.expires is not None and time.time() > msg.expires:
            self._refuse(job, "expired", "expired before it could run; not run")
            return
        if revoked:
            self._refuse(job, "revoked", "revoked; not run")
            return
        verdict = self.admission.admit(task, delivery)
        if not verdict.run:
            # waits in the broker's delayed store, not in a slot; not a retry of the task
            if self.broker.retry(delivery, delivery.body, verdict.retry_at):
                logger.debug("%s held back (%s)", job.label, verdict.why)
            return
        self.admission.release_unique(msg.headers, msg.id, "started")
        with self._cond:
            self._held[delivery.token] = job
        if logger.isEnabledFor(logging.INFO):
            logger.info("%s received", job.label, extra=task_extra(msg.task, msg.id))
        if self.autoscaler is not None:
            with self._cond:
                demand = len(self._held)
            self.autoscaler.update(demand)  # grow before submitting: the job starts at once
        if not self.pool.runs_inline:
            self.pool.submit(job)
            return
        self._fetch_running_job = True
        try:
            self.pool.submit(job)
        finally:
            self.fetch_alive = time.monotonic()  # before the flag drops: never seen stale
            self._fetch_running_job = False

    def _refuse(self, job: Job, reason: str, log: str) -> None:
        """Settle a message that must not run: acked, REVOKED stored, unique key freed."""
        self.broker.ack([job.delivery])
        logger.info("%s %s", job.label, log)
        self._store(job, states.REVOKED, TaskRevokedError(reason))
        self.admission.release_unique(job.message.headers, job.message.id, "started")
        self.admission.release_unique(job.message.headers, job.message.id, "finished")

    def _reject(
        self, delivery: Delivery, task_id: str | None, name: str, exc: BaseException
    ) -> None:
        reason = f"{type(exc).__name__}: {exc}"
        if self.broker.dead_letter(delivery, reason):
            logger.error("message %s dead-lettered: %s", delivery.id, reason)
        if task_id is not None:
            payload = encode_failure(name, exc, worker=self.hostname)
            self.backend.store(
                ResultWrite(task_id, states.FAILURE, payload, self.app.conf.result_expires)
            )

    def _store(self, job: Job, state: str, exc: Exception) -> None:
        """Store a job's end that is not its task's own (revoked, expired, lost for good),
        and let its canvas callbacks know it failed (error callbacks, its chord)."""
        payload = encode_failure(job.message.task, exc, state=state, worker=self.hostname)
        if job.store_result:
            self.backend.store(
                ResultWrite(job.message.id, state, payload, self.app.conf.result_expires)
            )
        summary = f"{type(exc).__name__}: {exc}"
        self.callbacks.after_settled([(job, Outcome(states.FAILURE, payload, 0.0, summary))])

    # -- settling ------------------------------------------------------------------

    def _on_done(self, job: Job, outcome: Outcome) -> None:
        # A pool thread with nothing else to run settles its own outcome when the
        # settler is idle: one thread hand-off less on the way to the result (the
        # round trip of an idle worker). Under load outcomes queue up for the
        # settler, which acknowledges them in batches.
        if self.pool.may_settle_inline() and self._settle_lock.acquire(blocking=False):
            try:
                if self._outcomes.empty():
                    self._settle_batch([(job, outcome)])
                    return
            finally:
                self._settle_lock.release()
        self._outcomes.put((job, outcome))

    def _on_start(self, job: Job) -> None:
        # Acks early: acknowledged as the task starts, not when fetched, so that what
        # a worker holds but has not started can still go back to the queue.
        if not job.acks_late:
            self._outcomes.put((job, _EARLY_ACK))

    def _settle_loop(self) -> None:
        while True:
            item = self._outcomes.get()
            batch: list[tuple[Job, Outcome]] = []
            stop = item is _STOP
            if not stop:
                batch.append(item)  # type: ignore[arg-type]
            while not stop and len(batch) < 512:
                try:
                    item = self._outcomes.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                else:
                    batch.append(item)  # type: ignore[arg-type]
            if batch:
                with self._settle_lock:
                    self._settle_batch(batch)
            if stop:
                return

    def _settle_batch(self, batch: list[tuple[Job, Outcome]]) -> None:
        """Early acks, released limits, then acks and results; under ``_settle_lock``."""
        early = [job for job, outcome in batch if outcome is _EARLY_ACK]
        for job, outcome in batch:
            if outcome is not _EARLY_ACK:
                self._release_admission(job, outcome)
        if early:
            batch = [(job, outcome) for job, outcome in batch if outcome is not _EARLY_ACK]
            self._ack_early(early)
        if not batch:
            return
        with self._cond:
            for job, _ in batch:
                job.settling = True
        try:
            self._settle(batch)
        except Exception:
            logger.exception("settling %d outcomes failed; leases will expire", len(batch))
        finally:
            # Settled or not, stop holding them: an unsettled delivery's lease
            # then expires and the message is delivered again (at least once).
            with self._cond:
                for job, _ in batch:
                    self._held.pop(job.delivery.token, None)
                self._cond.notify_all()

    def _release_admission(self, job: Job, outcome: Outcome) -> None:
        """Give back the job's concurrency slot; free its unique key once it has ended
        for good (not when it retries, nor when it is lost and may run again)."""
        try:
            self.admission.finished(self.app.tasks.get(job.message.task), job.delivery)
            if outcome.state not in (LOST, states.RETRY):
                self.admission.release_unique(job.message.headers, job.message.id, "finished")
        except Exception:
            logger.exception("could not release the limits held by %s", job.label)

    def _ack_early(self, jobs: list[Job]) -> None:
        try:
            acks = self._through_outage("ack", lambda: self.broker.ack([j.delivery for j in jobs]))
        except Exception:
            logger.exception("acknowledging %d started tasks failed; they may run again", len(jobs))
            return
        with self._cond:
            for job, accepted in zip(jobs, acks, strict=True):
                job.acked = accepted

    def _through_outage(self, what: str, call: Callable[[], T]) -> T:
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
                if self._cold.is_set():
                    raise
                if not failed:
                    logger.error("%s failed (%s); retrying until it succeeds", what, exc)
                failed = True
                self._cold.wait(delay)
                delay = min(delay * 2, 5.0)
                continue
            if failed:
                logger.warning("%s succeeded again", what)
            return result

    def _settle(self, batch: list[tuple[Job, Outcome]]) -> None:
        batch = [(j, self._pseudo_outcome(j, o)) for j, o in batch]
        finished = [(j, o) for j, o in batch if o.state not in (LOST, states.RETRY)]
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
        if stored:
            acks = self._through_outage("ack", lambda: self.broker.ack_storing(late, stored))
        else:
            acks = self._through_outage("ack", lambda: self.broker.ack(late)) if late else []
        accepted = dict(zip((d.token for d in late), acks, strict=True))
        for job in dead:
            accepted[job.delivery.token] = self._dead_letter_failure(job)
        writes: list[ResultWrite] = []
        settled: list[tuple[Job, Outcome]] = []
        for job, outcome in finished:
            if not accepted.get(job.delivery.token, True):
                logger.warning("%s finished after its lease was lost: result dropped", job.label)
                continue
            level = logging.INFO if outcome.state == states.SUCCESS else logging.ERROR
            verb = "succeeded" if outcome.state == states.SUCCESS else "failed"
            if logger.isEnabledFor(level):
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
            # (a result in ``stored`` was written with its ack)
            if (
                outcome.payload is not None
                and job.store_result
                and job.delivery.token not in stored
            ):
                writes.append(ResultWrite(job.message.id, outcome.state, outcome.payload, expires))
            settled.append((job, outcome))
        if writes:
            self._through_outage("storing results", lambda: self.backend.store_many(writes))
        if settled:
            self.callbacks.after_settled(settled)
        for job, outcome in batch:
            if outcome.state == LOST:
                self._settle_lost(job, outcome)
            elif outcome.state == states.RETRY:
                self._settle_retry(job, outcome)

    def _fused_writes(
        self, finished: list[tuple[Job, Outcome]], late: list[Delivery], expires: float
    ) -> dict[str, object]:
        """Token -> result write for the broker to apply with the ack (one round trip
        instead of two, still fenced: a stale delivery stores nothing), when the
        backend can prepare them for this broker; else nothing."""
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
        moved = self._through_outage(
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
            self._through_outage("storing results", lambda: self.backend.store(write))
        if job.acks_late and not job.acked:
            # fenced: replaces the in-flight message, due at eta, delivery count reset
            if not self._through_outage(
                "retry", lambda: self.broker.retry(job.delivery, body, eta)
            ):
                logger.warning("%s asked to retry after its lease was lost: dropped", job.label)
                return
        else:  # acknowledged already: the next run is a new message
            outgoing = OutgoingMessage(msg.id, msg.queue, body, msg.priority, eta)
            self._through_outage("retry", lambda: self.broker.publish(outgoing))
        logger.info("%s %s", job.label, outcome.summary, extra=task_extra(msg.task, msg.id))

    def _pseudo_outcome(self, job: Job, outcome: Outcome) -> Outcome:
        """What a pool's own verdict (TIMED_OUT, TERMINATED) is stored as."""
        if outcome.state == TIMED_OUT:
            return self._time_limit_failure(job, outcome)
        if outcome.state == TERMINATED:
            exc = TaskRevokedError(outcome.summary)
            payload = encode_failure(
                job.message.task, exc, state=states.REVOKED, worker=self.hostname
            )
            return Outcome(states.REVOKED, payload, outcome.runtime, f"TaskRevokedError: {exc}")
        return outcome

    def _time_limit_failure(self, job: Job, outcome: Outcome) -> Outcome:
        """A job its pool ended at the hard limit: a FAILURE to store and acknowledge
        (never redelivered: it would only run into the same limit again)."""
        exc = TimeLimitExceeded(outcome.summary)
        payload = encode_failure(
            job.message.task, exc, worker=self.hostname, retries=job.message.retries
        )
        return Outcome(states.FAILURE, payload, outcome.runtime, f"TimeLimitExceeded: {exc}")

    def _settle_lost(self, job: Job, outcome: Outcome) -> None:
        if job.acks_late and self.app.conf.task_reject_on_worker_lost:
            disposition = self._through_outage("requeue", lambda: self.broker.requeue(job.delivery))
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
        self._store(job, states.FAILURE, WorkerLostError(reason))
