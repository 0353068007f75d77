"""The primitives that compose signatures: ``chain`` and ``group`` (``chord``: see
``conveyor.canvas.chords``).

They only build, freeze (choose every task id up front, so the caller gets the
result handles at once) and publish; the worker that settles each task sends what
comes next (``conveyor.canvas.protocol``), and eager mode runs them here
(``conveyor.canvas.eager``).

* ``chain(a, b, c)``: ``a``'s message carries the rest, ``headers["chain"] = [b, c]``.
  A group followed by more steps becomes a chord whose body is the rest.
* ``group(...)``: every message in one ``publish_many``; a group directly inside a
  group (or a chord's header) is flattened into it, as in Celery.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Self

from conveyor.canvas import eager
from conveyor.canvas.keys import GROUP_ID, GROUP_INDEX
from conveyor.canvas.signatures import Result, Signature, expect_child, maybe_signature
from conveyor.result import AsyncResult, GroupResult

if TYPE_CHECKING:
    from conveyor.app import Conveyor

__all__ = ["chain", "group", "send_members"]


class _Tasks(Signature):
    """A signature made of other signatures (``chain``, ``group``): they are its
    ``tasks``, kept in its kwargs so that it travels as data like any signature."""

    kind: ClassVar[str]  # "chain" or "group"
    _composite = True

    def __init__(self, *tasks: Any, app: Conveyor | None = None, **options: Any):
        if len(tasks) == 1 and is_many(tasks[0]):
            tasks = tuple(tasks[0])
        members = [maybe_signature(task) for task in tasks]
        super().__init__(
            f"celery.{self.kind}", (), {"tasks": members}, options, subtask_type=self.kind, app=app
        )

    @classmethod
    def _from_parts(
        cls, kwargs: dict[str, Any], options: dict[str, Any], app: Conveyor | None
    ) -> Signature:
        return cls(*kwargs.get("tasks", ()), app=app, **options)

    @property
    def tasks(self) -> list[Signature]:
        tasks: list[Signature] = self.kwargs["tasks"]
        return tasks

    def _members(self) -> list[Signature]:
        return list(self.tasks)

    def _normalise(self) -> None:
        """Put the members in the shape they are sent in (see each primitive)."""

    def _prepared(self, app: Conveyor) -> Self:
        """A copy bound to ``app``, normalised: what is sent or run, never ``self``."""
        prepared = self.clone()
        assert isinstance(prepared, type(self))
        prepared._bind(app)
        prepared._normalise()
        return prepared


@Signature.register_type("chain")
class chain(_Tasks):
    """Tasks run one after another, each given the previous one's return value as its
    first argument: ``chain(a, b, c)`` or ``a | b | c``.

    ``apply_async`` returns the last task's result; ``result.parent`` is the one
    before it, and so on. A group followed by more steps becomes a chord whose body
    is the rest, so the next step gets the group's values as a list.
    """

    kind = "chain"

    def __repr__(self) -> str:
        return " | ".join(repr(task) for task in self.tasks) if self.tasks else "chain()"

    def __or__(self, other: object) -> Signature:  # type: ignore[override]
        if isinstance(other, chain):
            return chain(*self.tasks, *other.tasks, app=self._app, **self.options)
        if isinstance(other, Signature):
            return chain(*self.tasks, other, app=self._app, **self.options)
        return NotImplemented

    def __call__(self, *args: Any, **kwargs: Any) -> Result:
        """Send the chain (``apply_async``), as Celery's ``chain(...)()``."""
        return self.apply_async(args, kwargs)

    def link(self, callback: Any) -> Any:
        """Link ``callback`` to the last task."""
        if not self.tasks:
            raise ValueError("chain() has no task to link to")
        return self.tasks[-1].link(callback)

    def link_error(self, errback: Any) -> Any:
        """Link ``errback`` to every task (the one that fails calls it)."""
        for task in self.tasks:
            task.link_error(errback)
        return errback

    def _counted(self) -> Signature | None:
        self._normalise()
        return self.tasks[-1]._counted() if self.tasks else None

    def _with_tail(self, rest: list[Signature]) -> Signature:
        return chain(*self.tasks, *rest, app=self._app, **self.options) if rest else self

    def _normalise(self) -> None:
        """Flatten chains in the chain, chunks become their group, and a group followed
        by more steps becomes a chord whose body is the rest (as Celery upgrades it)."""
        flat = [_group_of(task) for task in _flatten(self.tasks)]
        steps: list[Signature] = []
        for i, task in enumerate(flat):
            if isinstance(task, group) and i + 1 < len(flat):
                rest = flat[i + 1 :]
                body = rest[0] if len(rest) == 1 else chain(*rest, app=self._app)
                steps.append(_chord(task, body, app=self._app))
                break
            steps.append(task)
        self.kwargs["tasks"] = steps

    def _freeze(self, parent: Result | None) -> Result:
        self._normalise()
        if not self.tasks:
            raise ValueError("chain() has no tasks")
        result: Result | None = parent
        for task in self.tasks:
            current = task._freeze(result)
            # the worker that settles a step records the next one as its child
            if isinstance(result, AsyncResult) and result is not parent:
                expect_child(result, current)
            result = current
        assert result is not None
        return result

    def apply_async(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Result:
        """Send the first task, carrying the rest; returns the last task's result.

        ``args``/``kwargs`` and ``options`` go to the first task; ``task_id`` names
        the last one (the id of the chain's result)."""
        app = self._need_app()
        call_args, call_kwargs, opts = self._merge(args, kwargs, options)
        if app.conf.task_always_eager:
            return eager.run_chain(self._prepared(app), call_args, call_kwargs, opts)
        prepared = self._prepared(app)
        if not prepared.tasks:
            raise ValueError("chain() has no tasks to send")
        task_id = opts.pop("task_id", None)
        last = prepared.tasks[-1]._counted()
        if task_id is not None and last is not None:
            last.options["task_id"] = task_id
        result = prepared._freeze(None)
        first = prepared.tasks[0]._with_tail(prepared.tasks[1:])
        first.apply_async(call_args, call_kwargs, **opts)
        return result

    def apply(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Result:
        """Run every step here, in order; stops at the first failure (whose result
        is returned)."""
        call_args, call_kwargs, opts = self._merge(args, kwargs, options)
        return eager.run_chain(self._prepared(self._need_app()), call_args, call_kwargs, opts)


@Signature.register_type("group")
class group(_Tasks):
    """Tasks run in parallel: ``group(add.s(i, i) for i in range(10))``.

    ``apply_async`` returns a ``GroupResult`` (values in the group's order). All
    the messages are published together (one ``publish_many``). A group directly
    inside a group is flattened into it (its tasks take its place), as in Celery.
    """

    kind = "group"

    def __repr__(self) -> str:
        return f"group([{', '.join(repr(task) for task in self.tasks)}])"

    def __len__(self) -> int:  # the number of tasks, as Celery's group
        return len(self.tasks)

    def __iter__(self) -> Iterator[Signature]:  # type: ignore[override]
        return iter(self.tasks)

    def __or__(self, other: object) -> Signature:  # type: ignore[override]
        """``group | task`` is a chord (as in Celery)."""
        if isinstance(other, Signature):
            return _chord(self, other, app=self._app)
        return NotImplemented

    def __call__(self, *args: Any, **options: Any) -> Result:
        """Send the group (``apply_async``) with these partial arguments."""
        return self.apply_async(args, **options)

    def link(self, callback: Any) -> Any:
        """Link ``callback`` to the group's first task, made immutable (as Celery
        does: it runs once that task succeeded, without arguments; a callback
        after the whole group is a chord: ``group | callback``)."""
        if not self.tasks:
            raise ValueError("group() has no task to link to")
        return self.tasks[0].link(maybe_signature(callback).clone().set(immutable=True))

    def link_error(self, errback: Any) -> Any:
        """Link ``errback`` to every task of the group (each failure calls it)."""
        for task in self.tasks:
            task.link_error(errback)
        return errback

    def skew(self, start: float = 1.0, stop: float | None = None, step: float = 1.0) -> group:
        """Give the tasks countdowns ``start``, ``start + step``... up to ``stop`` (then
        ``stop`` again for the rest), as Celery's ``skew``; returns itself."""
        countdown = float(start)
        for task in self.tasks:
            task.set(countdown=countdown)
            if stop is None or countdown + step <= stop:
                countdown += step
        return self

    def _counted(self) -> Signature | None:
        return None

    def _as_group(self) -> Signature | None:
        return self

    def _with_tail(self, rest: list[Signature]) -> Signature:
        if not rest:
            return self
        body = rest[0] if len(rest) == 1 else chain(*rest, app=self._app)
        return _chord(self, body, app=self._app)

    def _normalise(self) -> None:
        """Put the tasks of each group (or chunks) directly inside this one in its
        place, with that group's options as their defaults."""
        flat: list[Signature] = []
        for task in self.tasks:
            inner = task._as_group()
            if not isinstance(inner, group):
                flat.append(task)
                continue
            inner._normalise()
            inherited = {k: v for k, v in inner.options.items() if k not in (GROUP_ID, "task_id")}
            for member in inner.tasks:
                if inner.args:  # the inner group's partial arguments go to each task
                    member = member.clone(inner.args)
                for key, value in inherited.items():
                    member.options.setdefault(key, value)
                flat.append(member)
        self.kwargs["tasks"] = flat

    def _freeze(self, parent: Result | None) -> Result:
        self._normalise()
        group_id = self.options.setdefault(GROUP_ID, str(uuid.uuid4()))
        results: list[AsyncResult | GroupResult] = []
        for i, task in enumerate(self.tasks):
            counted = task._counted()
            if counted is not None:
                counted.options.setdefault(GROUP_ID, group_id)
                counted.options.setdefault(GROUP_INDEX, i)
            results.append(task._freeze(None))
        result = GroupResult(group_id, results, app=self._need_app())
        result.parent = parent
        return result

    def apply_async(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Result:
        """Send every task, with these partial arguments and options, in one publish."""
        if self.app is None and not self.tasks:
            return GroupResult(self.options.get(GROUP_ID) or str(uuid.uuid4()), [])
        app = self._need_app()
        call_args, call_kwargs, opts = self._merge(args, kwargs, options)
        prepared = self._prepared(app)
        if app.conf.task_always_eager:
            return eager.run_group(prepared, call_args, call_kwargs, opts)
        result = prepared._freeze(None)
        send_members(app, prepared.tasks, call_args, call_kwargs, opts)
        return result

    def apply(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Result:
        """Run every task here, in order."""
        call_args, call_kwargs, opts = self._merge(args, kwargs, options)
        if not self.tasks:
            return GroupResult(self.options.get(GROUP_ID) or str(uuid.uuid4()), [], app=self.app)
        return eager.run_group(self._prepared(self._need_app()), call_args, call_kwargs, opts)


# -- helpers -------------------------------------------------------------------------


def is_many(value: Any) -> bool:
    """A list, tuple or iterator of tasks (not a signature, which is a dict)."""
    return not isinstance(value, Mapping | str) and isinstance(value, Iterable)


def _flatten(tasks: Iterable[Signature]) -> Iterator[Signature]:
    for task in tasks:
        if isinstance(task, chain):
            yield from _flatten(task.tasks)
        else:
            yield task


def _group_of(task: Signature) -> Signature:
    """The group ``task`` stands for (chunks: its group), else ``task`` itself."""
    found = task._as_group()
    return task if found is None else found


def _chord(header: Signature, body: Signature, app: Conveyor | None) -> Signature:
    """``chord(header, body)`` (``conveyor.canvas.chords`` registers the class)."""
    make: Callable[..., Signature] = Signature._types["chord"]
    return make(header, body, app=app)


def send_members(
    app: Conveyor,
    members: Sequence[Signature],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    options: dict[str, Any],
) -> None:
    """Send each member of a group or chord header, all in one publish."""
    opts = {k: v for k, v in options.items() if k not in (GROUP_ID, "task_id")}
    with app.publishing():
        for member in members:
            member.apply_async(args, kwargs, **opts)
