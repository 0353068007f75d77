"""The header protocol: what a sent task's headers carry, and what the worker that
settles it reads from them (``conveyor.worker.callbacks``).

* ``headers_from_options`` moves the canvas options of a send into the message's
  headers (see ``conveyor.canvas.keys`` for the keys), choosing the ids of its
  ``link`` callbacks on the way, so that the task's children are known up front;
* ``next_step`` is the signature a worker sends after a task whose headers carry
  the rest of a chain;
* ``plain_signatures`` and ``errbacks_of`` find the tasks and the error callbacks in
  a signature from the headers (to store a failure as their result, to call them);
* ``sent_children`` are the results of what the worker sends once the task
  succeeded: its ``link`` callbacks and the next step of its chain.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from conveyor.canvas.keys import CHAIN, CHORD, GROUP_ID, GROUP_INDEX, LINK, LINK_ERROR
from conveyor.canvas.signatures import (
    Result,
    Signature,
    as_list,
    maybe_signature,
    plain,
    resolve,
)

if TYPE_CHECKING:
    from conveyor.app import Conveyor

__all__ = [
    "errbacks_of",
    "headers_from_options",
    "next_step",
    "plain_signatures",
    "sent_children",
    "with_tail",
]


def headers_from_options(
    headers: Mapping[str, Any] | None, options: dict[str, Any], app: Conveyor | None = None
) -> dict[str, Any]:
    """The message headers of a send: ``headers`` plus the canvas options, which are
    taken out of ``options``: ``link`` and ``link_error`` (a signature or a list),
    and internally ``chain``, ``chord``, ``group_id``, ``group_index``. With ``app``,
    each ``link`` callback gets its task id now (if it has none)."""
    if not options:
        return dict(headers) if headers else {}
    merged = dict(headers or {})
    for key in (LINK, LINK_ERROR):
        value = options.pop(key, None)
        if value:
            entries = [maybe_signature(entry) for entry in as_list(value)]
            if key == LINK and app is not None:
                entries = [resolve(entry, app) for entry in entries]
                for entry in entries:
                    entry._freeze(None)
            merged[key] = [*as_list(merged.get(key)), *(entry.to_dict() for entry in entries)]
    for key in (CHAIN, CHORD, GROUP_ID, GROUP_INDEX):
        value = options.pop(key, None)
        if value is not None:
            merged[key] = plain(value)
    return merged


def with_tail(sig: Signature, rest: Sequence[Signature]) -> Signature:
    """``sig`` followed by the chain steps ``rest`` (may modify ``sig``): a task
    carries them in its ``chain`` option, a chord's body does, a chain grows, and a
    group becomes a chord's header."""
    return sig._with_tail(list(rest))


def next_step(steps: Sequence[Any], app: Conveyor) -> Signature:
    """The signature to send after a task whose message carried ``headers["chain"]``:
    the first step, carrying the others."""
    first, *rest = (resolve(step, app) for step in steps)
    return with_tail(first, rest)


def sent_children(headers: Mapping[str, Any], app: Conveyor) -> list[Result]:
    """The results of what a worker sends once the task with these headers succeeded
    (its children): each ``link`` callback's, then the next chain step's. Their ids
    were chosen when the task was sent (``headers_from_options``, ``chain``)."""
    links = [resolve(link, app) for link in as_list(headers.get(LINK))]
    # a link without an id (put in the headers by hand) gets one only when it is sent
    children = [link._freeze(None) for link in links if _frozen(link)]
    steps = headers.get(CHAIN)
    if steps:
        children.append(next_step(steps, app)._freeze(None))
    return children


def plain_signatures(sig: Signature, *, tails: bool = True) -> Iterator[Signature]:
    """Every task signature in ``sig`` (a chain's, group's, chord header's and body's),
    and with ``tails`` the chain steps a task carries."""
    if sig._composite:
        for member in sig._members():
            yield from plain_signatures(member, tails=tails)
        return
    yield sig
    if tails:
        for step in as_list(sig.options.get(CHAIN)):
            yield from plain_signatures(maybe_signature(step), tails=tails)


def errbacks_of(sig: Signature) -> list[Signature]:
    """The error callbacks linked to ``sig``'s tasks (not to chain steps after it),
    each once."""
    seen: set[bytes] = set()
    found: list[Signature] = []
    for task in plain_signatures(sig, tails=False):
        for errback in as_list(task.options.get(LINK_ERROR)):
            errback_sig = maybe_signature(errback)
            key = orjson.dumps(errback_sig.to_dict(), option=orjson.OPT_SORT_KEYS)
            if key not in seen:
                seen.add(key)
                found.append(errback_sig)
    return found


def _frozen(sig: Signature) -> bool:
    """Whether every task of ``sig`` has its id already."""
    return all(task.id is not None for task in plain_signatures(sig, tails=False))
