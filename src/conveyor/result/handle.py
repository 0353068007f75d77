"""``AsyncResult``: a handle on one task's result (and ``EagerResult``: one already
known). Generic in the task's return type: ``add.delay(1, 2).get()`` is an ``int`` to a
type checker; at run time it is one class.

Waiting inside a running task raises (``disable_sync_subtasks``, as in Celery), unless
the call says otherwise or runs in ``allow_join_result()``: a task that waits for
another holds its worker slot meanwhile, and once every slot waits nothing runs.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Generic, Protocol

import orjson

from conveyor import current, states
from conveyor.backends.base import ResultBackend, StoredResult
from conveyor.exceptions import TaskError, TaskRevokedError, TimeoutError
from conveyor.result.payload import CHILDREN, decode_payload, rebuild_exception

if TYPE_CHECKING:  # a type variable's default is typing's from Python 3.13 on
    from typing_extensions import TypeVar

    from conveyor.result.group import GroupResult

    #: What the task returns (``Any`` where nobody said).
    R = TypeVar("R", default=Any)
else:
    from typing import TypeVar

    R = TypeVar("R")

__all__ = [
    "E_WOULDBLOCK",
    "JUST_SENT",
    "AsyncResult",
    "EagerResult",
    "allow_join_result",
    "assert_will_not_block",
    "denied_join_result",
]


class _HasBackend(Protocol):
    @property
    def backend(self) -> ResultBackend: ...

    def revoke(self, task_ids: str | list[str], *, terminate: bool = False) -> None: ...


#: Longest single wait of ``aget`` in its helper thread, in seconds.
_WAIT_SLICE = 1.0


#: A result asked for within this many seconds of sending its task is waited for
#: before it is first read (see ``ResultBackend.wait``'s ``just_sent``).
JUST_SENT = 0.05

#: Whether waiting for a result would block a running task (the worker sets it while a
#: task runs; ``allow_join_result`` clears it).
_joins_denied: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "conveyor_joins_denied", default=False
)

E_WOULDBLOCK = (
    "Never call result.get() within a task! A task that waits for another one holds its "
    "worker slot meanwhile: once every slot waits, nothing runs and the worker deadlocks. "
    "Chain the tasks instead (docs/canvas.md), or pass get(disable_sync_subtasks=False) "
    "where you know it is safe (docs/tasks.md)."
)


@contextmanager
def denied_join_result() -> Iterator[None]:
    """Inside the block, ``get()`` raises RuntimeError (the worker runs tasks so)."""
    token = _joins_denied.set(True)
    try:
        yield
    finally:
        _joins_denied.reset(token)


@contextmanager
def allow_join_result() -> Iterator[None]:
    """Inside the block, a running task may wait for results (as Celery's)."""
    token = _joins_denied.set(False)
    try:
        yield
    finally:
        _joins_denied.reset(token)


def assert_will_not_block() -> None:
    """Raise RuntimeError if this is a running task, where waiting can deadlock."""
    if _joins_denied.get():
        raise RuntimeError(E_WOULDBLOCK)


class AsyncResult(Generic[R]):
    """A handle on a task's result: its state, return value or exception.

    ``get()`` blocks on the backend (no sleep-polling loop) and re-raises a
    failed task's exception. Without ``app=`` (or ``backend=``) it reads the default
    app's backend (``Conveyor.set_default()``, else the app created last).
    """

    #: The result of the step before this one in a chain (set by ``conveyor.canvas``).
    parent: AsyncResult[Any] | GroupResult | None = None
    #: The children this process knows the task will have once it succeeded (their
    #: ids were chosen when it was sent: set by ``conveyor.canvas``); ``children``
    #: answers with them until the worker has recorded its own.
    expected_children: Callable[[], list[AsyncResult[Any] | GroupResult]] | None = None
    #: ``time.monotonic()`` when this process sent the task, if it did.
    sent_at: float | None = None
    #: The task was sent with ``ignore_result``: nothing will be stored, so ``get()``
    #: returns None at once (as Celery's).
    ignored: bool = False

    def __init__(
        self, id: str, app: _HasBackend | None = None, *, backend: ResultBackend | None = None
    ):
        if backend is None:
            if app is None:
                app = current.default_app()
            if app is None:
                raise TypeError(
                    "AsyncResult needs app= (or use app.AsyncResult(id)): no app exists yet"
                )
            backend = app.backend
        self.id = id
        self.app = app
        self.backend = backend
        self._cache: StoredResult | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def task_id(self) -> str:
        return self.id

    def _record(self) -> StoredResult | None:
        if self._cache is not None:
            return self._cache
        record = self.backend.get(self.id)
        if record is not None and record.state in states.READY_STATES:
            self._cache = record
        return record

    def _meta(self) -> dict[str, Any]:
        record = self._record()
        if record is None:
            return {"status": states.PENDING}
        meta: dict[str, Any] = orjson.loads(record.payload)
        meta["status"] = record.state
        return meta

    @property
    def state(self) -> str:
        """PENDING, STARTED, RETRY, SUCCESS, FAILURE, REVOKED, or a task's own state
        (``self.update_state(state="PROGRESS")``)."""
        record = self._record()
        return states.PENDING if record is None else record.state

    status = state

    @property
    def result(self) -> Any:
        """The return value on success; the exception on failure, revoke or retry; for
        any other state its information (STARTED: ``{"pid", "hostname"}``; a custom
        state: the ``meta`` given to ``update_state``); else None."""
        meta = self._meta()
        status = meta["status"]
        if status in (states.FAILURE, states.REVOKED) or (
            status in states.EXCEPTION_STATES and meta.get("exc_type")
        ):
            return rebuild_exception(meta)
        return meta.get("result")

    info = result

    @property
    def traceback(self) -> str | None:
        """The formatted traceback of a failed task."""
        tb_text = self._meta().get("traceback")
        return None if tb_text is None else str(tb_text)

    @property
    def date_done(self) -> dt.datetime | None:
        """When the task finished (UTC), if it has."""
        value = self._meta().get("date_done")
        return dt.datetime.fromisoformat(value) if value else None

    @property
    def children(self) -> list[AsyncResult[Any] | GroupResult]:
        """The results of the tasks sent once this one succeeded: its ``link``
        callbacks' and its chain's next step's (a ``GroupResult`` for a group), in
        that order; empty until it succeeded.

        The worker records them with the task's result a moment after storing it
        (once it has sent them); until then the handle that sent the task (or a
        chain's) knows them already, since their ids were chosen at send time.
        """
        record = self._record()
        if record is None or record.state != states.SUCCESS:
            return []
        trees = decode_payload(record.payload).get(CHILDREN)
        if trees is None and self.backend is not None:
            fresh = self.backend.get(self.id)  # the worker adds them after the result
            if fresh is not None and fresh.state == states.SUCCESS:
                self._cache = fresh
                trees = decode_payload(fresh.payload).get(CHILDREN)
        if trees is None:
            return self.expected_children() if self.expected_children is not None else []
        from conveyor.result.group import result_from_tree  # (the group module builds on this one)

        return [result_from_tree(tree, self.app, self.backend) for tree in trees]

    def ready(self) -> bool:
        """True once the task succeeded, failed or was revoked."""
        return self.state in states.READY_STATES

    def successful(self) -> bool:
        return self.state == states.SUCCESS

    def failed(self) -> bool:
        return self.state == states.FAILURE

    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        disable_sync_subtasks: bool = True,
        **_ignored: Any,
    ) -> R:
        """Wait for the task and return its value (None at once for a task sent with
        ``ignore_result``: nothing will be stored).

        Args:
            timeout: seconds to wait; None waits without limit.
            propagate: re-raise the task's exception (its own class when it is
                importable here, else TaskError).
            disable_sync_subtasks: inside a running task, raise RuntimeError instead
                of waiting (a task waiting for tasks can deadlock the worker); False
                waits anyway.

        Raises:
            conveyor.exceptions.TimeoutError: the task was not ready in time.
            RuntimeError: called inside a running task (see ``disable_sync_subtasks``).
        """
        if self.ignored:
            return None  # type: ignore[return-value]
        if disable_sync_subtasks:
            assert_will_not_block()
        record = self._cache
        if record is None:
            just_sent = self.sent_at is not None and time.monotonic() - self.sent_at < JUST_SENT
            record = self.backend.wait(self.id, timeout, just_sent=just_sent)
        return self._outcome(record, timeout, propagate)  # type: ignore[no-any-return]

    def wait(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        disable_sync_subtasks: bool = True,
        **_ignored: Any,
    ) -> R:
        """``get``, by its older name, which Celery keeps (Flask's guide calls it)."""
        return self.get(timeout, propagate, disable_sync_subtasks, **_ignored)

    async def aget(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        disable_sync_subtasks: bool = True,
        **_ignored: Any,
    ) -> R:
        """``get`` for async code: ``await result.aget(timeout=10)`` waits without
        blocking the event loop.

        The wait runs in a thread of the loop's default executor
        (``asyncio.to_thread``) until the backends have native asyncio clients, in
        slices of at most a second, so a cancelled ``aget`` frees its thread soon.
        Each waiting ``aget`` holds one such thread: the executor's size bounds how
        many wait at once.

        Args and Raises: as for ``get`` (an async task awaiting another one holds its
        slot too).
        """
        if self.ignored:
            return None  # type: ignore[return-value]
        if disable_sync_subtasks:
            assert_will_not_block()
        deadline = None if timeout is None else time.monotonic() + timeout
        record = self._cache
        while record is None or record.state not in states.READY_STATES:
            left = _WAIT_SLICE if deadline is None else max(0.0, deadline - time.monotonic())
            record = await asyncio.to_thread(self.backend.wait, self.id, min(left, _WAIT_SLICE))
            if deadline is not None and time.monotonic() >= deadline:
                break
        return self._outcome(record, timeout, propagate)  # type: ignore[no-any-return]

    def _outcome(self, record: StoredResult | None, timeout: float | None, propagate: bool) -> Any:
        """The value of a finished task (or its exception, raised or returned)."""
        if record is None or record.state not in states.READY_STATES:
            raise TimeoutError(f"task {self.id} was not ready within {timeout} s")
        self._cache = record
        meta = self._meta()
        if meta["status"] == states.SUCCESS:
            return meta.get("result")
        exc = rebuild_exception(meta)
        if meta["status"] == states.REVOKED and isinstance(exc, TaskError):
            exc = TaskRevokedError(meta.get("exc_message") or f"task {self.id} was revoked")
        if propagate:
            raise exc
        return exc

    def forget(self) -> None:
        """Delete the stored result."""
        self._cache = None
        self.backend.forget(self.id)

    def revoke(self, terminate: bool = False, **_ignored: Any) -> None:
        """Never run this task; with ``terminate``, also stop it if it is running.

        See ``Conveyor.revoke``: the revoke is kept in the broker, so it holds on
        every worker, also after they restart.
        """
        if self.app is None:
            raise TypeError("revoke() needs the app: use app.AsyncResult(id).revoke()")
        self._cache = None
        self.app.revoke(self.id, terminate=terminate)


class EagerResult(AsyncResult[R]):
    """The result of a task run in the calling process (``task_always_eager``,
    ``task.apply()``): already known, backend untouched."""

    def __init__(self, id: str, state: str, payload: bytes):
        self.id = id
        self.app = None
        self.backend = None  # type: ignore[assignment]
        self._cache = StoredResult(id, state, payload, 0.0)

    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        disable_sync_subtasks: bool = True,
        **_ignored: Any,
    ) -> R:
        """The value (or the exception, raised): known already, so never a wait. None
        for a run that ended with ``Ignore`` or ``Reject`` (as Celery's)."""
        if self._cache is not None and self._cache.state in (states.IGNORED, states.REJECTED):
            return None  # type: ignore[return-value]
        return self._outcome(self._cache, timeout, propagate)  # type: ignore[no-any-return]

    def forget(self) -> None:
        """Nothing is stored for an eager result."""
