"""Eager execution: a canvas run in the calling process (``task_always_eager``,
``sig.apply()``), step by step, returning ``EagerResult``s linked by ``parent``.

Callbacks run here too: ``link`` with the value, ``link_error`` with
``(task_id, exc_type, message)``; a chord whose header fails calls its body's
error callbacks once and returns a failed result holding a ``ChordError``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from conveyor import states
from conveyor.canvas.keys import GROUP_ID, LINK, LINK_ERROR, errback_args, errback_args_from
from conveyor.canvas.protocol import errbacks_of
from conveyor.canvas.signatures import Result, as_list, expect_child, resolve
from conveyor.exceptions import ChordError
from conveyor.result import AsyncResult, EagerResult, GroupResult, encode_failure, failure_of

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.canvas.chords import chord
    from conveyor.canvas.primitives import chain, group

__all__ = ["eager_callbacks", "run_chain", "run_chord", "run_group"]


def eager_callbacks(app: Conveyor, result: EagerResult, options: Mapping[str, Any]) -> EagerResult:
    """After an eager run (``Task.apply``): its ``link`` callbacks with the value, or
    its ``link_error`` callbacks with ``(task_id, exc_type, message)``, run here."""
    if result.state == states.SUCCESS:
        for link in as_list(options.get(LINK)):
            expect_child(result, resolve(link, app).apply((result.result,)))
    elif result.state == states.FAILURE:
        args = errback_args(result.id, _payload(result))
        for errback in as_list(options.get(LINK_ERROR)):
            resolve(errback, app).apply(args)
    return result


def run_chain(
    prepared: chain, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]
) -> Result:
    """Run every step of a prepared chain here, in order; stops at the first failure
    (whose result is returned)."""
    if not prepared.tasks:
        raise ValueError("chain() has no tasks to run")
    result: Result | None = None
    value: Any = None
    for i, step in enumerate(prepared.tasks):
        current = step.apply(args, kwargs, **options) if i == 0 else step.apply((value,))
        attach_parent(current, result)
        if isinstance(result, AsyncResult):
            expect_child(result, current)
        result = current
        if current.failed():
            break
        value = current.get()
    assert result is not None
    return result


def run_group(
    prepared: group, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]
) -> GroupResult:
    """Run every task of a prepared group here, in order."""
    app = prepared._need_app()
    opts = {k: v for k, v in options.items() if k not in (GROUP_ID, "task_id")}
    results = [task.apply(args, kwargs, **opts) for task in prepared.tasks]
    group_id = prepared.options.get(GROUP_ID) or str(uuid.uuid4())
    return GroupResult(group_id, results, app=app)


def run_chord(
    prepared: chord, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]
) -> Result:
    """Run a prepared chord's header here, then its body with the header's values (or,
    if a header task failed, the body's error callbacks, once)."""
    app = prepared._need_app()
    body = prepared._need_body()
    header_result = run_group(prepared.header, args, kwargs, options)
    culprit = _first_failure(header_result)
    result: Result
    if culprit is None:
        result = body.apply((header_result.get(),))
    else:
        exc_type, message = failure_of(_payload(culprit))
        for errback in errbacks_of(body):
            resolve(errback, app).apply(errback_args_from(culprit.id, exc_type, message))
        error = ChordError(f"header task {culprit.id} raised {exc_type}: {message}")
        target = body._counted() or body
        result = EagerResult(
            target.id or str(uuid.uuid4()),
            states.FAILURE,
            encode_failure(str(target.task), error),
        )
    attach_parent(result, header_result)
    return result


def attach_parent(result: Result, parent: Result | None) -> None:
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
