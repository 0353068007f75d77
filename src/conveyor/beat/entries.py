"""``beat_schedule`` entries, read and checked: Celery's format plus a misfire policy."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from conveyor.brokers.base import check_priority
from conveyor.exceptions import ConfigurationError
from conveyor.schedules import Schedule, as_schedule

if TYPE_CHECKING:
    from conveyor.app import Conveyor

#: What to do with slots that came due while no beat could send them (see docs/beat.md).
MISFIRE_POLICIES = ("once", "skip", "all")
#: The keys an entry may have. ``relative`` is Celery's; schedules are always anchored.
ENTRY_KEYS = frozenset({"task", "schedule", "args", "kwargs", "options", "misfire", "relative"})
#: The ``options`` an entry may send its task with (as ``apply_async`` takes them).
SEND_OPTIONS = frozenset(
    {
        "queue",
        "priority",
        "expires",
        "countdown",
        "ignore_result",
        "headers",
        "link",
        "link_error",
        "unique_key",
        "unique_for",
        "unique_until",
    }
)


@dataclass(frozen=True, slots=True)
class Entry:
    """One periodic task: send ``task(*args, **kwargs)`` with ``options`` at every slot
    of ``schedule``; ``misfire`` says what to do with slots nobody could send."""

    name: str
    task: str
    schedule: Schedule
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    misfire: str = "once"


def parse_entry(name: str, raw: Any) -> Entry:
    """The entry ``name`` of ``beat_schedule`` (``{"task": ..., "schedule": ...}``).

    Raises:
        ConfigurationError: naming the entry: a missing or unknown key, a bad schedule,
            arguments, options or misfire policy. An unknown task name is accepted (the
            task may be registered in another service only).
    """

    def bad(what: str) -> ConfigurationError:
        return ConfigurationError(f"beat_schedule entry {name!r}: {what}")

    if not isinstance(raw, Mapping):
        raise bad(f"must be a dict with 'task' and 'schedule', not {type(raw).__name__}")
    unknown = set(raw) - ENTRY_KEYS
    if unknown:
        raise bad(f"unknown key(s) {sorted(unknown)}; valid: {sorted(ENTRY_KEYS)}")
    for key in ("task", "schedule"):
        if key not in raw:
            raise bad(f"needs {key!r}")
    task = raw["task"]
    if not isinstance(task, str) or not task:
        raise bad(f"'task' must be a task name, not {task!r}")
    try:
        schedule = as_schedule(raw["schedule"])
    except (ValueError, TypeError) as exc:
        raise bad(str(exc)) from None
    args = raw.get("args") or ()
    if not isinstance(args, list | tuple):
        raise bad(f"'args' must be a list or tuple, not {type(args).__name__}")
    kwargs = raw.get("kwargs") or {}
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise bad("'kwargs' must be a dict with str keys")
    options = dict(raw.get("options") or {})
    unknown = set(options) - SEND_OPTIONS
    if unknown:
        raise bad(f"unknown option(s) {sorted(unknown)}; valid: {sorted(SEND_OPTIONS)}")
    if options.get("priority") is not None:
        try:
            check_priority(options["priority"])
        except (ValueError, TypeError) as exc:
            raise bad(str(exc)) from None
    if options.get("headers") is not None and not isinstance(options["headers"], Mapping):
        raise bad("option 'headers' must be a dict")
    misfire = raw.get("misfire") or "once"
    if misfire not in MISFIRE_POLICIES:
        raise bad(f"'misfire' must be one of {', '.join(MISFIRE_POLICIES)}, not {misfire!r}")
    return Entry(name, task, schedule, tuple(args), dict(kwargs), options, misfire)


def entries_of(app: Conveyor) -> dict[str, Entry]:
    """Every entry of ``app.conf.beat_schedule`` (``add_periodic_task`` and
    ``@app.periodic_task`` add theirs there), checked; see ``parse_entry``."""
    schedule = app.conf.beat_schedule
    return {name: parse_entry(name, raw) for name, raw in dict(schedule).items()}
