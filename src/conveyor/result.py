"""Task results: the stored payload format and the ``AsyncResult`` handle."""

from __future__ import annotations

import asyncio
import builtins
import datetime as dt
import sys
import time
import traceback as tb
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import orjson

from conveyor import current, states
from conveyor.backends.base import ResultBackend, ResultWrite, StoredResult
from conveyor.exceptions import EncodeError, TaskError, TaskRevokedError, TimeoutError


class _HasBackend(Protocol):
    @property
    def backend(self) -> ResultBackend: ...

    def revoke(self, task_ids: str | list[str], *, terminate: bool = False) -> None: ...


# -- payload -------------------------------------------------------------------


def _utcnow_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


def encode_success(task: str, value: Any, *, worker: str = "", retries: int = 0) -> bytes:
    """The stored payload of a successful run; EncodeError if ``value`` is not JSON."""
    try:
        return orjson.dumps(
            {
                "status": states.SUCCESS,
                "result": value,
                "task": task,
                "date_done": _utcnow_iso(),
                "worker": worker,
                "retries": retries,
            }
        )
    except TypeError as exc:
        raise EncodeError(
            f"the return value of task {task!r} cannot be stored as JSON: {exc}"
        ) from None


def encode_failure(
    task: str,
    exc: BaseException,
    *,
    traceback: str | None = None,
    state: str = states.FAILURE,
    worker: str = "",
    retries: int = 0,
) -> bytes:
    """The stored payload of a failed (or revoked) run, keeping the exception's type."""
    cls = type(exc)
    if traceback is None and exc.__traceback__ is not None:
        traceback = "".join(tb.format_exception(exc))
    doc: dict[str, Any] = {
        "status": state,
        "result": None,
        "exc_type": f"{cls.__module__}.{cls.__qualname__}",
        "exc_message": str(exc),
        "exc_args": list(exc.args),
        "traceback": traceback,
        "task": task,
        "date_done": _utcnow_iso(),
        "worker": worker,
        "retries": retries,
    }
    try:
        return orjson.dumps(doc)
    except TypeError:
        doc["exc_args"] = [str(exc)]
        return orjson.dumps(doc)


def encode_state(task: str, state: str, *, worker: str = "") -> bytes:
    """The stored payload of an intermediate state (STARTED, RETRY)."""
    return orjson.dumps({"status": state, "result": None, "task": task, "worker": worker})


def rebuild_exception(meta: dict[str, Any]) -> Exception:
    """The exception a failed task raised, rebuilt with its own class when that class
    is an ``Exception`` already imported in this process, else a TaskError carrying
    the remote details.

    A stored payload is data anyone who can write to the result store may forge: it
    never makes this process import code, and never rebuilds a ``BaseException`` that
    is not an ``Exception`` (``SystemExit``, ``KeyboardInterrupt``, ``GeneratorExit``),
    which ``get()`` would raise through the caller's ``except Exception`` and stop it.
    """
    type_name = str(meta.get("exc_type") or "Exception")
    message = str(meta.get("exc_message") or "")
    args = meta.get("exc_args") or [message]
    remote_tb = meta.get("traceback")
    cls = _loaded_class(type_name)
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            exc = cls(*args)
        except Exception:
            pass
        else:
            exc.__notes__ = [f"Remote traceback:\n{remote_tb}"] if remote_tb else []
            return exc
    return TaskError(type_name, message, remote_tb)


def _loaded_class(type_name: str) -> Any:
    """The object named ``module.Qual.Name`` if its module is loaded, else None.

    The longest loaded module prefix wins, so classes nested in classes (Django's
    ``Model.DoesNotExist``) are found too.
    """
    parts = type_name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:i])
        module = builtins if module_name == "builtins" else sys.modules.get(module_name)
        if module is None:
            continue
        obj: Any = module
        for part in parts[i:]:
            obj = getattr(obj, part, None)
        return obj
    return None


# -- handles ---------------------------------------------------------------------

#: Longest single wait of ``aget`` in its helper thread, in seconds.
_WAIT_SLICE = 1.0


#: A result asked for within this many seconds of sending its task is waited for
#: before it is first read (see ``ResultBackend.wait``'s ``just_sent``).
JUST_SENT = 0.05


class AsyncResult:
    """A handle on a task's result: its state, return value or exception.

    ``get()`` blocks on the backend (no sleep-polling loop) and re-raises a
    failed task's exception.
    """

    #: The result of the step before this one in a chain (set by ``conveyor.canvas``).
    parent: AsyncResult | GroupResult | None = None
    #: The children this process knows the task will have once it succeeded (their
    #: ids were chosen when it was sent: set by ``conveyor.canvas``); ``children``
    #: answers with them until the worker has recorded its own.
    expected_children: Callable[[], list[AsyncResult | GroupResult]] | None = None
    #: ``time.monotonic()`` when this process sent the task, if it did.
    sent_at: float | None = None

    def __init__(
        self, id: str, app: _HasBackend | None = None, *, backend: ResultBackend | None = None
    ):
        if backend is None:
            if app is None:
                raise TypeError("AsyncResult needs app= (or use app.AsyncResult(id))")
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
        """PENDING, STARTED, RETRY, SUCCESS, FAILURE or REVOKED."""
        record = self._record()
        return states.PENDING if record is None else record.state

    status = state

    @property
    def result(self) -> Any:
        """The return value on success, the exception on failure, else None."""
        meta = self._meta()
        if meta["status"] in (states.FAILURE, states.REVOKED):
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
    def children(self) -> list[AsyncResult | GroupResult]:
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
        return [result_from_tree(tree, self.app, self.backend) for tree in trees]

    def ready(self) -> bool:
        """True once the task succeeded, failed or was revoked."""
        return self.state in states.READY_STATES

    def successful(self) -> bool:
        return self.state == states.SUCCESS

    def failed(self) -> bool:
        return self.state == states.FAILURE

    def get(self, timeout: float | None = None, propagate: bool = True, **_ignored: Any) -> Any:
        """Wait for the task and return its value.

        Args:
            timeout: seconds to wait; None waits without limit.
            propagate: re-raise the task's exception (its own class when it is
                importable here, else TaskError).

        Raises:
            conveyor.exceptions.TimeoutError: the task was not ready in time.
        """
        record = self._cache
        if record is None:
            just_sent = self.sent_at is not None and time.monotonic() - self.sent_at < JUST_SENT
            record = self.backend.wait(self.id, timeout, just_sent=just_sent)
        return self._outcome(record, timeout, propagate)

    async def aget(
        self, timeout: float | None = None, propagate: bool = True, **_ignored: Any
    ) -> Any:
        """``get`` for async code: ``await result.aget(timeout=10)`` waits without
        blocking the event loop.

        The wait runs in a thread of the loop's default executor
        (``asyncio.to_thread``) until the backends have native asyncio clients, in
        slices of at most a second, so a cancelled ``aget`` frees its thread soon.
        Each waiting ``aget`` holds one such thread: the executor's size bounds how
        many wait at once.

        Args and Raises: as for ``get``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        record = self._cache
        while record is None or record.state not in states.READY_STATES:
            left = _WAIT_SLICE if deadline is None else max(0.0, deadline - time.monotonic())
            record = await asyncio.to_thread(self.backend.wait, self.id, min(left, _WAIT_SLICE))
            if deadline is not None and time.monotonic() >= deadline:
                break
        return self._outcome(record, timeout, propagate)

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


class EagerResult(AsyncResult):
    """The result of a task run in the calling process (``task_always_eager``,
    ``task.apply()``): already known, backend untouched."""

    def __init__(self, id: str, state: str, payload: bytes):
        self.id = id
        self.backend = None  # type: ignore[assignment]
        self._cache = StoredResult(id, state, payload, 0.0)

    def forget(self) -> None:
        """Nothing is stored for an eager result."""


# -- canvas: payload values and group results -------------------------------------


def decode_payload(payload: bytes) -> dict[str, Any]:
    """A stored payload as a dict: ``status``, ``result``, and for a failure
    ``exc_type`` (``module.QualName``), ``exc_message``, ``traceback``."""
    meta: dict[str, Any] = orjson.loads(payload)
    return meta


def payload_value(payload: bytes | None) -> Any:
    """The return value a success payload holds (None for no payload)."""
    return None if payload is None else decode_payload(payload).get("result")


def failure_of(payload: bytes | None) -> tuple[str, str]:
    """``(exception type, message)`` of a failure payload; built-in exceptions are
    named without ``builtins.`` (``ValueError``), others ``module.QualName``."""
    meta = decode_payload(payload) if payload is not None else {}
    type_name = str(meta.get("exc_type") or "Exception").removeprefix("builtins.")
    return type_name, str(meta.get("exc_message") or "")


#: The key of a stored payload that lists the task's children (result trees).
CHILDREN = "children"


def add_children(payload: bytes, children: list[AsyncResult | GroupResult]) -> bytes:
    """A success payload with its task's ``children`` added (a list of result trees:
    see ``result_tree``); readers that do not know the key ignore it."""
    meta = decode_payload(payload)
    meta[CHILDREN] = [result_tree(child) for child in children]
    return orjson.dumps(meta)


def result_tree(result: AsyncResult | GroupResult) -> dict[str, Any]:
    """A result handle as JSON: ``{"id"}`` for a task's, ``{"id", "results": [...]}``
    for a group's, each with its ``"parent"`` tree if it has one."""
    tree: dict[str, Any] = {"id": result.id}
    if isinstance(result, GroupResult):
        tree["results"] = [result_tree(member) for member in result.results]
    if result.parent is not None:
        tree["parent"] = result_tree(result.parent)
    return tree


def result_from_tree(
    tree: dict[str, Any], app: _HasBackend | None, backend: ResultBackend | None = None
) -> AsyncResult | GroupResult:
    """The result handle a ``result_tree`` describes, reading from ``app``'s backend
    (or ``backend``)."""
    result: AsyncResult | GroupResult
    if "results" in tree:
        members = [result_from_tree(member, app, backend) for member in tree["results"]]
        result = GroupResult(str(tree["id"]), members, app=app)
    else:
        result = AsyncResult(str(tree["id"]), app, backend=backend)
    if tree.get("parent") is not None:
        result.parent = result_from_tree(tree["parent"], app, backend)
    return result


def group_record_key(group_id: str) -> str:
    """Where ``GroupResult.save`` stores a group in the result backend: not under the
    group id itself, so that ``AsyncResult(group_id)`` never reads it as a task's."""
    return f"group:{group_id}"


class GroupResult:
    """The results of a ``group``'s tasks (or a chord's header), in the group's order.

    ``results`` holds an ``AsyncResult`` per task (a chain's member: the result of
    its last task; a nested group's: a ``GroupResult``). ``save()`` stores which
    tasks they are, so that ``GroupResult.restore(group_id)`` (or
    ``app.GroupResult.restore(group_id)``) finds them again in another process.
    """

    #: The result of the step before the group in a chain, if any.
    parent: AsyncResult | GroupResult | None = None
    #: The app whose backend ``save``/``restore`` use (``app.GroupResult`` sets it).
    app: _HasBackend | None = None

    def __init__(
        self,
        id: str,
        results: list[AsyncResult | GroupResult] | None = None,
        app: _HasBackend | None = None,
    ):
        self.id = id
        self.results: list[AsyncResult | GroupResult] = list(results or [])
        if app is not None:
            self.app = app

    def __repr__(self) -> str:
        return f"<GroupResult: {self.id} [{', '.join(r.id for r in self.results)}]>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GroupResult) and (other.id, other.results) == (
            self.id,
            self.results,
        )

    def __hash__(self) -> int:
        return hash(self.id)

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[AsyncResult | GroupResult]:
        return iter(self.results)

    def __getitem__(self, index: int) -> AsyncResult | GroupResult:
        return self.results[index]

    @property
    def children(self) -> list[AsyncResult | GroupResult]:
        return self.results

    def completed_count(self) -> int:
        """How many of the tasks succeeded."""
        return sum(1 for result in self.results if result.successful())

    def ready(self) -> bool:
        """True once every task succeeded, failed or was revoked."""
        return all(result.ready() for result in self.results)

    def waiting(self) -> bool:
        """True while some task is not finished."""
        return not self.ready()

    def successful(self) -> bool:
        """True if every task succeeded."""
        return all(result.successful() for result in self.results)

    def failed(self) -> bool:
        """True if any task failed."""
        return any(result.failed() for result in self.results)

    def get(
        self, timeout: float | None = None, propagate: bool = True, **_ignored: Any
    ) -> list[Any]:
        """Wait for every task; their values in the group's order.

        Args:
            timeout: seconds to wait for all of them together; None waits without limit.
            propagate: re-raise the first failed task's exception (in the group's
                order); with False its place in the list holds the exception.

        Raises:
            conveyor.exceptions.TimeoutError: not every task was ready in time.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        values = []
        for done, result in enumerate(self.results):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                values.append(result.get(timeout=left, propagate=propagate))
            except TimeoutError:
                raise TimeoutError(
                    f"group {self.id}: {done} of {len(self.results)} results were ready "
                    f"within {timeout} s"
                ) from None
        return values

    join = get

    async def aget(
        self, timeout: float | None = None, propagate: bool = True, **_ignored: Any
    ) -> list[Any]:
        """``get`` for async code (each wait as ``AsyncResult.aget`` does it)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        values = []
        for result in self.results:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            values.append(await result.aget(timeout=left, propagate=propagate))
        return values

    def forget(self) -> None:
        """Delete every task's stored result (and the group's, if saved)."""
        for result in self.results:
            result.forget()
        if self.app is not None:
            self.app.backend.forget(group_record_key(self.id))

    def revoke(self, terminate: bool = False, **_ignored: Any) -> None:
        """Revoke every task of the group (see ``AsyncResult.revoke``)."""
        app = self._need_app()
        app.revoke([leaf.id for leaf in _leaves(self)], terminate=terminate)

    def save(self, backend: ResultBackend | None = None) -> GroupResult:
        """Store the group (its id and its tasks' ids, not their values) in the result
        backend for ``result_expires`` seconds, so that ``restore`` finds it; returns
        itself."""
        app = self._need_app()
        conf = getattr(app, "conf", None)  # an app without settings: a day, the default
        ttl = float(conf.result_expires) if conf is not None else 86400.0
        payload = orjson.dumps({"group": result_tree(self)})
        write = ResultWrite(group_record_key(self.id), states.SUCCESS, payload, ttl)
        (backend or app.backend).store(write)
        return self

    def delete(self, backend: ResultBackend | None = None) -> None:
        """Remove what ``save`` stored (the tasks' results stay)."""
        (backend or self._need_app().backend).forget(group_record_key(self.id))

    @classmethod
    def restore(
        cls, group_id: str, backend: ResultBackend | None = None, app: _HasBackend | None = None
    ) -> GroupResult | None:
        """The group ``save`` stored under ``group_id``, or None (never saved, or
        expired). ``app`` defaults to the class's (``app.GroupResult.restore``), then
        to the default app (see ``conveyor.current``)."""
        app = app or cls.app or current.default_app()
        if backend is None:
            if app is None:
                raise TypeError("GroupResult.restore() needs app= (or app.GroupResult.restore)")
            backend = app.backend
        record = backend.get(group_record_key(group_id))
        if record is None:
            return None
        restored = result_from_tree(orjson.loads(record.payload)["group"], app, backend)
        assert isinstance(restored, GroupResult)
        return restored

    def _need_app(self) -> _HasBackend:
        app = self.app
        if app is None:
            for leaf in _leaves(self):
                found = getattr(leaf, "app", None)  # an EagerResult has none
                if found is not None:
                    return found  # type: ignore[no-any-return]
            app = current.default_app()
        if app is None:
            raise TypeError(f"{self!r} has no app: build it with app= (or app.GroupResult)")
        return app


def _leaves(result: AsyncResult | GroupResult) -> Iterator[AsyncResult]:
    if isinstance(result, GroupResult):
        for member in result.results:
            yield from _leaves(member)
    else:
        yield result
