"""The canvas: signatures, and the primitives that compose them.

Celery's API: ``add.s(2)``, ``add.si(2, 2)``, ``signature("shop.tasks.add", args=(2,))``,
``a | b | c``, ``group(...)``, ``chord(header, body)``, ``add.map(items)``,
``add.starmap(items)``, ``add.chunks(items, n)``, ``link``/``link_error``.

One module per seam:

* ``signatures``: ``Signature`` (a dict), ``signature()``, ``maybe_signature``;
* ``primitives``: ``chain``, ``group``, ``chord``;
* ``mapping``: ``xmap``, ``xstarmap``, ``chunks`` and the built-in tasks they send;
* ``eager``: running a canvas in this process (``apply``, ``task_always_eager``);
* ``keys`` and ``protocol``: what a message's headers carry, and what the worker
  that settles a task reads from them (``conveyor.worker.callbacks``).

How the primitives run on workers; nothing ever waits or polls for a result:

* ``link`` / ``link_error``: lists of signatures in ``headers``. The worker that
  settles the task sends them: the links with the return value as first argument,
  the error callbacks once it failed for good, by their parameters (Celery's
  ``(request, exc, traceback)``, the task id, or ``(task_id, exc_type, message)``:
  see docs/canvas.md).
  The links' ids are chosen when the task is sent, so its children are known.
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

``conveyor.task`` builds signatures (``Task.s``); this package never imports the app,
the task module or the worker (it uses the objects it is given).
"""

from __future__ import annotations

from conveyor.canvas.chords import chord
from conveyor.canvas.eager import eager_callbacks
from conveyor.canvas.keys import (
    CALLBACK_HEADERS,
    CHAIN,
    CHORD,
    GROUP_ID,
    GROUP_INDEX,
    LINK,
    LINK_ERROR,
    chord_counter_key,
    chord_error_key,
    errback_args,
    errback_args_from,
    header_task_id,
)
from conveyor.canvas.mapping import (
    BUILTIN_TASKS,
    MAP_TASK,
    STARMAP_TASK,
    chunks,
    xmap,
    xstarmap,
)
from conveyor.canvas.primitives import chain, group
from conveyor.canvas.protocol import (
    errbacks_of,
    headers_from_options,
    next_step,
    plain_signatures,
    sent_children,
    with_tail,
)
from conveyor.canvas.signatures import Result, Signature, maybe_signature, signature

__all__ = [
    "BUILTIN_TASKS",
    "CALLBACK_HEADERS",
    "CHAIN",
    "CHORD",
    "GROUP_ID",
    "GROUP_INDEX",
    "LINK",
    "LINK_ERROR",
    "MAP_TASK",
    "STARMAP_TASK",
    "Result",
    "Signature",
    "chain",
    "chord",
    "chord_counter_key",
    "chord_error_key",
    "chunks",
    "eager_callbacks",
    "errback_args",
    "errback_args_from",
    "errbacks_of",
    "group",
    "header_task_id",
    "headers_from_options",
    "maybe_signature",
    "next_step",
    "plain_signatures",
    "sent_children",
    "signature",
    "with_tail",
    "xmap",
    "xstarmap",
]
