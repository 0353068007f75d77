"""``Task``: Celery's task class. Its options are class attributes and its body is
``run``; ``@app.task`` makes a subclass of the app's task class per function (``run``
is then the function: a bound method with ``bind=True``, else a plain function), and
``app.register_task(MyTask())`` registers a subclass written by hand.

The handlers (``before_start``, ``on_success``, ``on_failure``, ``on_retry``,
``after_return``) run in the process that runs the task; the worker calls the task
through ``__call__``, so a subclass that overrides it (Flask's app context) applies.
Sending lives in ``conveyor.task.calling`` (``delay``, ``apply_async``, ``apply``).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import random
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Generic, NoReturn

from conveyor import current
from conveyor.backends.base import ResultWrite
from conveyor.canvas import Signature, chunks, xmap, xstarmap
from conveyor.exceptions import (
    ConfigurationError,
    ExceptionInfo,
    MaxRetriesExceededError,
    Retry,
    TaskControl,
)
from conveyor.result import encode_state
from conveyor.task import options
from conveyor.task.calling import Calling
from conveyor.task.request import Request, _current_request, run_coroutine

if TYPE_CHECKING:  # a type variable's default is typing's from Python 3.13 on
    from typing_extensions import ParamSpec, TypeVar

    from conveyor.app import Conveyor

    #: The task's parameters and return type (``...`` and ``Any`` where nobody said).
    P = ParamSpec("P", default=...)
    R = TypeVar("R", default=Any)
else:
    from typing import ParamSpec, TypeVar

    P = ParamSpec("P")
    R = TypeVar("R")

__all__ = ["Task"]


class Task(Calling[P, R], Generic[P, R]):
    """A task: calling it runs ``run`` here; ``delay`` and ``apply_async`` send it to a
    worker. Options left as None fall back to the app's settings (``task_*``).

    Subclass it (or the app's ``app.Task``) for a base class of your own
    (``@app.task(base=MyTask)``, ``Conveyor(task_cls=MyTask)``), or for a task written
    as a class (``app.register_task(MyTask())``, with ``name`` and ``run``).
    """

    # -- options: class attributes, set by @app.task(...) or by a subclass --------------

    #: The name the task is registered under (``module.function`` by default).
    name: str = None  # type: ignore[assignment]  # set when the task is registered
    #: ``run`` receives the task as its first argument (``self``): set by ``@app.task``.
    bind: bool = False
    #: Store no result (None: the ``task_ignore_result`` setting).
    ignore_result: bool | None = None
    #: Acknowledge the message once the task ended (None: ``task_acks_late``).
    acks_late: bool | None = None
    #: Store STARTED when a worker starts it (None: ``task_track_started``).
    track_started: bool | None = None
    #: The queue and priority (0-9, higher first) it is sent with (None: the routes').
    queue: str | None = None
    priority: int | None = None
    #: Seconds (or a time) after which a sent task is not run any more.
    expires: float | None = None
    #: Retries before ``self.retry()`` gives up (None: never).
    max_retries: int | None = 3
    #: Seconds before a retry when ``retry()`` is given no ``countdown``/``eta``.
    default_retry_delay: float = 180.0
    #: How often it may start, across all workers: ``"10/s"``, ``"100/m"``, a number.
    rate_limit: str | float | None = None
    #: Seconds after which it is ended (hard) or interrupted (soft) (None: settings).
    time_limit: float | None = None
    soft_time_limit: float | None = None
    #: Check the arguments against ``run``'s signature when it is sent.
    typing: bool = True
    #: Exceptions retried by themselves, and with which delays (see docs/tasks.md).
    autoretry_for: tuple[type[BaseException], ...] = ()
    dont_autoretry_for: tuple[type[BaseException], ...] = ()
    retry_kwargs: dict[str, Any] = {}
    retry_backoff: bool | float = False
    retry_backoff_max: float = 600.0
    retry_jitter: bool = True
    #: A failure for good goes to the dead letters, not away.
    dead_letter_on_failure: bool = False
    #: At most this many copies run at once, across all workers.
    concurrency_limit: int | None = None
    #: One queued or running task per key (see docs/tasks.md).
    unique_key: Callable[..., str] | None = None
    unique_for: float = 3600.0
    unique_until: str = "finished"
    #: Celery's options that conveyor does not need (``options.CELERY_ONLY_OPTIONS``).
    serializer: str | None = None
    compression: str | None = None
    send_events: bool = True
    trail: bool = True
    store_errors_even_if_ignored: bool | None = None
    throws: tuple[type[BaseException], ...] = ()
    resultrepr_maxsize: int = 1024
    acks_on_failure_or_timeout: bool | None = None
    reject_on_worker_lost: bool | None = None
    #: Celery's: the class is a base for tasks, not one (kept for code that sets it).
    abstract: bool = True

    #: The app it belongs to (``app``); the app's task class sets it.
    _app: Conveyor | None = None
    _signature: inspect.Signature | None = None
    _positional: tuple[int, float] | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        options.check_class(cls)

    @property
    def app(self) -> Conveyor:
        """The app the task belongs to (one not registered yet: the default app)."""
        app = self._app if self._app is not None else current.default_app()
        if app is None:
            raise ConfigurationError(f"task {self.name!r} belongs to no app: create one first")
        return app

    @app.setter
    def app(self, value: Conveyor) -> None:
        self._app = value

    @property
    def __name__(self) -> str:
        """The task's class name: the function's name for a function task."""
        return class_name(type(self))

    def __repr__(self) -> str:
        return f"<@task: {self.name}>"

    def __reduce__(self) -> tuple[Any, ...]:
        # pickled as its name, found again in the receiving process's default app
        return (_unpickle_task, (self.name,))

    @functools.cached_property
    def is_async(self) -> bool:
        """True if ``run`` is a coroutine function (``async def``)."""
        return inspect.iscoroutinefunction(self.run)

    # -- running here ------------------------------------------------------------

    def run(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """The body of the task: the decorated function, or a subclass's own."""
        raise NotImplementedError(f"task {self.name!r} defines no run()")

    @property
    def request(self) -> Request:
        """The invocation being run: empty outside a task (``called_directly``); a task
        called as a function inside another one sees that one's."""
        return _current_request.get() or Request()

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the task in this process, as a plain call of ``run`` (an async task runs
        to the end on this thread's event loop). The worker runs tasks through it, so a
        subclass's own ``__call__`` (an app context around ``self.run``) applies."""
        value = self.run(*args, **kwargs)
        if self.is_async:
            value = run_coroutine(value)
        return value

    async def acall(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the task in this process from async code: an async task is awaited on
        the running loop; a sync one runs in a thread (``asyncio.to_thread``) so that
        it does not block the loop. Either way through ``__call__`` where a subclass
        overrides it."""
        if not self.is_async:
            return await asyncio.to_thread(self, *args, **kwargs)
        if type(self).__call__ is not Task.__call__:
            value: Any = self(*args, **kwargs)  # an override returns run's coroutine
            return await value if inspect.isawaitable(value) else value  # type: ignore[no-any-return]
        return await self.run(*args, **kwargs)  # type: ignore[misc, no-any-return]

    # -- Celery's handlers: called where the task runs (see conveyor.task.handlers) ------

    def before_start(self, task_id: str, args: list[Any], kwargs: dict[str, Any]) -> None:
        """Called before the task runs, with its id and arguments."""

    def on_success(
        self, retval: Any, task_id: str, args: list[Any], kwargs: dict[str, Any]
    ) -> None:
        """Called once the task returned ``retval``."""

    def on_failure(
        self,
        exc: BaseException,
        task_id: str,
        args: list[Any],
        kwargs: dict[str, Any],
        einfo: ExceptionInfo,
    ) -> None:
        """Called once the task failed for good with ``exc``."""

    def on_retry(
        self,
        exc: BaseException | None,
        task_id: str,
        args: list[Any],
        kwargs: dict[str, Any],
        einfo: ExceptionInfo,
    ) -> None:
        """Called when the task is to be retried (``exc``: what caused it)."""

    def after_return(
        self,
        status: str,
        retval: Any,
        task_id: str,
        args: list[Any],
        kwargs: dict[str, Any],
        einfo: ExceptionInfo | None,
    ) -> None:
        """Called after the task succeeded or failed (not on a retry, an ``Ignore`` or a
        ``Reject``): ``retval`` is its value or exception."""

    # -- states ------------------------------------------------------------------------

    def update_state(
        self,
        task_id: str | None = None,
        state: str | None = None,
        meta: Any = None,
        **_kwargs: Any,
    ) -> None:
        """Store a state for a task, this one by default: ``self.update_state(
        state="PROGRESS", meta={"current": 5, "total": 10})``; a client sees it as
        ``AsyncResult.state`` and ``.info``. The task's own result replaces it when it
        ends. For FAILURE (or RETRY, REVOKED), ``meta`` may be an exception.

        Raises:
            ValueError: no ``state``, or no ``task_id`` outside a running task.
            conveyor.exceptions.EncodeError: ``meta`` is not JSON.
        """
        request = self.request
        task_id = task_id or request.id
        if task_id is None:
            raise ValueError("update_state() outside a running task needs task_id=")
        if not state:
            raise ValueError("update_state() needs a state")
        payload = encode_state(self.name, state, meta, worker=request.hostname or "")
        self.app.backend.store(ResultWrite(task_id, state, payload, self.app.conf.result_expires))

    # -- retrying ----------------------------------------------------------------

    def retry(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        exc: BaseException | None = None,
        *,
        countdown: float | Any = None,
        eta: Any = None,
        max_retries: int | None = None,
        **_options: Any,
    ) -> NoReturn:
        """Run this task again later: ``raise self.retry(exc=exc, countdown=10)``.

        Raises ``Retry``, which the worker turns into a new delivery due at ``eta``
        (default: ``default_retry_delay`` seconds from now) through the broker's
        delayed store, so no worker slot waits for it; the state is RETRY until then.
        Once ``max_retries`` retries have run, raises ``exc`` instead (or
        ``MaxRetriesExceededError`` without one), so the task fails with it.

        Args:
            args, kwargs: the next run's arguments (default: this run's).
            exc: the exception that made the task retry.
            countdown, eta: when the next run is due (seconds or a timedelta; a time).
            max_retries: override the task's ``max_retries`` (None: no limit there).
        """
        request = self.request
        limit = self.max_retries if max_retries is None else max_retries
        if limit is not None and request.retries >= limit:
            if exc is not None:
                raise exc
            raise MaxRetriesExceededError(
                f"{self.name}[{request.id}] already retried {request.retries} times "
                f"(max_retries={limit})"
            )
        if countdown is None and eta is None:
            countdown = self.default_retry_delay
        due = options.countdown_to_eta(countdown, eta)
        raise Retry(
            exc=exc,
            eta=due if due is not None else time.time(),
            args=None if args is None else list(args),
            kwargs=None if kwargs is None else dict(kwargs),
        )

    def autoretry(self, exc: BaseException) -> Retry | None:
        """The Retry that ``autoretry_for`` makes of ``exc`` in the running task, or None
        (not one of those exceptions, one of ``dont_autoretry_for``, or no retries left:
        the task fails with ``exc``)."""
        retry_for, never = tuple(self.autoretry_for), tuple(self.dont_autoretry_for)
        if isinstance(exc, TaskControl):  # Ignore, Reject: never retried (as in Celery)
            return None
        if not retry_for or not isinstance(exc, retry_for) or isinstance(exc, never):
            return None
        retries = self.request.retries
        limit = (self.retry_kwargs or {}).get("max_retries", self.max_retries)
        if limit is not None and retries >= limit:
            return None
        countdown = (self.retry_kwargs or {}).get("countdown")
        if countdown is None:
            countdown = self.backoff(retries) if self.retry_backoff else self.default_retry_delay
        return Retry(exc=exc, eta=time.time() + float(countdown))

    def backoff(self, retries: int) -> float:
        """Seconds before retry number ``retries + 1`` with ``retry_backoff``: ``factor *
        2 ** retries`` capped at ``retry_backoff_max`` (factor: ``retry_backoff`` if it
        is a number, else 1), then with ``retry_jitter`` a uniform draw below that
        ("full jitter", as Celery does)."""
        factor = 1.0 if self.retry_backoff is True else float(self.retry_backoff)
        delay = min(factor * 2.0**retries, self.retry_backoff_max)
        return random.uniform(0.0, delay) if self.retry_jitter else delay

    # -- replacing -----------------------------------------------------------------------

    def replace(self, sig: Signature) -> Any:
        """Replace this running task with ``sig`` (a task, chain, group or chord), as
        Celery's: the replacement takes this task's id (a chain's last task, a chord's
        body: whose result stands for it), its ``link`` and ``link_error`` callbacks,
        the rest of its chain and its place in a chord or group. This task then ends
        without a result of its own (it is acknowledged; see ``on_replace``).

        ``return self.replace(sig)``: in a worker it raises ``Ignore`` (nothing after
        it runs); run eagerly, it runs ``sig`` here and returns its value.

        Raises:
            ConfigurationError: ``sig`` is part of a chord, or an empty chain.
        """
        from conveyor.task.replacing import replacement

        return self.on_replace(replacement(self, sig))

    def on_replace(self, sig: Signature) -> Any:
        """Send the replacement built by ``replace`` (run it here, eagerly); a subclass
        that overrides it must return ``super().on_replace(sig)``."""
        from conveyor.task.replacing import send_replacement

        return send_replacement(self, sig)

    # -- canvas --------------------------------------------------------------------

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A signature of this task with partial arguments: ``add.s(2)``; in a chain
        the previous task's return value comes before them."""
        return Signature(self, args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable signature: it ignores the arguments it is called with (such as
        a previous task's return value)."""
        return Signature(self, args, kwargs, immutable=True)

    def signature(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Signature:
        """A signature with arguments and options (``queue``, ``countdown``,
        ``immutable``, ...): ``add.signature((2, 2), countdown=10)``."""
        immutable = bool(options.pop("immutable", False))
        return Signature(self, args, kwargs, options, immutable=immutable)

    subtask = signature

    def map(self, it: Iterable[Any]) -> xmap:
        """One task that calls this one on each item and returns the list of values:
        ``add.map([1, 2])`` is ``[add(1), add(2)]``, run in a worker."""
        return xmap(self.s(), it, app=self.app)

    def starmap(self, it: Iterable[Any]) -> xstarmap:
        """``map`` with each item as the arguments: ``add.starmap([(1, 2), (3, 4)])``
        is ``[add(1, 2), add(3, 4)]``, run in a worker."""
        return xstarmap(self.s(), it, app=self.app)

    def chunks(self, it: Iterable[Any], n: int) -> chunks:
        """The items (argument tuples) in parts of ``n``, each part one ``starmap``
        task, sent as a group: ``add.chunks(zip(range(100), range(100)), 10)()`` is a
        ``GroupResult`` of ten lists."""
        return chunks(self.s(), it, n, app=self.app)


def class_name(cls: type) -> str:
    """``cls.__name__`` (on a ``Task`` class, read past the instances' ``__name__``)."""
    return cls.__name__


def _unpickle_task(name: str) -> Task[Any, Any]:
    app = current.default_app()
    if app is None:
        raise ConfigurationError(f"cannot unpickle task {name!r}: no app in this process")
    return app.get_task(name)
