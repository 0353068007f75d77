"""docs/settings.md, generated from the table (``make docs``)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

from conveyor.config.names import OLD_NAMES
from conveyor.config.table import CONVEYOR_ONLY, SECTIONS, Setting
from conveyor.config.urls import BROKER_URL_ENV, RESULT_BACKEND_ENV

_INTRO = f"""\
conveyor uses Celery's setting names. Set them on the app (`app.conf.task_acks_late = False`), \
as keywords (`Conveyor("proj", task_acks_late=False)`), or from a module, object or dict \
(`app.config_from_object("proj.celeryconfig")`; with `namespace="CELERY"` it reads the \
`CELERY_`-prefixed names of a Django `settings.py`). Every name may also be written in capitals, \
or as Celery's old name (`CELERYD_CONCURRENCY`, listed at the end). \
`${BROKER_URL_ENV}` and `${RESULT_BACKEND_ENV}` are read when `broker_url` and `result_backend` \
are unset. Every value is checked when it is set: an unknown name or a wrong type raises \
`ConfigurationError`, naming the closest valid setting. Durations are seconds (`int` or `float`) \
or a `datetime.timedelta`.

Every setting of Celery's is accepted. Those that conveyor does not need are listed under each \
section with the reason: setting one is not an error, the value is stored, and the worker and \
beat log the reason at start-up."""

_OLD_INTRO = """\
Celery 4 renamed its settings and still reads the old names, as conveyor does (in a module, \
a dict, `app.conf`, and beside the `CELERY_` names of a Django `settings.py`). The same \
setting given twice, by two names and with two values, is an error."""


def render_markdown() -> str:
    """The text of docs/settings.md, generated from the table (``python -m conveyor.config``)."""
    lines = [
        "# Settings",
        "",
        "<!-- Generated from src/conveyor/config/ by `make docs`; do not edit by hand. -->",
        "",
        _INTRO,
    ]
    for section in SECTIONS:
        lines += ["", f"## {section.title}", ""]
        if section.settings:
            lines += [
                "| setting | default | Celery's default | what it does / difference from Celery |",
                "|---|---|---|---|",
                *(_row(s) for s in section.settings),
                "",
            ]
        if section.unused:
            lines += [
                "Celery's settings of this kind that conveyor accepts without needing them:",
                "",
                *_by_reason(section.unused),
            ]
    old_by_setting: dict[str, list[str]] = defaultdict(list)
    for old, name in OLD_NAMES.items():
        if old != name.upper():  # capitals are the intro's rule
            old_by_setting[name].append(old)
    lines += [
        "",
        "## Celery's old names",
        "",
        _OLD_INTRO,
        "",
        "| old name | setting |",
        "|---|---|",
    ]
    lines += [
        f"| `{old}` | `{name}` |"
        for section in SECTIONS
        for name in (*(s.name for s in section.settings), *section.unused)
        for old in old_by_setting.get(name, ())
    ]
    return "\n".join(lines) + "\n"


def _by_reason(unused: Mapping[str, str]) -> list[str]:
    """One bullet per reason, naming every setting it is given for."""
    grouped: dict[str, list[str]] = defaultdict(list)
    for name, reason in unused.items():
        grouped[reason].append(f"`{name}`")
    return [f"- {', '.join(settings)}: {reason}" for reason, settings in grouped.items()]


def _row(s: Setting) -> str:
    text = f"{s.doc} *Differs from Celery:* {s.difference}" if s.difference else s.doc
    row = (f"`{s.name}`", _md_value(s.default), _md_value(s.celery_default), text)
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |"


def _md_value(value: object) -> str:
    return CONVEYOR_ONLY if value == CONVEYOR_ONLY else f"`{value!r}`"
