"""The control channel's wire format, shared by ``app.control`` and the workers.

::

    stream "control"       one entry per command, read by every worker from where it
                           stood when it started (``Broker.stream_last``)
    stream "reply:<id>"    one entry per answering worker: {hostname: reply}; deleted
                           REPLY_TTL seconds after its last reply
    registry               Broker.worker_beat(hostname, WorkerInfo, WORKER_TTL) every
                           HEARTBEAT_SECONDS; a worker that misses 3 beats is gone

A command is ``{"id", "command", "arguments", "destination", "reply", "expires"}``
(orjson): ``destination`` a list of worker names or null (every worker), ``expires``
a UNIX time after which no worker runs it (one that starts late, or reads a backlog).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

#: The stream commands are appended to.
CONTROL_STREAM = "control"
#: Commands kept in the control stream (older ones are dropped as new ones come).
CONTROL_MAXLEN = 1000
#: Replies kept per reply stream, and its life after the last reply (seconds).
REPLY_MAXLEN = 1000
REPLY_TTL = 60.0
#: Seconds between two registry beats of a worker; missing 3 of them, it is gone.
HEARTBEAT_SECONDS = 2.0
WORKER_TTL = 3 * HEARTBEAT_SECONDS


def reply_stream(reply_id: str) -> str:
    """The stream the replies to command ``reply_id`` are added to."""
    return f"reply:{reply_id}"


@dataclass(frozen=True, slots=True)
class Command:
    """One command on the control stream."""

    id: str
    command: str
    arguments: dict[str, Any] = field(default_factory=dict)
    #: Worker names that must run it; None: every worker.
    destination: list[str] | None = None
    reply: bool = False
    #: UNIX time after which no worker runs it.
    expires: float = 0.0

    def for_worker(self, name: str, now: float | None = None) -> bool:
        """Whether worker ``name`` must run this command now (its own, not expired)."""
        if self.destination is not None and name not in self.destination:
            return False
        return (time.time() if now is None else now) <= self.expires

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "id": self.id,
                "command": self.command,
                "arguments": self.arguments,
                "destination": self.destination,
                "reply": self.reply,
                "expires": self.expires,
            }
        )

    @classmethod
    def decode(cls, body: bytes) -> Command:
        """The command in ``body``; ValueError if it is not one."""
        doc = orjson.loads(body)
        if not isinstance(doc, dict) or not isinstance(doc.get("command"), str):
            raise ValueError("not a control command")
        arguments = doc.get("arguments") or {}
        destination = doc.get("destination")
        if not isinstance(arguments, dict) or not (
            destination is None or isinstance(destination, list)
        ):
            raise ValueError("malformed control command")
        return cls(
            id=str(doc.get("id", "")),
            command=doc["command"],
            arguments=arguments,
            destination=None if destination is None else [str(d) for d in destination],
            reply=bool(doc.get("reply", False)),
            expires=float(doc.get("expires") or 0.0),
        )


def encode_reply(hostname: str, reply: Any) -> bytes:
    """A worker's reply entry: ``{hostname: reply}`` (values orjson cannot encode are
    shown as their ``repr``)."""
    return orjson.dumps({hostname: reply}, default=repr)


def decode_reply(body: bytes) -> dict[str, Any]:
    """The ``{hostname: reply}`` of a reply entry ({} if it is not one)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}


def destination_list(destination: str | Sequence[str] | None) -> list[str] | None:
    """Celery accepts one name or a list of names; None: every worker."""
    if destination is None:
        return None
    if isinstance(destination, str):
        return [destination]
    return list(destination)


def jsonable(value: Any) -> Any:
    """``value`` as JSON can hold it: mappings, lists and scalars kept, the rest ``repr``."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    return repr(value)
