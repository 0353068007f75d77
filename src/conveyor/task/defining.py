"""How tasks come to be, as in Celery: the app's task class (``app.Task``: the
``task_cls`` bound to the app), and one subclass of it per decorated function
(``@app.task``), whose options are its class attributes and whose ``run`` is the
function."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, Protocol, TypeVar, overload

from conveyor.config import import_object
from conveyor.exceptions import ConfigurationError
from conveyor.task.base import Task, class_name
from conveyor.task.options import CELERY_ONLY_OPTIONS, TASK_OPTIONS

if TYPE_CHECKING:
    from conveyor.app import Conveyor

P = ParamSpec("P")
R = TypeVar("R")

__all__ = [
    "BoundTaskDecorator",
    "TaskDecorator",
    "app_task_class",
    "check_options",
    "task_from_function",
]


def app_task_class(app: Conveyor, task_cls: type[Task[Any, Any]] | str) -> type[Task[Any, Any]]:
    """``app.Task``: ``task_cls`` (a class, or Celery's ``"module:Class"``), subclassed
    with the app as its tasks' app.

    Raises:
        ConfigurationError: ``task_cls`` cannot be imported, or is not a Task subclass.
    """
    base = import_object(task_cls) if isinstance(task_cls, str) else task_cls
    if not (isinstance(base, type) and issubclass(base, Task)):
        raise ConfigurationError(f"task_cls={task_cls!r} is not a subclass of conveyor.Task")
    attrs = {
        "_app": app,
        "__module__": base.__module__,
        "__qualname__": base.__qualname__,
        "__doc__": base.__doc__,
    }
    bound: type[Task[Any, Any]] = type(class_name(base), (base,), attrs)
    return bound


def check_options(base: type[Task[Any, Any]], options: Mapping[str, Any]) -> None:
    """An option is one of conveyor's or Celery's, or an attribute a base class of the
    user's defines (Celery sets every option as an attribute; a typo is an error here).

    Raises:
        ConfigurationError: naming the unknown options and the valid ones.
    """
    known = TASK_OPTIONS | CELERY_ONLY_OPTIONS.keys()
    own = {
        key
        for klass in base.__mro__
        if issubclass(klass, Task) and klass.__module__.split(".")[0] != "conveyor"
        for key in vars(klass)
        if not key.startswith("_")
    }
    unknown = set(options) - known - own
    if unknown:
        valid = sorted(known | {"name", "bind", "base"})
        raise ConfigurationError(f"unknown task option(s) {sorted(unknown)}; valid: {valid}")


def task_from_function(
    app: Conveyor,
    fun: Callable[..., Any],
    *,
    base: type[Task[Any, Any]],
    name: str,
    bind: bool = False,
    **options: Any,
) -> Task[Any, Any]:
    """The task of ``fun``: an instance of a new subclass of ``base`` named after it,
    with the options as class attributes and ``fun`` as ``run`` (a method with
    ``bind``, else a static function), as Celery makes it.

    Raises:
        ConfigurationError: an unknown option, or an option with a bad value.
        ValueError, TypeError: see ``conveyor.task.options.check_class``.
    """
    check_options(base, options)
    attrs: dict[str, Any] = {
        # a function as a class attribute would become a method: keep it a function
        key: staticmethod(value) if inspect.isfunction(value) else value
        for key, value in options.items()
    }
    attrs.update(
        _app=app,
        name=name,
        bind=bind,
        run=fun if bind else staticmethod(fun),
        __wrapped__=staticmethod(fun),
        __module__=getattr(fun, "__module__", None) or base.__module__,
        __qualname__=getattr(fun, "__qualname__", name),
        __doc__=getattr(fun, "__doc__", None),
    )
    cls: type[Task[Any, Any]] = type(
        getattr(fun, "__name__", name.rpartition(".")[2]), (base,), attrs
    )
    task = cls()
    task.__dict__["__qualname__"] = attrs["__qualname__"]  # as the function's (the class has it)
    return task


class TaskDecorator(Protocol):
    """What ``@app.task(...)`` and ``@shared_task(...)`` return: a decorator that keeps
    the function's parameters and return type (an ``async def``'s awaited value)."""

    @overload
    def __call__(self, fun: Callable[P, Coroutine[Any, Any, R]], /) -> Task[P, R]: ...

    @overload
    def __call__(self, fun: Callable[P, R], /) -> Task[P, R]: ...


class BoundTaskDecorator(Protocol):
    """``TaskDecorator`` for ``bind=True``: the function's first parameter is the task."""

    @overload
    def __call__(
        self, fun: Callable[Concatenate[Any, P], Coroutine[Any, Any, R]], /
    ) -> Task[P, R]: ...

    @overload
    def __call__(self, fun: Callable[Concatenate[Any, P], R], /) -> Task[P, R]: ...
