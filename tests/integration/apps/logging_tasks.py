"""Tasks that log through the standard ``logging`` module, on the integration tests' app.

Start a worker with ``-A apps.logging_tasks``: it finds ``apps.tasks.app``, with
these tasks registered on it as well.
"""

from __future__ import annotations

import logging

from apps.tasks import app

logger = logging.getLogger(__name__)


@app.task
def log_line(text: str, level: str = "info") -> str:
    """Logs ``task says <text>`` at ``level`` from inside the task; returns ``text``."""
    logger.log(logging.getLevelNamesMapping()[level.upper()], "task says %s", text)
    return text


@app.task
def log_exception() -> None:
    """Logs a caught exception with its traceback from inside the task."""
    try:
        raise KeyError("missing")
    except KeyError:
        logger.exception("task caught an error")
