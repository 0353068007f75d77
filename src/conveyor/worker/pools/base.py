"""The pool interface: run jobs, report outcomes, give back what has not started."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable

from conveyor import states
from conveyor.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from conveyor.result import encode_failure
from conveyor.worker.job import TIMED_OUT, Job, Outcome, crashed
from conveyor.worker.limits import PoolLimits

Execute = Callable[[Job], Outcome]
OnDone = Callable[[Job, Outcome], None]


def _nothing(job: Job) -> None:
    pass


class Pool(ABC):
    """Runs jobs with bounded concurrency; the consumer does not care how.

    ``on_done(job, outcome)`` is called exactly once per submitted job that
    started, from any thread; a job whose process died reports state LOST. An
    ``execute`` that raises (anything, ``BaseException`` included) reports a FAILURE
    (see ``run_job``): the pool keeps its threads, processes and slots.
    """

    name: str
    #: ``submit`` runs the job in the calling thread before it returns (solo): the
    #: worker's fetch loop is then busy running a task, not stuck.
    runs_inline: bool = False
    #: Tasks run in child processes, each of which starts and stops as one that runs
    #: tasks (``process_init``); else they run in the worker's own process.
    forks_children: bool = False

    def __init__(
        self,
        execute: Execute,
        concurrency: int,
        on_done: OnDone,
        limits: PoolLimits | None = None,
    ):
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.execute = execute
        self.concurrency = concurrency
        self.on_done = on_done
        self.limits = limits or PoolLimits()
        #: Set when the pool can no longer run jobs; the worker then exits non-zero.
        self.failed = threading.Event()
        #: Called as each job leaves the queue inside the pool to run, from any thread,
        #: possibly under the pool's lock: it must not block (the worker acks early here).
        self.on_start: Callable[[Job], None] = _nothing

    @abstractmethod
    def start(self) -> None:
        """Create the threads or processes. Called once, before any submit."""

    @abstractmethod
    def submit(self, job: Job) -> None:
        """Run ``job`` as soon as a slot is free (jobs wait in order inside the pool)."""

    @abstractmethod
    def take_pending(self) -> list[Job]:
        """Remove and return the submitted jobs that have not started."""

    def may_settle_inline(self) -> bool:
        """Whether the thread calling ``on_done`` may block in it to settle the outcome
        itself: a thread of the pool's own that ran the job, with no job waiting for
        it (not an event loop, a reader thread or the time-limit watcher)."""
        return False

    @abstractmethod
    def running(self) -> list[Job]:
        """The jobs that have started and not reported back."""

    def terminate(self, job: Job) -> bool:
        """Stop ``job`` if it is running here (revoke with terminate). The pool then
        reports it TERMINATED, or the task fails with TaskRevokedError raised inside
        it. False if this pool cannot stop it (or it is not running)."""
        return False

    def resize(self, concurrency: int) -> int:
        """Run up to ``concurrency`` jobs at once from now on (``--autoscale``); returns
        the size reached. Shrinking never interrupts a running job: a pool may stay
        above ``concurrency`` until its busy slots free up, and is asked again."""
        raise NotImplementedError(f"the {self.name} pool cannot be resized")

    @abstractmethod
    def stop(self) -> None:
        """End the pool now; jobs still running are abandoned (their processes killed
        where the pool owns processes). Their outcomes are not reported."""


def run_job(execute: Execute, job: Job) -> Outcome:
    """``execute(job)`` where a pool runs it (a thread, a prefork child); never raises.

    A limit's exception is raised only inside the task's code (see
    ``limits.interruptible``), where ``execute`` catches it; this is the safety net
    should one still arrive as the task returns, and for an ``execute`` that raises
    anything else: that is the job's FAILURE, never the end of the pool's thread.
    """
    try:
        return execute(job)
    except TimeLimitExceeded:
        return timed_out(job, "TimeLimitExceeded arrived as the task ended")
    except SoftTimeLimitExceeded as exc:
        exc.args = exc.args or ("soft time limit exceeded as the task ended",)
        payload = encode_failure(job.message.task, exc)
        return Outcome(states.FAILURE, payload, summary=f"SoftTimeLimitExceeded: {exc}")
    except BaseException as exc:
        return crashed(job, exc)


def timed_out(job: Job, why: str = "") -> Outcome:
    """The outcome of a job ended at its hard time limit."""
    summary = f"hard time limit ({job.time_limit:g} s) exceeded" if job.time_limit else why
    if why and job.time_limit:
        summary = f"{summary}: {why}"
    return Outcome(TIMED_OUT, runtime=job.time_limit or 0.0, summary=summary)
