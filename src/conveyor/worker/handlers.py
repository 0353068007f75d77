"""The hooks of the process that runs tasks (a prefork child), besides the app's:
``TrackStarted`` (the STARTED state) and ``TaskHandlers``, Celery's task-side protocol:
the task's handlers and its ``(request, exc, traceback)`` error callbacks, where
Celery calls them, in Celery's order.

::

    before_run   STARTED stored (track_started); before_start(task_id, args, kwargs)
    after_run    on a failure for good: the failure is stored, then the error callbacks
                 written for Celery are called here (the others are sent by the
                 settler, ``conveyor.worker.callbacks``); then on_success / on_retry /
                 on_failure, and after_return (success or failure)

What is called and with which arguments lives in ``conveyor.task.handlers``, which
``apply()`` uses too.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from conveyor import states
from conveyor.backends.base import ResultWrite
from conveyor.canvas import LINK_ERROR
from conveyor.hooks import Hook
from conveyor.result import encode_state, started_meta
from conveyor.task import handlers

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.task import Request, Task
    from conveyor.worker.job import Job, Outcome

logger = logging.getLogger("conveyor.task")


class TaskHandlers(Hook):
    """Calls a task's handlers and Celery-style error callbacks where it runs."""

    def __init__(self, app: Conveyor) -> None:
        self.app = app

    def before_run(self, job: Job, task: Task[..., Any], request: Request) -> None:
        handlers.before(task, request)

    def after_run(
        self,
        job: Job,
        task: Task[..., Any],
        request: Request,
        outcome: Outcome,
        value: Any,
        error: BaseException | None,
    ) -> None:
        if outcome.state == states.FAILURE and error is not None:
            outcome.errbacks_called = True
            self._errbacks(job, request, outcome, error)
        handlers.after(task, request, outcome.state, value, error)

    def _errbacks(self, job: Job, request: Request, outcome: Outcome, error: BaseException) -> None:
        entries = job.message.headers.get(LINK_ERROR)
        if not entries:
            return
        direct, _ = handlers.sort_errbacks(entries, self.app)
        if not direct:
            return
        if job.store_result and outcome.payload is not None:
            # Celery stores the failure before it calls them: an errback may read it
            # (the settler stores it again with the ack: the same record)
            write = ResultWrite(
                job.message.id, states.FAILURE, outcome.payload, self.app.conf.result_expires
            )
            try:
                self.app.backend.store(write)
            except Exception as exc:
                logger.warning("%s: could not store the failure first: %s", job.label, exc)
        handlers.call_errbacks(direct, request, error)


class TrackStarted(Hook):
    """Stores the STARTED state as a task that tracks it begins (``track_started``),
    with Celery's information: ``{"pid", "hostname"}`` of the process that runs it."""

    def __init__(self, app: Conveyor) -> None:
        self.app = app

    def before_run(self, job: Job, task: Task[..., Any], request: Request) -> None:
        if not (job.track_started and job.store_result):
            return
        msg = job.message
        write = ResultWrite(
            msg.id,
            states.STARTED,
            encode_state(msg.task, states.STARTED, started_meta(job.hostname), worker=job.hostname),
            self.app.conf.result_expires,
        )
        try:
            self.app.backend.store(write)
        except Exception as exc:  # a hint for watchers, not a reason to fail the task
            logger.warning("%s: could not record STARTED: %s", job.label, exc)
