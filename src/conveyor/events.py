"""Task events: Celery's types and fields, encoded for the broker's ``events`` stream.

Workers write them (``conveyor.worker.events``, with ``worker_send_task_events`` or
``worker -E``), producers write ``task-sent`` (``task_send_sent_event``: the
``SentEvents`` hook of every app), and ``conveyor.monitoring.events`` reads them. Each
is one JSON object::

    every event      type, uuid, hostname, timestamp (UNIX time), name (where known)
    task-sent        args, kwargs, retries, eta, expires, queue, root_id, parent_id, payload
    task-received    args, kwargs, retries, eta, expires, queue, root_id, parent_id, payload
    task-started     pid
    task-succeeded   result (its repr, truncated), runtime
    task-failed      exception, traceback, runtime
    task-retried     exception, traceback, runtime
    task-revoked     terminated, expired
    task-rejected    reason, requeue

``args`` and ``kwargs`` are reprs (Celery's ``argsrepr``), cut at ``REPR_LIMIT``
characters; ``payload`` holds the JSON values themselves (``{"args", "kwargs"}``) when
they encode in ``PAYLOAD_LIMIT`` bytes or less, else it is None: enough to send a failed
task again. ``eta`` and ``expires`` are ISO 8601 (UTC) or None, as Celery's.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import time
from typing import TYPE_CHECKING, Any, Final

import orjson

from conveyor.hooks import Hook

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.message import Message

logger = logging.getLogger("conveyor.events")

#: The broker stream that holds task events.
STREAM: Final = "events"
#: Characters kept of a repr (``args``, ``kwargs``, ``result``).
REPR_LIMIT: Final = 1024
#: Bytes of JSON arguments at most carried as ``payload``.
PAYLOAD_LIMIT: Final = 8192
#: Characters kept of a traceback (its end: where it was raised).
TRACEBACK_LIMIT: Final = 8192

SENT: Final = "task-sent"
RECEIVED: Final = "task-received"
STARTED: Final = "task-started"
SUCCEEDED: Final = "task-succeeded"
FAILED: Final = "task-failed"
RETRIED: Final = "task-retried"
REVOKED: Final = "task-revoked"
REJECTED: Final = "task-rejected"
#: Every event type, in the order of a task's life.
TYPES: Final = (SENT, RECEIVED, STARTED, SUCCEEDED, FAILED, RETRIED, REVOKED, REJECTED)


def truncate(text: str, limit: int = REPR_LIMIT) -> str:
    """``text``, cut to ``limit`` characters with ``...`` at the end when longer."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def truncate_start(text: str, limit: int = TRACEBACK_LIMIT) -> str:
    """``text`` cut to its last ``limit`` characters (a traceback's end says the most)."""
    return text if len(text) <= limit else "..." + text[len(text) - limit + 3 :]


def safe_repr(value: Any, limit: int = REPR_LIMIT) -> str:
    """``repr(value)`` cut to ``limit`` characters; never raises."""
    try:
        text = repr(value)
    except Exception:  # a __repr__ of the task's own that fails: say what it is
        text = f"<{type(value).__name__} (its repr failed)>"
    return truncate(text, limit)


def event(kind: str, uuid: str, hostname: str, **fields: Any) -> dict[str, Any]:
    """An event of type ``kind`` about task ``uuid``, stamped now."""
    return {"type": kind, "uuid": uuid, "hostname": hostname, "timestamp": time.time(), **fields}


def encode(body: dict[str, Any]) -> bytes:
    """The stream entry of an event; what JSON cannot hold is written as its repr."""
    return orjson.dumps(body, default=safe_repr)


def decode(raw: bytes) -> dict[str, Any]:
    """An event from its stream entry; ValueError if it is not a JSON object."""
    body = orjson.loads(raw)
    if not isinstance(body, dict):
        raise ValueError("an event is a JSON object")
    return body


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat()


def payload(args: Any, kwargs: Any) -> dict[str, Any] | None:
    """``{"args", "kwargs"}`` when they encode in ``PAYLOAD_LIMIT`` bytes, else None."""
    try:
        size = len(orjson.dumps({"args": args, "kwargs": kwargs}))
    except TypeError:
        return None
    return {"args": args, "kwargs": kwargs} if size <= PAYLOAD_LIMIT else None


def message_event(kind: str, message: Message, hostname: str) -> dict[str, Any]:
    """A ``task-sent`` or ``task-received`` event: what the message says of its task."""
    return event(
        kind,
        message.id,
        hostname,
        name=message.task,
        args=safe_repr(message.args),
        kwargs=safe_repr(message.kwargs),
        retries=message.retries,
        eta=_iso(message.eta),
        expires=_iso(message.expires),
        queue=message.queue,
        root_id=message.root_id,
        parent_id=message.parent_id,
        payload=payload(message.args, message.kwargs),
    )


def producer_name() -> str:
    """How a process that sends tasks names itself in events (Celery's ``gen<pid>@host``)."""
    return f"gen{os.getpid()}@{socket.gethostname()}"


class SentEvents(Hook):
    """Writes ``task-sent`` for each task published, while ``task_send_sent_event`` is on.

    The write is synchronous (one more round trip per message) so that no event is
    lost when the producer exits; one that fails is logged, never the send's failure.
    """

    def after_publish(self, app: Conveyor, message: Message) -> None:
        conf = app.conf
        if not conf.task_send_sent_event:
            return
        body = encode(message_event(SENT, message, producer_name()))
        try:
            app.broker.stream_add(STREAM, [body], conf.event_stream_max)
        except Exception as exc:
            logger.warning("could not write the task-sent event of %s: %s", message.id, exc)
