"""Task classes type-check as Celery's do: subclasses of ``Task`` with their own
``run``, handlers and ``__call__``, and the handlers' arguments. (``class
MyTask(app.Task)`` works at run time, but a type checker cannot take an attribute's
value as a base class: typed code subclasses ``conveyor.Task``, and ``base=`` or
``task_cls=`` binds it to the app.)"""

from __future__ import annotations

from typing import Any, assert_type

from conveyor import Conveyor, Task
from conveyor.exceptions import ExceptionInfo
from conveyor.utils.log import get_task_logger

logger = get_task_logger(__name__)


class FlaskTask(Task):
    """Flask's documented pattern: the task runs inside an app context."""

    def __call__(self, *args: object, **kwargs: object) -> object:
        return self.run(*args, **kwargs)


app = Conveyor("typing-classes", broker="memory://", task_cls=FlaskTask)
other = Conveyor("typing-string", broker="memory://", task_cls="proj.celery:FlaskTask")


class Handled(Task):
    max_retries = 5
    default_retry_delay = 1.0

    def before_start(self, task_id: str, args: list[Any], kwargs: dict[str, Any]) -> None:
        logger.info("starting %s", task_id)

    def on_success(
        self, retval: Any, task_id: str, args: list[Any], kwargs: dict[str, Any]
    ) -> None:
        pass

    def on_failure(
        self,
        exc: BaseException,
        task_id: str,
        args: list[Any],
        kwargs: dict[str, Any],
        einfo: ExceptionInfo,
    ) -> None:
        assert_type(einfo.traceback, str)

    def after_return(
        self,
        status: str,
        retval: Any,
        task_id: str,
        args: list[Any],
        kwargs: dict[str, Any],
        einfo: ExceptionInfo | None,
    ) -> None:
        pass


class Multiply(Task):
    name = "typing.multiply"

    def run(self, x: int, y: int) -> int:
        return x * y


@app.task(base=Handled)
def handled(x: int) -> int:
    return x


multiply = app.register_task(Multiply())


def check() -> None:
    assert_type(handled.delay(1).get(), int)
    assert_type(multiply.delay(2, 3).get(), Any)
    assert_type(app.Task, type[Task[Any, Any]])
    handled.update_state(state="PROGRESS", meta={"current": 1})
    handled.delay("1")  # type: ignore[arg-type]
