"""The canvas: signatures, and ``chain``, ``group`` and ``chord`` to compose them.

Celery's API: ``add.s(2)``, ``add.si(2, 2)``, ``signature("shop.tasks.add", args=(2,))``,
``a | b | c``, ``group(...)``, ``chord(header, body)``, ``link``/``link_error``.

A signature is a task call kept as data, and a dict (as in Celery), so that it can
travel in a message's ``headers`` as JSON::

    {"task": "shop.tasks.add", "args": [2], "kwargs": {}, "options": {...},
     "subtask_type": null | "chain" | "group" | "chord", "immutable": false}

How the primitives run on workers; nothing ever waits or polls for a result:

* ``link`` / ``link_error``: lists of signatures in ``headers``. The worker that
  settles the task sends them (``conveyor.worker.callbacks``): the links with the
  return value as first argument, the error callbacks with
  ``(task_id, exc_type, message)`` once it failed for good.
* ``chain(a, b, c)``: every task id is chosen when the chain is sent (``freeze``),
  so the caller gets the last result at once, with ``parent`` links. ``a``'s
  message carries the rest, ``headers["chain"] = [b, c]``; the worker that settles
  ``a`` sends ``b`` (``a``'s value first), carrying ``[c]``. A failure marks every
  task still ahead with the same failure.
* ``chord(header, body)``: header task ``i`` gets the id ``<chord id>-<i>`` and a
  ``headers["chord"] = {"id", "size", "body"}``; the worker settling one counts its
  id in the broker's ``tally("chord:<chord id>")`` (a set: a task that ran twice
  counts once), and the first to see the tally reach ``size`` (a claim) reads the
  header results, in order, and sends the body with them. The first header failure
  (a claim on ``"chord-error:<chord id>"``) calls the body's error callbacks once
  and stores a ``ChordError`` as the body's result.

``conveyor.task`` builds signatures (``Task.s``); this module never imports the app,
the task module or the worker (it uses the objects it is given).
"""

from __future__ import annotations

import copy
import datetime as dt
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import orjson

from conveyor import states
from conveyor.exceptions import ChordError
from conveyor.result import (
    AsyncResult,
    EagerResult,
    GroupResult,
    encode_failure,
    failure_of,
)

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.task import Task

__all__ = [
    "CALLBACK_HEADERS",
    "CHAIN",
    "CHORD",
    "GROUP_ID",
    "GROUP_INDEX",
    "LINK",
    "LINK_ERROR",
    "Signature",
    "chain",
    "chord",
    "chord_counter_key",
    "chord_error_key",
    "eager_callbacks",
    "errback_args",
    "errbacks_of",
    "group",
    "header_task_id",
    "headers_from_options",
    "maybe_signature",
    "next_step",
    "plain_signatures",
    "signature",
]

#: Header keys (and ``apply_async`` options) of the canvas: callbacks on success,
#: callbacks on failure, the rest of a chain, a chord's part, a group's id and index.
LINK = "link"
LINK_ERROR = "link_error"
CHAIN = "chain"
CHORD = "chord"
GROUP_ID = "group_id"
GROUP_INDEX = "group_index"
_HEADER_OPTIONS = (LINK, LINK_ERROR, CHAIN, CHORD, GROUP_ID, GROUP_INDEX)
#: The header keys that give the worker something to do once the task is settled.
CALLBACK_HEADERS = (LINK, LINK_ERROR, CHAIN, CHORD)

#: A canvas's result: a task's (a chain's last task's, a chord's body's) or a group's.
Result = AsyncResult | GroupResult


def chord_counter_key(chord_id: str) -> str:
    """The broker counter of a chord's header tasks that succeeded."""
    return f"chord:{chord_id}"


def chord_error_key(chord_id: str) -> str:
    """The broker counter of a chord's header tasks that failed (1: the first)."""
    return f"chord-error:{chord_id}"


def header_task_id(chord_id: str, index: int) -> str:
    """The task id of a chord's header task number ``index`` (unless one was given)."""
    return f"{chord_id}-{index}"


class _Field:
    """A signature attribute that is one of its dict's items (as in Celery)."""

    def __init__(self, key: str):
        self.key = key

    def __get__(self, obj: Signature | None, owner: type | None = None) -> Any:
        return self if obj is None else obj[self.key]

    def __set__(self, obj: Signature, value: Any) -> None:
        obj[self.key] = value


class Signature(dict[str, Any]):
    """A task call kept as data: its task's name, partial arguments and options.

    Build one with ``task.s(*args, **kwargs)``, ``task.si(...)`` (immutable: it
    ignores the arguments it is called with, such as a parent's result),
    ``task.signature(args, kwargs, **options)`` or ``signature(name, ...)``.
    """

    #: Options a call cannot change once set (changing them would orphan results).
    _IMMUTABLE_OPTIONS: ClassVar[frozenset[str]] = frozenset({GROUP_ID})

    task = _Field("task")
    args = _Field("args")
    kwargs = _Field("kwargs")
    options = _Field("options")
    subtask_type = _Field("subtask_type")
    immutable = _Field("immutable")

    def __init__(
        self,
        task: str | Task[..., Any] | Mapping[str, Any] | None = None,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        type: Task[..., Any] | None = None,
        subtask_type: str | None = None,
        immutable: bool = False,
        app: Conveyor | None = None,
        **ex: Any,
    ):
        if isinstance(task, Mapping):  # a copy of a signature's dict, as in Celery
            d = task
            task = d.get("task")
            args, kwargs, options = d.get("args"), d.get("kwargs"), d.get("options")
            subtask_type, immutable = d.get("subtask_type"), bool(d.get("immutable"))
        if task is not None and not isinstance(task, str):
            type = task
            app = app or task.app
            task = task.name
        super().__init__(
            task=task,
            args=tuple(args or ()),
            kwargs=dict(kwargs or {}),
            options={**(options or {}), **ex},
            subtask_type=subtask_type,
            immutable=bool(immutable),
        )
        self._app = app
        self._type = type

    # -- what it is -----------------------------------------------------------------

    @property
    def app(self) -> Conveyor | None:
        """The app it sends with: its own, its task's, or its first member's."""
        if self._app is not None:
            return self._app
        if self._type is not None:
            return self._type.app
        for member in self._members():
            if member.app is not None:
                return member.app
        return None

    @property
    def type(self) -> Task[..., Any]:
        """The registered task (``NotRegistered`` if this app has no such task)."""
        if self._type is None:
            self._type = self._need_app().get_task(self.task)
        return self._type

    @property
    def id(self) -> str | None:
        """The task id it will be sent with, once frozen (``freeze``)."""
        task_id = self.options.get("task_id")
        return None if task_id is None else str(task_id)

    def _members(self) -> list[Signature]:
        return []

    def _need_app(self) -> Conveyor:
        app = self.app
        if app is None:
            raise TypeError(
                f"{self!r} has no app: build it from a task (task.s()) or pass app= to signature()"
            )
        return app

    def _bind(self, app: Conveyor) -> None:
        """Give this signature and its members ``app`` where they have none."""
        if self._app is None and self._type is None:
            self._app = app
        for member in self._members():
            member._bind(app)

    def __repr__(self) -> str:
        args, kwargs, _ = self._merge((), {}, None)
        parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
        return f"{'%' if self.immutable else ''}{self.task}({', '.join(parts)})"

    # -- building -------------------------------------------------------------------

    def _merge(
        self,
        args: Iterable[Any] | None,
        kwargs: Mapping[str, Any] | None,
        options: Mapping[str, Any] | None,
    ) -> tuple[tuple[Any, ...], dict[str, Any], dict[str, Any]]:
        """The call's arguments and options with this signature's: partial arguments
        after the given ones (a parent's result comes first), the call's options
        over this signature's (callbacks added to, not replaced). An immutable
        signature ignores the given arguments."""
        opts = dict(self.options)
        for key, value in (options or {}).items():
            if key in (LINK, LINK_ERROR) and key in opts:
                opts[key] = [*_as_list(opts[key]), *_as_list(value)]
            elif key not in self._IMMUTABLE_OPTIONS or key not in opts:
                opts[key] = value
        # a chain's, group's or chord's kwargs hold its parts, not arguments
        own_kwargs = self.kwargs if self.subtask_type is None else {}
        if self.immutable:
            return tuple(self.args), dict(own_kwargs), opts
        return (*(args or ()), *self.args), {**own_kwargs, **(kwargs or {})}, opts

    def clone(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Signature:
        """A deep copy, with more partial arguments and options if given."""
        if args or kwargs or options:
            new_args, new_kwargs, new_options = self._merge(args, kwargs, options)
        else:
            new_args, new_kwargs, new_options = self.args, self.kwargs, self.options
        new = Signature.from_dict(
            {
                "task": self.task,
                "args": tuple(new_args),
                "kwargs": _deep_clone(new_kwargs),
                "options": _deep_clone(new_options),
                "subtask_type": self.subtask_type,
                "immutable": self.immutable,
            },
            app=self._app,
        )
        new._type = self._type
        return new

    partial = clone

    def __deepcopy__(self, memo: dict[int, Any]) -> Signature:
        return self.clone()

    def set(self, immutable: bool | None = None, **options: Any) -> Signature:
        """Set options (``queue``, ``priority``, ``countdown``...); returns itself."""
        if immutable is not None:
            self.set_immutable(immutable)
        self.options.update(options)
        return self

    def set_immutable(self, immutable: bool) -> None:
        self["immutable"] = bool(immutable)

    def link(self, callback: Any) -> Any:
        """Send ``callback`` with this task's return value (first argument) once it
        succeeded; returns ``callback``."""
        _append_option(self.options, LINK, maybe_signature(callback))
        return callback

    def link_error(self, errback: Any) -> Any:
        """Send ``errback`` with ``(task_id, exc_type, message)`` if this task fails
        for good (not on a retry); returns ``errback``."""
        _append_option(self.options, LINK_ERROR, maybe_signature(errback))
        return errback

    def on_error(self, errback: Any) -> Signature:
        """``link_error``, returning this signature (for chaining calls)."""
        self.link_error(errback)
        return self

    def __or__(self, other: object) -> Signature:  # type: ignore[override]
        if isinstance(other, chain):
            return chain(self, *other.tasks, app=self._app)
        if isinstance(other, Signature):
            return chain(self, other, app=self._app)
        return NotImplemented

    # -- serialising ----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data: what a message's headers carry."""
        return {
            "task": self.task,
            "args": _plain(list(self.args)),
            "kwargs": _plain(self.kwargs),
            "options": _wire_options(self.options),
            "subtask_type": self.subtask_type,
            "immutable": bool(self.immutable),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], app: Conveyor | None = None) -> Signature:
        """The signature (or chain, group, chord) that ``d`` describes."""
        kind = d.get("subtask_type")
        sig: Signature
        if kind:
            target = _KINDS.get(str(kind))
            if target is None:
                raise ValueError(f"unknown signature type {kind!r}")
            sig = target._from_parts(dict(d.get("kwargs") or {}), dict(d.get("options") or {}), app)
        else:
            sig = Signature(d.get("task"), None, d.get("kwargs"), d.get("options"), app=app)
        sig["args"] = tuple(d.get("args") or ())
        sig["immutable"] = bool(d.get("immutable"))
        return sig

    @classmethod
    def _from_parts(
        cls, kwargs: dict[str, Any], options: dict[str, Any], app: Conveyor | None
    ) -> Signature:
        raise NotImplementedError

    # -- results --------------------------------------------------------------------

    def freeze(self, _id: str | None = None) -> Result:
        """Choose the task id(s) now, and return the result handle they will have."""
        if _id is not None:
            self.options["task_id"] = _id
        return self._freeze(None)

    def _freeze(self, parent: Result | None) -> Result:
        task_id = self.options.setdefault("task_id", str(uuid.uuid4()))
        result = AsyncResult(task_id, self._need_app())
        result.parent = parent
        return result

    # -- running --------------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the task function here, now, with the partial arguments (as Celery)."""
        call_args, call_kwargs, _ = self._merge(args, kwargs, None)
        return self.type(*call_args, **call_kwargs)

    def delay(self, *args: Any, **kwargs: Any) -> Result:
        """``apply_async(args, kwargs)``."""
        return self.apply_async(args, kwargs)

    def apply_async(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Result:
        """Send it: the given arguments first, then the partial ones; the given options
        over the signature's. Through the task's ``apply_async`` when the task is
        registered here (argument checks, eager mode), else ``app.send_task``."""
        app = self._need_app()
        call_args, call_kwargs, opts = self._merge(args, kwargs, options)
        task = self._type or app.tasks.get(self.task)
        if task is not None:
            return task.apply_async(call_args, call_kwargs, **opts)
        return app.send_task(self.task, call_args, call_kwargs, **opts)

    def apply(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Result:
        """Run it here, now (as ``Task.apply``); callbacks run here too."""
        call_args, call_kwargs, opts = self._merge(args, kwargs, options)
        return self.type.apply(call_args, call_kwargs, **opts)


class _Tasks(Signature):
    """A signature made of other signatures (``chain``, ``group``): they are its
    ``tasks``, kept in its kwargs so that it travels as data like any signature."""

    kind: str  # "chain" or "group"

    def __init__(self, *tasks: Any, app: Conveyor | None = None, **options: Any):
        if len(tasks) == 1 and _is_many(tasks[0]):
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


class chain(_Tasks):
    """Tasks run one after another, each given the previous one's return value as its
    first argument: ``chain(a, b, c)`` or ``a | b | c``.

    ``apply_async`` returns the last task's result; ``result.parent`` is the one
    before it, and so on. A group followed by more steps becomes a chord.
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

    def _normalise(self) -> None:
        """Flatten chains in the chain; a group followed by more steps becomes a chord
        whose body is the rest (as Celery upgrades it)."""
        flat = list(_flatten(self.tasks))
        steps: list[Signature] = []
        for i, task in enumerate(flat):
            if isinstance(task, group) and i + 1 < len(flat):
                rest = flat[i + 1 :]
                body = rest[0] if len(rest) == 1 else chain(*rest, app=self._app)
                steps.append(chord(task, body, app=self._app))
                break
            steps.append(task)
        self.kwargs["tasks"] = steps

    def _prepared(self, app: Conveyor) -> chain:
        prepared = self.clone()
        assert isinstance(prepared, chain)
        prepared._bind(app)
        prepared._normalise()
        return prepared

    def _freeze(self, parent: Result | None) -> Result:
        self._normalise()
        if not self.tasks:
            raise ValueError("chain() has no tasks")
        result: Result | None = parent
        for task in self.tasks:
            result = task._freeze(result)
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
            return self._apply(app, call_args, call_kwargs, opts)
        prepared = self._prepared(app)
        if not prepared.tasks:
            raise ValueError("chain() has no tasks to send")
        task_id = opts.pop("task_id", None)
        last = _counted(prepared.tasks[-1])
        if task_id is not None and last is not None:
            last.options["task_id"] = task_id
        result = prepared._freeze(None)
        first = with_tail(prepared.tasks[0], prepared.tasks[1:])
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
        return self._apply(self._need_app(), call_args, call_kwargs, opts)

    def _apply(
        self, app: Conveyor, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]
    ) -> Result:
        prepared = self._prepared(app)
        if not prepared.tasks:
            raise ValueError("chain() has no tasks to run")
        result: Result | None = None
        value: Any = None
        for i, step in enumerate(prepared.tasks):
            current = step.apply(args, kwargs, **options) if i == 0 else step.apply((value,))
            _attach_parent(current, result)
            result = current
            if current.failed():
                break
            value = current.get()
        assert result is not None
        return result


class group(_Tasks):
    """Tasks run in parallel: ``group(add.s(i, i) for i in range(10))``.

    ``apply_async`` returns a ``GroupResult`` (values in the group's order). All
    the messages are published together (one ``publish_many``).
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
            return chord(self, other, app=self._app)
        return NotImplemented

    def __call__(self, *args: Any, **options: Any) -> Result:
        """Send the group (``apply_async``) with these partial arguments."""
        return self.apply_async(args, **options)

    def link(self, callback: Any) -> Any:
        raise TypeError(
            "a callback after a whole group is a chord: chord(group, callback) or group | callback"
        )

    def link_error(self, errback: Any) -> Any:
        """Link ``errback`` to every task of the group (each failure calls it)."""
        for task in self.tasks:
            task.link_error(errback)
        return errback

    def _prepared(self, app: Conveyor) -> group:
        prepared = self.clone()
        assert isinstance(prepared, group)
        prepared._bind(app)
        return prepared

    def _freeze(self, parent: Result | None) -> Result:
        group_id = self.options.setdefault(GROUP_ID, str(uuid.uuid4()))
        results: list[AsyncResult | GroupResult] = []
        for i, task in enumerate(self.tasks):
            counted = _counted(task)
            if counted is not None:
                counted.options.setdefault(GROUP_ID, group_id)
                counted.options.setdefault(GROUP_INDEX, i)
            results.append(task._freeze(None))
        result = GroupResult(group_id, results)
        result.parent = parent
        return result

    def apply_async(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Result:
        """Send every task, with these partial arguments and options, in one publish."""
        app = self.app
        if app is None and not self.tasks:
            return GroupResult(self.options.get(GROUP_ID) or str(uuid.uuid4()), [])
        app = self._need_app()
        call_args, call_kwargs, opts = self._merge(args, kwargs, options)
        if app.conf.task_always_eager:
            return self._apply(app, call_args, call_kwargs, opts)
        prepared = self._prepared(app)
        result = prepared._freeze(None)
        _send_members(app, prepared.tasks, call_args, call_kwargs, opts)
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
            return GroupResult(self.options.get(GROUP_ID) or str(uuid.uuid4()), [])
        return self._apply(self._need_app(), call_args, call_kwargs, opts)

    def _apply(
        self, app: Conveyor, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]
    ) -> GroupResult:
        prepared = self._prepared(app)
        opts = {k: v for k, v in options.items() if k not in (GROUP_ID, "task_id")}
        results = [task.apply(args, kwargs, **opts) for task in prepared.tasks]
        return GroupResult(prepared.options.get(GROUP_ID) or str(uuid.uuid4()), results)


class chord(Signature):
    """A group (the header) whose results, in order, are the first argument of one
    more task (the body) once every header task succeeded:
    ``chord(header, body)()`` or ``chord(header)(body)``.

    Returns the body's result, whose ``parent`` is the header's ``GroupResult``.
    If a header task fails, the body never runs: its error callbacks are called
    once, with the failed task's ``(task_id, exc_type, message)``, and its result
    is a ``ChordError``.
    """

    def __init__(
        self,
        header: Any = (),
        body: Any = None,
        task: str = "celery.chord",
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        app: Conveyor | None = None,
        **options: Any,
    ):
        parts = {**(kwargs or {}), "header": _as_group(header)}
        parts["body"] = None if body is None else maybe_signature(body)
        super().__init__(task, args, parts, options, subtask_type="chord", app=app)

    @classmethod
    def _from_parts(
        cls, kwargs: dict[str, Any], options: dict[str, Any], app: Conveyor | None
    ) -> Signature:
        return chord(kwargs.get("header", ()), kwargs.get("body"), app=app, **options)

    @property
    def header(self) -> group:
        header: group = self.kwargs["header"]
        return header

    @property
    def body(self) -> Signature | None:
        body: Signature | None = self.kwargs.get("body")
        return body

    @body.setter
    def body(self, value: Any) -> None:
        self.kwargs["body"] = None if value is None else maybe_signature(value)

    @property
    def tasks(self) -> list[Signature]:
        """The header's tasks (as Celery's ``chord.tasks``)."""
        return self.header.tasks

    def _members(self) -> list[Signature]:
        return [*self.header.tasks, *([self.body] if self.body is not None else [])]

    def __repr__(self) -> str:
        return f"chord({self.header!r}, {self.body!r})"

    def __or__(self, other: object) -> Signature:  # type: ignore[override]
        """``chord | task`` adds the task after the body (as in Celery)."""
        if isinstance(other, Signature) and not isinstance(other, group | chain):
            extended = self.clone()
            assert isinstance(extended, chord)
            extended.body = other if extended.body is None else extended.body | other
            return extended
        return super().__or__(other)

    def __call__(self, body: Any = None, **options: Any) -> Result:
        """Send the chord: ``chord(header)(body)`` or ``chord(header, body)()``."""
        return self.apply_async((), {"body": body} if body is not None else {}, **options)

    def link(self, callback: Any) -> Any:
        """Link ``callback`` to the body."""
        return self._need_body().link(callback)

    def link_error(self, errback: Any) -> Any:
        """Link ``errback`` to the body: it is called once if a header task fails
        (or if the body itself fails)."""
        return self._need_body().link_error(errback)

    def _need_body(self) -> Signature:
        if self.body is None:
            raise TypeError("chord() needs a body: chord(header, body) or chord(header)(body)")
        return self.body

    def _freeze(self, parent: Result | None) -> Result:
        body = self._need_body()
        header = self.header
        chord_id = header.options.setdefault(GROUP_ID, str(uuid.uuid4()))
        for i, member in enumerate(header.tasks):
            counted = _counted(member)
            if counted is None:
                raise TypeError(
                    f"a chord's header takes tasks, chains and chords, not a group: {member!r}"
                )
            counted.options.setdefault("task_id", header_task_id(chord_id, i))
        header_result = header._freeze(parent)
        return body._freeze(header_result)

    def _prepared(self, app: Conveyor, body: Any) -> chord:
        prepared = self.clone()
        assert isinstance(prepared, chord)
        if body is not None:
            prepared.body = maybe_signature(body).clone()
        prepared._need_body()
        prepared._bind(app)
        return prepared

    def apply_async(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Result:
        """Send the header tasks (in one publish), each carrying the chord's id, size
        and body; returns the body's result. Arguments and options go to every
        header task, but ``task_id`` names the body; ``kwargs["body"]`` replaces
        the body."""
        call_kwargs = dict(kwargs or {})
        body = call_kwargs.pop("body", None)
        app = self._need_app() if body is None else (self.app or maybe_signature(body).app)
        if app is None:
            raise TypeError(f"{self!r} has no app")
        prepared = self._prepared(app, body)
        call_args, call_kwargs, opts = prepared._merge(args, call_kwargs, options)
        task_id = opts.pop("task_id", None)
        target = _counted(prepared._need_body())
        if task_id is not None and target is not None:
            target.options["task_id"] = task_id  # the id of the chord's result
        if app.conf.task_always_eager:
            return prepared._apply(app, call_args, call_kwargs, opts)
        result = prepared._freeze(None)
        prepared._send(app, call_args, call_kwargs, opts)
        return result

    def _send(
        self, app: Conveyor, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]
    ) -> None:
        header, body = self.header, self._need_body()
        chord_id = str(header.options[GROUP_ID])
        members = header.tasks
        if not members:  # nothing to wait for, as in Celery
            follow = {k: options[k] for k in ("parent_id", "root_id") if k in options}
            body.apply_async(([],), **follow)
            return
        info: dict[str, Any] = {"id": chord_id, "size": len(members), "body": body.to_dict()}
        counted = [_counted(member) for member in members]
        ids = [c.id if c is not None else None for c in counted]
        if ids != [header_task_id(chord_id, i) for i in range(len(members))]:
            info["ids"] = ids
        for part in counted:
            assert part is not None
            part.options[CHORD] = info
            part.options["ignore_result"] = False  # the body needs every header result
        _send_members(app, members, args, kwargs, options)

    def apply(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Result:
        """Run the header here, then the body with the header's values."""
        call_kwargs = dict(kwargs or {})
        body = call_kwargs.pop("body", None)
        app = self._need_app()
        prepared = self._prepared(app, body)
        call_args, call_kwargs, opts = prepared._merge(args, call_kwargs, options)
        return prepared._apply(app, call_args, call_kwargs, opts)

    def _apply(
        self, app: Conveyor, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]
    ) -> Result:
        body = self._need_body()
        header_result = self.header._apply(app, args, kwargs, options)
        culprit = _first_failure(header_result)
        result: Result
        if culprit is None:
            result = body.apply((header_result.get(),))
        else:
            exc_type, message = failure_of(_payload(culprit))
            for errback in errbacks_of(body):
                _resolve(errback, app).apply(errback_args_from(culprit.id, exc_type, message))
            error = ChordError(f"header task {culprit.id} raised {exc_type}: {message}")
            target = _counted(body) or body
            result = EagerResult(
                target.id or str(uuid.uuid4()),
                states.FAILURE,
                encode_failure(str(target.task), error),
            )
        _attach_parent(result, header_result)
        return result


_KINDS: dict[str, type[Signature]] = {"chain": chain, "group": group, "chord": chord}


# -- building helpers ----------------------------------------------------------------


def signature(
    varies: str | Task[..., Any] | Mapping[str, Any],
    args: Iterable[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    *,
    immutable: bool = False,
    app: Conveyor | None = None,
    **ex: Any,
) -> Signature:
    """A signature of a task (by name or object) or from a signature's dict (a chain,
    group or chord's too). A name needs ``app=`` unless the signature ends up in a
    canvas with one (or is sent by a worker)."""
    if isinstance(varies, Signature):
        clone = varies.clone()
        if app is not None:
            clone._bind(app)
        return clone
    if isinstance(varies, Mapping):
        return Signature.from_dict(varies, app=app)
    return Signature(varies, args, kwargs, options, immutable=immutable, app=app, **ex)


def maybe_signature(value: Any, app: Conveyor | None = None) -> Signature:
    """``value`` as a signature: a signature itself, one from a dict, or a task's ``s()``."""
    if isinstance(value, Signature):
        sig = value
    elif isinstance(value, Mapping):
        sig = Signature.from_dict(value)
    elif hasattr(value, "s") and hasattr(value, "name"):  # a Task: its signature, no arguments
        sig = value.s()
    else:
        raise TypeError(f"not a signature: {value!r}")
    if app is not None:
        sig._bind(app)
    return sig


def _deep_clone(value: Any) -> Any:
    """A deep copy in which every signature is a clone of its own, even one that
    appears twice (``group([sig] * 3)``: three tasks, three ids)."""
    if isinstance(value, Signature):
        return value.clone()
    if isinstance(value, Mapping):
        return {key: _deep_clone(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_deep_clone(item) for item in value]
    return copy.deepcopy(value)


def _resolve(value: Any, app: Conveyor) -> Signature:
    """A fresh signature from ``value`` (a dict from headers, or one of the caller's),
    bound to ``app`` where it has none."""
    sig = maybe_signature(value).clone()
    sig._bind(app)
    return sig


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return list(value)
    return [value]


def _append_option(options: dict[str, Any], key: str, sig: Signature) -> None:
    entries = _as_list(options.get(key))
    if sig not in entries:
        entries.append(sig)
    options[key] = entries


def _is_many(value: Any) -> bool:
    """A list, tuple or iterator of tasks (not a signature, which is a dict)."""
    return not isinstance(value, Mapping | str) and isinstance(value, Iterable)


def _as_group(header: Any) -> group:
    if isinstance(header, group):
        return header
    if isinstance(header, Mapping):
        sig = maybe_signature(header)
        return sig if isinstance(sig, group) else group(sig)
    return group(header)


def _flatten(tasks: Iterable[Signature]) -> Iterator[Signature]:
    for task in tasks:
        if isinstance(task, chain):
            yield from _flatten(task.tasks)
        else:
            yield task


def _counted(sig: Signature) -> Signature | None:
    """The plain signature whose result stands for ``sig``'s: itself, a chain's last
    task's, a chord's body's; None for a group (a list of results)."""
    if isinstance(sig, chain):
        sig._normalise()
        return _counted(sig.tasks[-1]) if sig.tasks else None
    if isinstance(sig, chord):
        return None if sig.body is None else _counted(sig.body)
    if isinstance(sig, group):
        return None
    return sig


def _send_members(
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


def with_tail(sig: Signature, rest: Sequence[Signature]) -> Signature:
    """``sig`` followed by the chain steps ``rest`` (may modify ``sig``): a task
    carries them in its ``chain`` option, a chord's body does, a chain grows, and a
    group becomes a chord's header."""
    if not rest:
        return sig
    if isinstance(sig, chain):
        return chain(*sig.tasks, *rest, app=sig._app, **sig.options)
    if isinstance(sig, chord):
        sig.body = with_tail(sig._need_body(), rest)
        return sig
    if isinstance(sig, group):
        body = rest[0] if len(rest) == 1 else chain(*rest, app=sig._app)
        return chord(sig, body, app=sig._app)
    sig.options[CHAIN] = [*_as_list(sig.options.get(CHAIN)), *(step.to_dict() for step in rest)]
    return sig


def next_step(steps: Sequence[Any], app: Conveyor) -> Signature:
    """The signature to send after a task whose message carried ``headers["chain"]``:
    the first step, carrying the others."""
    first, *rest = (_resolve(step, app) for step in steps)
    return with_tail(first, rest)


def plain_signatures(sig: Signature, *, tails: bool = True) -> Iterator[Signature]:
    """Every task signature in ``sig`` (a chain's, group's, chord header's and body's),
    and with ``tails`` the chain steps a task carries."""
    if isinstance(sig, chain | group):
        for task in sig.tasks:
            yield from plain_signatures(task, tails=tails)
    elif isinstance(sig, chord):
        for task in sig._members():
            yield from plain_signatures(task, tails=tails)
    else:
        yield sig
        if tails:
            for step in _as_list(sig.options.get(CHAIN)):
                yield from plain_signatures(maybe_signature(step), tails=tails)


def errbacks_of(sig: Signature) -> list[Signature]:
    """The error callbacks linked to ``sig``'s tasks (not to chain steps after it),
    each once."""
    seen: set[bytes] = set()
    found: list[Signature] = []
    for task in plain_signatures(sig, tails=False):
        for errback in _as_list(task.options.get(LINK_ERROR)):
            errback_sig = maybe_signature(errback)
            key = orjson.dumps(errback_sig.to_dict(), option=orjson.OPT_SORT_KEYS)
            if key not in seen:
                seen.add(key)
                found.append(errback_sig)
    return found


def errback_args_from(task_id: str, exc_type: str, message: str) -> tuple[str, str, str]:
    return (task_id, exc_type, message)


def errback_args(task_id: str, payload: bytes | None) -> tuple[str, str, str]:
    """What an error callback is called with: ``(task_id, exc_type, message)``, where
    ``exc_type`` is ``module.QualName`` (``ValueError`` for built-ins)."""
    return (task_id, *failure_of(payload))


# -- on the wire ---------------------------------------------------------------------


def headers_from_options(
    headers: Mapping[str, Any] | None, options: dict[str, Any]
) -> dict[str, Any]:
    """The message headers of a send: ``headers`` plus the canvas options, which are
    taken out of ``options``: ``link`` and ``link_error`` (a signature or a list),
    and internally ``chain``, ``chord``, ``group_id``, ``group_index``."""
    if not options:
        return dict(headers) if headers else {}
    merged = dict(headers or {})
    for key in (LINK, LINK_ERROR):
        value = options.pop(key, None)
        if value:
            entries = [maybe_signature(entry).to_dict() for entry in _as_list(value)]
            merged[key] = [*_as_list(merged.get(key)), *entries]
    for key in (CHAIN, CHORD, GROUP_ID, GROUP_INDEX):
        value = options.pop(key, None)
        if value is not None:
            merged[key] = _plain(value)
    return merged


def _plain(value: Any) -> Any:
    if isinstance(value, Signature):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _wire_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Options as JSON: times as UNIX seconds, durations as seconds (``expires`` as a
    duration stays relative to when that task is sent)."""
    wired: dict[str, Any] = {}
    for key, value in options.items():
        if isinstance(value, dt.datetime):
            value = (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).timestamp()
        elif isinstance(value, dt.timedelta):
            value = value.total_seconds()
        elif key in (LINK, LINK_ERROR):
            value = [maybe_signature(entry).to_dict() for entry in _as_list(value)]
        wired[key] = _plain(value)
    return wired


# -- results -------------------------------------------------------------------------


def _attach_parent(result: Result, parent: Result | None) -> None:
    """Make ``parent`` the parent of the oldest ancestor of ``result`` that has none."""
    if parent is None:
        return
    node = result
    while node.parent is not None:
        node = node.parent
    if node is not parent:
        node.parent = parent


def _leaves(result: Result) -> Iterator[AsyncResult]:
    if isinstance(result, GroupResult):
        for child in result.results:
            yield from _leaves(child)
    else:
        yield result


def _first_failure(result: Result) -> AsyncResult | None:
    return next((leaf for leaf in _leaves(result) if leaf.failed()), None)


def _payload(result: AsyncResult) -> bytes | None:
    record = result._record()
    return None if record is None else record.payload


def eager_callbacks(app: Conveyor, result: EagerResult, options: Mapping[str, Any]) -> EagerResult:
    """After an eager run (``Task.apply``): its ``link`` callbacks with the value, or
    its ``link_error`` callbacks with ``(task_id, exc_type, message)``, run here."""
    if result.state == states.SUCCESS:
        for link in _as_list(options.get(LINK)):
            _resolve(link, app).apply((result.result,))
    elif result.state == states.FAILURE:
        args = errback_args(result.id, _payload(result))
        for errback in _as_list(options.get(LINK_ERROR)):
            _resolve(errback, app).apply(args)
    return result
