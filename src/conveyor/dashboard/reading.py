"""What each page shows, read from the broker and the result backend on every request.

Nothing is remembered between requests: a dashboard's memory does not grow with
the number of tasks, and any number of dashboards agree. Task listings come from the
newest entries of the events stream (workers started with ``-E``); a task that has
left it is still found by id in the result backend.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import orjson

from conveyor import events
from conveyor import message as wire
from conveyor.beat import Beat
from conveyor.brokers.base import DeadLetter
from conveyor.exceptions import ConveyorError, DecodeError
from conveyor.result.payload import decode_payload
from conveyor.signing import verify

if TYPE_CHECKING:
    from conveyor.app import Conveyor

#: How many of the newest events a task listing looks at.
EVENTS_TAIL = 3000
#: Counters of tasks by name and state: ``tasks|<task>|<state>``.
TASK_COUNTERS = "tasks|"
#: Celery's event types and the state each leaves a task in.
EVENT_STATES = {
    "task-sent": "PENDING",
    "task-received": "RECEIVED",
    "task-started": "STARTED",
    "task-succeeded": "SUCCESS",
    "task-failed": "FAILURE",
    "task-retried": "RETRY",
    "task-revoked": "REVOKED",
    "task-rejected": "REJECTED",
}
_FINAL = frozenset({"SUCCESS", "FAILURE", "REVOKED", "REJECTED"})


def _loads(body: bytes) -> dict[str, Any] | None:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


# -- overview and queues -------------------------------------------------------------


def task_counts(app: Conveyor) -> dict[str, dict[str, float]]:
    """Task counts since the counters were last reset: ``{task: {state: n}}``."""
    counts: dict[str, dict[str, float]] = {}
    for name, value in app.broker.counters(TASK_COUNTERS).items():
        # a task name may hold "|": the state is the last part
        task, _, state = name[len(TASK_COUNTERS) :].rpartition("|")
        counts.setdefault(task, {})[state] = value
    return counts


def queues(app: Conveyor, now: float) -> list[dict[str, Any]]:
    """Every queue that holds anything, or that the app declares: its depth by state
    and its latency (the age of its oldest ready message)."""
    declared = set(app.conf.declared_queues().names) | {app.conf.task_default_queue}
    stats = {s.queue: s for s in app.broker.stats()}
    missing = sorted(declared - set(stats))
    if missing:
        stats.update({s.queue: s for s in app.broker.stats(missing)})
    return [
        {
            "queue": s.queue,
            "ready": s.ready,
            "delayed": s.delayed,
            "in_flight": s.in_flight,
            "dead": s.dead,
            "latency": None if s.oldest_ready_at is None else max(0.0, now - s.oldest_ready_at),
        }
        for s in sorted(stats.values(), key=lambda s: s.queue)
    ]


def overview(app: Conveyor) -> dict[str, Any]:
    """Totals by state (and by task), live workers and queue totals."""
    now = time.time()
    counts = task_counts(app)
    totals: dict[str, float] = {}
    for by_state in counts.values():
        for state, value in by_state.items():
            totals[state] = totals.get(state, 0) + value
    qs = queues(app, now)
    return {
        "now": now,
        "totals": totals,
        "tasks": counts,
        "workers": len(app.broker.workers()),
        "queues": {k: sum(q[k] for q in qs) for k in ("ready", "delayed", "in_flight", "dead")},
    }


# -- workers ---------------------------------------------------------------------------


def workers(app: Conveyor) -> list[dict[str, Any]]:
    """The live workers' own reports (name, pid, host, pool, concurrency, queues, active,
    processed, version, started, heartbeat, freq), by name."""
    found = []
    for name, body in sorted(app.broker.workers().items()):
        info = _loads(body) or {}
        info["name"] = name
        found.append(info)
    return found


# -- tasks -------------------------------------------------------------------------------


def _events(app: Conveyor, count: int = EVENTS_TAIL) -> Iterable[dict[str, Any]]:
    for entry in app.broker.stream_tail(events.STREAM, count):
        event = _loads(entry.body)
        if event is not None and str(event.get("type", "")).startswith("task-"):
            yield event


def _fold(row: dict[str, Any], event: dict[str, Any]) -> None:
    """Apply one event to a task's row (events come oldest first)."""
    kind = event["type"]
    state = EVENT_STATES.get(kind)
    # a late task-sent (the producer's clock, another connection) never undoes progress
    # ... and an end is not undone by a late start
    current = row.get("state")
    if (
        state is not None
        and not (state == "PENDING" and current)
        and not (current in _FINAL and state in ("RECEIVED", "STARTED", "PENDING"))
    ):
        row["state"] = state
    for key in ("name", "args", "kwargs", "exception", "runtime", "traceback", "result"):
        if event.get(key) is not None:
            row[key] = event[key]
    if kind in ("task-received", "task-started") and event.get("hostname"):
        row["worker"] = event["hostname"]
    if kind == "task-retried":
        row["retries"] = row.get("retries", 0) + 1
    stamp = event.get("timestamp")
    row.setdefault("first", stamp)
    row["last"] = stamp
    if kind in ("task-sent", "task-received") and isinstance(event.get("payload"), dict):
        row["payload"] = True


def tasks(
    app: Conveyor,
    *,
    state: str | None = None,
    name: str | None = None,
    task_id: str | None = None,
    limit: int = 200,
) -> dict[str, Any]:
    """Tasks seen in the newest events, newest first, filtered by state, name (a
    substring) and id; ``events`` says how many events were looked at (0: no worker
    sends events: start them with ``-E``)."""
    rows: dict[str, dict[str, Any]] = {}
    seen = 0
    for event in _events(app):
        seen += 1
        uuid = event.get("uuid")
        if isinstance(uuid, str):
            rows.setdefault(uuid, {"id": uuid})
            _fold(rows[uuid], event)
    found = [
        {k: v for k, v in row.items() if k not in ("traceback", "payload")}
        for row in reversed(rows.values())
        if (not state or row.get("state") == state)
        and (not name or name.lower() in str(row.get("name", "")).lower())
        and (not task_id or task_id in row["id"])
    ]
    return {"events": seen, "tasks": found[:limit], "matched": len(found)}


def _payload_of(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    for event in events:
        payload = event.get("payload")
        if isinstance(payload, dict):
            return payload
    return None


def _message_of(app: Conveyor, dead: DeadLetter) -> wire.Message | None:
    try:
        return wire.decode(verify(dead.body, app.conf.message_signing_keys))
    except (DecodeError, ConveyorError, ValueError):
        return None


def task(app: Conveyor, task_id: str) -> dict[str, Any] | None:
    """One task: its stored result, its events and, when it is a dead letter, its
    delivery history; None if nothing anywhere knows the id."""
    history = [e for e in _events(app) if e.get("uuid") == task_id]
    row: dict[str, Any] = {"id": task_id}
    for event in history:
        _fold(row, event)
    row.pop("payload", None)
    stored = app.backend.get(task_id)
    if stored is not None:
        meta = decode_payload(stored.payload)
        row["state"] = stored.state
        row["result"] = meta.get("result")
        for key in ("traceback", "worker", "retries", "date_done"):
            if meta.get(key) not in (None, ""):
                row[key] = meta[key]
        if meta.get("exc_type"):
            row["exception"] = f"{meta['exc_type']}: {meta.get('exc_message', '')}"
        row.setdefault("name", meta.get("task") or None)
    dead = app.broker.get_dead(task_id)
    payload = _payload_of(history)
    if dead is not None:
        row["dead_letter"] = dead_letter_detail(app, dead)
        message = _message_of(app, dead)
        if message is not None:
            row.setdefault("name", message.task)
            payload = payload or {"args": message.args, "kwargs": message.kwargs}
    if payload is not None:
        row["args"], row["kwargs"] = payload.get("args", []), payload.get("kwargs", {})
    row["can_retry"] = payload is not None and bool(row.get("name"))
    row["events"] = [
        {
            k: e.get(k)
            for k in ("type", "timestamp", "hostname", "runtime", "exception")
            if e.get(k) is not None
        }
        for e in history
    ]
    if stored is None and not history and dead is None:
        return None
    row.setdefault("state", "PENDING")
    return row


def resend(app: Conveyor, task_id: str) -> str:
    """Send the task ``task_id`` again (a new id) with the name and arguments its events
    or dead letter hold; returns the new id.

    Raises:
        LookupError: neither knows its arguments.
    """
    history = [e for e in _events(app) if e.get("uuid") == task_id]
    payload = _payload_of(history)
    name = next((e["name"] for e in history if isinstance(e.get("name"), str)), None)
    if payload is None or name is None:
        dead = app.broker.get_dead(task_id)
        message = None if dead is None else _message_of(app, dead)
        if message is None:
            raise LookupError(
                f"the arguments of {task_id} are not known: neither its events"
                " (workers started with -E) nor the dead letters hold them"
            )
        name, payload = message.task, {"args": message.args, "kwargs": message.kwargs}
    result = app.send_task(name, list(payload.get("args") or ()), dict(payload.get("kwargs") or {}))
    return result.id


# -- dead letters -------------------------------------------------------------------------


def dead_letter_row(app: Conveyor, dead: DeadLetter) -> dict[str, Any]:
    """A dead letter as a list shows it."""
    message = _message_of(app, dead)
    return {
        "id": dead.id,
        "queue": dead.queue,
        "task": None if message is None else message.task,
        "reason": dead.reason,
        "deliveries": dead.deliveries,
        "died_at": dead.died_at,
    }


def dead_letter_detail(app: Conveyor, dead: DeadLetter) -> dict[str, Any]:
    """A dead letter with its delivery history and body (text if it is UTF-8)."""
    row = dead_letter_row(app, dead)
    row["priority"] = dead.priority
    row["history"] = [{"consumer": h.consumer, "at": h.at} for h in dead.history]
    row["body"] = dead.body.decode("utf-8", errors="replace")
    return row


def dead_letters(app: Conveyor, queue: str | None, limit: int) -> list[dict[str, Any]]:
    """The oldest ``limit`` dead letters (of one queue, or all)."""
    return [dead_letter_row(app, d) for d in app.broker.dead_letters(queue, limit)]


def requeue_all(app: Conveyor, queue: str | None) -> int:
    """Requeue every dead letter that was dead when called (of one queue, or all), in
    batches; letters that die again meanwhile are left for the next call."""
    stats = app.broker.stats(None if queue is None else [queue])
    budget = sum(s.dead for s in stats)
    done = 0
    while done < budget:
        batch = app.broker.dead_letters(queue, min(500, budget - done))
        if not batch:
            break
        done += sum(app.broker.requeue_dead(d.id) for d in batch)
    return done


# -- schedules --------------------------------------------------------------------------


def schedules(app: Conveyor) -> dict[str, Any]:
    """The ``beat_schedule`` entries with their last fire (the broker's mark) and next."""
    try:
        beat = Beat(app, hostname="dashboard")
    except ConveyorError as exc:
        return {"error": str(exc), "entries": [], "timezone": app.conf.timezone}
    now = time.time()
    entries = []
    for name, entry in sorted(beat.entries.items()):
        entries.append(
            {
                "name": name,
                "task": entry.task,
                "schedule": entry.schedule.describe(),
                "args": list(entry.args),
                "kwargs": entry.kwargs,
                "last": beat.last_run(entry),
                "next": beat.next_run(entry, now),
            }
        )
    return {"entries": entries, "timezone": beat.tz.key, "now": now}
