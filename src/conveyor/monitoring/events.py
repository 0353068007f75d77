"""Reading task events from the broker's ``events`` stream (``conveyor events``, the
dashboard): a receiver that follows the stream, and each task's story told by them.

The stream keeps the newest ``event_stream_max`` events of every worker and producer
(see ``conveyor.events`` for their types and fields). A receiver starts from now, or
from the oldest event kept, and reads on from its cursor: two receivers, or one that
restarts from a cursor it kept, see the same events in the same order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from conveyor import events

if TYPE_CHECKING:
    from conveyor.brokers.base import Broker, StreamEntry

logger = logging.getLogger("conveyor.monitoring")

#: The state a task is in after each event (Celery's ``celery.events.state`` names).
STATES: dict[str, str] = {
    events.SENT: "PENDING",
    events.RECEIVED: "RECEIVED",
    events.STARTED: "STARTED",
    events.SUCCEEDED: "SUCCESS",
    events.FAILED: "FAILURE",
    events.RETRIED: "RETRY",
    events.REVOKED: "REVOKED",
    events.REJECTED: "REJECTED",
}


def decoded(entries: Iterable[StreamEntry]) -> list[dict[str, Any]]:
    """The events of stream entries; an entry that is not an event is skipped (logged)."""
    out = []
    for entry in entries:
        try:
            out.append(events.decode(entry.body))
        except ValueError as exc:  # orjson's decode error is a ValueError
            logger.warning("skipped stream entry %s: not an event (%s)", entry.id, exc)
    return out


class EventReceiver:
    """Follows the task events of ``broker``: ``read`` a batch, or iterate for ever.

    Args:
        broker: where the events are.
        from_start: begin with the oldest event kept; else with the next one added.
        after: begin after this cursor (one a receiver kept: ``cursor``).
    """

    def __init__(self, broker: Broker, *, from_start: bool = False, after: str | None = None):
        self.broker = broker
        if after is None:
            after = "0" if from_start else broker.stream_last(events.STREAM)
        #: The cursor of the last event read: reading on from it loses nothing.
        self.cursor = after

    def read(self, timeout: float = 0.0, count: int = 1000) -> list[dict[str, Any]]:
        """The next events (at most ``count``), oldest first; when there are none yet,
        waits up to ``timeout`` seconds for the first."""
        entries = self.broker.stream_read(events.STREAM, self.cursor, timeout, count)
        if entries:
            self.cursor = entries[-1].id
        return decoded(entries)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Every event from the cursor on, for ever (each read waits up to 1 s)."""
        while True:
            yield from self.read(timeout=1.0)

    def until(self, deadline: float) -> Iterator[dict[str, Any]]:
        """The events that arrive until ``deadline`` (``time.monotonic()``)."""
        while (left := deadline - time.monotonic()) > 0:
            yield from self.read(timeout=min(left, 1.0))


def recent(broker: Broker, count: int = 1000) -> list[dict[str, Any]]:
    """The newest ``count`` events, oldest first."""
    return decoded(broker.stream_tail(events.STREAM, count))


@dataclass(slots=True)
class TaskStory:
    """What the events say of one task: its latest state and what each event added."""

    uuid: str
    name: str | None = None
    state: str = "PENDING"
    #: The worker (or producer) of the latest event.
    hostname: str | None = None
    #: UNIX time of each event type seen last (``{"task-received": ...}``).
    times: dict[str, float] = field(default_factory=dict)
    #: Every field the events carried, the latest value of each (args, kwargs,
    #: payload, result, runtime, exception, traceback, reason...).
    fields: dict[str, Any] = field(default_factory=dict)
    #: The events, in the order read.
    events: list[dict[str, Any]] = field(default_factory=list)

    def add(self, event: dict[str, Any]) -> None:
        kind = str(event.get("type", ""))
        self.events.append(event)
        self.name = event.get("name") or self.name
        self.hostname = event.get("hostname") or self.hostname
        stamp = event.get("timestamp")
        if isinstance(stamp, int | float):
            self.times[kind] = float(stamp)
        # a late task-sent (a producer's flush) does not take a task back to PENDING
        if kind in STATES and not (kind == events.SENT and len(self.events) > 1):
            self.state = STATES[kind]
        for key, value in event.items():
            if key not in ("type", "uuid", "hostname", "timestamp"):
                self.fields[key] = value


def stories(items: Iterable[dict[str, Any]]) -> dict[str, TaskStory]:
    """Each task's story from ``items`` (events, oldest first), by task id, in the
    order each task was first seen."""
    found: dict[str, TaskStory] = {}
    for event in items:
        uuid = event.get("uuid")
        if not isinstance(uuid, str):
            continue
        story = found.get(uuid)
        if story is None:
            story = found[uuid] = TaskStory(uuid)
        story.add(event)
    return found
