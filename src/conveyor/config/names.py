"""Every spelling of a setting: its name, the name in capitals, Celery's old (3.x) name.

Celery 4 renamed its settings (``CELERYD_CONCURRENCY`` became ``worker_concurrency``)
and still reads the old names; so does conveyor, in every way settings are set. The
old names follow Celery's own rules: a prefix per section (``CELERY_`` for ``task_``,
``CELERYD_`` for ``worker_``...), with the exceptions Celery lists, and the names its
documentation gives where they differ from its code.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from conveyor.config.table import CONVEYOR_ONLY, IGNORED, SETTINGS

# (prefix of the name, Celery 3's prefix in its place); a name of another section had its
# capitals as its old name (``BROKER_URL``, ``CASSANDRA_SERVERS``), and still has.
_OLD_PREFIXES: Final = (
    ("task_", "celery_"),
    ("worker_", "celeryd_"),
    ("beat_", "celerybeat_"),
    ("result_", "celery_result_"),
    ("redis_", "celery_redis_"),
    ("event_", "celery_event_"),
    ("security_", "celery_security_"),
    ("cache_", "celery_cache_"),
    ("couchbase_", "celery_couchbase_"),
    ("arangodb_", "celery_arangodb_"),
    ("mongodb_", "celery_mongodb_"),
    ("elasticsearch_", "celery_elasticsearch_"),
)
_OLD_CELERY_PREFIXED: Final = ("accept_content", "imports", "include", "timezone")

# Celery's exceptions to the rules, and its documentation's old names where they differ.
_OLD_EXCEPTIONS: Final[Mapping[str, tuple[str, ...]]] = {
    "result_accept_content": ("result_accept_content",),
    "enable_utc": ("enable_utc", "celery_enable_utc"),
    "result_cache_max": ("celery_max_cached_results",),
    "result_expires": ("celery_task_result_expires", "celery_result_expires"),
    "task_always_eager": ("celery_always_eager", "celery_task_always_eager"),
    "task_compression": ("celery_message_compression", "celery_compression"),
    "task_eager_propagates": ("celery_eager_propagates_exceptions", "celery_eager_propagates"),
    "task_protocol": ("celery_task_protocol",),
    "task_publish_retry": ("celery_task_publish_retry", "celery_publish_retry"),
    "task_publish_retry_policy": (
        "celery_task_publish_retry_policy",
        "celery_publish_retry_policy",
    ),
    "task_reject_on_worker_lost": (
        "celery_reject_on_worker_lost",
        "celery_task_reject_on_worker_lost",
    ),
    "task_send_sent_event": ("celery_send_task_sent_event", "celery_send_sent_event"),
    "task_serializer": ("celery_task_serializer",),
    "task_soft_time_limit": ("celeryd_task_soft_time_limit", "celeryd_soft_time_limit"),
    "task_time_limit": ("celeryd_task_time_limit", "celeryd_time_limit"),
    "task_track_started": ("celery_track_started", "celery_task_track_started"),
    "worker_direct": ("celery_worker_direct",),
    "worker_disable_rate_limits": ("celery_disable_rate_limits",),
    "worker_enable_remote_control": ("celery_enable_remote_control",),
    "worker_log_format": ("celeryd_log_format", "celery_worker_log_format"),
    "worker_lost_wait": ("celeryd_worker_lost_wait",),
    "worker_redirect_stdouts": ("celery_redirect_stdouts", "celeryd_redirect_stdouts"),
    "worker_redirect_stdouts_level": (
        "celery_redirect_stdouts_level",
        "celeryd_redirect_stdouts_level",
    ),
    "worker_send_task_events": ("celery_send_events",),
    "worker_task_log_format": ("celeryd_task_log_format", "celery_worker_task_log_format"),
    "cassandra_table": ("cassandra_table", "cassandra_column_family"),
    "database_url": ("celery_result_dburi",),
    "database_engine_options": ("celery_result_engine_options",),
    "database_short_lived_sessions": ("celery_result_db_short_lived_sessions",),
    "database_table_names": ("celery_result_db_tablenames", "celery_result_db_table_names"),
}


def _old_names(name: str) -> tuple[str, ...]:
    if name in _OLD_EXCEPTIONS:
        return _OLD_EXCEPTIONS[name]
    if name in _OLD_CELERY_PREFIXED:
        return (f"celery_{name}",)
    for prefix, old in _OLD_PREFIXES:
        if name.startswith(prefix):
            return (old + name[len(prefix) :],)
    return (name,)  # in capitals: BROKER_URL is Celery 3's name as much as Celery 5's


def _celery_names() -> list[str]:
    implemented = [s.name for s in SETTINGS.values() if s.celery_default != CONVEYOR_ONLY]
    return [*implemented, *IGNORED]


def _table() -> dict[str, str]:
    table: dict[str, str] = {}
    for name in _celery_names():
        for old in _old_names(name):
            key = old.upper()
            if table.setdefault(key, name) != name:  # a rule gone wrong: never two meanings
                raise AssertionError(f"{key} would name both {table[key]} and {name}")
    return table


OLD_NAMES: Final[Mapping[str, str]] = MappingProxyType(_table())
"""Celery's old setting names (``CELERYD_CONCURRENCY``, ``BROKER_URL``) -> the setting they
name. Read even beside a namespace (``CELERY_``), as Celery reads them."""

_ALL_NAMES: Final = (*SETTINGS, *IGNORED)
_CANDIDATES: Final = (*_ALL_NAMES, *(old.lower() for old in OLD_NAMES))


def canonical(key: str, *, old: bool = True) -> str | None:
    """The setting ``key`` names: its name, in lower case or capitals, or (with ``old``)
    Celery's old name for it. None: no setting of conveyor's or Celery's."""
    if key in SETTINGS or key in IGNORED:
        return key
    if key.isupper():
        lower = key.lower()
        if lower in SETTINGS or lower in IGNORED:
            return lower
        if old:
            return OLD_NAMES.get(key)
    return None


def unknown(key: str, prefix: str = "") -> str:
    """The error about ``prefix + key``, a name that is neither conveyor's nor Celery's:
    it names the closest valid one, spelled as ``key`` is (lower case or capitals)."""
    close = difflib.get_close_matches(key.lower(), _CANDIDATES, n=1)
    if not close:
        return f"unknown setting '{prefix}{key}'; see docs/settings.md for every setting"
    spelled = close[0].upper() if key.isupper() or close[0] not in _ALL_NAMES else close[0]
    if close[0] not in _ALL_NAMES:
        prefix = ""  # an old name is written whole, never behind a namespace
    return f"unknown setting '{prefix}{key}'; did you mean '{prefix}{spelled}'?"
