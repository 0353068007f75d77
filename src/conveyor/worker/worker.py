"""The worker: its life cycle, and the parts it is made of.

Threads of a worker process and what each owns::

    main        signals, supervision (watchdog, heartbeat file), the shutdown sequence
    fetcher     fetch for the free room, admit, hold, pool.submit   (worker/fetching.py)
    settler     outcomes -> acks with results -> settled hooks       (worker/settling.py)
    heartbeat   lease renewal for everything held; reclaim of dead consumers' leases
    revokes     stops running tasks revoked with terminate=True
    services    optional, started and stopped with the worker (``--beat``: the scheduler)

What happens to a job on its way is a list of hooks (``conveyor.hooks``): the
worker's own admission first (expiry, revokes, rate limits, concurrency caps,
unique keys), then the app's (Celery's signals), then the canvas callbacks. The
worker holds at most ``concurrency x prefetch_multiplier`` unacknowledged
deliveries (solo: one), and fetches for all free slots at once. It knows the
broker and backend contracts only.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from conveyor import states
from conveyor.brokers.base import Delivery, Disposition
from conveyor.exceptions import WorkerLostError
from conveyor.hooks import Hooks
from conveyor.relay import SignalRelay
from conveyor.worker.admission import Admission
from conveyor.worker.autoscale import KEEPALIVE, Autoscaler
from conveyor.worker.callbacks import Callbacks
from conveyor.worker.fetching import Fetcher
from conveyor.worker.heartbeat import Heartbeat
from conveyor.worker.holdings import Holdings
from conveyor.worker.job import Job, JobRunner, Outcome
from conveyor.worker.limits import PoolLimits
from conveyor.worker.liveness import HeartbeatFile
from conveyor.worker.monitors import Monitoring
from conveyor.worker.pools import POOLS, Pool
from conveyor.worker.remote import Remote
from conveyor.worker.settling import Settler

if TYPE_CHECKING:
    from conveyor.app import Conveyor

logger = logging.getLogger("conveyor.worker")

#: Seconds between two checks of running tasks for revokes with terminate=True.
REVOKE_CHECK_EVERY = 0.5
#: Longest a shutdown signal received during start-up waits for worker_ready.
READY_WAIT = 5.0


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
        self.broker = app.broker
        self.backend = app.backend
        self.admission = Admission(
            self.broker, app.conf.task_default_rate_limit, self.broker.options.lease_seconds
        )
        self.callbacks = Callbacks(app, self.hostname)
        #: The hooks of this worker process, in order (see the module docstring).
        self.monitoring = Monitoring(app, self.hostname)  # counters, events (-E)
        self.hooks = Hooks([self.admission, *app.hooks, self.callbacks, self.monitoring])
        self.runner = JobRunner(app, self.hostname)
        pool_cls = POOLS[options.pool]
        limits = PoolLimits(
            max_tasks_per_child=app.conf.worker_max_tasks_per_child,
            max_memory_per_child=app.conf.worker_max_memory_per_child,
        )
        size = options.autoscale[1] if options.autoscale else options.concurrency
        self._shutdown = threading.Event()
        self._ready = threading.Event()
        self._stop_fetching = threading.Event()
        self._cold = threading.Event()
        # With autoscale, fetch for the largest pool: demand above the pool's size is
        # what makes it grow. Solo runs each job inside the fetch loop: a prefetched
        # delivery would wait there, its lease not renewed, while the jobs before run.
        slots = options.autoscale[0] if options.autoscale else options.concurrency
        self.holdings = Holdings(slots * options.prefetch_multiplier)
        self.pool: Pool = pool_cls(self.runner, size, self._on_done, limits)
        if self.pool.runs_inline:
            self.holdings.capacity = 1
        self.settler = Settler(app, self.hostname, self.holdings, self.hooks, self.pool, self._cold)
        self.pool.on_start = self.settler.on_start
        self.autoscaler = (
            Autoscaler(
                self.pool, options.autoscale[1], options.autoscale[0], options.autoscale_keepalive
            )
            if options.autoscale
            else None
        )
        self.fetcher = Fetcher(
            app,
            self.hostname,
            options.queues,
            options.fetch_timeout,
            self.holdings,
            self.hooks,
            self.pool,
            self.settler,
            self._stop_fetching,
            self.autoscaler,
            consumer=self.consumer_id,
        )
        self.settler.refill = self.fetcher.refill
        self._threads: list[threading.Thread] = []
        self.heartbeat = Heartbeat(
            self.broker, self.holdings.unacked, self._lease_lost, self._renew_slots
        )
        self.exit_code = 0
        self.liveness = HeartbeatFile(options.heartbeat_file) if options.heartbeat_file else None
        #: The worker registry and the control channel (``app.control``); one of the hooks.
        self.remote = Remote(self)

    @property
    def capacity(self) -> int:
        """How many unacknowledged deliveries the worker holds at most."""
        return self.holdings.capacity

    def _on_done(self, job: Job, outcome: Outcome) -> None:
        # The pool calls this; the settler is made after the pool, which needs a callback.
        self.settler.on_done(job, outcome)

    # -- running -------------------------------------------------------------------

    def start(self) -> None:
        """Start the pool and the worker threads (the pool first: prefork forks)."""
        self.hooks.worker_init(self)
        self.pool.start()
        if not self.pool.forks_children:
            self.runner.process_init()  # the tasks run in this process
        self._threads = [self.fetcher.start(), self._spawn(self.settler.run, "conveyor-settler")]
        self._spawn(self._watch_revokes, "conveyor-revokes")
        self.heartbeat.start()
        self.remote.start()
        for service in self.services:
            service.start()
        self.hooks.worker_ready(self)
        self._ready.set()

    @staticmethod
    def _spawn(target: Callable[[], None], name: str) -> threading.Thread:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        return thread

    def _watch_fetcher(self) -> None:
        stuck = self.fetcher.stuck_for()
        if stuck > self.options.watchdog_timeout:
            # The stuck loop exits on its own if it ever returns (its generation is old);
            # one running a task itself (solo) is busy, never stuck.
            stalled = time.monotonic() - self.fetcher.alive
            logger.critical("no fetch has succeeded for %.0f s: restarting the fetch loop", stalled)
            self._threads[0] = self.fetcher.start()

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
                self.hooks.worker_shutting_down(self, "", "Cold", 1)
                break
            self._watch_fetcher()
            if self.autoscaler is not None:
                self.autoscaler.update(len(self.holdings))
            if self.liveness is not None:
                self.liveness.update(self.fetcher.age())
        self.shutdown()
        return self.exit_code

    def request_shutdown(self, cold: bool = False) -> None:
        """Begin a warm shutdown; a second request (or ``cold=True``) makes it cold."""
        if cold or self._shutdown.is_set():
            self._cold.set()
        self._shutdown.set()
        self._stop_fetching.set()
        self.holdings.wake()  # a fetch loop waiting for room stops now

    def _on_signal(self, signum: int) -> None:
        """SIGTERM / SIGINT, in the signal relay's thread (see ``conveyor.relay``)."""
        name = signal.Signals(signum).name
        # A signal during start-up (tasks may run before it ends) is told after
        # worker_ready: receivers see the worker's life in order. Never for long: a
        # start that hangs must not keep the worker from stopping.
        self._ready.wait(READY_WAIT)
        cold = self._shutdown.is_set()
        if cold:
            logger.warning("%s again: cold shutdown, returning running tasks to the queue", name)
        else:
            logger.warning(
                "%s: warm shutdown (running tasks may take up to %.0f s; again for cold)",
                name,
                self.options.shutdown_timeout,
            )
        self.hooks.worker_shutting_down(self, name, "Cold" if cold else "Warm", 0)
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
        still = self.holdings.wait_empty(deadline, self._cold)
        if still:
            why = "cold shutdown" if self._cold.is_set() else "shutdown timeout reached"
            self._give_back(still, f"still running at {why}", started=True)
        self.settler.stop()
        if len(self._threads) > 1:
            self._threads[1].join(5)
        self.heartbeat.stop()
        self.pool.stop()
        if not self.pool.forks_children:
            self.runner.process_shutdown(self.exit_code)
        if self.liveness is not None:
            self.liveness.remove()
        self.remote.stop()
        self.hooks.worker_shutdown(self)
        logger.info("worker %s stopped", self.hostname)

    def _give_back(self, jobs: list[Job], why: str, *, started: bool) -> None:
        for job in jobs:
            if not self.holdings.take(job):
                continue  # settled (or being settled) meanwhile
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
            self.settler.store_end(job, states.FAILURE, WorkerLostError(reason))

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
        held = [(j.message.task, j.delivery) for j in self.holdings.jobs()]
        tasks = self.app.tasks
        self.admission.renew([(tasks[name], d) for name, d in held if name in tasks])

    def held_deliveries(self) -> list[Delivery]:
        return self.holdings.unacked()

    def _lease_lost(self, message_id: str) -> None:
        jobs = [j for j in self.holdings.jobs() if j.delivery.id == message_id and not j.settling]
        for job in jobs:
            logger.warning("lease of %s was lost; its result will be refused", job.label)
