"""``get_task_logger``, as Celery's ``celery.utils.log.get_task_logger``.

::

    from conveyor.utils.log import get_task_logger

    logger = get_task_logger(__name__)

The logger is a standard ``logging.Logger`` whose parent is ``conveyor.task`` (set up
by the worker like every logger); each record it makes carries the running task's
``task_name`` and ``task_id`` (``???`` outside a task, as Celery's), for formats and
handlers of your own (the worker's own formats show them already).
"""

from __future__ import annotations

import logging

from conveyor.task import current_request

__all__ = ["TASK_LOGGER", "get_task_logger"]

#: The logger every task logger is a child of.
TASK_LOGGER = "conveyor.task"
_RESERVED = frozenset({"conveyor", TASK_LOGGER})


class _TaskFields(logging.Filter):
    """Adds the running task's name and id to each record (keeps ones already set)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "task_id"):
            request = current_request()
            if request is not None and request.id is not None:
                record.task_name, record.task_id = request.task, request.id
            else:
                record.task_name = record.task_id = "???"
        return True


_FIELDS = _TaskFields()


def get_task_logger(name: str) -> logging.Logger:
    """The logger ``name``, made a child of ``conveyor.task`` (as Celery makes it a
    child of ``celery.task``), whose records carry ``task_name`` and ``task_id``.

    Raises:
        RuntimeError: ``name`` is one of conveyor's own (``conveyor``, ``conveyor.task``).
    """
    if name in _RESERVED:
        raise RuntimeError(f"logger name {name!r} is reserved")
    logger = logging.getLogger(name)
    parent = logging.getLogger(TASK_LOGGER)
    if not _descends(logger, parent):
        logger.parent = parent
    if _FIELDS not in logger.filters:
        logger.addFilter(_FIELDS)
    return logger


def _descends(logger: logging.Logger, ancestor: logging.Logger) -> bool:
    node: logging.Logger | None = logger.parent
    while node is not None:
        if node is ancestor:
            return True
        node = node.parent
    return False
