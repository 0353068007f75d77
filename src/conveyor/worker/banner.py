"""The worker's start-up banner: what it consumes, from where, with what."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from conveyor.brokers.base import safe_url

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.worker.worker import WorkerOptions

_WARNINGS = {
    "sqlite": "embedded SQLite: for one machine; use Redis to run workers on several",
    "memory": "in-process memory: this process only, nothing survives it",
}


def banner(
    app: Conveyor, options: WorkerOptions, hostname: str, version: str, extra: Sequence[str] = ()
) -> str:
    """The lines printed when a worker starts; passwords in URLs are masked, signing keys
    only counted. ``extra`` lines (such as ``--beat``'s) come before the tasks."""
    broker_url = app.broker_url
    scheme = broker_url.split(":", 1)[0]
    kind = _WARNINGS.get(scheme)
    held = options.concurrency * options.prefetch_multiplier
    if options.autoscale:
        size = f"autoscale {options.autoscale[1]} to {options.autoscale[0]}"
    else:
        size = f"concurrency {options.concurrency}"
    lines = [
        f"conveyor {version} worker {hostname}",
        f"  app:      {app.main or '__main__'}",
        f"  broker:   {safe_url(broker_url)}" + (f"  ({kind})" if kind else ""),
        f"  results:  {safe_url(app.backend_url)}",
        f"  pool:     {options.pool}, {size}, "
        f"prefetch multiplier {options.prefetch_multiplier} "
        f"(holds at most {held} unacknowledged message{'s' if held != 1 else ''})",
        f"  queues:   {', '.join(options.queues)}",
        f"  acks:     {'late (after the task finishes)' if app.conf.task_acks_late else 'early'}",
        f"  signing:  {_signing(len(app.conf.message_signing_keys))}",
    ]
    if options.heartbeat_file:
        lines.append(f"  liveness: {options.heartbeat_file} (read by conveyor worker-health)")
    lines += extra
    lines.append("  tasks:")
    lines += [f"    . {name}" for name in sorted(app.tasks)] or ["    (none registered)"]
    return "\n".join(lines)


def _signing(keys: int) -> str:
    # How many keys, never the keys themselves.
    if not keys:
        return "off (message_signing_keys is unset)"
    return f"HMAC-SHA256, {keys} key{'s' if keys != 1 else ''} (runs signed messages only)"
