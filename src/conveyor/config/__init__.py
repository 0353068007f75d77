"""The settings: one declarative table with Celery's names, and ``Settings`` (``app.conf``).

::

    table.py     the table by section: name, default, check, Celery's default, docs
    unused.py    Celery's settings conveyor accepts without needing them, with the reason
    names.py     every spelling: capitals, and Celery's old names (CELERYD_CONCURRENCY)
    checks.py    the validators, and ``parse_rate``
    settings.py  ``Settings``: checked writes, ``from_object``, the resolved URLs and queues
    urls.py      default URLs, environment variables, ``redact_url``
    importing.py ``import_object``
    markdown.py  docs/settings.md (``make docs``)
"""

from __future__ import annotations

from conveyor.config.checks import MIN_SIGNING_KEY_BYTES, RATE_FORMS, Validator, parse_rate
from conveyor.config.importing import import_object
from conveyor.config.markdown import render_markdown
from conveyor.config.names import OLD_NAMES
from conveyor.config.settings import Settings
from conveyor.config.table import CONVEYOR_ONLY, IGNORED, SECTIONS, SETTINGS, Section, Setting
from conveyor.config.urls import (
    BROKER_URL_ENV,
    DEFAULT_BROKER_URL,
    RESULT_BACKEND_ENV,
    redact_url,
)

__all__ = [
    "BROKER_URL_ENV",
    "CONVEYOR_ONLY",
    "DEFAULT_BROKER_URL",
    "IGNORED",
    "MIN_SIGNING_KEY_BYTES",
    "OLD_NAMES",
    "RATE_FORMS",
    "RESULT_BACKEND_ENV",
    "SECTIONS",
    "SETTINGS",
    "Section",
    "Setting",
    "Settings",
    "Validator",
    "import_object",
    "parse_rate",
    "redact_url",
    "render_markdown",
]
