"""``chord(header, body)``: a group whose values, in order, are the body's argument.

Header task ``i`` gets the id ``<chord id>-<i>`` and ``headers["chord"] = {"id",
"size", "body"}``; the worker that settles a header task counts it in the broker,
and the one that sees the count reach ``size`` sends the body with every header
value, read in order from the result backend (see ``conveyor.worker.callbacks``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from conveyor.canvas import eager
from conveyor.canvas.keys import CHORD, GROUP_ID, header_task_id
from conveyor.canvas.primitives import chain, group, is_many, send_members
from conveyor.canvas.signatures import Result, Signature, maybe_signature

if TYPE_CHECKING:
    from conveyor.app import Conveyor

__all__ = ["chord"]


@Signature.register_type("chord")
class chord(Signature):
    """A group (the header) whose results, in order, are the first argument of one
    more task (the body) once every header task succeeded:
    ``chord(header, body)()`` or ``chord(header)(body)``.

    The header is a group, or tasks, chains and chords; a group among them is
    flattened into the header (its tasks count one by one, as in Celery). Returns
    the body's result, whose ``parent`` is the header's ``GroupResult``. If a header
    task fails, the body never runs: its error callbacks are called once (the JSON
    kind with the failed task's ``(task_id, exc_type, message)``: see docs/canvas.md),
    and its result is a ``ChordError``.
    """

    _composite = True

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

    def _counted(self) -> Signature | None:
        return None if self.body is None else self.body._counted()

    def _with_tail(self, rest: list[Signature]) -> Signature:
        if rest:
            self.body = self._need_body()._with_tail(rest)
        return self

    def _freeze(self, parent: Result | None) -> Result:
        body = self._need_body()
        header = self.header
        header._normalise()
        chord_id = header.options.setdefault(GROUP_ID, str(uuid.uuid4()))
        for i, member in enumerate(header.tasks):
            counted = member._counted()
            if counted is None:
                raise TypeError(
                    "a chord's header takes tasks, groups, chains that end with a task "
                    f"and chords, not a chain that ends with a group: {member!r}"
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
        prepared.header._normalise()
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
        app = self._own_app() or (None if body is None else maybe_signature(body)._own_app())
        app = app or self._need_app()
        prepared = self._prepared(app, body)
        call_args, call_kwargs, opts = prepared._merge(args, call_kwargs, options)
        task_id = opts.pop("task_id", None)
        target = prepared._need_body()._counted()
        if task_id is not None and target is not None:
            target.options["task_id"] = task_id  # the id of the chord's result
        if app.conf.task_always_eager:
            return eager.run_chord(prepared, call_args, call_kwargs, opts)
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
        counted = [member._counted() for member in members]
        ids = [c.id if c is not None else None for c in counted]
        if ids != [header_task_id(chord_id, i) for i in range(len(members))]:
            info["ids"] = ids
        for part in counted:
            assert part is not None
            part.options[CHORD] = info
            part.options["ignore_result"] = False  # the body needs every header result
        send_members(app, members, args, kwargs, options)

    def apply(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Result:
        """Run the header here, then the body with the header's values."""
        call_kwargs = dict(kwargs or {})
        body = call_kwargs.pop("body", None)
        prepared = self._prepared(self._need_app(), body)
        call_args, call_kwargs, opts = prepared._merge(args, call_kwargs, options)
        return eager.run_chord(prepared, call_args, call_kwargs, opts)


def _as_group(header: Any) -> group:
    """A chord's header as a group: a group (or chunks) itself, else a group of it."""
    if isinstance(header, Mapping) or not is_many(header):
        sig = maybe_signature(header)
        found = sig._as_group()
        return found if isinstance(found, group) else group(sig)
    return group(header)
