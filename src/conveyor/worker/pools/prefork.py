"""The prefork pool: child processes forked from the worker, one job at a time each.

The parent keeps the broker connection, the leases and every ack; children only
run task code. A child that dies mid-job (SIGKILL, OOM killer, ``os._exit``) is
noticed at once through its process sentinel: its job is reported LOST and a
new child takes its place.
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

from conveyor.worker.job import LOST, Job, Outcome
from conveyor.worker.pools.base import Execute, OnDone, Pool

logger = logging.getLogger("conveyor.worker")

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # A child orphaned by a SIGKILLed parent would finish its task and have it run
    # twice (the parent's lease expires); on Linux, ask the kernel to kill it too.
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _child_main(conn: Connection, execute: Execute, parent_pid: int) -> None:
    # Shutdown is the parent's decision: a Ctrl-C sent to the process group
    # must not interrupt the task this child is running.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    if os.getppid() != parent_pid:
        os._exit(0)
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            os._exit(0)
        job = pickle.loads(data)
        if job is None:
            os._exit(0)
        outcome = execute(job)
        try:
            conn.send_bytes(pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL))
        except (BrokenPipeError, OSError):
            os._exit(0)


@dataclass(slots=True)
class _Child:
    process: BaseProcess
    conn: Connection
    job: Job | None = None


class PreforkPool(Pool):
    """``concurrency`` forked children, kept at full strength."""

    name = "prefork"
    #: Children dying this many times in a row without finishing any job means the
    #: pool cannot be kept alive (e.g. a crash at import): the worker must exit.
    max_consecutive_deaths = 20

    def __init__(self, execute: Execute, concurrency: int, on_done: OnDone):
        super().__init__(execute, concurrency, on_done)
        self._ctx = multiprocessing.get_context("fork")
        self._lock = threading.Lock()
        self._children: list[_Child] = []
        self._pending: collections.deque[Job] = collections.deque()
        self._stopping = False
        self._reader: threading.Thread | None = None
        self._deaths_in_a_row = 0

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
            args=(child_conn, self.execute, os.getpid()),
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
            if child.job is None and child.process.is_alive():
                job = self._pending.popleft()
                try:
                    child.conn.send_bytes(pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL))
                except OSError:
                    self._pending.appendleft(job)
                    continue
                child.job = job

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
            ready = multiprocessing.connection.wait([*by_conn, *by_sentinel], timeout=0.5)
            for obj in ready:
                if obj in by_conn:
                    self._receive(by_conn[obj])
            for obj in ready:
                if obj in by_sentinel:
                    self._reap(by_sentinel[obj])

    def _receive(self, child: _Child) -> None:
        try:
            outcome: Outcome = pickle.loads(child.conn.recv_bytes())
        except (EOFError, OSError):
            return  # the sentinel reports the death
        with self._lock:
            job, child.job = child.job, None
            self._deaths_in_a_row = 0
            self._dispatch()
        if job is not None:
            self.on_done(job, outcome)

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
            self._deaths_in_a_row += 1
            if self._deaths_in_a_row > self.max_consecutive_deaths:
                logger.critical("pool children keep dying (last exit code %s): giving up", code)
                self.failed.set()
                return
            try:
                self._children.append(self._spawn())
            except OSError as exc:
                logger.critical("cannot start a pool child: %s", exc)
                self.failed.set()
                return
            self._dispatch()
        if job is not None:
            how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            logger.error("pool child died running %s (%s); child replaced", job.label, how)
            self.on_done(job, Outcome(LOST, summary=f"worker process exited ({how})"))
