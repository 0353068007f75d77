"""``shared_task``: a task for every app, as Celery's (libraries and Django apps use it,
to define tasks without importing the project's app).

Each app registers the shared tasks, those defined before it and those defined
after, the next time its task registry is read (``app.tasks``); the object
``shared_task`` returns stands for the task on the default app (``Conveyor.
set_default()``, else the app created last), so ``add.delay(2, 2)`` sends with it.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from conveyor import current
from conveyor.exceptions import ConfigurationError

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.task.base import Task

__all__ = ["SharedTask", "define", "sync"]

_lock = threading.RLock()
#: Every shared task defined in this process, in order.
_defined: list[_Shared] = []
#: How many of them each app has registered.
_registered: weakref.WeakKeyDictionary[Conveyor, int] = weakref.WeakKeyDictionary()


class _Shared:
    """One ``@shared_task``: its function and options, and its task on each app."""

    def __init__(self, fun: Callable[..., Any], options: dict[str, Any]):
        self.fun = fun
        self.options = options
        self.tasks: weakref.WeakKeyDictionary[Conveyor, Task[Any, Any]] = (
            weakref.WeakKeyDictionary()
        )

    def register(self, app: Conveyor) -> None:
        self.tasks[app] = app.task(**self.options)(self.fun)

    def task_for(self, app: Conveyor) -> Task[Any, Any]:
        sync(app)
        return self.tasks[app]


def define(fun: Callable[..., Any], options: dict[str, Any]) -> SharedTask:
    """Share ``fun`` as a task with every app (see the module docstring)."""
    shared = _Shared(fun, dict(options))
    with _lock:
        _defined.append(shared)
    return SharedTask(shared)


def sync(app: Conveyor) -> None:
    """Register on ``app`` the shared tasks defined since it last looked."""
    if _registered.get(app, 0) == len(_defined):
        return
    with _lock:
        start = _registered.get(app, 0)
        _registered[app] = len(_defined)  # first: a registration reads app.tasks again
        for shared in _defined[start:]:
            shared.register(app)


class SharedTask:
    """What ``shared_task`` returns: the shared task of the default app, looked up at
    each use (every attribute and call is that task's)."""

    def __init__(self, shared: _Shared):
        self._shared = shared

    def _task(self) -> Task[Any, Any]:
        app = current.default_app()
        if app is None:
            name = getattr(self._shared.fun, "__qualname__", self._shared.fun)
            raise ConfigurationError(f"shared task {name} needs an app: create a Conveyor first")
        return self._shared.task_for(app)

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._task(), attribute)

    # as Celery's proxy: isinstance(add, Task) holds, for the default app's task's class
    @property  # type: ignore[misc]
    def __class__(self) -> type:
        try:
            return type(self._task())
        except ConfigurationError:
            return SharedTask

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._task()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<@shared_task: {getattr(self._shared.fun, '__qualname__', self._shared.fun)}>"
