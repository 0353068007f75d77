"""``GroupResult`` (a group's results, in order) and result trees: a handle as JSON,
for the children a worker records and the groups ``save`` stores."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import orjson

from conveyor import current, states
from conveyor.backends.base import ResultBackend, ResultWrite
from conveyor.exceptions import TimeoutError
from conveyor.result.handle import AsyncResult, _HasBackend
from conveyor.result.payload import CHILDREN, decode_payload

__all__ = [
    "GroupResult",
    "add_children",
    "group_record_key",
    "result_from_tree",
    "result_tree",
]


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
        self,
        timeout: float | None = None,
        propagate: bool = True,
        disable_sync_subtasks: bool = True,
        **_ignored: Any,
    ) -> list[Any]:
        """Wait for every task; their values in the group's order.

        Args:
            timeout: seconds to wait for all of them together; None waits without limit.
            propagate: re-raise the first failed task's exception (in the group's
                order); with False its place in the list holds the exception.
            disable_sync_subtasks: as for ``AsyncResult.get``.

        Raises:
            conveyor.exceptions.TimeoutError: not every task was ready in time.
            RuntimeError: called inside a running task (see ``AsyncResult.get``).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        values = []
        for done, result in enumerate(self.results):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                values.append(
                    result.get(
                        timeout=left,
                        propagate=propagate,
                        disable_sync_subtasks=disable_sync_subtasks,
                    )
                )
            except TimeoutError:
                raise TimeoutError(
                    f"group {self.id}: {done} of {len(self.results)} results were ready "
                    f"within {timeout} s"
                ) from None
        return values

    join = get

    async def aget(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        disable_sync_subtasks: bool = True,
        **_ignored: Any,
    ) -> list[Any]:
        """``get`` for async code (each wait as ``AsyncResult.aget`` does it)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        values = []
        for result in self.results:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            values.append(
                await result.aget(
                    timeout=left, propagate=propagate, disable_sync_subtasks=disable_sync_subtasks
                )
            )
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
