"""The canvas's words on the wire: message header keys and coordination keys.

A message's ``headers`` may carry these keys (each also an ``apply_async`` option
that ``conveyor.canvas.protocol.headers_from_options`` moves into the headers):

============  ==========================================  ===========================
key           value                                        set for
============  ==========================================  ===========================
link          list of signature dicts                      ``link=``
link_error    list of signature dicts                      ``link_error=``
chain         the chain steps after this task, in order    a chain's tasks
chord         ``{"id", "size", "body"[, "ids"]}``          a chord's header tasks
group_id      the group's id                               a group's tasks
group_index   the task's place in its group                a group's tasks
============  ==========================================  ===========================

A chord counts its header tasks in the broker under ``chord_counter_key`` (a tally
of task ids) and claims its first failure under ``chord_error_key``.
"""

from __future__ import annotations

from conveyor.result import failure_of

__all__ = [
    "CALLBACK_HEADERS",
    "CHAIN",
    "CHORD",
    "GROUP_ID",
    "GROUP_INDEX",
    "HEADER_OPTIONS",
    "LINK",
    "LINK_ERROR",
    "chord_counter_key",
    "chord_error_key",
    "errback_args",
    "errback_args_from",
    "header_task_id",
]

#: Header keys (and ``apply_async`` options) of the canvas: callbacks on success,
#: callbacks on failure, the rest of a chain, a chord's part, a group's id and index.
LINK = "link"
LINK_ERROR = "link_error"
CHAIN = "chain"
CHORD = "chord"
GROUP_ID = "group_id"
GROUP_INDEX = "group_index"
HEADER_OPTIONS = (LINK, LINK_ERROR, CHAIN, CHORD, GROUP_ID, GROUP_INDEX)
#: The header keys that give the worker something to do once the task is settled.
CALLBACK_HEADERS = (LINK, LINK_ERROR, CHAIN, CHORD)


def chord_counter_key(chord_id: str) -> str:
    """The broker tally of a chord's header tasks that succeeded."""
    return f"chord:{chord_id}"


def chord_error_key(chord_id: str) -> str:
    """The broker claim of a chord's first header failure."""
    return f"chord-error:{chord_id}"


def header_task_id(chord_id: str, index: int) -> str:
    """The task id of a chord's header task number ``index`` (unless one was given)."""
    return f"{chord_id}-{index}"


def errback_args_from(task_id: str, exc_type: str, message: str) -> tuple[str, str, str]:
    """What an error callback is called with, from its parts."""
    return (task_id, exc_type, message)


def errback_args(task_id: str, payload: bytes | None) -> tuple[str, str, str]:
    """What an error callback is called with: ``(task_id, exc_type, message)``, where
    ``exc_type`` is ``module.QualName`` (``ValueError`` for built-ins)."""
    return (task_id, *failure_of(payload))
