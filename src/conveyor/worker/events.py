"""Task events of one worker (``worker_send_task_events``, ``worker -E``): built at each
moment of a job, buffered, and written to the broker's ``events`` stream in batches.

Building an event costs a few microseconds on the thread of its moment (the fetch
loop, the pool's, the settler); nothing there waits for the broker. The buffer holds
at most ``CAPACITY`` events: while the broker cannot take them the oldest are dropped,
counted, and the count logged. See ``conveyor.events`` for the types and fields.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from typing import TYPE_CHECKING, Any, Final

import orjson

from conveyor import events

if TYPE_CHECKING:
    from conveyor.brokers.base import Broker, Delivery
    from conveyor.message import Message
    from conveyor.worker.job import Job, Outcome
    from conveyor.worker.monitors import End

logger = logging.getLogger("conveyor.worker")

#: Seconds between two writes of the buffered events.
FLUSH_EVERY: Final = 0.1
#: Events buffered that trigger a write before the interval ends.
BATCH: Final = 500
#: Events one write carries at most.
WRITE_MAX: Final = 1000
#: Events buffered at most (the oldest are dropped past it).
CAPACITY: Final = 10_000


class EventBuffer:
    """Encoded events waiting for the broker; thread-safe, bounded, never blocking."""

    def __init__(self, maxlen: int, capacity: int = CAPACITY) -> None:
        self.maxlen = maxlen  # of the stream
        self.capacity = capacity
        self._bodies: deque[bytes] = deque()
        self._lock = threading.Lock()
        self.dropped = 0  # since the last warning
        self._failing = False
        #: Set when ``BATCH`` events wait: the flusher writes them without waiting.
        self.full = threading.Event()

    def __len__(self) -> int:
        return len(self._bodies)

    def put(self, body: dict[str, Any]) -> None:
        """Buffer one event (the oldest is dropped when the buffer is full)."""
        raw = events.encode(body)
        with self._lock:
            if len(self._bodies) >= self.capacity:
                self._bodies.popleft()
                self.dropped += 1
            self._bodies.append(raw)
            if len(self._bodies) >= BATCH:
                self.full.set()

    def flush(self, broker: Broker) -> bool:
        """Write what is buffered, in order, ``WRITE_MAX`` a call; what the broker
        refused goes back to the front. Returns whether the buffer was emptied."""
        while True:
            with self._lock:
                if not self._bodies:
                    self.full.clear()
                    return True
                n = min(len(self._bodies), WRITE_MAX)
                batch = [self._bodies.popleft() for _ in range(n)]
            try:
                broker.stream_add(events.STREAM, batch, self.maxlen)
            except Exception as exc:
                self._restore(batch)
                if not self._failing:
                    logger.warning("could not write task events (buffered): %s", exc)
                self._failing = True
                return False
            if self._failing or self.dropped:
                self._recovered()

    def _restore(self, batch: list[bytes]) -> None:
        with self._lock:
            self._bodies.extendleft(reversed(batch))
            while len(self._bodies) > self.capacity:
                self._bodies.popleft()
                self.dropped += 1

    def _recovered(self) -> None:
        with self._lock:
            dropped, self.dropped = self.dropped, 0
        self._failing = False
        if dropped:
            logger.warning("%d task events were dropped while the broker was unreachable", dropped)
        else:
            logger.info("task events written again")


# -- the event of each moment ------------------------------------------------------------


def received(job: Job, hostname: str) -> dict[str, Any]:
    return events.message_event(events.RECEIVED, job.message, hostname)


def started(job: Job, hostname: str) -> dict[str, Any]:
    # the worker's pid: a prefork child's is not known where the job starts
    msg = job.message
    return events.event(events.STARTED, msg.id, hostname, name=msg.task, pid=os.getpid())


def ended(job: Job, outcome: Outcome, end: End, hostname: str) -> dict[str, Any] | None:
    """The event of a job's end in the pool (see ``worker/monitors.py``), if told."""
    kind = end.event
    if kind is None:
        return None
    msg = job.message
    fields: dict[str, Any] = {"name": msg.task}
    if kind == events.SUCCEEDED:
        fields.update(result=events.truncate(outcome.summary), runtime=outcome.runtime)
    elif kind == events.REJECTED:
        fields.update(reason=end.why, requeue=end.requeue)
    else:  # failed, retried
        exception, traceback = _failure(outcome)
        fields.update(exception=end.why or exception, traceback=traceback, runtime=outcome.runtime)
    return events.event(kind, msg.id, hostname, **fields)


def _failure(outcome: Outcome) -> tuple[str, str]:
    """``("Type: message", traceback)`` of a failure or retry outcome."""
    meta: dict[str, Any] = {}
    if outcome.payload is not None:
        try:
            meta = orjson.loads(outcome.payload)
        except orjson.JSONDecodeError:
            meta = {}
    if not isinstance(meta, dict) or not meta.get("exc_type"):
        return events.truncate(outcome.summary), ""
    kind = str(meta["exc_type"]).removeprefix("builtins.").rpartition(".")[2]
    text = f"{kind}: {meta.get('exc_message') or ''}"
    return events.truncate(text), events.truncate_start(str(meta.get("traceback") or ""))


def revoked(job: Job, hostname: str, *, expired: bool, terminated: bool) -> dict[str, Any]:
    msg = job.message
    return events.event(
        events.REVOKED, msg.id, hostname, name=msg.task, terminated=terminated, expired=expired
    )


def rejected(
    delivery: Delivery, error: BaseException, hostname: str, message: Message | None = None
) -> dict[str, Any]:
    """A message dead-lettered as it arrived: undecodable, or of a task not registered."""
    reason = events.truncate(f"{type(error).__name__}: {error}")
    fields: dict[str, Any] = {"reason": reason, "requeue": False}
    if message is not None:
        fields["name"] = message.task
    uuid = message.id if message is not None else delivery.id
    return events.event(events.REJECTED, uuid, hostname, **fields)
