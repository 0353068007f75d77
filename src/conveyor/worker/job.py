"""A job (one delivery to run) and its outcome, and the functions that run a job.

``execute`` runs wherever the pool runs tasks: a prefork child, a pool thread,
or the consumer thread itself (solo); ``execute_async`` is the same run awaited
on an event loop (the asyncio pool). Both call the task through its ``__call__`` (a
subclass's own applies), with waiting for results denied inside
(``disable_sync_subtasks``). Neither touches the broker: settling a delivery is the
consumer's job, in the parent, fenced by the delivery token. A task that raises
``Ignore`` or ``Reject`` ends as an IGNORED or REJECTED outcome, not a failure.

Neither raises: whatever a task raises, ``BaseException`` included (``sys.exit()``,
a ``KeyboardInterrupt`` or ``CancelledError`` of its own), and whatever fails around
it, ends as the job's FAILURE outcome, so a pool never loses a thread, a process or
a slot to a task. Only the pool's own interruptions pass through: a time limit or a
terminate that lands as the task returns (``pools.base.run_job`` decides), and the
cancellation of an async job by its pool.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import time
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from conveyor import states
from conveyor.brokers.base import Delivery
from conveyor.exceptions import (
    EncodeError,
    Ignore,
    Reject,
    Retry,
    SoftTimeLimitExceeded,
    TaskRevokedError,
    TimeLimitExceeded,
)
from conveyor.hooks import Hooks
from conveyor.message import Message, encode
from conveyor.result import denied_join_result, encode_failure, encode_success
from conveyor.signing import sign
from conveyor.task import Request, Task, from_timestamp, request_context, run_coroutine
from conveyor.worker.handlers import TaskHandlers, TrackStarted
from conveyor.worker.limits import interruptible

if TYPE_CHECKING:
    from conveyor.app import Conveyor

logger = logging.getLogger("conveyor.task")

#: Outcome state of a job whose process died before it reported back.
LOST = "LOST"
#: Outcome state of a job its pool ended at its hard time limit (the consumer records
#: it as a FAILURE with TimeLimitExceeded and acknowledges it).
TIMED_OUT = "TIMED_OUT"
#: Outcome state of a job its pool stopped because it was revoked with terminate (the
#: consumer records it as REVOKED and acknowledges it).
TERMINATED = "TERMINATED"
#: Outcome states of a task that raised ``Ignore`` (or was replaced: acknowledged, no
#: result, no callbacks) or ``Reject`` (requeued or dead-lettered), as Celery names them.
IGNORED = states.IGNORED
REJECTED = states.REJECTED


@dataclass(slots=True)
class Job:
    """One delivery, decoded, with the options that decide how it is settled."""

    delivery: Delivery
    message: Message
    acks_late: bool = True
    store_result: bool = True
    track_started: bool = False
    #: Seconds after which SoftTimeLimitExceeded is raised in the task (None: never).
    soft_time_limit: float | None = None
    #: Seconds after which the pool ends the task for certain (None: never).
    time_limit: float | None = None
    #: Acknowledged as it started (acks early): no longer renewed nor given back.
    acked: bool = False
    #: A failure for good goes to the dead letters (the task's option).
    dead_letter_on_failure: bool = False
    #: Its outcome is being settled (acked): a lease renewal that finds the delivery
    #: gone then is the ack's doing, not a lost lease.
    settling: bool = False
    #: Its id was revoked when it was fetched (the admission hook refuses it).
    revoked: bool = False
    #: The worker that runs it (``self.request.hostname``).
    hostname: str = ""
    received_at: float = field(default_factory=time.monotonic)

    @property
    def label(self) -> str:
        return f"{self.message.task}[{self.message.id}]"

    @classmethod
    def for_task(
        cls, delivery: Delivery, message: Message, task: Task[..., Any], conf: Any, hostname: str
    ) -> Job:
        """The job of a fetched message: the task's options, else the app's settings."""
        return cls(
            delivery,
            message,
            acks_late=conf.task_acks_late if task.acks_late is None else task.acks_late,
            store_result=not (message.ignore_result or bool(task.ignore_result)),
            track_started=(
                conf.task_track_started if task.track_started is None else task.track_started
            ),
            soft_time_limit=(
                conf.task_soft_time_limit if task.soft_time_limit is None else task.soft_time_limit
            ),
            time_limit=conf.task_time_limit if task.time_limit is None else task.time_limit,
            dead_letter_on_failure=task.dead_letter_on_failure,
            hostname=hostname,
        )

    def request(self) -> Request:
        """The task's ``self.request`` for this job."""
        msg = self.message
        return Request(
            id=msg.id,
            task=msg.task,
            args=msg.args,
            kwargs=msg.kwargs,
            retries=msg.retries,
            delivery_count=self.delivery.deliveries,
            queue=msg.queue,
            priority=msg.priority,
            hostname=self.hostname,
            eta=from_timestamp(msg.eta),
            expires=from_timestamp(msg.expires),
            parent_id=msg.parent_id,
            root_id=msg.root_id,
            headers=msg.headers,
            ignore_result=not self.store_result,
        )


@dataclass(slots=True)
class Outcome:
    """What became of a job: a state, the result payload to store, a summary."""

    state: str
    payload: bytes | None = None
    runtime: float = 0.0
    summary: str = ""
    #: For state RETRY: the next run's message body and when it is due (UNIX time).
    retry_body: bytes | None = None
    retry_eta: float | None = None
    #: For state REJECTED: back to the queue (True) or to the dead letters.
    requeue: bool = False
    #: The error callbacks that take ``(request, exc, traceback)`` were called where the
    #: task ran (``conveyor.worker.handlers``): the settler calls only the others.
    errbacks_called: bool = False

    @property
    def again(self) -> bool:
        """The task may run again: it retries, its process was lost, or it was requeued."""
        return self.state in (LOST, states.RETRY) or (self.state == REJECTED and self.requeue)


#: What a pool raises into a task's thread (``limits.interrupt``, SIGALRM); one that
#: lands as the task returns is the pool's to report (``pools.base.run_job``).
INTERRUPTS = (SoftTimeLimitExceeded, TimeLimitExceeded, TaskRevokedError)


_NO_HOOKS = Hooks()


def execute(app: Conveyor, job: Job, hostname: str, hooks: Hooks = _NO_HOOKS) -> Outcome:
    """Run the job's task between the hooks' ``before_run`` and ``after_run``, and
    encode what happened; raises nothing but a late ``INTERRUPTS`` (see the module
    docstring).

    An async task runs on this thread's own event loop (see ``Task.__call__``).
    """
    try:
        return _execute(app, job, hostname, hooks)
    except INTERRUPTS:
        raise
    except BaseException as exc:
        return crashed(job, exc, hostname)


def _execute(app: Conveyor, job: Job, hostname: str, hooks: Hooks) -> Outcome:
    run = _Run.begin(app, job, hostname)
    value: Any = None
    error: BaseException | None = None
    with request_context(run.request), denied_join_result():
        hooks.before_run(job, run.task, run.request)
        try:
            # time limits may raise their exceptions only inside this block
            with interruptible(job):
                # through __call__, so that a subclass's own (an app context) applies
                value = run.task(*job.message.args, **job.message.kwargs)
                if inspect.isawaitable(value):  # such a __call__ of an async task
                    value = run_coroutine(value)
        except Exception as exc:
            error, outcome = exc, run.raised(exc)
        except BaseException as exc:  # SystemExit, KeyboardInterrupt... of the task's own
            error, outcome = exc, run.failed(exc)
        else:
            outcome = run.succeeded(value)
            error = run.unstorable
        hooks.after_run(job, run.task, run.request, outcome, value, error)
    return outcome


async def execute_async(
    app: Conveyor, job: Job, hostname: str, hooks: Hooks = _NO_HOOKS
) -> Outcome:
    """``execute``, awaiting the task on the running event loop instead of blocking
    this thread (for the asyncio pool, which runs many such jobs on one loop).

    Raises nothing but the CancelledError of this job's own cancellation (its pool
    stopping, a terminate, its hard time limit)."""
    try:
        return await _execute_async(app, job, hostname, hooks)
    except asyncio.CancelledError as exc:
        if being_cancelled():
            raise
        return crashed(job, exc, hostname)
    except BaseException as exc:
        return crashed(job, exc, hostname)


async def _execute_async(app: Conveyor, job: Job, hostname: str, hooks: Hooks) -> Outcome:
    run = _Run.begin(app, job, hostname)
    value: Any = None
    error: BaseException | None = None
    with request_context(run.request), denied_join_result():
        hooks.before_run(job, run.task, run.request)
        soft = asyncio.timeout(job.soft_time_limit)
        try:
            async with soft:
                value = await run.task.acall(*job.message.args, **job.message.kwargs)
        except TimeoutError as exc:
            error = exc
            if soft.expired():
                limit = SoftTimeLimitExceeded(f"soft time limit of {job.soft_time_limit} s")
                error = limit.with_traceback(exc.__traceback__)
                outcome = run.failed(error)
            else:
                outcome = run.raised(exc)
        except Exception as exc:
            error, outcome = exc, run.raised(exc)
        except asyncio.CancelledError as exc:
            if being_cancelled():
                raise  # this job is being cancelled (the pool is stopping)
            error, outcome = exc, run.failed(exc)  # the task's own, or of something it awaited
        except BaseException as exc:
            error, outcome = exc, run.failed(exc)
        else:
            outcome = run.succeeded(value)
            error = run.unstorable
        hooks.after_run(job, run.task, run.request, outcome, value, error)
    return outcome


def being_cancelled() -> bool:
    """Whether the running asyncio task was asked to cancel (not a CancelledError that
    the code it runs raised or caught from something else)."""
    current = asyncio.current_task()
    return current is not None and current.cancelling() > 0


def crashed(job: Job, exc: BaseException, hostname: str = "") -> Outcome:
    """The outcome of a job whose run raised ``exc`` instead of reporting: a FAILURE
    carrying the exception's type and traceback (REVOKED for a terminate's exception),
    encoded even when the exception cannot say what it is."""
    state = states.REVOKED if isinstance(exc, TaskRevokedError) else states.FAILURE
    task, retries = job.message.task, job.message.retries
    try:
        summary = f"{type(exc).__name__}: {exc}"
        payload = encode_failure(task, exc, state=state, worker=hostname, retries=retries)
    except Exception:  # its __str__ raised: store what can be said of it
        summary = type(exc).__name__
        text = "".join(traceback.format_exception(exc))
        stand_in = RuntimeError(f"{summary} (its message could not be read)")
        payload = encode_failure(
            task, stand_in, state=state, traceback=text, worker=hostname, retries=retries
        )
    logger.error("%s crashed: %s", job.label, summary, exc_info=exc)
    return Outcome(state, payload, 0.0, summary)


class JobRunner:
    """What a worker hands its pool as ``execute``: runs jobs of ``app`` as ``hostname``,
    with the hooks of the process that runs tasks (``app.hooks``, after the worker's own).

    Calling it runs any job to the end in the calling thread; a pool with an event
    loop asks ``is_async`` and awaits ``execute_async`` for coroutine tasks instead.
    """

    def __init__(self, app: Conveyor, hostname: str, hooks: Hooks | None = None):
        self.app = app
        self.hostname = hostname
        if hooks is None:
            hooks = Hooks([TrackStarted(app), TaskHandlers(app), *app.hooks])
        self.hooks = hooks

    def __call__(self, job: Job) -> Outcome:
        return execute(self.app, job, self.hostname, self.hooks)

    def is_async(self, job: Job) -> bool:
        """True if the job's task is a coroutine function."""
        return self.app.get_task(job.message.task).is_async

    async def execute_async(self, job: Job) -> Outcome:
        return await execute_async(self.app, job, self.hostname, self.hooks)

    def process_init(self) -> None:
        """This process starts running tasks (a prefork child, or the worker itself)."""
        self.hooks.process_init()

    def process_shutdown(self, exitcode: int = 0) -> None:
        """This process stops running tasks."""
        self.hooks.process_shutdown(exitcode)


@dataclass(slots=True)
class _Run:
    """One run of a job's task: the part of ``execute`` before and after the call."""

    job: Job
    task: Task[..., Any]
    request: Request
    hostname: str
    started: float = 0.0
    #: A return value that could not be stored (the run's FAILURE is an EncodeError).
    unstorable: EncodeError | None = None

    @classmethod
    def begin(cls, app: Conveyor, job: Job, hostname: str) -> _Run:
        """Build the task's request and start the clock."""
        job.hostname = job.hostname or hostname
        run = cls(job, app.get_task(job.message.task), job.request(), hostname)
        run.started = time.perf_counter()
        return run

    def raised(self, exc: Exception) -> Outcome:
        """The outcome of a task that raised ``exc``: ignored or rejected (``Ignore``,
        ``Reject``), a retry (``self.retry()``, or an exception in ``autoretry_for``
        with retries left), else a failure. Called while the task's request is current."""
        if isinstance(exc, Ignore | Reject):
            return self.controlled(exc)
        retry = exc if isinstance(exc, Retry) else self.task.autoretry(exc)
        if retry is None:
            return self.failed(exc)
        msg = self.job.message
        following = dataclasses.replace(
            msg,
            args=retry.args_override if retry.args_override is not None else msg.args,
            kwargs=retry.kwargs_override if retry.kwargs_override is not None else msg.kwargs,
            retries=msg.retries + 1,
            eta=retry.eta,
        )
        cause = retry.exc if retry.exc is not None else retry
        payload = encode_failure(
            msg.task, cause, state=states.RETRY, worker=self.hostname, retries=msg.retries
        )
        delay = max(0.0, retry.eta - time.time())
        return Outcome(
            states.RETRY,
            payload,
            time.perf_counter() - self.started,
            f"retry {msg.retries + 1} in {delay:.2f} s: {type(cause).__name__}: {cause}",
            retry_body=sign(encode(following), self.task.app.conf.message_signing_keys),
            retry_eta=retry.eta,
        )

    def controlled(self, exc: Ignore | Reject) -> Outcome:
        """The outcome of a task that ended itself with ``Ignore`` or ``Reject``."""
        runtime = time.perf_counter() - self.started
        if isinstance(exc, Reject):
            where = "back to the queue" if exc.requeue else "to the dead letters"
            summary = f"rejected, {where}: {exc.reason}"
            return Outcome(REJECTED, None, runtime, summary, requeue=exc.requeue)
        return Outcome(IGNORED, None, runtime, f"ignored: {exc}" if str(exc) else "ignored")

    def failed(self, exc: BaseException) -> Outcome:
        """The outcome of a task that raised ``exc``."""
        runtime = time.perf_counter() - self.started
        if not exc.args:  # a limit raised from outside the task carries no message
            if isinstance(exc, SoftTimeLimitExceeded):
                exc.args = (f"soft time limit ({self.job.soft_time_limit} s) exceeded",)
            elif isinstance(exc, TimeLimitExceeded):
                exc.args = (f"hard time limit ({self.job.time_limit} s) exceeded",)
            elif isinstance(exc, TaskRevokedError):
                exc.args = ("revoked with terminate=True while it ran",)
        msg = self.job.message
        text = "".join(traceback.format_exception(exc))
        # revoked with terminate while it ran (threads, solo: raised inside the task)
        state = states.REVOKED if isinstance(exc, TaskRevokedError) else states.FAILURE
        payload = encode_failure(
            msg.task, exc, state=state, traceback=text, worker=self.hostname, retries=msg.retries
        )
        return Outcome(state, payload, runtime, f"{type(exc).__name__}: {exc}")

    def succeeded(self, value: Any) -> Outcome:
        """The outcome of a task that returned ``value`` (FAILURE if it is not JSON)."""
        runtime = time.perf_counter() - self.started
        msg = self.job.message
        if not self.job.store_result:
            return Outcome(states.SUCCESS, None, runtime, _short(value))
        try:
            payload = encode_success(msg.task, value, worker=self.hostname, retries=msg.retries)
        except EncodeError as exc:
            self.unstorable = exc
            return Outcome(
                states.FAILURE,
                encode_failure(msg.task, exc, worker=self.hostname),
                runtime,
                str(exc),
            )
        return Outcome(states.SUCCESS, payload, runtime, _short(value))


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
