"""``Task.replace(sig)``: a running task hands its place to a signature, as Celery's.

The replacement is built from the running task's request (see
``conveyor.canvas.protocol`` for what its headers carry):

* it takes the task's id: the task whose result stands for it (a chain's last task, a
  chord's body; a group becomes a chord whose body returns the group's values, as
  Celery "uplifts" it) is sent with that id, so every handle on the task (and a
  chord that counts it) sees the replacement's result;
* the task's ``link`` callbacks (their ids chosen when it was sent, so the task's
  ``children`` stay right) and ``link_error`` callbacks are linked to it;
* the rest of the task's chain follows it, and its place in a chord (``chord``)
  or group (``group_id``, ``group_index``) is the replacement's;
* its root and parent are the task's.

The replaced task then ends with ``Ignore``: acknowledged, no result of its own, no
callbacks of its own. Run eagerly (``apply``), the replacement runs here at once and
its value is the task's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from conveyor.canvas import (
    CHAIN,
    CHORD,
    GROUP_ID,
    GROUP_INDEX,
    LINK,
    LINK_ERROR,
    chain,
    chord,
    with_tail,
)
from conveyor.canvas import group as group_sig
from conveyor.canvas import signature as make_signature
from conveyor.canvas.mapping import ACCUMULATE_TASK
from conveyor.canvas.signatures import Signature, as_list, resolve
from conveyor.exceptions import ConfigurationError, Ignore

if TYPE_CHECKING:
    from conveyor.task.base import Task

__all__ = ["replacement", "send_replacement"]


def replacement(task: Task[Any, Any], sig: Any) -> Signature:
    """The signature that replaces the running ``task`` (see the module docstring).

    Raises:
        ConfigurationError: ``sig`` is part of a chord, or an empty chain.
    """
    app = task.app
    request = task.request
    headers = request.headers
    new = make_signature(sig, app=app)  # a copy: the caller's signature is left alone
    if new.options.get(CHORD):
        raise ConfigurationError("a signature that replaces a task must not be part of a chord")
    if isinstance(new, chain) and not new.tasks:
        raise ConfigurationError("a task cannot be replaced with an empty chain")
    if isinstance(new, group_sig):
        new = chord(new, app.signature(ACCUMULATE_TASK), app=app)
    for callback in as_list(headers.get(LINK)):
        new.link(resolve(callback, app))
    for errback in as_list(headers.get(LINK_ERROR)):
        new.link_error(resolve(errback, app))
    target = new._counted()
    if target is None:
        raise ConfigurationError(f"{new!r} has no task whose result could stand for the task's")
    if request.id is not None:
        target.options["task_id"] = request.id
    for key in (CHORD, GROUP_ID, GROUP_INDEX):
        if headers.get(key) is not None:
            target.options[key] = headers[key]
    if headers.get(CHORD) is not None:
        target.options["ignore_result"] = False  # the chord reads every header result
    steps = headers.get(CHAIN)
    if steps:
        new = with_tail(new, [resolve(step, app) for step in steps])
    follow = {"root_id": request.root_id or request.id, "parent_id": request.parent_id}
    new.options.update({key: value for key, value in follow.items() if value is not None})
    return new


def send_replacement(task: Task[Any, Any], sig: Signature) -> Any:
    """Send the replacement and end the task with ``Ignore``; eagerly, run it here and
    return its value."""
    if task.request.is_eager:
        return sig.apply().get()
    sig.apply_async()
    raise Ignore(f"replaced by {sig!r}")
