"""Settings as an operator may see them (``inspect conf``, ``conveyor report``):
JSON-safe, with every secret masked."""

from __future__ import annotations

import re
from typing import Any

from conveyor.config import SETTINGS, Settings, redact_url
from conveyor.control.protocol import jsonable

#: What a masked value is shown as (Celery's humanize shows the same).
MASK = "********"

# Inside a setting's value (a dict of transport options, say): a key that names a secret.
_SECRET_KEY = re.compile(r"pass|pwd|secret|token|auth|key|credential|private", re.IGNORECASE)


def visible_settings(conf: Settings, *, with_defaults: bool = False) -> dict[str, Any]:
    """The settings of ``conf``: those set (``with_defaults``: every one), and the broker
    and result backend URLs in force, by name. Secret settings are masked, as are
    passwords in URLs and values under secret-looking keys."""
    values = dict(conf.items()) if with_defaults else conf.changes()
    shown: dict[str, Any] = {}
    for name, value in sorted(values.items()):
        setting = SETTINGS.get(name)
        if setting is not None and setting.secret:
            shown[name] = MASK if value else jsonable(value)
        else:
            shown[name] = masked(jsonable(value))
    shown["broker_url"] = redact_url(conf.broker_url_resolved())
    shown["result_backend"] = redact_url(conf.result_backend_resolved())
    return shown


def masked(value: Any) -> Any:
    """A JSON value with passwords in its strings and the values of secret-looking keys
    replaced."""
    if isinstance(value, str):
        return redact_url(value)
    if isinstance(value, dict):
        return {k: MASK if _SECRET_KEY.search(k) and v else masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v) for v in value]
    return value
