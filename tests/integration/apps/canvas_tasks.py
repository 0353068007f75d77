"""Tasks for the canvas integration tests, on the app of ``apps.tasks``.

A worker started with ``-A apps.canvas_tasks`` finds ``app`` here: the same app, so it
runs these tasks and every task of ``apps.tasks`` (``add``, ``record``, ``fail``...).
Each task records its runs in the executions log (see ``apps.executions``).
"""

from __future__ import annotations

from typing import Any

from apps.executions import record_event
from apps.tasks import Boom, app
from conveyor.task import current_request

__all__ = ["Boom", "app", "collect", "fail_with", "on_error", "total"]


def _record(event: str, task_id: str | None = None) -> None:
    request = current_request()
    record_event(task_id or (request.id if request else None), event)


@app.task
def total(values: list[int]) -> int:
    """A chord body: the sum of the header's values."""
    _record("start")
    _record("end")
    return sum(values)


@app.task
def collect(values: list[Any]) -> list[Any]:
    """A chord body: the header's values as it received them."""
    _record("start")
    _record("end")
    return values


@app.task
def fail_with(x: Any, message: str = "boom") -> None:
    """Fails with ``Boom(message)`` (``x``: a partial argument or a parent's value)."""
    _record("start")
    raise Boom(f"{message} {x}")


@app.task
def on_error(task_id: str, exc_type: str, message: str) -> list[str]:
    """An error callback: records an ``errback`` event under the failed task's id and
    returns what it was called with."""
    _record("start")
    _record("errback", task_id)
    return [task_id, exc_type, message]
