"""Celery's signals, with Celery's names, senders and keyword arguments.

::

    from conveyor.signals import task_prerun, worker_process_init

    @task_prerun.connect
    def on_prerun(sender=None, task_id=None, task=None, args=None, kwargs=None, **extra):
        ...

Each is sent in the process Celery documents for it: ``task_prerun``,
``task_postrun``, ``task_success``, ``task_failure`` and ``task_retry`` where
the task runs (a prefork child); ``worker_process_init`` and
``worker_process_shutdown`` in each prefork child (with the other pools, once in
the worker process); ``before_task_publish`` and ``after_task_publish`` in the
process that sends; the others in the worker (or beat) process. They sit on the
hook mechanism (``conveyor.hooks``): ``CelerySignals`` is the hook every app
installs first. What each receives is listed in docs/signals.md.

``before_task_publish``'s ``headers`` are the message's own headers: what a
receiver adds there (a trace context) travels with the message to the worker,
where the task reads it in ``self.request.headers``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from conveyor import states
from conveyor.dispatch import Signal
from conveyor.exceptions import ExceptionInfo, TaskControl
from conveyor.hooks import Hook

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.brokers.base import Delivery
    from conveyor.message import Message
    from conveyor.task import Request, Task
    from conveyor.worker.job import Job, Outcome

__all__ = [
    "CelerySignals",
    "ExceptionInfo",
    "Signal",
    "after_setup_logger",
    "after_setup_task_logger",
    "after_task_publish",
    "beat_init",
    "before_task_publish",
    "celeryd_after_setup",
    "celeryd_init",
    "setup_logging",
    "task_failure",
    "task_postrun",
    "task_prerun",
    "task_received",
    "task_rejected",
    "task_retry",
    "task_revoked",
    "task_success",
    "task_unknown",
    "worker_init",
    "worker_process_init",
    "worker_process_shutdown",
    "worker_ready",
    "worker_shutdown",
    "worker_shutting_down",
]

# -- sending -------------------------------------------------------------------------------
before_task_publish = Signal(
    "before_task_publish",
    ("body", "exchange", "routing_key", "headers", "properties", "declare", "retry_policy"),
)
after_task_publish = Signal("after_task_publish", ("body", "exchange", "routing_key", "headers"))

# -- tasks -------------------------------------------------------------------------------------
task_received = Signal("task_received", ("request",))
task_prerun = Signal("task_prerun", ("task_id", "task", "args", "kwargs"))
task_postrun = Signal("task_postrun", ("task_id", "task", "args", "kwargs", "retval", "state"))
task_success = Signal("task_success", ("result",))
task_failure = Signal(
    "task_failure", ("task_id", "exception", "args", "kwargs", "traceback", "einfo")
)
task_retry = Signal("task_retry", ("request", "reason", "einfo"))
task_revoked = Signal("task_revoked", ("request", "terminated", "signum", "expired"))
task_rejected = Signal("task_rejected", ("message", "exc"))
task_unknown = Signal("task_unknown", ("name", "id", "message", "exc"))

# -- the worker ----------------------------------------------------------------------------------
celeryd_init = Signal("celeryd_init", ("instance", "conf", "options"))
celeryd_after_setup = Signal("celeryd_after_setup", ("instance", "conf"))
worker_init = Signal("worker_init")
worker_process_init = Signal("worker_process_init")
worker_process_shutdown = Signal("worker_process_shutdown", ("pid", "exitcode"))
worker_ready = Signal("worker_ready")
worker_shutting_down = Signal("worker_shutting_down", ("sig", "how", "exitcode"))
worker_shutdown = Signal("worker_shutdown")

# -- beat and logging ----------------------------------------------------------------------------
beat_init = Signal("beat_init")
setup_logging = Signal("setup_logging", ("loglevel", "logfile", "format", "colorize"))
after_setup_logger = Signal(
    "after_setup_logger", ("logger", "loglevel", "logfile", "format", "colorize")
)
after_setup_task_logger = Signal(
    "after_setup_task_logger", ("logger", "loglevel", "logfile", "format", "colorize")
)


def _body(message: Message) -> dict[str, Any]:
    return {
        "id": message.id,
        "task": message.task,
        "args": message.args,
        "kwargs": message.kwargs,
        "eta": message.eta,
        "expires": message.expires,
        "retries": message.retries,
    }


class CelerySignals(Hook):
    """Sends Celery's signals at the hook moments (see the module docstring)."""

    def before_publish(self, app: Conveyor, message: Message) -> None:
        if before_task_publish.has_receivers(message.task):
            before_task_publish.send(
                message.task,
                body=_body(message),
                exchange="",
                routing_key=message.queue,
                headers=message.headers,
                properties={"priority": message.priority},
                declare=[],
                retry_policy=None,
            )

    def after_publish(self, app: Conveyor, message: Message) -> None:
        if after_task_publish.has_receivers(message.task):
            after_task_publish.send(
                message.task,
                body=_body(message),
                exchange="",
                routing_key=message.queue,
                headers=message.headers,
            )

    def worker_init(self, worker: Any) -> None:
        worker_init.send(worker)

    def worker_ready(self, worker: Any) -> None:
        worker_ready.send(worker)

    def worker_shutting_down(self, worker: Any, signal_name: str, how: str, exitcode: int) -> None:
        worker_shutting_down.send(worker.hostname, sig=signal_name, how=how, exitcode=exitcode)

    def worker_shutdown(self, worker: Any) -> None:
        worker_shutdown.send(worker)

    def received(self, job: Job, task: Task[..., Any]) -> None:
        if task_received.has_receivers(None):
            task_received.send(None, request=job.request())

    def revoked(self, job: Job, task: Task[..., Any], *, expired: bool, terminated: bool) -> None:
        if task_revoked.has_receivers(task):
            task_revoked.send(
                task, request=job.request(), terminated=terminated, signum=None, expired=expired
            )

    def rejected(self, delivery: Delivery, error: BaseException) -> None:
        task_rejected.send(None, message=delivery, exc=error)

    def unknown(self, delivery: Delivery, message: Message, error: BaseException) -> None:
        task_unknown.send(None, name=message.task, id=message.id, message=delivery, exc=error)

    def process_init(self) -> None:
        worker_process_init.send(None)

    def process_shutdown(self, exitcode: int) -> None:
        worker_process_shutdown.send(None, pid=os.getpid(), exitcode=exitcode)

    def before_run(self, job: Job, task: Task[..., Any], request: Request) -> None:
        if task_prerun.has_receivers(task):
            task_prerun.send(
                task, task_id=request.id, task=task, args=request.args, kwargs=request.kwargs
            )

    def after_run(
        self,
        job: Job,
        task: Task[..., Any],
        request: Request,
        outcome: Outcome,
        value: Any,
        error: BaseException | None,
    ) -> None:
        state = outcome.state
        if state == states.SUCCESS:
            task_success.send(task, result=value)
        elif state == states.RETRY and error is not None:
            task_retry.send(task, request=request, reason=error, einfo=ExceptionInfo.of(error))
        elif error is not None and not isinstance(error, TaskControl):
            # (Ignore and Reject end a task without failing it: no task_failure, as in Celery)
            info = ExceptionInfo.of(error)
            task_failure.send(
                task,
                task_id=request.id,
                exception=error,
                args=request.args,
                kwargs=request.kwargs,
                traceback=error.__traceback__,
                einfo=info,
            )
        task_postrun.send(
            task,
            task_id=request.id,
            task=task,
            args=request.args,
            kwargs=request.kwargs,
            retval=value if error is None else error,
            state=state,
        )
