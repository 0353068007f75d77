"""The settings table (Celery names, conveyor defaults, checks, docs) and `Settings` (app.conf)."""

from __future__ import annotations

import copy
import difflib
import importlib
import inspect
import logging
import math
import os
import re
import sys
import zoneinfo
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from datetime import timedelta
from types import MappingProxyType
from typing import Any, Final

from conveyor.exceptions import ConfigurationError

DEFAULT_BROKER_URL: Final = "sqlite:///conveyor.sqlite3"
BROKER_URL_ENV: Final = "CONVEYOR_BROKER_URL"
RESULT_BACKEND_ENV: Final = "CONVEYOR_RESULT_BACKEND"
CONVEYOR_ONLY: Final = "(conveyor only)"
"""``Setting.celery_default`` of a setting Celery does not have."""

Validator = Callable[[Any], Any]


class _Invalid(Exception):
    """A validator's refusal: what it expected, and optionally why."""

    def __init__(self, expected: str, why: str = "") -> None:
        super().__init__(expected)
        self.expected = expected
        self.why = why


@dataclass(frozen=True, slots=True)
class Setting:
    """One row of the table. ``validate`` returns the value to store or raises."""

    name: str
    default: Any
    validate: Validator
    celery_default: object
    doc: str
    difference: str = ""
    #: Never shown: not in ``repr(app.conf)``, nor in the error about a wrong value.
    secret: bool = False


# --- validators: each returns the value to store, or raises _Invalid --------------------------


def _bool(value: Any) -> bool:
    # No truthiness: "false" or 0 from an env-derived config must not silently mean something.
    if not isinstance(value, bool):
        raise _Invalid("True or False")
    return value


def _int(low: int, high: int | None = None, *, optional: bool = False) -> Validator:
    expected = f"an int >= {low}" if high is None else f"an int from {low} to {high}"
    expected = f"None or {expected}" if optional else expected

    def check(value: Any) -> int | None:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise _Invalid(expected)
        if high is not None and value > high:
            raise _Invalid(expected)
        return value

    return check


def _seconds(*, optional: bool = False, zero_ok: bool = False, none_why: str = "") -> Validator:
    expected = f"a number of seconds {'>= 0' if zero_ok else '> 0'} or a timedelta"
    expected = f"None or {expected}" if optional else expected

    def check(value: Any) -> float | None:
        if value is None:
            if optional:
                return None
            raise _Invalid(expected, none_why)
        if isinstance(value, timedelta):
            seconds = value.total_seconds()
        elif isinstance(value, int | float) and not isinstance(value, bool):
            seconds = float(value)
        else:
            raise _Invalid(expected)
        if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not zero_ok):
            raise _Invalid(expected, none_why if math.isinf(seconds) else "")  # inf: "never"
        return seconds

    return check


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _Invalid("a non-empty str")
    return value


def _choice(*options: str) -> Validator:
    def check(value: Any) -> str:
        if value not in options:
            raise _Invalid("one of " + ", ".join(map(repr, options)))
        return str(value)

    return check


def _path(value: Any) -> str | None:
    if value is None:
        return None
    path = os.fspath(value) if isinstance(value, os.PathLike) else value
    if not isinstance(path, str) or not path:
        raise _Invalid("None or a file path (a str or a pathlib.Path)")
    return path


def _log_format(value: Any) -> str:
    # Celery's worker_log_format is a %-style format string: accepted for text lines, so a
    # Celery config keeps working; "text" and "json" are conveyor's own formats.
    expected = "'text', 'json', or a %-style format string such as '%(levelname)s %(message)s'"
    if value in ("text", "json"):
        return str(value)
    if not isinstance(value, str) or "%(" not in value:
        raise _Invalid(expected)
    try:
        logging.PercentStyle(value).validate()
    except ValueError as exc:
        raise _Invalid(expected, str(exc)) from None
    return value


def _url(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or "://" not in value:
        raise _Invalid("None or a URL such as 'redis://localhost:6379/0'")
    return value


_PICKLE_WHY = (
    "only JSON is supported, and pickle is never enabled by default "
    "(decoding pickle can run arbitrary code)"
)
_JSON_NAMES = ("json", "application/json")


def _json_only(value: Any) -> str:
    if value not in _JSON_NAMES:
        raise _Invalid("'json'", _PICKLE_WHY)
    return "json"


def _accept_content(value: Any) -> list[str]:
    expected = "a list of content types (only 'json')"
    if not isinstance(value, list | tuple | set | frozenset) or not value:
        raise _Invalid(expected)
    if any(item not in _JSON_NAMES for item in value):
        raise _Invalid(expected, _PICKLE_WHY)
    return ["json"]


def _routes(value: Any) -> Any:
    expected = "None, a dict, a router function, or a list/tuple of those"
    if value is None:
        return None
    for entry in value if isinstance(value, list | tuple) else [value]:
        if isinstance(entry, str):
            raise _Invalid(expected, "router classes named by strings are not accepted")
        if not isinstance(entry, dict) and not callable(entry):
            raise _Invalid(expected)
    return value


_RATE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(?:/\s*([smh]))?\s*")
_PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0}
RATE_FORMS: Final = "tasks per second (a number > 0), or a string such as '10/s', '100/m', '1000/h'"


def parse_rate(rate: object) -> tuple[int, float]:
    """Celery's rate limit as ``(limit, period in seconds)``: a number of tasks per second,
    or ``"N/s"``, ``"N/m"``, ``"N/h"`` (``N`` may be a fraction: ``"0.5/s"`` is one task
    every 2 s). The one parser of rate strings: settings, task options and the worker.

    Raises:
        ValueError: not such a rate (the message names the accepted forms).
    """
    if isinstance(rate, int | float) and not isinstance(rate, bool):
        count, period = float(rate), 1.0
    else:
        found = _RATE.fullmatch(rate) if isinstance(rate, str) else None
        if found is None:
            raise ValueError(f"a rate limit must be {RATE_FORMS}, not {rate!r}")
        count, period = float(found.group(1)), _PERIODS[found.group(2) or "s"]
    if not math.isfinite(count) or count <= 0:
        raise ValueError(f"a rate limit must be above 0 (None means no limit), not {rate!r}")
    if not count.is_integer():
        return 1, period / count  # a fractional rate: one task per period/count seconds
    return int(count), period


def _rate_limit(value: Any) -> float | str | None:
    if value is None:
        return None
    try:
        parse_rate(value)
    except ValueError:
        raise _Invalid(f"None, {RATE_FORMS}") from None
    rate: float | str = value
    return rate


#: Shortest signing key: HMAC-SHA256 is as strong as its key, and a short one is guessed.
MIN_SIGNING_KEY_BYTES: Final = 32


def _signing_keys(value: Any) -> tuple[bytes, ...]:
    expected = f"None, a key or a list of keys (str or bytes of {MIN_SIGNING_KEY_BYTES}+ bytes)"
    if value is None:
        return ()
    items = [value] if isinstance(value, str | bytes) else value
    if not isinstance(items, list | tuple):
        raise _Invalid(expected)
    keys = []
    for item in items:
        key = item.encode() if isinstance(item, str) else item
        if not isinstance(key, bytes):
            raise _Invalid(expected)
        if len(key) < MIN_SIGNING_KEY_BYTES:
            make = "python -c 'import secrets; print(secrets.token_hex(32))'"
            raise _Invalid(expected, f"a key is {len(key)} bytes long; make one with {make}")
        keys.append(key)
    return tuple(keys)


def _modules(value: Any) -> tuple[str, ...]:
    # A bare string is the common slip for a 1-tuple ("pkg.tasks" instead of ("pkg.tasks",)).
    items = (value,) if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(m, str) and m for m in items):
        raise _Invalid("a tuple of module names")
    return tuple(items)


def _schedule(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise _Invalid("a dict of entry name to entry")
    return value


def _timezone(value: Any) -> str:
    name = _text(value)
    if name != "UTC":  # UTC must work even where the system has no tz database
        try:
            zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a directory
            close = difflib.get_close_matches(name, zoneinfo.available_timezones(), n=1)
            why = f"did you mean {close[0]!r}?" if close else ""
            raise _Invalid("an IANA time zone name", why) from None
    return name


# --- the table ----------------------------------------------------------------------------------

_RESULTS_EXPIRE = "results always expire in conveyor (Celery's None, keep forever, is refused)"
_NO_PICKLE = (
    "Celery also offers `pickle`, `yaml` and `msgpack`; conveyor takes only `json` for now."
)

# fmt: off
_TABLE = (
    # Setting(name, conveyor's default, validator, Celery's default, what it does, difference)
    Setting("broker_url", None, _url, "amqp://guest@localhost//",
            f"Where messages go. None: `${BROKER_URL_ENV}`, else `{DEFAULT_BROKER_URL}`.",
            "Celery defaults to RabbitMQ on localhost and reads `$CELERY_BROKER_URL`; conveyor "
            f"defaults to an SQLite file (one machine, no server) and reads `${BROKER_URL_ENV}` "
            "only when the setting is unset."),
    Setting("result_backend", None, _url, None,
            f"Where results go. None: `${RESULT_BACKEND_ENV}`, else the broker URL.",
            "Celery stores no results unless a backend is set; conveyor stores them beside the "
            "broker by default, each with a TTL (`result_expires`)."),
    Setting("broker_connection_timeout", 10.0, _seconds(), 4.0,
            "Seconds to wait for the broker before raising `BrokerUnavailable`.",
            "Celery waits 4 s; conveyor waits 10 s."),
    Setting("broker_lease_timeout", 10.0, _seconds(), CONVEYOR_ONLY,
            "Seconds a delivered message stays leased to its worker without renewal: a dead "
            "worker's messages return to the queue within this time.",
            "Replaces Celery's `visibility_timeout`: the worker renews the lease while the task "
            "runs, so a long task is never delivered twice."),
    Setting("broker_max_deliveries", 5, _int(1), CONVEYOR_ONLY,
            "Deliveries (worker crashes and lost leases included) before a message goes to the "
            "dead-letter queue.",
            "Celery has no limit: with `task_reject_on_worker_lost` a message that kills its "
            "worker is redelivered forever."),
    Setting("broker_dead_letter_max", 10_000, _int(1), CONVEYOR_ONLY,
            "Dead letters a queue keeps at most: past that the oldest are dropped (as "
            "workers sweep, every few seconds). `conveyor dead purge` empties them.",
            "Celery has no dead-letter store on Redis; Sidekiq's dead set keeps 10,000."),
    Setting("broker_dead_letter_expires", 180 * 86400.0, _seconds(), CONVEYOR_ONLY,
            "Seconds (or a timedelta) a dead letter is kept before it is dropped (180 days).",
            "Celery has no dead-letter store on Redis; Sidekiq keeps its dead set 6 months."),
    Setting("redis_allow_eviction", False, _bool, CONVEYOR_ONLY,
            "Use a Redis whose `maxmemory-policy` is not `noeviction`. Such a server deletes "
            "keys under memory pressure, and queued tasks with them, without an error; "
            "workers and producers refuse it unless this is True (the worker then warns).",
            "Celery does not look at the eviction policy: tasks can vanish silently."),
    Setting("task_acks_late", True, _bool, False,
            "Acknowledge a message after its task finishes, not before it starts.",
            "Celery acknowledges before running (at-most-once: a killed worker loses the task); "
            "conveyor is at-least-once, so tasks should be idempotent."),
    Setting("task_acks_on_failure_or_timeout", True, _bool, True,
            "With late acks, acknowledge tasks that failed or timed out too (no redelivery)."),
    Setting("task_reject_on_worker_lost", True, _bool, False,
            "Return a task to the queue when its worker process dies mid-task.",
            "Celery acknowledges it and records `WorkerLostError`; conveyor redelivers it, up to "
            "`broker_max_deliveries` times."),
    Setting("task_ignore_result", False, _bool, False,
            "Store no results (a task's own `ignore_result` overrides this)."),
    Setting("task_track_started", False, _bool, False,
            "Store a STARTED state when a worker begins a task."),
    Setting("task_always_eager", False, _bool, False,
            "Run tasks in the caller's process instead of sending them (for tests)."),
    Setting("task_eager_propagates", False, _bool, False,
            "With eager tasks, re-raise a task's exception in the caller."),
    Setting("task_store_eager_result", False, _bool, False,
            "With eager tasks, store results in the result backend."),
    Setting("task_default_queue", "celery", _text, "celery",
            "Queue of tasks that no route sends elsewhere."),
    Setting("task_default_priority", 0, _int(0, 9), None,
            "Priority of tasks that set none: 0-9, a higher number runs first.",
            "The same order on every broker; on Celery with Redis, 0 is the highest priority."),
    Setting("task_routes", None, _routes, None,
            "Sends tasks to queues by name: a dict, a router function, or a list of them.",
            "Router classes named by strings are not accepted; pass the function."),
    Setting("task_serializer", "json", _json_only, "json",
            "Serializer of task arguments.", _NO_PICKLE),
    Setting("result_serializer", "json", _json_only, "json",
            "Serializer of results.", _NO_PICKLE),
    Setting("accept_content", ["json"], _accept_content, ["json"],
            "Content types a worker accepts.", _NO_PICKLE),
    Setting("message_signing_keys", (), _signing_keys, CONVEYOR_ONLY,
            "Secret keys (str or bytes, at least 32 bytes each) that sign messages with "
            "HMAC-SHA256: the first signs every message this process sends; a worker runs a "
            "message only if one of them verifies it (unsigned and forged messages go to the "
            "dead letters). Several keys let you rotate them; see docs/security.md. Never "
            "shown in logs, banners or `repr(app.conf)`.",
            "Celery signs with X.509 certificates (`task_serializer='auth'`, `security_key`, "
            "`security_certificate`); conveyor signs JSON messages with shared keys.",
            secret=True),
    Setting("result_expires", 86400.0, _seconds(none_why=_RESULTS_EXPIRE), 86400.0,
            "Seconds (or a timedelta) each stored result is kept.",
            "Celery accepts None (keep forever); conveyor refuses it: every result expires."),
    Setting("task_time_limit", None, _seconds(optional=True), None,
            "Seconds after which a running task is ended and recorded as a FAILURE with "
            "`TimeLimitExceeded` (acknowledged, not delivered again). Per task: `time_limit=`.",
            "Enforced on every pool (Celery: prefork only); how, per pool: docs/worker.md."),
    Setting("task_soft_time_limit", None, _seconds(optional=True), None,
            "Seconds after which `SoftTimeLimitExceeded` is raised inside a running task. Per "
            "task: `soft_time_limit=`.",
            "Enforced on every pool (Celery: prefork only); asyncio tasks are cancelled."),
    Setting("task_default_rate_limit", None, _rate_limit, None,
            "Rate limit of tasks that set none, e.g. `'10/s'`, `'100/m'`."),
    Setting("worker_max_tasks_per_child", None, _int(1, optional=True), None,
            "Tasks a prefork child runs before it is replaced (after its last task, which "
            "finishes normally)."),
    Setting("worker_max_memory_per_child", None, _int(1, optional=True), None,
            "KiB of resident memory above which a prefork child is replaced after its task. A "
            "child already above it before its first task keeps running (and says so in the "
            "log) instead of being replaced again and again."),
    Setting("worker_concurrency", None, _int(1, optional=True), None,
            "Tasks a worker runs at once. None: the number of CPUs."),
    Setting("worker_pool", "prefork", _choice("solo", "threads", "prefork", "asyncio"), "prefork",
            "How a worker runs tasks: `prefork` (processes), `threads`, `asyncio` (`async def` "
            "tasks on one event loop), or `solo` (inline).",
            "`eventlet`, `gevent` and custom pool classes are not offered; `asyncio` is new."),
    Setting("worker_prefetch_multiplier", 1, _int(1), 4,
            "A worker holds at most concurrency x this many unacknowledged messages.",
            "Celery's 4 lets one busy worker hoard messages while others idle; 0 (unlimited) "
            "is refused."),
    Setting("worker_shutdown_timeout", 25.0, _seconds(zero_ok=True), CONVEYOR_ONLY,
            "On SIGTERM, seconds running tasks may take to finish before they are returned to "
            "the queue (under Kubernetes' 30 s grace period).",
            "Celery's warm shutdown waits for running tasks without a limit."),
    Setting("task_revoke_expires", 86400.0, _seconds(), CONVEYOR_ONLY,
            "Seconds a revoke is kept in the broker: a revoked task sent to run later than "
            "that would run.",
            "Celery keeps revokes in each worker's memory (lost when all workers restart) "
            "unless a state file is configured per worker."),
    Setting("worker_autoscale_keepalive", 30.0, _seconds(zero_ok=True), CONVEYOR_ONLY,
            "With `worker --autoscale MAX,MIN`: seconds demand must stay below the pool's size "
            "before the pool shrinks (it grows at once).",
            "Celery's autoscaler has the same 30 s, as a class attribute, not a setting."),
    Setting("worker_heartbeat_file", None, _path, CONVEYOR_ONLY,
            "A file the worker rewrites every second with its pid and the time its fetch loop "
            "last made progress, and removes when it stops; `conveyor worker-health --file PATH` "
            "reads it for container liveness probes. None: no file.",
            "Celery has no such file: its liveness check, `celery inspect ping`, is a round trip "
            "through the broker."),
    Setting("worker_log_format", "text", _log_format,
            "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s",
            "`text`: one line per record, with the running task's `name[id]`; `json`: one JSON "
            "object per line (time, level, logger, process, message, `task_name`, `task_id`, "
            "`exc_info`) for log shippers. `--log-format` overrides it.",
            "Celery's value is a %-style format string; conveyor accepts one too (for text lines, "
            "with `%(task_name)s` and `%(task_id)s`), and adds `text` and `json`."),
    Setting("timezone", "UTC", _timezone, "UTC", "Time zone of `crontab` schedules."),
    Setting("enable_utc", True, _bool, True, "Dates in messages are in UTC."),
    Setting("beat_schedule", {}, _schedule, {},
            "Periodic tasks that `conveyor beat` and `worker --beat` send: entry name -> "
            "`{task, schedule, args, kwargs, options, misfire}` (docs/beat.md).",
            "Each slot is sent once however many schedulers run; `misfire` is conveyor's; "
            "entries are checked when beat starts."),
    Setting("beat_max_loop_interval", 1.0, _seconds(), 0,
            "Longest sleep of a beat between two looks at its schedule: it sleeps until the "
            "next slot is due, but at most this long, so added or removed entries and shutdown "
            "are noticed (see docs/beat.md).",
            "Celery's 0 means 300 s for its file scheduler; conveyor's beat keeps no state in "
            "the process, so it can look often."),
    Setting("imports", (), _modules, (), "Modules a worker imports at start, to register tasks."),
    Setting("include", (), _modules, (), "More modules a worker imports, after `imports`."),
)
# fmt: on
SETTINGS: Final[Mapping[str, Setting]] = MappingProxyType({s.name: s for s in _TABLE})
"""Every setting by name, in documentation order."""

_RECONNECTS = "conveyor always reconnects to the broker, with backoff."
_NO_EVENTS = "conveyor sends no task events yet."
_BEAT_STATE = "beat keeps its last-run times in the broker, not in a local file."
# fmt: off
IGNORED: Final[Mapping[str, str]] = MappingProxyType({
    "broker_transport_options": "`visibility_timeout` is replaced by leases the worker renews "
                                "(`broker_lease_timeout`); kombu's transport options do not apply.",
    "broker_connection_retry": _RECONNECTS,
    "broker_connection_retry_on_startup": _RECONNECTS,
    "broker_connection_max_retries": _RECONNECTS,
    "worker_cancel_long_running_tasks_on_connection_loss": "leases decide redelivery, and a worker "
                                "whose lease lapsed can no longer acknowledge the message.",
    "task_create_missing_queues": "queues are always created on demand.",
    "worker_send_task_events": _NO_EVENTS,
    "task_send_sent_event": _NO_EVENTS,
    "result_extended": "results are always stored with their extended fields.",
    "beat_schedule_filename": _BEAT_STATE,
    "beat_sync_every": _BEAT_STATE,
    "beat_scheduler": "conveyor has one scheduler, whose state is in the broker (docs/beat.md).",
})
# fmt: on
"""Celery settings conveyor accepts (and logs at start-up) without needing them: name -> why."""

_ALL_NAMES: Final = (*SETTINGS, *IGNORED)


# --- Settings -----------------------------------------------------------------------------------


class Settings(MutableMapping[str, Any]):
    """The settings of one app (``app.conf``): attribute and mapping access, checked on write.

    Every write validates the name and the value and raises ConfigurationError, naming
    the closest valid name for a typo. Deleting a setting resets it to its default.
    """

    _values: dict[str, Any]
    _explicit: set[str]

    def __init__(self, other: Mapping[str, Any] | Iterable[tuple[str, Any]] = (), /, **kwargs: Any):
        # Deep copies: no app may share (and mutate) another's beat_schedule or accept_content.
        self._values = {s.name: copy.deepcopy(s.default) for s in _TABLE}
        self._explicit = set()
        self.update(other, **kwargs)

    # Mapping protocol: keys are lowercase setting names.
    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __setitem__(self, name: str, value: Any) -> None:
        self._commit([_checked(name, value, uppercase_ok=False)])

    def __delitem__(self, name: str) -> None:
        if name in SETTINGS:
            self._values[name] = copy.deepcopy(SETTINGS[name].default)
        elif name in self._values:
            del self._values[name]
        else:
            raise KeyError(name)
        self._explicit.discard(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    # Attribute access mirrors item access.
    def __getattr__(self, name: str) -> Any:
        # Reached only when normal lookup fails; copy and pickle probe private names
        # (before ``_values`` exists). Settings first: every send reads several.
        values = self.__dict__.get("_values")
        if values is not None and name in values:
            return values[name]
        if name.startswith("_"):
            raise AttributeError(name)
        if name in IGNORED:
            raise AttributeError(f"{name} is not set (conveyor does not need it: {IGNORED[name]})")
        raise AttributeError(_unknown(name, uppercase_ok=False))

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            self[name] = value

    def __delattr__(self, name: str) -> None:
        if name.startswith("_"):
            object.__delattr__(self, name)
        else:
            del self[name]

    def __dir__(self) -> Iterable[str]:
        return [*super().__dir__(), *self._values]

    def __repr__(self) -> str:
        changed = ", ".join(
            f"{k}={_shown(v, secret=k in SETTINGS and SETTINGS[k].secret)}"
            for k, v in self.changes().items()
        )
        return f"Settings({changed})"

    def update(  # type: ignore[override]  # one signature for the three overloads of MutableMapping
        self, other: Mapping[str, Any] | Iterable[tuple[str, Any]] = (), /, **kwargs: Any
    ) -> None:
        """Set several settings at once; Celery's uppercase names are accepted.

        All are checked before any is set. Raises: ConfigurationError.
        """
        items = list(other.items() if isinstance(other, Mapping) else other)
        self._commit([_checked(k, v, uppercase_ok=True) for k, v in [*items, *kwargs.items()]])

    def from_object(self, obj: object, namespace: str | None = None) -> None:
        """Read settings from a module, an object's attributes, or a dict.

        Without ``namespace`` every public attribute that is not a module, class or function
        is a setting (so a typo is an error). With ``namespace="CELERY"`` only ``CELERY_*``
        names are read, prefix stripped (Django's settings.py). All are checked before any
        is set. Raises: ConfigurationError.
        """
        is_mapping = isinstance(obj, Mapping)
        items = list(obj.items()) if isinstance(obj, Mapping) else _attributes(obj)
        prefix = namespace.rstrip("_") + "_" if namespace else ""
        checked = []
        for key, value in items:
            if prefix:
                if not isinstance(key, str) or not key.startswith(prefix):
                    continue
                key = key[len(prefix) :]
            elif not is_mapping and _incidental(key, value):
                continue
            checked.append(_checked(key, value, uppercase_ok=True, prefix=prefix))
        self._commit(checked)

    def changes(self) -> dict[str, Any]:
        """The settings set explicitly (or mutated in place), by name."""
        return {
            name: value
            for name, value in self._values.items()
            if name in self._explicit or (name in SETTINGS and value != SETTINGS[name].default)
        }

    def ignored_settings(self) -> list[tuple[str, str]]:
        """``(name, reason)`` for each Celery setting that was set but conveyor does not need."""
        return [(name, IGNORED[name]) for name in self._values if name in IGNORED]

    def broker_url_resolved(self) -> str:
        """The broker URL: ``broker_url``, else ``$CONVEYOR_BROKER_URL``, else the SQLite file."""
        url: str | None = self._values["broker_url"]
        return url or _from_env(BROKER_URL_ENV) or DEFAULT_BROKER_URL

    def result_backend_resolved(self) -> str:
        """The result backend URL: ``result_backend``, else ``$CONVEYOR_RESULT_BACKEND``,
        else the broker URL (results live beside the messages)."""
        url: str | None = self._values["result_backend"]
        return url or _from_env(RESULT_BACKEND_ENV) or self.broker_url_resolved()

    def _commit(self, checked: list[tuple[str, Any]]) -> None:
        for name, value in checked:
            self._values[name] = value
            self._explicit.add(name)


def _checked(key: Any, value: Any, *, uppercase_ok: bool, prefix: str = "") -> tuple[str, Any]:
    """The canonical name and the value to store, or ConfigurationError."""
    if not isinstance(key, str):
        raise ConfigurationError(f"setting names are strings, got {key!r}")
    name = key.lower() if uppercase_ok and key.isupper() else key
    if name in IGNORED:
        return name, value
    if name not in SETTINGS:
        raise ConfigurationError(_unknown(key, uppercase_ok=uppercase_ok, prefix=prefix))
    try:
        return name, SETTINGS[name].validate(value)
    except _Invalid as exc:
        raise ConfigurationError(
            _invalid(prefix + key, value, exc, secret=SETTINGS[name].secret)
        ) from None


def _unknown(key: str, *, uppercase_ok: bool, prefix: str = "") -> str:
    close = difflib.get_close_matches(key.lower(), _ALL_NAMES, n=1)
    if not close:
        return f"unknown setting '{prefix}{key}'; see docs/settings.md for every setting"
    spelled = close[0].upper() if uppercase_ok and key.isupper() else close[0]
    return f"unknown setting '{prefix}{key}'; did you mean '{prefix}{spelled}'?"


def _invalid(shown_name: str, value: Any, exc: _Invalid, *, secret: bool = False) -> str:
    shown = _shown(value, secret=secret)
    message = f"{shown_name} must be {exc.expected}, got {shown} ({type(value).__name__})"
    return f"{message}: {exc.why}" if exc.why else message


def _shown(value: Any, *, secret: bool = False) -> str:
    if secret:
        return "***"
    text = redact_url(repr(value))
    return text if len(text) <= 80 else text[:77] + "..."


def _from_env(variable: str) -> str | None:
    value = os.environ.get(variable) or None  # empty, as docker-compose leaves it, means unset
    try:
        return _url(value)
    except _Invalid as exc:
        raise ConfigurationError(_invalid(f"${variable}", value, exc)) from None


def _attributes(obj: object) -> list[tuple[str, Any]]:
    return [(name, getattr(obj, name)) for name in dir(obj) if not name.startswith("_")]


def _incidental(name: str, value: Any) -> bool:
    """True for what a config module holds besides settings: imports, helpers, typing names."""
    if name.lower() in SETTINGS or name.lower() in IGNORED:
        return False  # e.g. task_routes = my_router_function
    if inspect.ismodule(value) or inspect.isclass(value) or inspect.isroutine(value):
        return True
    # `from __future__ import annotations`, `from typing import TYPE_CHECKING, Final`
    return name == "TYPE_CHECKING" or type(value).__module__ in ("__future__", "typing")


# The password in a URL's userinfo (``redis://:pw@``, ``redis://user:pw@``), of any scheme,
# even inside the repr of a list or dict; it may contain "@" or "/".
_PASSWORD = re.compile(r"""(\b[a-z][a-z0-9+.-]*://[^:/@\s'"]*:)[^\s'"]*@""", re.IGNORECASE)
# A secret in a URL's query: redis-py reads ``?password=`` (unix:// URLs need it) and
# ``?ssl_password=``; any parameter whose name says pass, pwd, secret, token or auth.
_QUERY_SECRET = re.compile(
    r"""([?&;][^=&;\s'"#]*(?:pass|pwd|secret|token|auth)[^=&;\s'"#]*=)[^&;\s'"#]*""",
    re.IGNORECASE,
)


def redact_url(url: str) -> str:
    """``url`` (or any text holding URLs) with passwords replaced by ``***``, for logs:
    in the userinfo of any scheme, and in query parameters such as ``?password=``."""
    return _QUERY_SECRET.sub(r"\1***", _PASSWORD.sub(r"\1***@", url))


_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def import_object(path: str) -> object:
    """Import ``"pkg.mod"``, ``"pkg.mod:attr"`` or ``"pkg.mod.attr"`` and return it.

    Raises:
        ConfigurationError: the path is malformed, the module cannot be imported,
            or it has no such attribute.
    """
    module_name, colon, attribute = path.partition(":")
    if not _DOTTED.fullmatch(module_name) or (colon and not _DOTTED.fullmatch(attribute)):
        raise ConfigurationError(
            f"cannot import {path!r}: expected 'pkg.module', 'pkg.module:attr' or 'pkg.module.attr'"
        )
    if not colon:
        try:
            return importlib.import_module(module_name)
        except ImportError as exc:
            # Only "pkg.mod.attr" itself missing means: try it as attribute attr of pkg.mod.
            missing_itself = isinstance(exc, ModuleNotFoundError) and exc.name == module_name
            if not missing_itself or "." not in module_name:
                raise ConfigurationError(f"cannot import {path!r}: {exc}") from exc
        module_name, _, attribute = module_name.rpartition(".")
    try:
        obj: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import {path!r}: {exc}") from exc
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigurationError(
                f"cannot import {path!r}: {module_name!r} has no attribute {attribute!r}"
            ) from None
    return obj


# --- docs/settings.md ---------------------------------------------------------------------------

_INTRO = f"""\
conveyor uses Celery's setting names. Set them on the app (`app.conf.task_acks_late = False`), \
as keywords (`Conveyor("proj", task_acks_late=False)`), or from a module, object or dict \
(`app.config_from_object("proj.celeryconfig")`; with `namespace="CELERY"` it reads the \
`CELERY_`-prefixed names of a Django `settings.py`, and Celery's uppercase names are accepted). \
`${BROKER_URL_ENV}` and `${RESULT_BACKEND_ENV}` are read when `broker_url` and `result_backend` \
are unset. Every value is checked when it is set: an unknown name or a wrong type raises \
`ConfigurationError`, naming the closest valid setting. Durations are seconds (`int` or `float`) \
or a `datetime.timedelta`."""


def render_markdown() -> str:
    """The text of docs/settings.md, generated from the table (``python -m conveyor.config``)."""
    lines = [
        "# Settings",
        "",
        "<!-- Generated from src/conveyor/config.py by `make docs`; do not edit by hand. -->",
        "",
        _INTRO,
        "",
        "| setting | default | Celery's default | what it does / difference from Celery |",
        "|---|---|---|---|",
    ]
    for s in _TABLE:
        text = f"{s.doc} *Differs from Celery:* {s.difference}" if s.difference else s.doc
        row = (f"`{s.name}`", _md_value(s.default), _md_value(s.celery_default), text)
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    lines += [
        "",
        "## Celery settings that conveyor accepts but does not need",
        "",
        "Setting these is not an error: the value is stored, and conveyor logs the reason at "
        "start-up.",
        "",
        *(f"- `{name}`: {reason}" for name, reason in IGNORED.items()),
    ]
    return "\n".join(lines) + "\n"


def _md_value(value: object) -> str:
    return CONVEYOR_ONLY if value == CONVEYOR_ONLY else f"`{value!r}`"


if __name__ == "__main__":
    sys.stdout.write(render_markdown())
