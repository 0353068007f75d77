"""``conveyor events``: print task events as they arrive (workers need ``-E``)."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from typing import Any

import click
import orjson

from conveyor.cli import _AppRef, cli
from conveyor.monitoring.events import EventReceiver


def line(event: dict[str, Any]) -> str:
    """One event as one line: time, type, ``name[uuid]``, worker, and what it ended with."""
    stamp = event.get("timestamp")
    when = (
        dt.datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        if isinstance(stamp, int | float)
        else "?"
    )
    parts = [
        when,
        f"{event.get('type', '?'):<14}",
        f"{event.get('name') or '?'}[{event.get('uuid', '?')}]",
        str(event.get("hostname", "?")),
    ]
    runtime = event.get("runtime")
    if isinstance(runtime, int | float):
        parts.append(f"{runtime:.4f}s")
    for key in ("exception", "reason", "result"):
        if event.get(key) is not None:
            parts.append(str(event[key]))
            break
    if event.get("type") == "task-revoked":
        parts.extend(flag for flag in ("terminated", "expired") if event.get(flag))
    return "  ".join(p for p in parts if p)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--from-start", is_flag=True, help="Begin with the oldest event kept, not now.")
@click.option("--limit", type=click.IntRange(min=1), help="Stop after this many events.")
@click.option("--duration", type=click.FloatRange(min=0), help="Stop after this many seconds.")
@click.pass_obj
def events(
    ref: _AppRef, as_json: bool, from_start: bool, limit: int | None, duration: float | None
) -> None:
    """Print task events as they arrive, one a line, until Ctrl-C (or --limit/--duration).

    Workers write them with `worker -E` (or worker_send_task_events), producers write
    task-sent with task_send_sent_event; the broker keeps the newest event_stream_max.
    """
    app = ref.load()
    receiver = EventReceiver(app.broker, from_start=from_start)
    stream: Iterator[dict[str, Any]] = (
        iter(receiver) if duration is None else receiver.until(time.monotonic() + duration)
    )
    shown = 0
    try:
        for event in stream:
            click.echo(orjson.dumps(event).decode() if as_json else line(event))
            shown += 1
            if limit is not None and shown >= limit:
                return
    except KeyboardInterrupt:
        return
