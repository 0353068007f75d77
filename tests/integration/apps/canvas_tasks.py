"""Tasks for the canvas integration tests, on the app of ``apps.tasks``.

A worker started with ``-A apps.canvas_tasks`` finds ``app`` here: the same app, so it
runs these tasks and every task of ``apps.tasks`` (``add``, ``record``, ``fail``...).
Each task records its runs in the executions log (see ``apps.executions``).

The second part holds the tasks of Celery's Canvas guide (``mul``, ``xsum``,
``tsum``...), with the guide's names and arguments, for
``test_celery_canvas_guide.py``.
"""

from __future__ import annotations

from typing import Any

from apps.executions import record_event
from apps.tasks import Boom, app
from conveyor.task import current_request

__all__ = [
    "Boom",
    "app",
    "collect",
    "create_user",
    "fail_with",
    "import_contact",
    "import_contacts",
    "log_error",
    "log_result",
    "mul",
    "notify_complete",
    "on_chord_error",
    "on_error",
    "raising_task",
    "reset_buffers",
    "send_welcome_email",
    "square",
    "total",
    "tsum",
    "xsum",
]


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


@app.task(queue="squares")
def square(x: int) -> int:
    """Declared on its own queue: a ``map`` of it is routed there too."""
    _record("start")
    _record("end")
    return x * x


# -- the tasks of Celery's Canvas guide ------------------------------------------------


@app.task
def mul(x: int, y: int) -> int:
    _record("start")
    _record("end")
    return x * y


@app.task
def xsum(numbers: list[int]) -> int:
    _record("start")
    _record("end")
    return sum(numbers)


@app.task
def tsum(numbers: list[int]) -> int:
    _record("start")
    _record("end")
    return sum(numbers)


@app.task
def reset_buffers() -> str:
    """A callback that takes no argument (linked immutable)."""
    _record("start")
    _record("end")
    return "reset"


@app.task
def log_result(value: Any) -> Any:
    _record("start")
    _record("end")
    return value


@app.task
def log_error(request: Any, exc: Any, traceback: Any) -> None:
    """The guide's errback: the worker calls it as Celery does, where the failed task
    ran, with its request, exception and traceback; records an ``errback`` event under
    the failed task's id."""
    _record("errback", request.id)


@app.task
def on_chord_error(request: Any, exc: Any, traceback: Any) -> None:
    """The guide's chord errback: called with a request of the chord's body."""
    _record("errback", request.id)


@app.task
def raising_task() -> None:
    _record("start")
    raise Boom("something something")


@app.task
def create_user(username: str, first: str, last: str, email: str) -> str:
    _record("start")
    _record("end")
    return username


@app.task
def import_contacts(username: str) -> str:
    _record("start")
    _record("end")
    return f"contacts of {username}"


@app.task
def send_welcome_email(username: str) -> str:
    _record("start")
    _record("end")
    return f"welcome {username}"


@app.task
def import_contact(contact: str) -> str:
    _record("start")
    _record("end")
    return contact


@app.task
def notify_complete(import_id: int) -> int:
    _record("start")
    _record("end")
    return import_id
