"""The settings' validators: each returns the value to store, or raises ``Invalid``."""

from __future__ import annotations

import difflib
import logging
import math
import os
import re
import zoneinfo
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Final

from conveyor.queues import EXCHANGE_TYPES, Queue, as_queues

Validator = Callable[[Any], Any]


class Invalid(Exception):
    """A validator's refusal: what it expected, and optionally why."""

    def __init__(self, expected: str, why: str = "") -> None:
        super().__init__(expected)
        self.expected = expected
        self.why = why


def boolean(value: Any) -> bool:
    # No truthiness: "false" or 0 from an env-derived config must not silently mean something.
    if not isinstance(value, bool):
        raise Invalid("True or False")
    return value


def integer(low: int, high: int | None = None, *, optional: bool = False) -> Validator:
    expected = f"an int >= {low}" if high is None else f"an int from {low} to {high}"
    expected = f"None or {expected}" if optional else expected

    def check(value: Any) -> int | None:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise Invalid(expected)
        if high is not None and value > high:
            raise Invalid(expected)
        return value

    return check


def seconds(*, optional: bool = False, zero_ok: bool = False, none_why: str = "") -> Validator:
    expected = f"a number of seconds {'>= 0' if zero_ok else '> 0'} or a timedelta"
    expected = f"None or {expected}" if optional else expected

    def check(value: Any) -> float | None:
        if value is None:
            if optional:
                return None
            raise Invalid(expected, none_why)
        if isinstance(value, timedelta):
            number = value.total_seconds()
        elif isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        else:
            raise Invalid(expected)
        if not math.isfinite(number) or number < 0 or (number == 0 and not zero_ok):
            raise Invalid(expected, none_why if math.isinf(number) else "")  # inf: "never"
        return number

    return check


def text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise Invalid("a non-empty str")
    return value


def optional_text(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise Invalid("None or a non-empty str")
    return value


def choice(*options: str) -> Validator:
    def check(value: Any) -> str:
        if value not in options:
            raise Invalid("one of " + ", ".join(map(repr, options)))
        return str(value)

    return check


def path(value: Any) -> str | None:
    if value is None:
        return None
    found = os.fspath(value) if isinstance(value, os.PathLike) else value
    if not isinstance(found, str) or not found:
        raise Invalid("None or a file path (a str or a pathlib.Path)")
    return found


def log_format(value: Any) -> str:
    # Celery's worker_log_format is a %-style format string: accepted for text lines, so a
    # Celery config keeps working; "text" and "json" are conveyor's own formats.
    expected = "'text', 'json', or a %-style format string such as '%(levelname)s %(message)s'"
    if value in ("text", "json"):
        return str(value)
    if not isinstance(value, str) or "%(" not in value:
        raise Invalid(expected)
    try:
        logging.PercentStyle(value).validate()
    except ValueError as exc:
        raise Invalid(expected, str(exc)) from None
    return value


def url(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or "://" not in value:
        raise Invalid("None or a URL such as 'redis://localhost:6379/0'")
    return value


_PICKLE_WHY = (
    "only JSON is supported, and pickle is never enabled by default "
    "(decoding pickle can run arbitrary code)"
)
_JSON_NAMES = ("json", "application/json")


def json_only(value: Any) -> str:
    if value not in _JSON_NAMES:
        raise Invalid("'json'", _PICKLE_WHY)
    return "json"


def accept_content(value: Any) -> list[str]:
    expected = "a list of content types (only 'json')"
    if not isinstance(value, list | tuple | set | frozenset) or not value:
        raise Invalid(expected)
    if any(item not in _JSON_NAMES for item in value):
        raise Invalid(expected, _PICKLE_WHY)
    return ["json"]


def _is_pairs(entry: Any) -> bool:
    """Celery's ``[(pattern, route), ...]`` form of one router."""
    return isinstance(entry, list | tuple) and all(
        isinstance(pair, list | tuple) and len(pair) == 2 for pair in entry
    )


def routes(value: Any) -> Any:
    expected = (
        "None, a dict, a router function, a list of (pattern, route) pairs, or a list of those"
    )
    if value is None:
        return None
    for entry in value if isinstance(value, list | tuple) else [value]:
        if isinstance(entry, str):
            raise Invalid(expected, "router classes named by strings are not accepted")
        if not isinstance(entry, dict) and not callable(entry) and not _is_pairs(entry):
            raise Invalid(expected)
    return value


def queues(value: Any) -> tuple[Queue, ...] | None:
    expected = "None, or a list of queues (conveyor.Queue, kombu Queue, or names)"
    if value is None:
        return None
    try:
        return as_queues(value) or None  # empty: as unset, the default queue alone
    except (TypeError, ValueError) as exc:
        raise Invalid(expected, str(exc)) from None


def exchange_type(value: Any) -> str:
    if value not in EXCHANGE_TYPES:
        why = "conveyor finds queues by name or routing key" if value == "headers" else ""
        raise Invalid("one of " + ", ".join(map(repr, EXCHANGE_TYPES)), why)
    return str(value)


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


def rate_limit(value: Any) -> float | str | None:
    if value is None:
        return None
    try:
        parse_rate(value)
    except ValueError:
        raise Invalid(f"None, {RATE_FORMS}") from None
    rate: float | str = value
    return rate


#: Shortest signing key: HMAC-SHA256 is as strong as its key, and a short one is guessed.
MIN_SIGNING_KEY_BYTES: Final = 32


def signing_keys(value: Any) -> tuple[bytes, ...]:
    expected = f"None, a key or a list of keys (str or bytes of {MIN_SIGNING_KEY_BYTES}+ bytes)"
    if value is None:
        return ()
    items = [value] if isinstance(value, str | bytes) else value
    if not isinstance(items, list | tuple):
        raise Invalid(expected)
    keys = []
    for item in items:
        key = item.encode() if isinstance(item, str) else item
        if not isinstance(key, bytes):
            raise Invalid(expected)
        if len(key) < MIN_SIGNING_KEY_BYTES:
            make = "python -c 'import secrets; print(secrets.token_hex(32))'"
            raise Invalid(expected, f"a key is {len(key)} bytes long; make one with {make}")
        keys.append(key)
    return tuple(keys)


def modules(value: Any) -> tuple[str, ...]:
    # A bare string is the common slip for a 1-tuple ("pkg.tasks" instead of ("pkg.tasks",)).
    items = (value,) if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(m, str) and m for m in items):
        raise Invalid("a tuple of module names")
    return tuple(items)


def schedule(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise Invalid("a dict of entry name to entry")
    return value


def timezone(value: Any) -> str:
    name = text(value)
    if name != "UTC":  # UTC must work even where the system has no tz database
        try:
            zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a directory
            close = difflib.get_close_matches(name, zoneinfo.available_timezones(), n=1)
            why = f"did you mean {close[0]!r}?" if close else ""
            raise Invalid("an IANA time zone name", why) from None
    return name


#: The transport options conveyor reads (Redis behind Sentinel).
TRANSPORT_OPTIONS: Final = ("master_name", "sentinel_kwargs")

_LEASES = (
    "workers renew the leases of what they hold (`broker_lease_timeout`): a long or "
    "delayed task is never delivered twice."
)
_OWN_SOCKETS = "conveyor sets its own timeouts and TCP keepalive on every connection."
_PRIORITIES = "each queue keeps priorities 0-9 in exact order; there are no priority steps."
_RETRIES = "calls retry through outages for `broker_connection_timeout` seconds."
#: kombu's Redis transport options conveyor accepts without needing them: name -> why.
IGNORED_TRANSPORT_OPTIONS: Final = {
    "visibility_timeout": _LEASES,
    "unacked_mutex_expire": _LEASES,
    "unacked_mutex_key": _LEASES,
    "unacked_restore_limit": _LEASES,
    "unacked_key": _LEASES,
    "ack_emulation": _LEASES,
    "polling_interval": "workers wait on Redis without polling.",
    "brpop_timeout": "workers wait on Redis without polling.",
    "fanout_prefix": "broadcasts do not use Redis pub/sub channels.",
    "fanout_patterns": "broadcasts do not use Redis pub/sub channels.",
    "priority_steps": _PRIORITIES,
    "sep": _PRIORITIES,
    "queue_order_strategy": _PRIORITIES,
    "max_connections": "each process opens connections as its threads need them.",
    "socket_timeout": _OWN_SOCKETS,
    "socket_connect_timeout": _OWN_SOCKETS,
    "socket_keepalive": _OWN_SOCKETS,
    "socket_keepalive_options": _OWN_SOCKETS,
    "health_check_interval": _OWN_SOCKETS,
    "retry_on_timeout": _OWN_SOCKETS,
    "client_name": _OWN_SOCKETS,
    "max_retries": _RETRIES,
    "interval_start": _RETRIES,
    "interval_step": _RETRIES,
    "interval_max": _RETRIES,
    "retry_policy": _RETRIES,
    "confirm_publish": "a send returns once Redis has answered that it holds the message.",
    "global_keyprefix": (
        "conveyor's keys start with `conveyor:`; give each app its own database (`/1`)."
    ),
}


def transport_options(value: Any) -> dict[str, Any]:
    expected = "a dict such as {'master_name': 'mymaster'}"
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Invalid(expected)
    for key in value:
        if not isinstance(key, str):
            raise Invalid(expected, f"option names are strings, got {key!r}")
        if key in TRANSPORT_OPTIONS or key in IGNORED_TRANSPORT_OPTIONS:
            continue
        known = [*TRANSPORT_OPTIONS, *IGNORED_TRANSPORT_OPTIONS]
        close = difflib.get_close_matches(key, known, n=1)
        hint = (
            f"; did you mean {close[0]!r}?" if close else f" (conveyor reads {TRANSPORT_OPTIONS})"
        )
        raise Invalid(expected, f"unknown option {key!r}{hint}")
    if "master_name" in value and not isinstance(value["master_name"], str):
        raise Invalid(expected, "master_name is the name the sentinels monitor, a string")
    if not isinstance(value.get("sentinel_kwargs") or {}, dict):
        raise Invalid(expected, "sentinel_kwargs is a dict, such as {'password': '...'}")
    return dict(value)
