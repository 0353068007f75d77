"""``Settings``: the settings of one app (``app.conf``), checked on every write."""

from __future__ import annotations

import copy
import inspect
import re
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import Any

from conveyor.config import names
from conveyor.config.checks import IGNORED_TRANSPORT_OPTIONS, Invalid, url
from conveyor.config.table import IGNORED, SETTINGS
from conveyor.config.urls import (
    BROKER_URL_ENV,
    DEFAULT_BROKER_URL,
    RESULT_BACKEND_ENV,
    from_env,
    redact_url,
)
from conveyor.exceptions import ConfigurationError
from conveyor.queues import Queues

#: The settings ``declared_queues()`` is built from: writing one of them rebuilds it.
_QUEUE_SETTINGS = frozenset(
    {
        "task_queues",
        "task_default_queue",
        "task_default_exchange",
        "task_default_routing_key",
        "task_default_exchange_type",
        "task_create_missing_queues",
    }
)


class Settings(MutableMapping[str, Any]):
    """The settings of one app (``app.conf``): attribute and mapping access, checked on write.

    Every write validates the name and the value and raises ConfigurationError, naming
    the closest valid name for a typo. A setting may be written, and read, by its name,
    its name in capitals, or Celery's old name (``CELERYD_CONCURRENCY``); keys are the
    lowercase names. Deleting a setting resets it to its default.
    """

    _values: dict[str, Any]
    _explicit: set[str]
    _queues: Queues | None

    def __init__(self, other: Mapping[str, Any] | Iterable[tuple[str, Any]] = (), /, **kwargs: Any):
        # Deep copies: no app may share (and mutate) another's beat_schedule or accept_content.
        self._values = {s.name: copy.deepcopy(s.default) for s in SETTINGS.values()}
        self._explicit = set()
        self._queues = None
        self.update(other, **kwargs)

    # Mapping protocol: keys are lowercase setting names.
    def __getitem__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            found = names.canonical(name) if isinstance(name, str) else None
            if found is None or found not in self._values:
                raise
            return self._values[found]

    def __setitem__(self, name: str, value: Any) -> None:
        self._commit([_checked(name, value)])

    def __delitem__(self, name: str) -> None:
        found = names.canonical(name) or name
        if found in SETTINGS:
            self._values[found] = copy.deepcopy(SETTINGS[found].default)
        elif found in self._values:
            del self._values[found]
        else:
            raise KeyError(name)
        self._explicit.discard(found)
        self._queues = None

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
        found = names.canonical(name)
        if found is not None and values is not None and found in values:
            return values[found]
        if found is not None and found in IGNORED:
            raise AttributeError(f"{name} is not set (conveyor does not need it: {IGNORED[found]})")
        raise AttributeError(names.unknown(name))

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
        """Set several settings at once, by any of their spellings.

        All are checked before any is set. Raises: ConfigurationError.
        """
        items = list(other.items() if isinstance(other, Mapping) else other)
        self._commit([_checked(k, v) for k, v in [*items, *kwargs.items()]])

    def from_object(self, obj: object, namespace: str | None = None) -> None:
        """Read settings from a module, an object's attributes, or a dict.

        Without ``namespace`` every public attribute that is not a module, class or function
        is a setting (so a typo is an error). With ``namespace="CELERY"`` (Django's
        settings.py) the ``CELERY_*`` names are read, prefix stripped, and so are Celery's
        old names (``BROKER_URL``, ``CELERYD_CONCURRENCY``), as Celery reads them; other
        names are not settings. All are checked before any is set. Raises: ConfigurationError.
        """
        is_mapping = isinstance(obj, Mapping)
        keys = list(obj) if isinstance(obj, Mapping) else _public_names(obj)
        prefix = namespace.rstrip("_") + "_" if namespace else ""
        checked = []
        for key in keys:
            if prefix:
                # Only these names are read: a Django settings object may raise for others.
                if not isinstance(key, str):
                    continue
                if key.startswith(prefix):
                    stripped = key[len(prefix) :]
                    if names.canonical(stripped, old=False) is None and key in names.OLD_NAMES:
                        checked.append(_checked(key, _value(obj, key)))  # CELERY_ALWAYS_EAGER
                    else:
                        checked.append(_checked(stripped, _value(obj, key), prefix=prefix))
                elif key in names.OLD_NAMES:
                    checked.append(_checked(key, _value(obj, key)))
                continue
            value = _value(obj, key)
            if not is_mapping and _incidental(key, value):
                continue
            checked.append(_checked(key, value))
        self._commit(checked)

    def changes(self) -> dict[str, Any]:
        """The settings set explicitly (or mutated in place), by name."""
        return {
            name: value
            for name, value in self._values.items()
            if name in self._explicit or (name in SETTINGS and value != SETTINGS[name].default)
        }

    def ignored_settings(self) -> list[tuple[str, str]]:
        """``(name, reason)`` for each Celery setting that was set but conveyor does not need,
        and for each such transport option (``broker_transport_options['visibility_timeout']``)."""
        found = [(name, IGNORED[name]) for name in self._values if name in IGNORED]
        for setting in ("broker_transport_options", "result_backend_transport_options"):
            for option in self._values[setting]:
                if option in IGNORED_TRANSPORT_OPTIONS:
                    found.append((f"{setting}[{option!r}]", IGNORED_TRANSPORT_OPTIONS[option]))
        return found

    def broker_url_resolved(self) -> str:
        """The broker URL: ``broker_url``, else ``$CONVEYOR_BROKER_URL``, else the SQLite file."""
        found: str | None = self._values["broker_url"]
        return found or _url_from_env(BROKER_URL_ENV) or DEFAULT_BROKER_URL

    def result_backend_resolved(self) -> str:
        """The result backend URL: ``result_backend``, else ``$CONVEYOR_RESULT_BACKEND``,
        else the broker URL (results live beside the messages)."""
        found: str | None = self._values["result_backend"]
        return found or _url_from_env(RESULT_BACKEND_ENV) or self.broker_url_resolved()

    def declared_queues(self) -> Queues:
        """The queues of ``task_queues`` (or the default queue alone), with the routing
        defaults filled in: what a worker consumes without ``-Q``, and where a routing
        key leads (see ``conveyor.queues``)."""
        if self._queues is None:
            v = self._values
            self._queues = Queues(
                v["task_queues"] or (),
                default_queue=v["task_default_queue"],
                default_exchange=v["task_default_exchange"],
                default_routing_key=v["task_default_routing_key"],
                default_exchange_type=v["task_default_exchange_type"],
                create_missing=v["task_create_missing_queues"],
            )
        return self._queues

    def _commit(self, checked: list[tuple[str, Any, str]]) -> None:
        given: dict[str, tuple[str, Any]] = {}
        for name, value, key in checked:
            if name in given and given[name][1] != value:
                raise ConfigurationError(
                    f"{given[name][0]} and {key} both set {name}, to different values: keep one"
                )
            given[name] = (key, value)
        for name, (_, value) in given.items():
            self._values[name] = value
            self._explicit.add(name)
            if name in _QUEUE_SETTINGS:
                self._queues = None


def _checked(key: Any, value: Any, *, prefix: str = "") -> tuple[str, Any, str]:
    """The canonical name, the value to store and the key as written, or ConfigurationError."""
    if not isinstance(key, str):
        raise ConfigurationError(f"setting names are strings, got {key!r}")
    name = names.canonical(key)
    if name is None:
        raise ConfigurationError(names.unknown(key, prefix))
    if name in IGNORED:
        return name, value, prefix + key
    try:
        return name, SETTINGS[name].validate(value), prefix + key
    except Invalid as exc:
        raise ConfigurationError(
            _invalid(prefix + key, value, exc, secret=SETTINGS[name].secret)
        ) from None


def _invalid(shown_name: str, value: Any, exc: Invalid, *, secret: bool = False) -> str:
    shown = _shown(value, secret=secret)
    message = f"{shown_name} must be {exc.expected}, got {shown} ({type(value).__name__})"
    return f"{message}: {exc.why}" if exc.why else message


# A key inside a setting's value (transport options, say) that names a secret.
_SECRET_KEY = re.compile(r"pass|pwd|secret|token|auth|credential|private", re.IGNORECASE)


def _without_secrets(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: "***" if isinstance(k, str) and _SECRET_KEY.search(k) and v else _without_secrets(v)
            for k, v in value.items()
        }
    return value


def _shown(value: Any, *, secret: bool = False) -> str:
    if secret:
        return "***"
    shown = redact_url(repr(_without_secrets(value)))
    return shown if len(shown) <= 80 else shown[:77] + "..."


def _url_from_env(variable: str) -> str | None:
    value = from_env(variable)
    try:
        return url(value)
    except Invalid as exc:
        raise ConfigurationError(_invalid(f"${variable}", value, exc)) from None


def _public_names(obj: object) -> list[str]:
    return [name for name in dir(obj) if not name.startswith("_")]


def _value(obj: object, key: str) -> Any:
    return obj[key] if isinstance(obj, Mapping) else getattr(obj, key)


def _incidental(name: str, value: Any) -> bool:
    """True for what a config module holds besides settings: imports, helpers, typing names."""
    if names.canonical(name) is not None:
        return False  # e.g. task_routes = my_router_function
    if inspect.ismodule(value) or inspect.isclass(value) or inspect.isroutine(value):
        return True
    # `from __future__ import annotations`, `from typing import TYPE_CHECKING, Final`
    return name == "TYPE_CHECKING" or type(value).__module__ in ("__future__", "typing")
