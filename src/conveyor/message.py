"""The task envelope: a versioned JSON document that turns a task call into bytes.

Version 1 layout (keys are short because every message carries them)::

    {"v": 1, "id": str, "task": str, "args": list, "kwargs": dict,
     "queue": str, "priority": int, "eta": float|null, "expires": float|null,
     "retries": int, "parent_id": str|null, "root_id": str|null,
     "ignore_result": bool, "headers": dict}

Times are UNIX seconds. The delivery count is not in the envelope: the broker
counts deliveries (a crashed worker cannot update the body it held). With
``message_signing_keys`` a body ends with one more field, ``"sig"``
(``conveyor.signing``), checked and removed before ``decode``.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from typing import Any

import orjson

from conveyor.exceptions import DecodeError, EncodeError

PROTOCOL_VERSION = 1


def new_id() -> str:
    """A random (version 4) UUID as text, as ``str(uuid.uuid4())`` but several times
    faster (every send makes one)."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40
    raw[8] = raw[8] & 0x3F | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(slots=True)
class Message:
    """One task invocation as it travels through the broker."""

    id: str
    task: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    queue: str = "celery"
    priority: int = 0
    eta: float | None = None
    expires: float | None = None
    retries: int = 0
    parent_id: str | None = None
    root_id: str | None = None
    ignore_result: bool = False
    headers: dict[str, Any] = field(default_factory=dict)


def encode(message: Message) -> bytes:
    """Serialise ``message``; raises EncodeError naming the value that cannot go
    on the wire (nothing is published in that case)."""
    doc = {
        "v": PROTOCOL_VERSION,
        "id": message.id,
        "task": message.task,
        "args": message.args,
        "kwargs": message.kwargs,
        "queue": message.queue,
        "priority": message.priority,
        "eta": message.eta,
        "expires": message.expires,
        "retries": message.retries,
        "parent_id": message.parent_id,
        "root_id": message.root_id,
        "ignore_result": message.ignore_result,
        "headers": message.headers,
    }
    try:
        return orjson.dumps(doc)
    except TypeError as exc:
        raise EncodeError(
            f"arguments of task {message.task!r} cannot be sent as JSON: {exc}. "
            "Pass plain data (str, int, float, bool, None, list, dict with str keys) "
            "such as ids, and load objects inside the task."
        ) from None


_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "id": str,
    "task": str,
    "args": list,
    "kwargs": dict,
    "queue": str,
    "priority": int,
}
_OPTIONAL: dict[str, type | tuple[type, ...]] = {
    "eta": (int, float),
    "expires": (int, float),
    "retries": int,
    "parent_id": str,
    "root_id": str,
    "ignore_result": bool,
    "headers": dict,
}


def decode(body: bytes) -> Message:
    """Parse bytes from the broker; raises DecodeError saying what is wrong."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"not a conveyor message: invalid JSON ({exc})") from None
    if not isinstance(doc, dict) or "v" not in doc:
        raise DecodeError("not a conveyor message: no protocol version field 'v'")
    version = doc["v"]
    if version != PROTOCOL_VERSION:
        raise DecodeError(
            f"message protocol version {version!r} is not supported by this worker "
            f"(it understands version {PROTOCOL_VERSION})"
        )
    for key, kind in _REQUIRED.items():
        value = doc.get(key)
        # bool is an int in Python; no required field is a bool
        if not isinstance(value, kind) or isinstance(value, bool):
            raise DecodeError(f"malformed message: field {key!r} missing or of the wrong type")
    for key, kind in _OPTIONAL.items():
        value = doc.get(key)
        if value is None:
            continue
        # as above: a bool passes isinstance(value, int), so only "ignore_result" may be one
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise DecodeError(f"malformed message: field {key!r} has the wrong type")
    for key in ("eta", "expires"):
        value = doc.get(key)
        if value is not None and not is_datetime_time(value):
            raise DecodeError(
                f"malformed message: field {key!r} is out of range ({value!r} is not a time "
                "a datetime can hold)"
            )
    return Message(
        id=doc["id"],
        task=doc["task"],
        args=doc["args"],
        kwargs=doc["kwargs"],
        queue=doc["queue"],
        priority=doc["priority"],
        eta=doc.get("eta"),
        expires=doc.get("expires"),
        retries=doc.get("retries") or 0,
        parent_id=doc.get("parent_id"),
        root_id=doc.get("root_id"),
        ignore_result=bool(doc.get("ignore_result")),
        headers=doc.get("headers") or {},
    )


def is_datetime_time(value: float) -> bool:
    """Whether ``value`` (UNIX seconds) is a time a UTC datetime can hold (years 1 to
    9999): a worker turns ``eta`` and ``expires`` into datetimes for the task's request.
    NaN and infinities are not."""
    try:
        dt.datetime.fromtimestamp(value, dt.UTC)
    except (OverflowError, ValueError, OSError):
        return False
    return True


def peek_id(body: bytes) -> str | None:
    """The task id of a message that failed to decode, if one can be read."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if isinstance(doc, dict) and isinstance(doc.get("id"), str):
        return str(doc["id"])
    return None
