"""The prefork pool: child processes forked from the worker, one job at a time each.

The parent keeps the broker connection, the leases and every ack; children only
run task code. A child that dies mid-job (SIGKILL, OOM killer, ``os._exit``) is
noticed at once through its process sentinel: its job is reported LOST and a
new child takes its place.

Time limits: the child arms SIGALRM for the soft limit; the parent kills the
child at the hard limit, reports the job TIMED_OUT and starts another child.
Recycling: after each job the child checks ``worker_max_tasks_per_child`` and
``worker_max_memory_per_child`` and, if it must go, says so with the job's
outcome and exits; the parent gives it no more work and replaces it.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import NoReturn

from conveyor.worker.job import LOST, TERMINATED, Job, Outcome
from conveyor.worker.limits import PoolLimits, rss_kib, soft_alarm
from conveyor.worker.pools.base import Execute, OnDone, Pool, run_job, timed_out

logger = logging.getLogger("conveyor.worker")

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # A child orphaned by a SIGKILLed parent would finish its task and have it run
    # twice (the parent's lease expires); on Linux, ask the kernel to kill it too.
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _process_moment(execute: Execute, moment: str, *args: object) -> None:
    """``execute.process_init()`` / ``process_shutdown(code)`` if it has them (a
    ``JobRunner``: the hooks of a process that runs tasks); never the child's end."""
    call = getattr(execute, moment, None)
    if call is not None:
        try:
            call(*args)
        except Exception:
            logger.exception("%s of a pool child failed", moment)


def _leave(execute: Execute) -> NoReturn:
    _process_moment(execute, "process_shutdown", 0)
    os._exit(0)


def _child_main(conn: Connection, execute: Execute, parent_pid: int, limits: PoolLimits) -> None:
    # Shutdown is the parent's decision: a Ctrl-C sent to the process group
    # must not interrupt the task this child is running.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    if os.getppid() != parent_pid:
        os._exit(0)
    _process_moment(execute, "process_init")
    max_memory = limits.max_memory_per_child
    if max_memory is not None and (baseline := rss_kib()) >= max_memory:
        # Replacing this child after every task would only start another just as big.
        logger.warning(
            "a fresh pool child already uses %d KiB, above worker_max_memory_per_child "
            "(%d KiB): memory recycling is off for this child",
            baseline,
            max_memory,
        )
        max_memory = None
    done = 0
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            _leave(execute)
        job: Job | None = pickle.loads(data)
        if job is None:
            _leave(execute)
        with soft_alarm(job.soft_time_limit):
            # contained: a task's sys.exit() is its FAILURE, not this child's end (LOST)
            outcome = run_job(execute, job)
        done += 1
        retire = ""
        if limits.max_tasks_per_child is not None and done >= limits.max_tasks_per_child:
            retire = f"ran {done} tasks (worker_max_tasks_per_child)"
        elif max_memory is not None and (used := rss_kib()) > max_memory:
            retire = (
                f"uses {used} KiB after {done} tasks (worker_max_memory_per_child {max_memory})"
            )
        reply = pickle.dumps((outcome, retire), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            conn.send_bytes(reply)
        except (BrokenPipeError, OSError):
            os._exit(0)
        if retire:
            conn.close()
            _leave(execute)


@dataclass(slots=True)
class _Child:
    process: BaseProcess
    conn: Connection
    job: Job | None = None
    #: When the current job was sent (monotonic), for its hard time limit.
    job_sent: float = 0.0
    #: Why the child is leaving after its last job (recycling); it takes no more jobs.
    retiring: str = ""

    @property
    def hard_deadline(self) -> float | None:
        if self.job is None or self.job.time_limit is None:
            return None
        return self.job_sent + self.job.time_limit


class PreforkPool(Pool):
    """``concurrency`` forked children, kept at full strength."""

    name = "prefork"
    forks_children = True
    #: Children dying this many times in a row while running nothing (and with no job
    #: finished in between) means the pool cannot be kept alive (a crash at start, no
    #: memory to fork): the worker must exit so that its supervisor starts a new one.
    max_consecutive_deaths = 20

    def __init__(
        self,
        execute: Execute,
        concurrency: int,
        on_done: OnDone,
        limits: PoolLimits | None = None,
    ):
        super().__init__(execute, concurrency, on_done, limits)
        self._ctx = multiprocessing.get_context("fork")
        self._lock = threading.Lock()
        self._children: list[_Child] = []
        self._pending: collections.deque[Job] = collections.deque()
        self._stopping = False
        self._reader: threading.Thread | None = None
        self._deaths_in_a_row = 0
        # Written when a job with a hard time limit is sent, so that the reader thread,
        # waiting with an older timeout, wakes and waits for the new deadline instead.
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)

    # -- life cycle --------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            for _ in range(self.concurrency):
                self._children.append(self._spawn())
        self._reader = threading.Thread(target=self._read, name="conveyor-prefork", daemon=True)
        self._reader.start()

    def _spawn(self) -> _Child:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=_child_main,
            args=(child_conn, self.execute, os.getpid(), self.limits),
            name="conveyor-child",
            daemon=True,
        )
        process.start()
        child_conn.close()
        return _Child(process, parent_conn)

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            children = list(self._children)
        for child in children:
            if child.process.is_alive() and child.job is None:
                with contextlib.suppress(OSError):
                    child.conn.send_bytes(pickle.dumps(None))
        deadline = time.monotonic() + 1.0
        for child in children:
            if child.job is not None:
                child.process.kill()
            child.process.join(max(0.0, deadline - time.monotonic()))
            if child.process.is_alive():
                child.process.kill()
                child.process.join(1.0)
            child.conn.close()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"!")  # the reader sees _stopping and returns
        if self._reader is not None:
            self._reader.join(1.0)
        if self._reader is None or not self._reader.is_alive():
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)

    # -- jobs --------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        with self._lock:
            self._pending.append(job)
            self._dispatch()

    def _dispatch(self) -> None:
        # caller holds the lock
        for child in self._children:
            if not self._pending:
                return
            if child.job is None and not child.retiring and child.process.is_alive():
                job = self._pending.popleft()
                try:
                    child.conn.send_bytes(pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL))
                except OSError:
                    self._pending.appendleft(job)
                    continue
                child.job = job
                child.job_sent = time.monotonic()
                self.on_start(job)
                if job.time_limit is not None:
                    with contextlib.suppress(BlockingIOError):  # full: a wake-up is pending
                        os.write(self._wake_w, b"!")

    def resize(self, concurrency: int) -> int:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        leaving: list[_Child] = []
        with self._lock:
            if self._stopping:
                return len(self._children)
            while len(self._children) < concurrency:
                if not self._replace():
                    break
            for child in [c for c in self._children if c.job is None and not c.retiring]:
                if len(self._children) <= concurrency:
                    break
                self._children.remove(child)  # no longer watched: not reaped as a death
                leaving.append(child)
            self.concurrency = len(self._children)
            self._dispatch()
        for child in leaving:
            with contextlib.suppress(OSError):
                child.conn.send_bytes(pickle.dumps(None))
            child.process.join(1.0)
            if child.process.is_alive():
                child.process.kill()
                child.process.join(1.0)
            child.conn.close()
        return self.concurrency

    def take_pending(self) -> list[Job]:
        with self._lock:
            jobs = list(self._pending)
            self._pending.clear()
            return jobs

    def running(self) -> list[Job]:
        with self._lock:
            return [c.job for c in self._children if c.job is not None]

    def pids(self) -> list[int]:
        """Process ids of the current children."""
        with self._lock:
            return [c.process.pid for c in self._children if c.process.pid is not None]

    # -- the reader thread -----------------------------------------------------------

    def _read(self) -> None:
        while True:
            with self._lock:
                if self._stopping:
                    return
                by_conn = {c.conn: c for c in self._children}
                by_sentinel = {c.process.sentinel: c for c in self._children}
                deadlines = [d for c in self._children if (d := c.hard_deadline) is not None]
            timeout = 0.5
            if deadlines:
                timeout = min(timeout, max(0.0, min(deadlines) - time.monotonic()))
            waitables: list[Connection | int] = [*by_conn, *by_sentinel, self._wake_r]
            ready = multiprocessing.connection.wait(waitables, timeout=timeout)
            if self._wake_r in ready:
                os.read(self._wake_r, 4096)
            for obj in ready:
                if obj in by_conn:
                    self._receive(by_conn[obj])
            for obj in ready:
                if obj in by_sentinel:
                    self._reap(by_sentinel[obj])
            if deadlines:
                self._end_overdue()

    def _receive(self, child: _Child) -> None:
        try:
            outcome, retire = pickle.loads(child.conn.recv_bytes())
        except (EOFError, OSError):
            return  # the sentinel reports the death
        with self._lock:
            job, child.job = child.job, None
            child.retiring = retire
            self._deaths_in_a_row = 0
            self._dispatch()
        if job is not None:
            self.on_done(job, outcome)

    def _end_overdue(self) -> None:
        """Kill and replace each child whose job has passed its hard time limit."""
        now = time.monotonic()
        ended: list[tuple[_Child, Job]] = []
        with self._lock:
            if self._stopping:
                return
            for child in list(self._children):
                deadline = child.hard_deadline
                if deadline is None or deadline > now or child.job is None:
                    continue
                ended.append((child, child.job))
                child.job = None
                self._children.remove(child)
                if not self._replace():
                    break
            self._dispatch()
        for child, job in ended:
            self._kill(child)
            logger.error(
                "%s reached its hard time limit (%s s): pool child %s killed and replaced",
                job.label,
                job.time_limit,
                child.process.pid,
            )
            self.on_done(job, timed_out(job, "its process was killed"))

    @staticmethod
    def _kill(child: _Child) -> None:
        child.process.kill()
        child.process.join(1.0)
        child.conn.close()

    def terminate(self, job: Job) -> bool:
        """Kill the child running ``job`` (SIGKILL) and start another in its place."""
        with self._lock:
            found = [c for c in self._children if c.job is job]
            if self._stopping or not found:
                return False
            [child] = found
            child.job = None
            self._children.remove(child)
            self._replace()
            self._dispatch()
        self._kill(child)
        logger.warning(
            "%s revoked: pool child %s killed and replaced", job.label, child.process.pid
        )
        self.on_done(job, Outcome(TERMINATED, summary="revoked with terminate=True; killed"))
        return True

    def _replace(self) -> bool:
        # caller holds the lock: start a child in place of one that left
        try:
            self._children.append(self._spawn())
        except OSError as exc:
            logger.critical("cannot start a pool child: %s", exc)
            self.failed.set()
            return False
        return True

    def _reap(self, child: _Child) -> None:
        # The sentinel is readable once the dying child's descriptors are closed, a
        # moment before the kernel makes it waitable: join(0) could miss the exit code.
        child.process.join(1.0)
        code = child.process.exitcode
        with self._lock:
            if self._stopping or child not in self._children:
                return
            job, child.job = child.job, None
            self._children.remove(child)
            child.conn.close()
            if child.retiring and job is None and code == 0:
                logger.info("pool child %s %s: replaced", child.process.pid, child.retiring)
            elif job is None:
                # Dying while running nothing is the pool's failure, not a task's (a task
                # that kills its process is dead-lettered after broker_max_deliveries).
                self._deaths_in_a_row += 1
            if self._deaths_in_a_row > self.max_consecutive_deaths:
                logger.critical("pool children keep dying (last exit code %s): giving up", code)
                self.failed.set()
                return
            if not self._replace():
                return
            self._dispatch()
        if job is not None:
            how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            logger.error("pool child died running %s (%s); child replaced", job.label, how)
            self.on_done(job, Outcome(LOST, summary=f"worker process exited ({how})"))
