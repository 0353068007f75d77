"""Tasks: the object ``@app.task`` makes, with ``delay``/``apply_async`` and ``request``."""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import inspect
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from conveyor import states
from conveyor.backends.base import ResultWrite
from conveyor.result import AsyncResult, EagerResult, encode_failure, encode_success

if TYPE_CHECKING:
    from conveyor.app import Conveyor

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(slots=True)
class Request:
    """What a running task knows about its own invocation (``self.request``)."""

    id: str | None = None
    task: str | None = None
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    retries: int = 0
    delivery_count: int = 0
    queue: str | None = None
    priority: int = 0
    hostname: str | None = None
    eta: dt.datetime | None = None
    expires: dt.datetime | None = None
    parent_id: str | None = None
    root_id: str | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    is_eager: bool = False
    ignore_result: bool = False


_current_request: contextvars.ContextVar[Request | None] = contextvars.ContextVar(
    "conveyor_request", default=None
)


def current_request() -> Request | None:
    """The request of the task running in this thread or task, if any."""
    return _current_request.get()


@contextmanager
def request_context(request: Request) -> Iterator[Request]:
    """Make ``request`` the current request for the code inside the block."""
    token = _current_request.set(request)
    try:
        yield request
    finally:
        _current_request.reset(token)


def to_timestamp(value: dt.datetime | float | None) -> float | None:
    """A UNIX time from a datetime (naive means UTC, as in Celery) or a number."""
    if value is None or isinstance(value, int | float):
        return None if value is None else float(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.timestamp()


def from_timestamp(value: float | None) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromtimestamp(value, dt.UTC)


class _ThreadLoop:
    """A thread's own event loop, closed when the thread ends (``threading.local``
    drops this holder then) or, for a thread still alive, at interpreter exit."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        weakref.finalize(self, _close_idle, self.loop)


def _close_idle(loop: asyncio.AbstractEventLoop) -> None:
    if not loop.is_running() and not loop.is_closed():
        loop.close()


_loops = threading.local()


def run_coroutine(coro: Any) -> Any:
    """Run ``coro`` on this thread's long-lived event loop (one per thread, not one
    per call, so connection pools and caches in async code survive between tasks)."""
    holder: _ThreadLoop | None = getattr(_loops, "holder", None)
    if holder is None or holder.loop.is_closed():
        holder = _loops.holder = _ThreadLoop()
    return holder.loop.run_until_complete(coro)


class Task(Generic[P, R]):
    """A registered task. Calling it runs the function here; ``delay`` and
    ``apply_async`` send it to a worker.

    Options left as None fall back to the app's settings (``task_*``).
    """

    def __init__(
        self,
        app: Conveyor,
        fun: Callable[..., Any],
        *,
        name: str,
        bind: bool = False,
        ignore_result: bool | None = None,
        acks_late: bool | None = None,
        track_started: bool | None = None,
        queue: str | None = None,
        priority: int | None = None,
        max_retries: int | None = 3,
        default_retry_delay: float = 180.0,
        rate_limit: str | None = None,
        time_limit: float | None = None,
        soft_time_limit: float | None = None,
        typing: bool = True,
    ):
        self.app = app
        self.run = fun
        self.name = name
        self.bind = bind
        self.ignore_result = ignore_result
        self.acks_late = acks_late
        self.track_started = track_started
        self.queue = queue
        self.priority = priority
        self.max_retries = max_retries
        self.default_retry_delay = default_retry_delay
        self.rate_limit = rate_limit
        self.time_limit = time_limit
        self.soft_time_limit = soft_time_limit
        self.typing = typing
        self.is_async = inspect.iscoroutinefunction(fun)
        self.__name__ = getattr(fun, "__name__", name)
        self.__qualname__ = getattr(fun, "__qualname__", name)
        self.__module__ = getattr(fun, "__module__", __name__)
        self.__doc__ = fun.__doc__
        self.__wrapped__ = fun
        self._signature: inspect.Signature | None = None

    def __repr__(self) -> str:
        return f"<@task: {self.name}>"

    # -- running here ------------------------------------------------------------

    @property
    def request(self) -> Request:
        """The invocation being run (empty outside a task)."""
        return _current_request.get() or Request()

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the task function in this process, as a plain call (an async task runs
        to the end on this thread's event loop)."""
        value = self._call_function(args, kwargs)
        if self.is_async:
            value = run_coroutine(value)
        return value  # type: ignore[no-any-return]

    async def acall(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Run the task function in this process from async code: an async task is
        awaited on the running loop; a sync one runs in a thread (``asyncio.to_thread``)
        so that it does not block the loop."""
        if self.is_async:
            return await self._call_function(args, kwargs)
        return await asyncio.to_thread(self._call_function, args, kwargs)

    def _call_function(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # the function's own return value: a coroutine, not yet awaited, for an async task
        call_args: tuple[Any, ...] = (self, *args) if self.bind else args
        return self.run(*call_args, **kwargs)

    # -- sending -----------------------------------------------------------------

    def check_arguments(self, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any]) -> None:
        """Raise TypeError now if the task could not be called with these arguments."""
        if not self.typing:
            return
        if self._signature is None:
            self._signature = inspect.signature(self.run)
        call_args = (None, *args) if self.bind else tuple(args)
        try:
            self._signature.bind(*call_args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.name}(): {exc}") from None

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult:
        """Send the task with these arguments; shortcut for ``apply_async``."""
        return self.apply_async(args, kwargs)

    def apply_async(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        *,
        countdown: float | dt.timedelta | None = None,
        eta: dt.datetime | float | None = None,
        expires: dt.datetime | dt.timedelta | float | None = None,
        queue: str | None = None,
        priority: int | None = None,
        task_id: str | None = None,
        ignore_result: bool | None = None,
        **options: Any,
    ) -> AsyncResult:
        """Send the task to a worker.

        Args:
            countdown: run no earlier than this many seconds from now.
            eta: run no earlier than this time (naive datetimes are UTC).
            expires: seconds from now, or a time, after which the task is not run.
            queue, priority: override the routing (priority 0-9, higher first).
            task_id: use this id instead of a new one.
            ignore_result: store no result for this call.

        Raises:
            TypeError: the arguments do not fit the task function.
            conveyor.exceptions.EncodeError: an argument cannot be sent as JSON.
        """
        args = list(args or ())
        kwargs = dict(kwargs or {})
        self.check_arguments(args, kwargs)
        if self.app.conf.task_always_eager:
            return self.apply(args, kwargs, task_id=task_id)
        return self.app.send_task(
            self.name,
            args,
            kwargs,
            countdown=countdown,
            eta=eta,
            expires=expires,
            queue=queue or self.queue,
            priority=priority if priority is not None else self.priority,
            task_id=task_id,
            ignore_result=self.ignore_result if ignore_result is None else ignore_result,
            **options,
        )

    # -- sending from async code ----------------------------------------------------
    #
    # One rule names the async twin of every blocking call: an ``a`` in front, as in
    # Django (``aget``, ``asave``) and the stdlib (``anext``, ``aclosing``). A suffix
    # would collide with Celery's own ``async``: in ``apply_async`` it means "run on a
    # worker", not "awaitable", so ``apply_async_async`` would say it twice.

    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult:
        """``delay`` for async code: ``await task.adelay(2, 3)``; see ``aapply_async``."""
        return await self.aapply_async(args, kwargs)

    async def aapply_async(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult:
        """``apply_async`` for async code: sends the task without blocking the event loop.

        The arguments are checked here, before anything else; the publish itself runs
        in a thread of the loop's default executor (``asyncio.to_thread``) until the
        brokers have native asyncio clients. Cancelling the await does not unsend: the
        message may still be published.

        Args:
            args, kwargs, options: as for ``apply_async``.

        Raises:
            TypeError: the arguments do not fit the task function.
            conveyor.exceptions.EncodeError: an argument cannot be sent as JSON.
        """
        args = list(args or ())
        kwargs = dict(kwargs or {})
        self.check_arguments(args, kwargs)
        return await asyncio.to_thread(self.apply_async, args, kwargs, **options)

    def apply(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        *,
        task_id: str | None = None,
        **_options: Any,
    ) -> EagerResult:
        """Run the task here, now, and return its result handle (as Celery's ``apply``).

        With ``task_eager_propagates`` an exception is raised instead of stored.
        """
        task_id = task_id or str(uuid.uuid4())
        args = list(args or ())
        kwargs = dict(kwargs or {})
        request = Request(id=task_id, task=self.name, args=args, kwargs=kwargs, is_eager=True)
        with request_context(request):
            try:
                value = self(*args, **kwargs)
            except Exception as exc:
                if self.app.conf.task_eager_propagates:
                    raise
                state, payload = states.FAILURE, encode_failure(self.name, exc)
            else:
                state, payload = states.SUCCESS, encode_success(self.name, value)
        if self.app.conf.task_store_eager_result and not self.ignore_result:
            self.app.backend.store(
                ResultWrite(task_id, state, payload, self.app.conf.result_expires)
            )
        return EagerResult(task_id, state, payload)

    def AsyncResult(self, task_id: str) -> AsyncResult:
        """A handle on the result of an earlier call of this task."""
        return AsyncResult(task_id, self.app)


def countdown_to_eta(
    countdown: float | dt.timedelta | None, eta: dt.datetime | float | None
) -> float | None:
    """The due time of a message given Celery's ``countdown``/``eta`` options."""
    if countdown is not None:
        return time.time() + seconds(countdown)
    return to_timestamp(eta)


def expiry(expires: dt.datetime | dt.timedelta | float | None) -> float | None:
    """The UNIX time after which a message must not run: ``expires`` is seconds
    (or a timedelta) from now, or an absolute datetime."""
    if expires is None or isinstance(expires, dt.datetime):
        return to_timestamp(expires)
    return time.time() + seconds(expires)


def seconds(value: float | dt.timedelta) -> float:
    """Seconds from a number or a timedelta (public API takes either)."""
    return value.total_seconds() if isinstance(value, dt.timedelta) else float(value)
