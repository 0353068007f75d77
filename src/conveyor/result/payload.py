"""The stored payload of a task's result: JSON with its state, value or exception.

::

    {"status", "result", "task", "date_done", "worker", "retries"}        a success
    {..., "exc_type", "exc_message", "exc_args", "traceback"}              a failure
    {"status", "result": <info>, "task", "worker"}                         any other state

``exc_type`` is ``module.QualName``; ``rebuild_exception`` turns it back into the
exception (never importing anything) and ``children`` lists the task's children.
"""

from __future__ import annotations

import builtins
import datetime as dt
import os
import sys
import traceback as tb
from typing import Any

import orjson

from conveyor import states
from conveyor.exceptions import EncodeError, TaskError

__all__ = [
    "CHILDREN",
    "decode_payload",
    "encode_failure",
    "encode_state",
    "encode_success",
    "failure_of",
    "payload_value",
    "rebuild_exception",
    "started_meta",
]


def _utcnow_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


def encode_success(task: str, value: Any, *, worker: str = "", retries: int = 0) -> bytes:
    """The stored payload of a successful run; EncodeError if ``value`` is not JSON."""
    try:
        return orjson.dumps(
            {
                "status": states.SUCCESS,
                "result": value,
                "task": task,
                "date_done": _utcnow_iso(),
                "worker": worker,
                "retries": retries,
            }
        )
    except TypeError as exc:
        raise EncodeError(
            f"the return value of task {task!r} cannot be stored as JSON: {exc}"
        ) from None


def encode_failure(
    task: str,
    exc: BaseException,
    *,
    traceback: str | None = None,
    state: str = states.FAILURE,
    worker: str = "",
    retries: int = 0,
) -> bytes:
    """The stored payload of a failed (or revoked) run, keeping the exception's type."""
    cls = type(exc)
    if traceback is None and exc.__traceback__ is not None:
        traceback = "".join(tb.format_exception(exc))
    doc: dict[str, Any] = {
        "status": state,
        "result": None,
        "exc_type": f"{cls.__module__}.{cls.__qualname__}",
        "exc_message": str(exc),
        "exc_args": list(exc.args),
        "traceback": traceback,
        "task": task,
        "date_done": _utcnow_iso(),
        "worker": worker,
        "retries": retries,
    }
    try:
        return orjson.dumps(doc)
    except TypeError:
        doc["exc_args"] = [str(exc)]
        return orjson.dumps(doc)


def encode_state(task: str, state: str, meta: Any = None, *, worker: str = "") -> bytes:
    """The stored payload of a state a task is in (STARTED, or a custom state given to
    ``update_state``) with ``meta``, its information (``AsyncResult.info``): JSON, or
    for RETRY, FAILURE and REVOKED an exception or Celery's ``{"exc_type",
    "exc_message"}`` dict, which ``AsyncResult.result`` rebuilds as the exception.

    Raises:
        EncodeError: ``meta`` is not JSON.
    """
    if state in states.EXCEPTION_STATES:
        if isinstance(meta, BaseException):
            return encode_failure(task, meta, state=state, worker=worker)
        if isinstance(meta, dict) and meta.get("exc_type"):
            return _encode_failure_meta(task, state, meta, worker)
    try:
        return orjson.dumps({"status": state, "result": meta, "task": task, "worker": worker})
    except TypeError as exc:
        raise EncodeError(
            f"the {state} meta of task {task!r} cannot be stored as JSON: {exc}"
        ) from None


def _encode_failure_meta(task: str, state: str, meta: dict[str, Any], worker: str) -> bytes:
    """A failure described as Celery's tasks describe one to ``update_state``:
    ``exc_type`` (a class name, qualified by ``exc_module`` or not) and
    ``exc_message`` (a string, or the exception's arguments)."""
    type_name = str(meta["exc_type"])
    if "." not in type_name:
        type_name = f"{meta.get('exc_module') or 'builtins'}.{type_name}"
    message = meta.get("exc_message", "")
    args = list(message) if isinstance(message, list | tuple) else [message]
    doc = {
        "status": state,
        "result": meta,
        "exc_type": type_name,
        "exc_message": str(args[0]) if len(args) == 1 else str(tuple(args)),
        "exc_args": args,
        "traceback": None,
        "task": task,
        "date_done": _utcnow_iso(),
        "worker": worker,
    }
    try:
        return orjson.dumps(doc)
    except TypeError as exc:
        raise EncodeError(
            f"the {state} meta of task {task!r} cannot be stored as JSON: {exc}"
        ) from None


def started_meta(hostname: str) -> dict[str, Any]:
    """The information of the STARTED state, as Celery's: the process that runs the task
    and its worker (``result.info["pid"]``)."""
    return {"pid": os.getpid(), "hostname": hostname}


def rebuild_exception(meta: dict[str, Any]) -> Exception:
    """The exception a failed task raised, rebuilt with its own class when that class
    is an ``Exception`` already imported in this process, else a TaskError carrying
    the remote details.

    A stored payload is data anyone who can write to the result store may forge: it
    never makes this process import code, and never rebuilds a ``BaseException`` that
    is not an ``Exception`` (``SystemExit``, ``KeyboardInterrupt``, ``GeneratorExit``),
    which ``get()`` would raise through the caller's ``except Exception`` and stop it.
    """
    type_name = str(meta.get("exc_type") or "Exception")
    message = str(meta.get("exc_message") or "")
    args = meta.get("exc_args") or [message]
    remote_tb = meta.get("traceback")
    cls = _loaded_class(type_name)
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            exc = cls(*args)
        except Exception:
            pass
        else:
            exc.__notes__ = [f"Remote traceback:\n{remote_tb}"] if remote_tb else []
            return exc
    return TaskError(type_name, message, remote_tb)


def _loaded_class(type_name: str) -> Any:
    """The object named ``module.Qual.Name`` if its module is loaded, else None.

    The longest loaded module prefix wins, so classes nested in classes (Django's
    ``Model.DoesNotExist``) are found too.
    """
    parts = type_name.split(".")
    if len(parts) == 1:  # a bare name, as Celery's tasks give update_state: a built-in
        return getattr(builtins, type_name, None)
    for i in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:i])
        module = builtins if module_name == "builtins" else sys.modules.get(module_name)
        if module is None:
            continue
        obj: Any = module
        for part in parts[i:]:
            obj = getattr(obj, part, None)
        return obj
    return None


def decode_payload(payload: bytes) -> dict[str, Any]:
    """A stored payload as a dict: ``status``, ``result``, and for a failure
    ``exc_type`` (``module.QualName``), ``exc_message``, ``traceback``."""
    meta: dict[str, Any] = orjson.loads(payload)
    return meta


def payload_value(payload: bytes | None) -> Any:
    """The return value a success payload holds (None for no payload)."""
    return None if payload is None else decode_payload(payload).get("result")


def failure_of(payload: bytes | None) -> tuple[str, str]:
    """``(exception type, message)`` of a failure payload; built-in exceptions are
    named without ``builtins.`` (``ValueError``), others ``module.QualName``."""
    meta = decode_payload(payload) if payload is not None else {}
    type_name = str(meta.get("exc_type") or "Exception").removeprefix("builtins.")
    return type_name, str(meta.get("exc_message") or "")


#: The key of a stored payload that lists the task's children (result trees).
CHILDREN = "children"
