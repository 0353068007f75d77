"""What runs after a task is settled: canvas callbacks (link, link_error, chains, chords).

The settler thread calls ``Callbacks.after_settled`` once a batch's acks and results
are stored. For each job whose message carries canvas headers (see
``conveyor.canvas``) it sends, all in one ``publish_many``:

* on SUCCESS: the ``link`` signatures and the next step of a ``chain``, each with
  the return value as first argument (their result handles are then stored in the
  task's result as its ``children``); for a chord's header task, its id counted in
  ``broker.tally("chord:<id>")`` (a set: a header task that ran twice, or a call
  retried after a lost reply, counts once), and once the tally reaches the header's
  size, the body with every header result, read from the result backend in header
  order (a claim makes sure one worker sends it);
* on FAILURE (for good; a retry is not settled here): the ``link_error``
  signatures, by their parameters (``conveyor.task.handlers``): with the task's id,
  or ``(task_id, exc_type, message)``; those written for Celery were called with
  ``(request, exc, traceback)`` where the task ran, and are called here only when it
  did not get to (its process was lost, its time ran out); every step of the chain
  still ahead gets the same failure stored as its result (so ``get()`` on a chain's last
  result raises instead of waiting); for a chord's header task, the first failure
  (the one that claims ``"chord-error:<id>"``) stores a ``ChordError`` as the body's
  result and sends the body's error callbacks, once (those written for Celery are
  called here, with a request of the body's, the ``ChordError`` and no traceback).

A callback that cannot be sent (its arguments do not fit its task) gets that error
stored as its result. Nothing here raises for one bad job: it is logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from conveyor import canvas, states
from conveyor.backends.base import ResultWrite
from conveyor.brokers.base import OutgoingMessage
from conveyor.exceptions import ChordError
from conveyor.hooks import Hook
from conveyor.result import (
    add_children,
    decode_payload,
    encode_failure,
    failure_of,
    payload_value,
    rebuild_exception,
)
from conveyor.task import Request, handlers
from conveyor.worker.job import Job, Outcome

if TYPE_CHECKING:
    from conveyor.app import Conveyor

logger = logging.getLogger("conveyor.worker")

#: Seconds between the attempts to publish a batch of callbacks the broker refused.
PUBLISH_RETRY_DELAYS = (0.5, 1.0, 2.0)

_CHORD_ERROR_TYPE = f"{ChordError.__module__}.{ChordError.__qualname__}"


class Callbacks(Hook):
    """Sends the signatures a settled job's message links to (see ``conveyor.canvas``):
    the worker's last hook."""

    def __init__(self, app: Conveyor, hostname: str):
        self.app = app
        self.hostname = hostname
        # (token, chord id) of the chords failed while settling the current batch: one
        # job can reach the same chord twice (its header, in a failed chain's steps).
        self._failed_chords: set[tuple[str, str]] = set()

    @property
    def ttl(self) -> float:
        """How long chord counters and the results written here live: ``result_expires``."""
        return float(self.app.conf.result_expires)

    def settled(self, batch: Sequence[tuple[Job, Outcome]]) -> None:
        self.after_settled(list(batch))

    def after_settled(self, settled: list[tuple[Job, Outcome]]) -> None:
        """Called by the consumer's settler thread once the jobs' acks and results are
        stored, with each job and its final outcome (state SUCCESS or FAILURE, payload
        the stored result). Must not raise for one bad job: log and go on."""
        jobs = [
            (job, outcome)
            for job, outcome in settled
            if outcome.state in (states.SUCCESS, states.FAILURE)
            and any(key in job.message.headers for key in canvas.CALLBACK_HEADERS)
        ]
        if not jobs:
            return
        writes: list[ResultWrite] = []
        held: list[OutgoingMessage] = []
        self._failed_chords.clear()
        try:
            with self.app.publishing() as held:
                for job, outcome in jobs:
                    try:
                        with self.app.publishing():  # one job's messages: all or none
                            self._after(job, outcome, writes)
                    except Exception:
                        logger.exception("the callbacks of %s could not be sent", job.label)
        except Exception as exc:
            self._publish_again(held, exc)
        if writes:
            try:
                self.app.backend.store_many(writes)
            except Exception:
                logger.exception("storing %d canvas results failed", len(writes))

    def _publish_again(self, held: list[OutgoingMessage], exc: Exception) -> None:
        for delay in PUBLISH_RETRY_DELAYS:
            logger.warning(
                "publishing %d callback messages failed (%s); again in %.1f s",
                len(held),
                exc,
                delay,
            )
            time.sleep(delay)
            try:
                self.app.broker.publish_many(held)
            except Exception as again:
                exc = again
            else:
                return
        logger.error(
            "%d callback messages were lost (%s): %s",
            len(held),
            exc,
            ", ".join(message.id for message in held),
        )

    # -- one job ----------------------------------------------------------------------

    def _after(self, job: Job, outcome: Outcome, writes: list[ResultWrite]) -> None:
        msg = job.message
        headers = msg.headers
        follow = {"parent_id": msg.id, "root_id": msg.root_id or msg.id}
        info = headers.get(canvas.CHORD)
        if outcome.state == states.SUCCESS:
            value = payload_value(outcome.payload)
            sent = [
                self._send(link, (value,), follow, writes, job)
                for link in headers.get(canvas.LINK) or ()
            ]
            steps = headers.get(canvas.CHAIN)
            if steps:
                step = canvas.next_step(steps, self.app)
                sent.append(self._send(step, (value,), follow, writes, job))
            children = [result for result in sent if result is not None]
            if children and outcome.payload is not None:
                payload = add_children(outcome.payload, children)
                writes.append(ResultWrite(msg.id, states.SUCCESS, payload, self.ttl))
            if isinstance(info, Mapping):
                self._chord_part_succeeded(info, follow, writes, job)
            return
        exc_type, message = failure_of(outcome.payload)
        failure = (msg.id, exc_type, message)
        direct, errbacks = handlers.sort_errbacks(headers.get(canvas.LINK_ERROR), self.app)
        for errback, form in errbacks:
            self._send(errback, handlers.errback_args(form, failure, msg.id), follow, writes, job)
        if direct and not outcome.errbacks_called and outcome.payload is not None:
            meta = decode_payload(outcome.payload)
            exc = rebuild_exception(meta)
            handlers.call_errbacks(direct, job.request(), exc, meta.get("traceback"))
        for step in headers.get(canvas.CHAIN) or ():
            self._fail_ahead(step, outcome.payload, failure, follow, writes, job)
        if isinstance(info, Mapping):
            self._chord_part_failed(info, failure, follow, writes, job)

    def _send(
        self,
        entry: Any,
        args: tuple[Any, ...],
        options: dict[str, Any],
        writes: list[ResultWrite],
        job: Job,
    ) -> canvas.Result | None:
        """Send one signature (from headers) and return its result handle; if it cannot
        be sent (its arguments do not fit, a value is not JSON, its task is unknown
        here and has no route), store that error as the result of each of its tasks."""
        sig = canvas.signature(entry, app=self.app)  # a copy, bound to this app
        result = None
        try:
            result = sig.freeze()  # the ids the sender chose, or new ones
            sig.apply_async(args, **options)
        except (TypeError, ValueError, LookupError) as exc:
            logger.error("%s: could not send %r: %s", job.label, sig, exc)
            self._store_failure(sig, exc, writes)
        return result

    def _store_failure(
        self, sig: canvas.Signature, exc: Exception, writes: list[ResultWrite]
    ) -> None:
        for task in canvas.plain_signatures(sig):
            if task.id is not None:
                payload = encode_failure(str(task.task), exc, worker=self.hostname)
                writes.append(ResultWrite(task.id, states.FAILURE, payload, self.ttl))

    def _fail_ahead(
        self,
        step: Any,
        payload: bytes | None,
        failure: tuple[str, str, str],
        follow: dict[str, Any],
        writes: list[ResultWrite],
        job: Job,
    ) -> None:
        """A chain step that will never run: its tasks get the failure that stopped the
        chain; a chord part among them fails its chord."""
        for task in canvas.plain_signatures(canvas.signature(step, app=self.app)):
            if task.id is not None and payload is not None:
                writes.append(ResultWrite(task.id, states.FAILURE, payload, self.ttl))
            info = task.options.get(canvas.CHORD)
            if isinstance(info, Mapping):
                self._chord_part_failed(info, failure, follow, writes, job)

    # -- chords -----------------------------------------------------------------------

    def _chord_part_succeeded(
        self, info: Mapping[str, Any], follow: dict[str, Any], writes: list[ResultWrite], job: Job
    ) -> None:
        chord_id, size = str(info["id"]), int(info["size"])
        broker, token = self.app.broker, job.delivery.token
        # A header task that ran twice (at least once delivery) counts once: a tally
        # is a set of task ids. Several settlements may see it complete (a duplicate
        # run, a retried call): the claim makes sure the body is sent once.
        count = broker.tally(canvas.chord_counter_key(chord_id), job.message.id, self.ttl)
        if count < size:
            return
        if broker.claim(f"{canvas.chord_counter_key(chord_id)}:body", token, self.ttl) not in (
            None,
            token,
        ):
            return
        ids = info.get("ids") or [canvas.header_task_id(chord_id, i) for i in range(size)]
        values = []
        for task_id in ids:
            record = self.app.backend.get(str(task_id))
            if record is None or record.state != states.SUCCESS:
                state = "no result" if record is None else f"state {record.state}"
                reason = f"header task {task_id} has {state} (ignore_result, or expired?)"
                logger.error("%s: chord %s: %s", job.label, chord_id, reason)
                failure = (str(task_id), _CHORD_ERROR_TYPE, reason)
                self._chord_part_failed(info, failure, follow, writes, job)
                return
            values.append(payload_value(record.payload))
        logger.info("%s: chord %s complete: sending its body", job.label, chord_id)
        self._send(info["body"], (values,), follow, writes, job)

    def _chord_part_failed(
        self,
        info: Mapping[str, Any],
        failure: tuple[str, str, str],
        follow: dict[str, Any],
        writes: list[ResultWrite],
        job: Job,
    ) -> None:
        """The first failure of a chord's header: the body's tasks get a ChordError as
        their result, and its error callbacks are sent with ``failure``; later
        failures of the same chord do nothing."""
        chord_id, token = str(info["id"]), job.delivery.token
        if (token, chord_id) in self._failed_chords:
            return
        self._failed_chords.add((token, chord_id))
        # A claim, not a counter: a call retried after a lost reply still finds the
        # failure its own, so the body's error callbacks are sent exactly once.
        if self.app.broker.claim(canvas.chord_error_key(chord_id), token, self.ttl) is not None:
            return
        culprit, exc_type, message = failure
        body = canvas.signature(info["body"], app=self.app)
        error = ChordError(f"chord {chord_id}: header task {culprit} raised {exc_type}: {message}")
        logger.error("%s: %s; its body will not run", job.label, error)
        self._store_failure(body, error, writes)
        for task in canvas.plain_signatures(body):
            outer = task.options.get(canvas.CHORD)
            if isinstance(outer, Mapping):  # the body is part of another chord
                self._chord_part_failed(outer, failure, follow, writes, job)
        target = body._counted() or body
        direct, sent = handlers.sort_errbacks(canvas.errbacks_of(body), self.app)
        for errback, form in sent:
            args = handlers.errback_args(form, failure, str(target.id))
            self._send(errback, args, follow, writes, job)
        if direct:
            # as Celery: a request made up from the body, the ChordError, no traceback
            request = Request(
                id=target.id,
                task=str(target.task),
                args=list(target.args),
                kwargs=dict(target.kwargs),
                root_id=follow.get("root_id"),
                parent_id=follow.get("parent_id"),
            )
            handlers.call_errbacks(direct, request, error, None)
