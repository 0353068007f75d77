"""A job (one delivery to run) and its outcome, and the function that runs a job.

``execute`` runs wherever the pool runs tasks: a prefork child, a pool thread,
or the consumer thread itself (solo). It never touches the broker: settling a
delivery is the consumer's job, in the parent, fenced by the delivery token.
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from conveyor import states
from conveyor.backends.base import ResultWrite
from conveyor.brokers.base import Delivery
from conveyor.exceptions import EncodeError
from conveyor.message import Message
from conveyor.result import encode_failure, encode_state, encode_success
from conveyor.task import Request, from_timestamp, request_context

if TYPE_CHECKING:
    from conveyor.app import Conveyor

logger = logging.getLogger("conveyor.task")

#: Outcome state of a job whose process died before it reported back.
LOST = "LOST"


@dataclass(slots=True)
class Job:
    """One delivery, decoded, with the options that decide how it is settled."""

    delivery: Delivery
    message: Message
    acks_late: bool = True
    store_result: bool = True
    track_started: bool = False
    received_at: float = field(default_factory=time.monotonic)

    @property
    def label(self) -> str:
        return f"{self.message.task}[{self.message.id}]"


@dataclass(slots=True)
class Outcome:
    """What became of a job: a state, the result payload to store, a summary."""

    state: str
    payload: bytes | None = None
    runtime: float = 0.0
    summary: str = ""


def execute(app: Conveyor, job: Job, hostname: str) -> Outcome:
    """Run the job's task and encode what happened; never raises for task errors."""
    msg = job.message
    task = app.get_task(msg.task)
    request = Request(
        id=msg.id,
        task=msg.task,
        args=msg.args,
        kwargs=msg.kwargs,
        retries=msg.retries,
        delivery_count=job.delivery.deliveries,
        queue=msg.queue,
        priority=msg.priority,
        hostname=hostname,
        eta=from_timestamp(msg.eta),
        expires=from_timestamp(msg.expires),
        parent_id=msg.parent_id,
        root_id=msg.root_id,
        headers=msg.headers,
        ignore_result=not job.store_result,
    )
    if job.track_started and job.store_result:
        app.backend.store(
            ResultWrite(
                msg.id,
                states.STARTED,
                encode_state(msg.task, states.STARTED, worker=hostname),
                app.conf.result_expires,
            )
        )
    started = time.perf_counter()
    with request_context(request):
        try:
            value: Any = task(*msg.args, **msg.kwargs)
        except Exception as exc:
            runtime = time.perf_counter() - started
            text = "".join(traceback.format_exception(exc))
            payload = encode_failure(
                msg.task, exc, traceback=text, worker=hostname, retries=msg.retries
            )
            return Outcome(states.FAILURE, payload, runtime, f"{type(exc).__name__}: {exc}")
    runtime = time.perf_counter() - started
    if not job.store_result:
        return Outcome(states.SUCCESS, None, runtime, _short(value))
    try:
        payload = encode_success(msg.task, value, worker=hostname, retries=msg.retries)
    except EncodeError as exc:
        return Outcome(
            states.FAILURE,
            encode_failure(msg.task, exc, worker=hostname),
            runtime,
            str(exc),
        )
    return Outcome(states.SUCCESS, payload, runtime, _short(value))


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
