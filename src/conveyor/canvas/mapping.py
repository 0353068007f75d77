"""``map``, ``starmap`` and ``chunks``: one task over many items.

* ``task.map(items)`` (``xmap``) and ``task.starmap(items)`` (``xstarmap``) send one
  message, of the built-in task ``conveyor.map`` or ``conveyor.starmap`` (every
  app has them), which calls the task's function on each item in turn, in the
  worker, and returns the list of values: ``[task(item) ...]`` or
  ``[task(*item) ...]``. The message is routed as the task's own would be.
* ``task.chunks(items, n)`` splits the items into parts of ``n`` and sends a group
  of one ``starmap`` per part: its result is a ``GroupResult`` of lists.

As in Celery these signatures are immutable: in a chain they ignore the previous
step's value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from conveyor.canvas import primitives
from conveyor.canvas.signatures import Result, Signature, maybe_signature, plain, signature

if TYPE_CHECKING:
    from conveyor.app import Conveyor

__all__ = [
    "ACCUMULATE_TASK",
    "BUILTIN_TASKS",
    "MAP_TASK",
    "STARMAP_TASK",
    "chunks",
    "xmap",
    "xstarmap",
]

#: The built-in tasks every app registers (see ``BUILTIN_TASKS``).
MAP_TASK = "conveyor.map"
STARMAP_TASK = "conveyor.starmap"
ACCUMULATE_TASK = "conveyor.accumulate"


def run_map(app: Conveyor, task: Mapping[str, Any], it: list[Any]) -> list[Any]:
    """The built-in ``conveyor.map``: the task called with each item, in order (its
    signature's partial arguments are not used, as in Celery)."""
    fun = signature(task, app=app).type
    return [fun(item) for item in it]


def run_starmap(app: Conveyor, task: Mapping[str, Any], it: list[Any]) -> list[Any]:
    """The built-in ``conveyor.starmap``: the task called with each item as its
    arguments, in order."""
    fun = signature(task, app=app).type
    return [fun(*args) for args in it]


def run_accumulate(app: Conveyor, values: list[Any]) -> list[Any]:
    """The built-in ``conveyor.accumulate``: its argument, the values of a chord's
    header (the body of a group that replaced a task: see ``Task.replace``)."""
    return values


#: Name -> function(app, ...) of the built-in tasks each app registers.
BUILTIN_TASKS: dict[str, Callable[..., list[Any]]] = {
    MAP_TASK: run_map,
    STARMAP_TASK: run_starmap,
    ACCUMULATE_TASK: run_accumulate,
}


class _BaseMap(Signature):
    """A call of a built-in map task: kwargs ``{"task": <signature>, "it": [items]}``."""

    _task_name: ClassVar[str]
    _kind: ClassVar[str]
    _item: ClassVar[str]  # how the repr shows one call

    def __init__(self, task: Any, it: Iterable[Any], app: Conveyor | None = None, **options: Any):
        parts = {"task": maybe_signature(task), "it": list(it)}
        super().__init__(
            self._task_name, (), parts, options, subtask_type=self._kind, immutable=True, app=app
        )

    @classmethod
    def _from_parts(
        cls, kwargs: dict[str, Any], options: dict[str, Any], app: Conveyor | None
    ) -> Signature:
        return cls(kwargs["task"], kwargs.get("it") or (), app=app, **options)

    @property
    def inner(self) -> Signature:
        """The signature of the task run on each item."""
        inner: Signature = self.kwargs["task"]
        return inner

    def _members(self) -> list[Signature]:
        return [self.inner]

    def __repr__(self) -> str:
        items = repr(list(self.kwargs["it"]))
        items = items if len(items) <= 100 else items[:97] + "..."
        return f"[{self.inner.task}({self._item}) for x in {items}]"

    def _merge(
        self,
        args: Iterable[Any] | None,
        kwargs: Mapping[str, Any] | None,
        options: Mapping[str, Any] | None,
    ) -> tuple[tuple[Any, ...], dict[str, Any], dict[str, Any]]:
        _, _, opts = super()._merge(args, kwargs, options)
        return (), {"task": self.inner.to_dict(), "it": plain(list(self.kwargs["it"]))}, opts

    def apply_async(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Result:
        """Send the one message; its queue and priority are the task's own (its routes,
        its options), unless given."""
        app = self._need_app()
        for key, value in _route_of(app, self.inner).items():
            if key not in self.options:
                options.setdefault(key, value)
        return super().apply_async(args, kwargs, **options)


@Signature.register_type("xmap")
class xmap(_BaseMap):
    """``task.map(items)``: one task that returns ``[task(item) for item in items]``."""

    _task_name = MAP_TASK
    _kind = "xmap"
    _item = "x"


@Signature.register_type("xstarmap")
class xstarmap(_BaseMap):
    """``task.starmap(items)``: one task that returns ``[task(*item) for item in items]``."""

    _task_name = STARMAP_TASK
    _kind = "xstarmap"
    _item = "*x"


@Signature.register_type("chunks")
class chunks(Signature):
    """``task.chunks(items, n)``: the items in parts of ``n``, each part one
    ``starmap`` task, all sent as a group; the result is a ``GroupResult`` whose
    values are lists. ``.group()`` gives that group (to ``skew`` it, say)."""

    _composite = True

    def __init__(
        self, task: Any, it: Iterable[Any], n: int, app: Conveyor | None = None, **options: Any
    ):
        if int(n) < 1:
            raise ValueError(f"chunks() needs a size of at least 1, not {n!r}")
        parts = {"task": maybe_signature(task), "it": list(it), "n": int(n)}
        super().__init__(
            "conveyor.chunks", (), parts, options, subtask_type="chunks", immutable=True, app=app
        )
        self._sending: primitives.group | None = None

    @classmethod
    def _from_parts(
        cls, kwargs: dict[str, Any], options: dict[str, Any], app: Conveyor | None
    ) -> Signature:
        return cls(kwargs["task"], kwargs.get("it") or (), kwargs["n"], app=app, **options)

    def __repr__(self) -> str:
        return f"chunks({self.kwargs['task'].task}, {len(self.kwargs['it'])} items, {self.n})"

    @property
    def n(self) -> int:
        """The size of each part (the last may be smaller)."""
        return int(self.kwargs["n"])

    def group(self) -> primitives.group:
        """A new group of one ``starmap`` task per part."""
        task = maybe_signature(self.kwargs["task"])
        parts = (xstarmap(task, part, app=self._app) for part in _parts(self.kwargs["it"], self.n))
        return primitives.group(parts, app=self._app, **self.options)

    def _as_group(self) -> Signature | None:
        # the one group this signature sends, so that freezing it gives the ids sent
        return self._sent()

    def _sent(self) -> primitives.group:
        if self._sending is None:
            self._sending = self.group()
        return self._sending

    def _members(self) -> list[Signature]:
        return self._sent()._members()

    def _counted(self) -> Signature | None:
        return None

    def _with_tail(self, rest: list[Signature]) -> Signature:
        return self._sent()._with_tail(rest)

    def _freeze(self, parent: Result | None) -> Result:
        return self._sent()._freeze(parent)

    def __call__(self, **options: Any) -> Result:
        """Send the group (``apply_async``), as Celery's ``chunks(...)()``."""
        return self.apply_async(**options)

    def apply_async(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Result:
        """Send one ``starmap`` task per part, in one publish; a ``GroupResult``."""
        return self._sent().apply_async(args, kwargs, **options)

    def apply(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Result:
        """Run every part here, in order."""
        return self._sent().apply(args, kwargs, **options)


def _parts(items: list[Any], n: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), n):
        yield items[start : start + n]


def _route_of(app: Conveyor, inner: Signature) -> dict[str, Any]:
    """The queue and priority a message of ``inner``'s task would have had."""
    found = {k: inner.options[k] for k in ("queue", "priority") if k in inner.options}
    routed = app.route(str(inner.task), [], {})
    task = app.tasks.get(str(inner.task))
    for key in ("queue", "priority"):
        value = routed.get(key)
        if value is None and task is not None:
            value = getattr(task, key)
        if value is not None:
            found.setdefault(key, value)
    return found
