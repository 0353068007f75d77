"""Celery's calling API of a task: ``delay`` and ``apply_async`` (send it), their async
twins and ``*_on_commit`` forms, and ``apply`` (run it here, now).

``Calling`` is a base of ``Task``, kept apart along this seam: everything here sends
or runs a call; what the task is lives in ``conveyor.task.base``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import uuid
from typing import TYPE_CHECKING, Any, Generic

from conveyor import states
from conveyor.backends.base import ResultWrite
from conveyor.canvas import LINK_ERROR, eager_callbacks
from conveyor.canvas.signatures import resolve
from conveyor.exceptions import ConfigurationError, Ignore, Reject, Retry
from conveyor.result import AsyncResult, EagerResult, encode_failure, encode_state, encode_success
from conveyor.task import handlers
from conveyor.task.options import (
    UNIQUE_KEY,
    UNIQUE_UNTIL,
    check_unique_until,
    positional_range,
    unique_claim_key,
)
from conveyor.task.request import Request, request_context

if TYPE_CHECKING:
    from collections.abc import Callable

    from typing_extensions import ParamSpec, TypeVar

    from conveyor.app import Conveyor
    from conveyor.task.base import Task

    P = ParamSpec("P", default=...)
    R = TypeVar("R", default=Any)
else:
    from typing import ParamSpec, TypeVar

    P = ParamSpec("P")
    R = TypeVar("R")

__all__ = ["Calling"]


class Calling(Generic[P, R]):
    """Sending a task, and running it here (see the module docstring)."""

    if TYPE_CHECKING:  # what Task gives

        @property
        def app(self) -> Conveyor: ...

        name: str
        typing: bool
        queue: str | None
        priority: int | None
        expires: float | None
        ignore_result: bool | None
        unique_key: Callable[..., str] | None
        unique_for: float
        unique_until: str
        _signature: inspect.Signature | None
        _positional: tuple[int, float] | None

        def run(self, *args: P.args, **kwargs: P.kwargs) -> R: ...

        def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R: ...

        def autoretry(self, exc: BaseException) -> Retry | None: ...

    def check_arguments(self, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any]) -> None:
        """Raise TypeError now if the task could not be called with these arguments."""
        if not self.typing:
            return
        if self._signature is None:
            self._signature = inspect.signature(self.run)  # a bound method: no self
            self._positional = positional_range(self._signature)
        if not kwargs and self._positional is not None:
            low, high = self._positional
            if low <= len(args) <= high:
                return  # the common call, checked without binding (a hot path)
        try:
            self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.name}(): {exc}") from None

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
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
    ) -> AsyncResult[R]:
        """Send the task to a worker.

        Args:
            countdown: run no earlier than this many seconds from now.
            eta: run no earlier than this time (naive datetimes are UTC).
            expires: seconds from now, or a time, after which the task is not run
                [the task's ``expires``].
            queue, priority: override the routing (priority 0-9, higher first).
            task_id: use this id instead of a new one.
            ignore_result: store no result for this call (``get()`` then returns None
                at once).
            link, link_error: signatures (or lists) sent once this task succeeded (its
                return value as first argument) or failed for good (see
                docs/canvas.md for what an error callback receives).
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
        app = self.app
        if app.conf.task_always_eager:
            return self.apply(args, kwargs, task_id=task_id, **options)
        if unique_key is None and self.unique_key is not None:
            unique_key = str(self.unique_key(*args, **kwargs))
        claim = None
        if unique_key is not None:
            task_id = task_id or str(uuid.uuid4())
            mode = check_unique_until(unique_until or self.unique_until)
            claim = unique_claim_key(unique_key)
            ttl = self.unique_for if unique_for is None else unique_for
            holder = app.broker.claim(claim, task_id, ttl)
            if holder is not None and holder != task_id:
                return AsyncResult(holder, app)
            headers = options.pop("headers", None) or {}
            options["headers"] = {**headers, UNIQUE_KEY: unique_key, UNIQUE_UNTIL: mode}
        try:
            return app.send_task(
                self.name,
                args,
                kwargs,
                countdown=countdown,
                eta=eta,
                task_id=task_id,
                **self._routed(expires, queue, priority, ignore_result),
                **options,
            )
        except BaseException:
            if claim is not None and task_id is not None:
                app.broker.release_claim(claim, task_id)  # nothing was sent
            raise

    def _routed(
        self, expires: Any, queue: str | None, priority: int | None, ignore_result: bool | None
    ) -> dict[str, Any]:
        """What a call leaves out, from the task's own options."""
        return {
            "expires": expires if expires is not None else self.expires,
            "queue": queue or self.queue,
            "priority": priority if priority is not None else self.priority,
            "ignore_result": self.ignore_result if ignore_result is None else ignore_result,
        }

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

    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """``delay`` for async code: ``await task.adelay(2, 3)``; see ``aapply_async``."""
        return await self.aapply_async(args, kwargs)

    async def aapply_async(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[R]:
        """``apply_async`` for async code: sends the task without blocking the event loop.

        The arguments are checked here, before anything else. On Redis the message is
        published by the loop's own asyncio client, the concurrent sends of its
        coroutines together, each returning once Redis holds its message; elsewhere
        (and with ``unique_key``, or eager) in a thread of the loop's default executor.
        Cancelling the await does not unsend: the message may still be published.

        Args:
            args, kwargs, options: as for ``apply_async``.

        Raises:
            TypeError: the arguments do not fit the task function.
            conveyor.exceptions.EncodeError: an argument cannot be sent as JSON.
        """
        args = list(args or ())
        kwargs = dict(kwargs or {})
        self.check_arguments(args, kwargs)
        if (
            self.app.conf.task_always_eager
            or options.get("unique_key") is not None
            or self.unique_key is not None
        ):  # an eager run, a uniqueness claim: blocking work, in a thread
            return await asyncio.to_thread(self.apply_async, args, kwargs, **options)
        options.pop("unique_for", None)
        options.pop("unique_until", None)
        options.pop("unique_key", None)
        routed = self._routed(
            options.pop("expires", None),
            options.pop("queue", None),
            options.pop("priority", None),
            options.pop("ignore_result", None),
        )
        return await self.app.asend_task(self.name, args, kwargs, **routed, **options)

    # -- running here, now ---------------------------------------------------------------

    def apply(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        *,
        task_id: str | None = None,
        throw: bool | None = None,
        **_options: Any,
    ) -> EagerResult[R]:
        """Run the task here, now, and return its result handle (as Celery's ``apply``):
        through ``__call__``, with its handlers, retrying at once on a retry, then its
        ``link``/``link_error`` callbacks (run here too).

        With ``throw`` (default: ``task_eager_propagates``) an exception is raised
        instead of stored.
        """
        task: Task[Any, Any] = self  # type: ignore[assignment]
        app = self.app
        task_id = task_id or str(uuid.uuid4())
        args = list(args or ())
        kwargs = dict(kwargs or {})
        retries = 0
        while True:  # an eager retry runs again at once, as in Celery
            request = Request(
                id=task_id, task=self.name, args=args, kwargs=kwargs, retries=retries, is_eager=True
            )
            value: Any = None
            with request_context(request):
                handlers.before(task, request)
                try:
                    value = self(*args, **kwargs)
                except Exception as exc:
                    again = exc if isinstance(exc, Retry) else self.autoretry(exc)
                    if again is not None:
                        handlers.after(task, request, states.RETRY, None, exc)
                        args = again.args_override if again.args_override is not None else args
                        kwargs = (
                            again.kwargs_override if again.kwargs_override is not None else kwargs
                        )
                        retries += 1
                        continue
                    state = _control_state(exc) or states.FAILURE
                    if state == states.FAILURE:
                        self._eager_errbacks(request, exc, _options)
                    handlers.after(task, request, state, None, exc)
                    propagate = app.conf.task_eager_propagates if throw is None else throw
                    if state == states.FAILURE and propagate:
                        raise
                    payload = (
                        encode_failure(self.name, exc)
                        if state == states.FAILURE
                        else encode_state(self.name, state)
                    )
                else:
                    state, payload = states.SUCCESS, encode_success(self.name, value)
                    handlers.after(task, request, state, value, None)
            break
        if state in (states.SUCCESS, states.FAILURE):
            if app.conf.task_store_eager_result and not self.ignore_result:
                app.backend.store(ResultWrite(task_id, state, payload, app.conf.result_expires))
            result: EagerResult[R] = EagerResult(task_id, state, payload)
            return eager_callbacks(app, result, _options) if _options else result
        return EagerResult(task_id, state, payload)  # IGNORED, REJECTED: get() is None

    def _eager_errbacks(
        self, request: Request, exc: BaseException, send_options: dict[str, Any]
    ) -> None:
        """Call the error callbacks of a failed eager run here as a worker would: those
        written for Celery with ``(request, exc, traceback)``, those taking one argument
        (run eagerly) with the task's id; the JSON ones stay in ``send_options`` for
        ``eager_callbacks``, which runs them with ``(task_id, exc_type, message)``."""
        entries = send_options.get(LINK_ERROR)
        if not entries:
            return
        direct, sent = handlers.sort_errbacks(entries, self.app)
        handlers.call_errbacks(direct, request, exc)
        for entry, form in sent:
            if form == handlers.TASK_ID:
                resolve(entry, self.app).apply((request.id,))
        send_options[LINK_ERROR] = [entry for entry, form in sent if form == handlers.JSON]

    def AsyncResult(self, task_id: str) -> AsyncResult[R]:
        """A handle on the result of an earlier call of this task."""
        return AsyncResult(task_id, self.app)


def _control_state(exc: BaseException) -> str | None:
    """IGNORED or REJECTED for the exceptions that end a task without failing it."""
    if isinstance(exc, Reject):
        return states.REJECTED
    if isinstance(exc, Ignore):
        return states.IGNORED
    return None
