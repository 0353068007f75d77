"""Worker logging: levels, text or JSON lines, and the running task's name and id on each."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from conveyor.task import current_request

LEVELS = ("debug", "info", "warning", "error", "critical")
#: ``--log-format`` choices; the ``worker_log_format`` setting also takes a %-style string.
FORMATS = ("text", "json")
TEXT_FORMAT = "[%(asctime)s %(levelname)s/%(processName)s%(task)s] %(message)s"

# What every LogRecord carries; anything else on a record came from ``extra=``.
_RECORD_ATTRIBUTES = frozenset(
    [*logging.makeLogRecord({}).__dict__, "message", "asctime", "taskName", "task"]
)


def task_extra(task_name: str, task_id: str, **fields: Any) -> dict[str, Any]:
    """``extra=`` for a worker line about a task that does not run in the logging thread
    (received, finished): JSON lines then carry its ``task_name`` and ``task_id`` too."""
    return {"task_name": task_name, "task_id": task_id, **fields}


class TaskFormatter(logging.Formatter):
    """Adds ``name[id]`` of the task running in this thread or process to each line.

    ``%(task)s`` is `` name[id]`` (empty outside a task); ``%(task_name)s`` and
    ``%(task_id)s`` are Celery's fields (``???`` outside a task), for Celery format strings.
    """

    def __init__(self, fmt: str | None = None, datefmt: str | None = None) -> None:
        super().__init__(fmt, datefmt)
        self._celery_fields = "%(task_" in (fmt or "")

    def format(self, record: logging.LogRecord) -> str:
        request = current_request()
        if request is None or not request.id:
            request = None
        record.task = f" {request.task}[{request.id}]" if request else ""
        if self._celery_fields and not hasattr(record, "task_name"):
            record.task_name = request.task if request else "???"
            record.task_id = request.id if request else "???"
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers.

    Keys: ``time`` (ISO 8601, UTC, milliseconds), ``level``, ``logger``, ``process``
    (name), ``pid``, ``message``; ``task_name`` and ``task_id`` while a task runs (or
    when the line is about one); ``exc_info`` (the formatted traceback) and
    ``stack_info`` when present; then any ``extra=`` fields of the call.
    """

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "process": record.processName,
            "pid": record.process,
            "message": record.getMessage(),
        }
        request = current_request()
        if request is not None and request.id:
            fields["task_name"] = request.task
            fields["task_id"] = request.id
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES:
                fields.setdefault(key, value)  # an extra never hides a standard key
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            fields["exc_info"] = record.exc_text
        if record.stack_info:
            fields["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(fields, ensure_ascii=False, default=repr)


def formatter(log_format: str) -> logging.Formatter:
    """The formatter for ``log_format``: ``text``, ``json``, or a %-style format string."""
    if log_format == "json":
        return JsonFormatter()
    return TaskFormatter(TEXT_FORMAT if log_format == "text" else log_format)


def setup_logging(level: str, log_format: str = "text") -> None:
    """Log to stderr at ``level`` (one of LEVELS) in ``log_format`` (see ``formatter``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def as_record_line(text: str, log_format: str, logger: str = "conveyor.worker") -> str:
    """``text`` as the worker prints it outside logging (the banner): as is for text
    formats, one INFO object for ``json``, so every line on stderr parses."""
    if log_format != "json":
        return text
    record = logging.makeLogRecord(
        {"name": logger, "levelno": logging.INFO, "levelname": "INFO", "msg": text}
    )
    return JsonFormatter().format(record)
