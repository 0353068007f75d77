"""Tasks: the object ``@app.task`` makes, with ``delay``/``apply_async`` and ``request``."""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import inspect
import math
import random
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, NoReturn, ParamSpec, TypeVar

from conveyor import states
from conveyor.backends.base import ResultWrite
from conveyor.canvas import Signature, chunks, eager_callbacks, xmap, xstarmap
from conveyor.config import parse_rate
from conveyor.exceptions import ConfigurationError, MaxRetriesExceededError, Retry
from conveyor.message import is_datetime_time
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
        rate_limit: str | float | None = None,
        time_limit: float | None = None,
        soft_time_limit: float | None = None,
        typing: bool = True,
        autoretry_for: tuple[type[BaseException], ...] = (),
        retry_kwargs: dict[str, Any] | None = None,
        retry_backoff: bool | float = False,
        retry_backoff_max: float = 600.0,
        retry_jitter: bool = True,
        dead_letter_on_failure: bool = False,
        concurrency_limit: int | None = None,
        unique_key: Callable[..., str] | None = None,
        unique_for: float = 3600.0,
        unique_until: str = "finished",
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
        self.rate_limit = check_rate_limit(name, rate_limit)
        self.time_limit = time_limit
        self.soft_time_limit = soft_time_limit
        self.typing = typing
        self.autoretry_for = tuple(autoretry_for)
        self.retry_kwargs = dict(retry_kwargs or {})
        unknown = set(self.retry_kwargs) - {"max_retries", "countdown"}
        if unknown:
            raise TypeError(f"retry_kwargs takes max_retries and countdown, not {sorted(unknown)}")
        self.retry_backoff = retry_backoff
        self.retry_backoff_max = retry_backoff_max
        self.retry_jitter = retry_jitter
        self.dead_letter_on_failure = dead_letter_on_failure
        if concurrency_limit is not None and concurrency_limit < 1:
            raise ValueError(f"concurrency_limit must be at least 1, not {concurrency_limit}")
        self.concurrency_limit = concurrency_limit
        self.unique_key = unique_key
        self.unique_for = unique_for
        self.unique_until = check_unique_until(unique_until)
        self.is_async = inspect.iscoroutinefunction(fun)
        self.__name__ = getattr(fun, "__name__", name)
        self.__qualname__ = getattr(fun, "__qualname__", name)
        self.__module__ = getattr(fun, "__module__", __name__)
        self.__doc__ = fun.__doc__
        self.__wrapped__ = fun
        self._signature: inspect.Signature | None = None
        self._positional: tuple[int, float] | None = None

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

    # -- retrying ----------------------------------------------------------------

    def retry(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        exc: BaseException | None = None,
        *,
        countdown: float | dt.timedelta | None = None,
        eta: dt.datetime | float | None = None,
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
            countdown, eta: when the next run is due.
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
        due = countdown_to_eta(countdown, eta)
        raise Retry(
            exc=exc,
            eta=due if due is not None else time.time(),
            args=None if args is None else list(args),
            kwargs=None if kwargs is None else dict(kwargs),
        )

    def autoretry(self, exc: BaseException) -> Retry | None:
        """The Retry that ``autoretry_for`` makes of ``exc`` in the running task, or None
        (not one of those exceptions, or no retries left: the task fails with ``exc``)."""
        if not self.autoretry_for or not isinstance(exc, self.autoretry_for):
            return None
        retries = self.request.retries
        limit = self.retry_kwargs.get("max_retries", self.max_retries)
        if limit is not None and retries >= limit:
            return None
        countdown = self.retry_kwargs.get("countdown")
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

    # -- sending -----------------------------------------------------------------

    def check_arguments(self, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any]) -> None:
        """Raise TypeError now if the task could not be called with these arguments."""
        if not self.typing:
            return
        if self._signature is None:
            self._signature = inspect.signature(self.run)
            self._positional = _positional_range(self._signature)
        call_args = (None, *args) if self.bind else tuple(args)
        if not kwargs and self._positional is not None:
            low, high = self._positional
            if low <= len(call_args) <= high:
                return  # the common call, checked without binding (a hot path)
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
        unique_key: str | None = None,
        unique_for: float | None = None,
        unique_until: str | None = None,
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
            link, link_error: signatures (or lists) sent once this task succeeded (its
                return value as first argument) or failed for good (with
                ``(task_id, exc_type, message)``); see docs/canvas.md.
            unique_key: while a task sent with this key is queued or running (see
                ``unique_until``; at most ``unique_for`` seconds), sending another
                enqueues nothing and returns the first one's result handle. Default:
                the task's ``unique_key(*args, **kwargs)`` if it has one.
            unique_for: seconds the key is held at most [the task's, 3600].
            unique_until: ``finished`` (the key is freed when the task ends) or
                ``started`` (when a worker starts it) [the task's, ``finished``].

        Raises:
            TypeError: the arguments do not fit the task function.
            conveyor.exceptions.EncodeError: an argument cannot be sent as JSON.
            ValueError: ``countdown``, ``eta`` or ``expires`` gives no time a datetime
                can hold (NaN, infinite, beyond the year 9999); nothing is sent.
        """
        args = list(args or ())
        kwargs = dict(kwargs or {})
        self.check_arguments(args, kwargs)
        if self.app.conf.task_always_eager:
            return self.apply(args, kwargs, task_id=task_id, **options)
        if unique_key is None and self.unique_key is not None:
            unique_key = str(self.unique_key(*args, **kwargs))
        claim = None
        if unique_key is not None:
            task_id = task_id or str(uuid.uuid4())
            mode = check_unique_until(unique_until or self.unique_until)
            claim = unique_claim_key(unique_key)
            ttl = self.unique_for if unique_for is None else unique_for
            holder = self.app.broker.claim(claim, task_id, ttl)
            if holder is not None and holder != task_id:
                return AsyncResult(holder, self.app)
            headers = options.pop("headers", None) or {}
            options["headers"] = {**headers, UNIQUE_KEY: unique_key, UNIQUE_UNTIL: mode}
        try:
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
        except BaseException:
            if claim is not None and task_id is not None:
                self.app.broker.release_claim(claim, task_id)  # nothing was sent
            raise

    def delay_on_commit(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """``delay``, once the surrounding Django database transaction commits (at once
        outside a transaction); nothing is sent if it rolls back. See
        ``apply_async_on_commit``."""
        self.apply_async_on_commit(args, kwargs)

    def apply_async_on_commit(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        *,
        using: str | None = None,
        **options: Any,
    ) -> None:
        """``apply_async`` once the current Django transaction (of database ``using``)
        commits, as Celery 5.4's: the task never runs on data its caller rolled back,
        nor before that data is visible to the worker. Returns None (as Celery): the
        task is not sent yet; pass ``task_id=`` to know its id in advance.

        The arguments are checked now, so a bad call fails here, not at commit.
        For SQLAlchemy sessions, see docs/tasks.md.

        Raises:
            TypeError: the arguments do not fit the task function.
            conveyor.exceptions.ConfigurationError: Django is not installed.
        """
        try:
            from django.db import transaction  # type: ignore[import-untyped]
        except ImportError as exc:
            raise ConfigurationError(
                "apply_async_on_commit needs Django (pip install django); for SQLAlchemy, "
                "send from an after_commit listener (docs/tasks.md)"
            ) from exc
        args = list(args or ())
        kwargs = dict(kwargs or {})
        self.check_arguments(args, kwargs)
        transaction.on_commit(lambda: self.apply_async(args, kwargs, **options), using=using)

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
        retries = 0
        while True:  # an eager retry runs again at once, as in Celery
            request = Request(
                id=task_id, task=self.name, args=args, kwargs=kwargs, retries=retries, is_eager=True
            )
            with request_context(request):
                try:
                    value = self(*args, **kwargs)
                except Exception as exc:
                    again = exc if isinstance(exc, Retry) else self.autoretry(exc)
                    if again is not None:
                        args = again.args_override if again.args_override is not None else args
                        kwargs = (
                            again.kwargs_override if again.kwargs_override is not None else kwargs
                        )
                        retries += 1
                        continue
                    if self.app.conf.task_eager_propagates:
                        raise
                    state, payload = states.FAILURE, encode_failure(self.name, exc)
                else:
                    state, payload = states.SUCCESS, encode_success(self.name, value)
            break
        if self.app.conf.task_store_eager_result and not self.ignore_result:
            self.app.backend.store(
                ResultWrite(task_id, state, payload, self.app.conf.result_expires)
            )
        result = EagerResult(task_id, state, payload)
        return eager_callbacks(self.app, result, _options) if _options else result

    def AsyncResult(self, task_id: str) -> AsyncResult:
        """A handle on the result of an earlier call of this task."""
        return AsyncResult(task_id, self.app)

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


#: Headers of a unique task's message: its key, and when a worker frees it.
UNIQUE_KEY = "unique_key"
UNIQUE_UNTIL = "unique_until"


def unique_claim_key(key: str) -> str:
    """The coordination-store key a unique task's ``unique_key`` is claimed under."""
    return f"unique:{key}"


def check_rate_limit(task_name: str, rate: str | float | None) -> str | float | None:
    """``rate_limit`` if it is None or a rate ``parse_rate`` reads: checked when the task
    is defined, not when its first message is refused by a worker.

    Raises:
        ConfigurationError: naming the task and the forms a rate may take.
    """
    if rate is not None:
        try:
            parse_rate(rate)
        except ValueError as exc:
            raise ConfigurationError(f"task {task_name!r}: {exc}") from None
    return rate


def check_unique_until(mode: str) -> str:
    """``unique_until``: ``finished`` (the default) or ``started``."""
    if mode not in ("finished", "started"):
        raise ValueError(f"unique_until must be 'finished' or 'started', not {mode!r}")
    return mode


def countdown_to_eta(
    countdown: float | dt.timedelta | None, eta: dt.datetime | float | None
) -> float | None:
    """The due time of a message given Celery's ``countdown``/``eta`` options.

    Raises:
        ValueError: naming the option, if the time is not one a datetime can hold.
    """
    if countdown is not None:
        return _checked("countdown", countdown, lambda: time.time() + seconds(countdown))
    return _checked("eta", eta, lambda: to_timestamp(eta))


def expiry(expires: dt.datetime | dt.timedelta | float | None) -> float | None:
    """The UNIX time after which a message must not run: ``expires`` is seconds
    (or a timedelta) from now, or an absolute datetime.

    Raises:
        ValueError: naming the option, if the time is not one a datetime can hold.
    """
    if expires is None or isinstance(expires, dt.datetime):
        return _checked("expires", expires, lambda: to_timestamp(expires))
    return _checked("expires", expires, lambda: time.time() + seconds(expires))


def _checked(option: str, given: object, when: Callable[[], float | None]) -> float | None:
    """``when()``, the UNIX time the send option ``option=given`` stands for, if a
    worker can hold it as a datetime (it must, to build the task's request)."""
    try:
        value = when()
    except (OverflowError, ValueError):  # an int beyond float, a datetime beyond UTC
        value = math.inf
    if value is None or is_datetime_time(value):
        return value
    raise ValueError(
        f"{option}={given!r} is out of range: it is no time between the years 1 and 9999 "
        f"(UTC), which a task's request must hold"
    )


def seconds(value: float | dt.timedelta) -> float:
    """Seconds from a number or a timedelta (public API takes either)."""
    return value.total_seconds() if isinstance(value, dt.timedelta) else float(value)


def _positional_range(signature: inspect.Signature) -> tuple[int, float] | None:
    """How many positional arguments a call with no keyword arguments may pass (at
    least, at most), or None if such a call needs a full ``bind`` to be checked (a
    keyword-only parameter without a default)."""
    low, high = 0, 0.0
    for param in signature.parameters.values():
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            high += 1
            if param.default is param.empty:
                low += 1
        elif param.kind is param.VAR_POSITIONAL:
            high = math.inf
        elif param.kind is param.KEYWORD_ONLY and param.default is param.empty:
            return None
    return low, high
