"""Worker logging: levels, and the running task's name and id on every line."""

from __future__ import annotations

import logging
import sys

from conveyor.task import current_request

LEVELS = ("debug", "info", "warning", "error", "critical")


class TaskFormatter(logging.Formatter):
    """Adds ``name[id]`` of the task running in this thread or process to each line."""

    def format(self, record: logging.LogRecord) -> str:
        request = current_request()
        record.task = f" {request.task}[{request.id}]" if request and request.id else ""
        return super().format(record)


def setup_logging(level: str) -> None:
    """Log to stderr at ``level`` (one of LEVELS) with the worker's line format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        TaskFormatter("[%(asctime)s %(levelname)s/%(processName)s%(task)s] %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
