"""Signatures: a task call kept as data, and its dict form.

A signature is a ``dict`` (as in Celery), so that it can travel in a message's
``headers`` as JSON::

    {"task": "shop.tasks.add", "args": [2], "kwargs": {}, "options": {...},
     "subtask_type": null | "chain" | "group" | "chord" | "chunks" | "xmap" | "xstarmap",
     "immutable": false}

``Signature.from_dict`` turns such a dict back into the right class: the
primitives register themselves under their ``subtask_type`` (``register_type``).

About 500 lines, one seam: the class and the helpers that build, clone and
serialise it recurse into each other (a signature's dict holds signatures).
"""

from __future__ import annotations

import copy
import datetime as dt
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from conveyor import current
from conveyor.canvas.keys import CHAIN, GROUP_ID, LINK, LINK_ERROR
from conveyor.result import AsyncResult, GroupResult

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.task import Task

__all__ = [
    "Result",
    "Signature",
    "as_list",
    "expect_child",
    "freeze_links",
    "maybe_signature",
    "plain",
    "resolve",
    "signature",
]

#: A canvas's result: a task's (a chain's last task's, a chord's body's) or a group's.
Result = AsyncResult | GroupResult

S = TypeVar("S", bound="type[Signature]")


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
    #: The classes of the primitives, by ``subtask_type`` (see ``register_type``).
    _types: ClassVar[dict[str, type[Signature]]] = {}
    #: True for a signature made of others (chain, group, chord, chunks).
    _composite: ClassVar[bool] = False

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

    @classmethod
    def register_type(cls, name: str) -> Callable[[S], S]:
        """Class decorator: ``from_dict`` builds this class for ``subtask_type == name``."""

        def register(kind: S) -> S:
            cls._types[name] = kind
            return kind

        return register

    # -- what it is -----------------------------------------------------------------

    @property
    def app(self) -> Conveyor | None:
        """The app it sends with: its own, its task's, its first member's, else the
        default app (``Conveyor.set_default()``, or the app created last)."""
        own = self._own_app()
        return own if own is not None else current.default_app()

    def _own_app(self) -> Conveyor | None:
        if self._app is not None:
            return self._app
        if self._type is not None:
            return self._type.app
        for member in self._members():
            app = member._own_app()
            if app is not None:
                return app
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
        """The signatures this one is made of (none for a task's)."""
        return []

    def _need_app(self) -> Conveyor:
        app = self.app
        if app is None:
            raise TypeError(
                f"{self!r} has no app: build it from a task (task.s()), pass app= to "
                "signature(), or create an app first"
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
                opts[key] = [*as_list(opts[key]), *as_list(value)]
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
        """Call ``errback`` if this task fails for good (not on a retry), by its
        parameters: ``(request, exc, traceback)``, the task id, or ``(task_id,
        exc_type, message)`` (docs/canvas.md); returns ``errback``."""
        _append_option(self.options, LINK_ERROR, maybe_signature(errback))
        return errback

    def on_error(self, errback: Any) -> Signature:
        """``link_error``, returning this signature (for chaining calls)."""
        self.link_error(errback)
        return self

    def __or__(self, other: object) -> Signature:  # type: ignore[override]
        kind = self._types["chain"]
        chain: Callable[..., Signature] = kind
        if isinstance(other, kind):
            return chain(self, *other._members(), app=self._app)
        if isinstance(other, Signature):
            return chain(self, other, app=self._app)
        return NotImplemented

    def _counted(self) -> Signature | None:
        """The task signature whose result stands for this one's: itself (a chain's
        last task's, a chord's body's); None for a group (a list of results)."""
        return self

    def _as_group(self) -> Signature | None:
        """The group this signature stands for (a group, chunks), else None."""
        return None

    def _with_tail(self, rest: list[Signature]) -> Signature:
        """This signature followed by the chain steps ``rest`` (may modify it): a task
        carries them in its ``chain`` option."""
        if rest:
            steps = [*as_list(self.options.get(CHAIN)), *(step.to_dict() for step in rest)]
            self.options[CHAIN] = steps
        return self

    # -- serialising ----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data: what a message's headers carry."""
        return {
            "task": self.task,
            "args": plain(list(self.args)),
            "kwargs": plain(self.kwargs),
            "options": _wire_options(self.options),
            "subtask_type": self.subtask_type,
            "immutable": bool(self.immutable),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], app: Conveyor | None = None) -> Signature:
        """The signature (or chain, group, chord, chunks, map) that ``d`` describes."""
        kind = d.get("subtask_type")
        sig: Signature
        if kind:
            target = cls._types.get(str(kind))
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
        app = self._need_app()
        result = AsyncResult(task_id, app)
        result.parent = parent
        for link in freeze_links(self.options, app):
            expect_child(result, link)
        return result

    # -- running --------------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the task function here, now, with the partial arguments (as Celery)."""
        call_args, call_kwargs, _ = self._merge(args, kwargs, None)
        return self.type(*call_args, **call_kwargs)

    def __invert__(self) -> Any:
        """``~sig``: send it and wait for its value (Celery's shell shortcut)."""
        return self.apply_async().get()

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
    group or chord's too). A name without ``app=`` sends with the app of the canvas
    it ends up in, or the default app (``Conveyor.set_default()``, else the app
    created last)."""
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


def resolve(value: Any, app: Conveyor) -> Signature:
    """A fresh signature from ``value`` (a dict from headers, or one of the caller's),
    bound to ``app`` where it has none."""
    sig = maybe_signature(value).clone()
    sig._bind(app)
    return sig


def freeze_links(options: dict[str, Any], app: Conveyor) -> list[Result]:
    """Choose the ids of the ``link`` callbacks in ``options`` (each replaced by a
    frozen copy), so that the task's children are known before it runs; their
    result handles, in order."""
    entries = as_list(options.get(LINK))
    if not entries:
        return []
    frozen = [resolve(entry, app) for entry in entries]
    results = [link._freeze(None) for link in frozen]
    options[LINK] = frozen
    return results


def expect_child(result: AsyncResult, child: Result) -> None:
    """Add ``child`` to the children ``result``'s task will have once it succeeded, as
    this process knows them (their ids are chosen: see ``AsyncResult.children``)."""
    before = result.expected_children
    result.expected_children = lambda: [*(before() if before is not None else []), child]


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


def as_list(value: Any) -> list[Any]:
    """``value`` as a list: None as [], a single item as [item]."""
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return list(value)
    return [value]


def _append_option(options: dict[str, Any], key: str, sig: Signature) -> None:
    entries = as_list(options.get(key))
    if sig not in entries:
        entries.append(sig)
    options[key] = entries


def plain(value: Any) -> Any:
    """``value`` as JSON-ready data: signatures as dicts, tuples and ranges as lists."""
    if isinstance(value, Signature):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple | range):
        return [plain(item) for item in value]
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
            value = [maybe_signature(entry).to_dict() for entry in as_list(value)]
        wired[key] = plain(value)
    return wired
