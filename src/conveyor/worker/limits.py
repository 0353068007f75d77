"""Time limits and recycling: interrupting a task, and when a pool child retires.

How each pool enforces a limit (docs/worker.md has this table for users)::

    pool      soft limit (SoftTimeLimitExceeded in the task)   hard limit
    prefork   SIGALRM in the child                              child killed and replaced
    threads   raised in the task's thread: best effort, it      TimeLimitExceeded raised in
              lands at the next Python bytecode (not inside     the thread; if the task has not
              a blocking C call such as time.sleep)             ended 1 s later, the thread is
                                                                abandoned and replaced
    solo      as threads                                        raised in the thread only
    asyncio   async task: cancelled (CancelledError inside,     cancelled, the slot freed at
              SoftTimeLimitExceeded as its outcome);            once; a task that ignores the
              sync task: as threads                             cancellation is abandoned;
                                                                sync task: as threads

A task that reaches its hard limit fails with TimeLimitExceeded and is
acknowledged: it is not delivered again.
"""

from __future__ import annotations

import contextlib
import ctypes
import heapq
import logging
import os
import resource
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING

from conveyor.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

if TYPE_CHECKING:  # job.py imports this module
    from conveyor.worker.job import Job

logger = logging.getLogger("conveyor.worker")

#: Seconds a thread gets to end after TimeLimitExceeded was raised in it, before the
#: pool gives up on it (threads pool: abandons the thread and starts another).
HARD_GRACE = 1.0


@dataclass(frozen=True, slots=True)
class PoolLimits:
    """Recycling limits for pools that own processes (prefork)."""

    max_tasks_per_child: int | None = None
    max_memory_per_child: int | None = None  # KiB, as in Celery


# -- raising an exception inside running task code ------------------------------------------

# Threads (by ident) now inside task code, with the token of the job they run there: a
# limit's exception is raised only in the job it was meant for. Read without the lock
# by the SIGALRM handler (a dict lookup is atomic under the GIL).
_inside: dict[int, object] = {}
_inside_lock = threading.Lock()


@contextlib.contextmanager
def interruptible(token: object = None) -> Iterator[None]:
    """Mark the calling thread as running the task code of ``token`` (its job) for the
    duration of the block.

    ``interrupt`` and the soft-limit alarm raise only inside such a block, so a
    limit that expires as the task returns never lands in the pool's own code,
    nor in the next job of the same thread.
    """
    ident = threading.get_ident()
    with _inside_lock:
        _inside[ident] = token
    try:
        yield
    finally:
        with _inside_lock:
            _inside.pop(ident, None)


def interrupt(ident: int, exc: type[BaseException], token: object = None) -> bool:
    """Raise ``exc`` in thread ``ident`` at its next bytecode, if it runs the task code
    of ``token``.

    Best effort: a thread blocked in C code (``time.sleep``, a socket read) sees
    the exception only when that call returns. True if the exception was set.
    """
    with _inside_lock:
        if ident not in _inside or _inside[ident] is not token:
            return False
        done = ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(ident), ctypes.py_object(exc)
        )
    return int(done) == 1


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    if threading.get_ident() in _inside:
        raise SoftTimeLimitExceeded("soft time limit exceeded")


@contextlib.contextmanager
def soft_alarm(seconds: float | None) -> Iterator[None]:
    """Raise SoftTimeLimitExceeded in task code after ``seconds`` (prefork children,
    whose tasks run in the main thread: the only one that receives signals)."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# -- deadlines of jobs running in threads ------------------------------------------------------

OnOverrun = Callable[["Job", int], None]


@dataclass(order=True, slots=True)
class _Event:
    at: float
    kind: str = field(compare=False)  # "soft", "hard" or "overrun"
    job: Job | None = field(compare=False)  # None once the job has ended
    ident: int = field(compare=False)


class Deadlines:
    """Soft and hard time limits of jobs that run in threads (threads, solo, asyncio's
    sync tasks): one watcher thread raises each limit's exception in the job's thread,
    and ``HARD_GRACE`` seconds after the hard limit calls ``on_overrun(job, ident)`` if
    the job still runs (the pool may then abandon the thread)."""

    def __init__(self, on_overrun: OnOverrun | None = None, grace: float = HARD_GRACE):
        self.on_overrun = on_overrun
        self.grace = grace
        self._cond = threading.Condition()
        self._events: list[_Event] = []
        self._running: dict[int, Job] = {}  # thread ident -> job
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._ended = 0  # events in the heap whose job has ended

    @contextlib.contextmanager
    def watch(self, job: Job) -> Iterator[None]:
        """Enforce ``job``'s limits on the calling thread while the block runs."""
        if job.soft_time_limit is None and job.time_limit is None:
            yield
            return
        ident = threading.get_ident()
        now = time.monotonic()
        events = []
        if job.soft_time_limit is not None:
            events.append(_Event(now + job.soft_time_limit, "soft", job, ident))
        if job.time_limit is not None:
            events.append(_Event(now + job.time_limit, "hard", job, ident))
        with self._cond:
            self._running[ident] = job
            for event in events:
                heapq.heappush(self._events, event)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._watch, name="conveyor-time-limits", daemon=True
                )
                self._thread.start()
            self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                if self._running.get(ident) is job:
                    del self._running[ident]
                self._forget(events)

    def _forget(self, events: list[_Event]) -> None:
        # caller holds the lock: drop the ended job from its events (they stay in the
        # heap until due), and rebuild the heap once it is mostly such events, so that
        # long limits on many short jobs cannot pile jobs up in memory
        for event in events:
            if event.job is not None:
                event.job = None
                self._ended += 1
        if self._ended > 64 and self._ended * 2 > len(self._events):
            self._events = [e for e in self._events if e.job is not None]
            heapq.heapify(self._events)
            self._ended = 0

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _watch(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    if self._events and self._events[0].at <= time.monotonic():
                        break
                    wait = self._events[0].at - time.monotonic() if self._events else None
                    self._cond.wait(wait)
                if self._stopped:
                    return
                event = heapq.heappop(self._events)
                job, event.job = event.job, None  # out of the heap: _forget skips it
                if job is None:
                    self._ended -= 1
                    continue
                if self._running.get(event.ident) is not job:
                    continue  # the job has ended
                if event.kind == "hard" and self.on_overrun is not None:
                    overrun = _Event(event.at + self.grace, "overrun", job, event.ident)
                    heapq.heappush(self._events, overrun)
                if event.kind == "overrun":
                    del self._running[event.ident]
            if event.kind == "soft":
                interrupt(event.ident, SoftTimeLimitExceeded, job)
            elif event.kind == "hard":
                interrupt(event.ident, TimeLimitExceeded, job)
            elif self.on_overrun is not None:
                self.on_overrun(job, event.ident)


# -- memory ---------------------------------------------------------------------------------


def rss_kib() -> int:
    """This process's resident memory now, in KiB (peak RSS where /proc is missing)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            resident_pages = int(f.read().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
