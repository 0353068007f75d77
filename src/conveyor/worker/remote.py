"""A worker's side of ``app.control``: its entry in the broker's worker registry, and
the commands of ``conveyor inspect`` and ``conveyor control``.

Two threads, which a broker outage never ends (it is logged once, then retried)::

    conveyor-monitor   every HEARTBEAT_SECONDS, ``Broker.worker_beat`` with what the
                       worker is (pid, pool, queues...) and does (running, processed)
    conveyor-control   reads the control stream from where it stood at start, runs each
                       command meant for this worker (``worker/commands.py``), adds the reply

``Remote`` is also one of the worker's hooks: it counts the tasks settled, by name,
remembers the ids refused as revoked, and when each job started. A command changes
this worker process only, until it restarts (as in Celery).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

from conveyor.control.protocol import (
    CONTROL_STREAM,
    HEARTBEAT_SECONDS,
    REPLY_MAXLEN,
    REPLY_TTL,
    WORKER_TTL,
    Command,
    encode_reply,
    reply_stream,
)
from conveyor.hooks import Hook
from conveyor.worker.commands import HANDLERS, VERSION
from conveyor.worker.job import Job, Outcome

if TYPE_CHECKING:
    from conveyor.task import Task
    from conveyor.worker.worker import Worker

logger = logging.getLogger("conveyor.worker")

#: Seconds the control thread waits for a command in one read (and so to stop).
READ_TIMEOUT = 1.0
#: Revoked ids remembered for ``inspect revoked``.
REVOKED_KEPT = 10_000


class Remote(Hook):
    """The registry beat, the control thread and the counters of one worker."""

    def __init__(self, worker: Worker):
        self.worker = worker
        self.broker = worker.broker
        self.hostname = worker.hostname
        self.since = time.time()
        self.processed = 0
        self.totals: Counter[str] = Counter()
        self.revoked_ids: deque[str] = deque(maxlen=REVOKED_KEPT)
        self._started_at: dict[str, float] = {}  # delivery token -> UNIX time it started
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listening = threading.Event()
        self._beat_thread: threading.Thread | None = None
        self._beat_failing = False
        #: The pool size last asked for by remote control (a prefork pool shrinks only
        #: as its children go idle: asked again with each beat until it has).
        self._size: int | None = None
        worker.hooks.add(self)

    # -- life cycle -------------------------------------------------------------------

    def start(self) -> None:
        """Start listening for commands, then beating (a registered worker listens)."""
        threading.Thread(target=self._listen, name="conveyor-control", daemon=True).start()
        self._beat_thread = threading.Thread(
            target=self._beat, name="conveyor-monitor", daemon=True
        )
        self._beat_thread.start()

    def stop(self) -> None:
        """Stop beating and leave the registry at once. The control thread ends within
        its read timeout (READ_TIMEOUT) and runs nothing more meanwhile."""
        self._stop.set()
        if self._beat_thread is not None:
            self._beat_thread.join(1.0)  # a beat under way; not a whole outage's retries
        if self._beat_failing or (self._beat_thread and self._beat_thread.is_alive()):
            return  # the broker is out of reach: the entry expires (WORKER_TTL)
        try:
            self.broker.worker_gone(self.hostname)
        except Exception as exc:
            logger.warning("could not leave the worker registry (%s): it expires", exc)

    # -- hook moments -----------------------------------------------------------------

    def started(self, job: Job) -> None:
        # The pool calls this, maybe under its lock: a dict write, nothing that blocks.
        self._started_at[job.delivery.token] = time.time()

    def finished(self, job: Job, task: Task[..., Any] | None, outcome: Outcome | None) -> None:
        self._started_at.pop(job.delivery.token, None)

    def settled(self, batch: Sequence[tuple[Job, Outcome]]) -> None:
        with self._lock:
            self.processed += len(batch)
            self.totals.update(job.message.task for job, _ in batch)

    def revoked(self, job: Job, task: Task[..., Any], *, expired: bool, terminated: bool) -> None:
        if not expired:
            self.revoked_ids.append(job.message.id)

    # -- the registry -----------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """What the worker publishes in the registry with each beat."""
        worker = self.worker
        try:
            loadavg: list[float] = list(os.getloadavg())
        except OSError:
            loadavg = []
        return {
            "name": self.hostname,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "pool": worker.pool.name,
            "concurrency": worker.pool.concurrency,
            "queues": list(worker.fetcher.queues),
            "active": len(worker.pool.running()),
            "processed": self.processed,
            "version": VERSION,
            "started": self.since,
            "heartbeat": time.time(),
            "freq": HEARTBEAT_SECONDS,
            "prefetch": worker.holdings.capacity,
            "loadavg": loadavg,
        }

    def _beat(self) -> None:
        self._listening.wait(5.0)  # a worker in the registry must hear the commands
        while True:
            try:
                self.broker.worker_beat(self.hostname, orjson.dumps(self.info()), WORKER_TTL)
                if self._beat_failing:
                    logger.info("the worker registry is reachable again")
                self._beat_failing = False
            except Exception as exc:
                if not self._beat_failing:
                    logger.warning("could not beat in the worker registry (%s): retrying", exc)
                self._beat_failing = True
            if self._stop.wait(HEARTBEAT_SECONDS):
                return
            self._follow_size()

    def _follow_size(self) -> None:
        pool = self.worker.pool
        if self._size is None or self.worker.autoscaler is not None:
            return  # the autoscaler asks again itself
        if pool.concurrency > self._size:
            try:
                pool.resize(self._size)
            except Exception as exc:
                logger.warning("could not shrink the pool to %d: %s", self._size, exc)

    # -- the control channel ----------------------------------------------------------

    def _listen(self) -> None:
        cursor: str | None = None
        failing = False
        while not self._stop.is_set():
            try:
                if cursor is None:
                    cursor = self.broker.stream_last(CONTROL_STREAM)
                    self._listening.set()
                entries = self.broker.stream_read(CONTROL_STREAM, cursor, timeout=READ_TIMEOUT)
            except Exception as exc:
                if self._stop.is_set():
                    return
                if not failing:
                    logger.warning("could not read the control channel (%s): retrying", exc)
                failing = True
                self._stop.wait(1.0)
                continue
            if failing:
                logger.info("the control channel is reachable again")
                failing = False
            for entry in entries:
                cursor = entry.id
                if self._stop.is_set():
                    return
                self._run(entry.body)

    def _run(self, body: bytes) -> None:
        """Run one command from the stream, if it is this worker's; reply if asked."""
        try:
            command = Command.decode(body)
        except (ValueError, TypeError) as exc:
            logger.warning("ignored a malformed control command: %s", exc)
            return
        if not command.for_worker(self.hostname):
            return
        reply = self.execute(command.command, command.arguments)
        if not command.reply:
            return
        try:
            self.broker.stream_add(
                reply_stream(command.id),
                [encode_reply(self.hostname, reply)],
                maxlen=REPLY_MAXLEN,
                ttl=REPLY_TTL,
            )
        except Exception as exc:
            logger.warning("could not reply to control command %s: %s", command.command, exc)

    def execute(self, name: str, arguments: dict[str, Any]) -> Any:
        """The reply of command ``name``; a handler's error is the reply, never raised."""
        found = HANDLERS.get(name)  # conveyor.worker.commands
        if found is None:
            return {"error": f"unknown command {name!r}"}
        logger.debug("control command %s %s", name, arguments)
        try:
            return found(self, **arguments)
        except TypeError as exc:
            return {"error": f"bad arguments for {name}: {exc}"}
        except Exception as exc:
            logger.exception("control command %s failed", name)
            return {"error": f"{type(exc).__name__}: {exc}"}

    # -- what the handlers read -------------------------------------------------------

    def task_info(self, job: Job) -> dict[str, Any]:
        """A held job as Celery's ``inspect active`` / ``reserved`` show a request."""
        msg = job.message
        in_process = not self.worker.pool.forks_children
        return {
            "id": msg.id,
            "name": msg.task,
            "args": msg.args,
            "kwargs": msg.kwargs,
            "type": msg.task,
            "hostname": self.hostname,
            "time_start": self._started_at.get(job.delivery.token),
            "acknowledged": job.acked,
            "delivery_info": {
                "exchange": "",
                "routing_key": msg.queue,
                "priority": msg.priority,
                "redelivered": job.delivery.deliveries > 1,
            },
            # a prefork child's pid is the pool's own business: not known here
            "worker_pid": os.getpid() if in_process else None,
        }

    def held(self) -> tuple[list[Job], list[Job]]:
        """(running, reserved): the jobs started, and those held and not started."""
        running = self.worker.pool.running()
        tokens = {job.delivery.token for job in running}
        reserved = [
            job
            for job in self.worker.holdings.jobs()
            if job.delivery.token not in tokens and not job.settling
        ]
        return running, reserved

    def resize(self, size: int) -> int:
        """Resize the pool to ``size`` (at least 1), and the room to fetch for with it."""
        worker = self.worker
        self._size = max(size, 1)
        reached = worker.pool.resize(self._size)
        scaler = worker.autoscaler
        # the size asked for, not reached: a busy prefork pool shrinks later, but the
        # worker holds less from now on
        slots = scaler.maximum if scaler is not None else self._size
        if not worker.pool.runs_inline:
            with worker.holdings.cond:
                worker.holdings.capacity = slots * worker.options.prefetch_multiplier
                worker.holdings.cond.notify_all()
        return reached
