"""The default app: what code that names no app uses (Celery's ``current_app``).

A name-only signature (``signature("proj.tasks.add", args=(2, 2))``) and
``GroupResult.restore(group_id)`` need an app to send with or read from. It is the
one ``Conveyor.set_default()`` chose, else the app created last in this process.
The one created last is held weakly, so that an app nobody keeps is not kept
alive for this; the one set is held until another is set.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conveyor.app import Conveyor

__all__ = ["app_created", "default_app", "set_default_app"]

_lock = threading.Lock()
_chosen: Conveyor | None = None
_latest: weakref.ref[Conveyor] | None = None


def default_app() -> Conveyor | None:
    """The app set with ``Conveyor.set_default()``, else the one created last (if it
    still exists), else None."""
    if _chosen is not None:
        return _chosen
    latest = _latest
    return None if latest is None else latest()


def set_default_app(app: Conveyor | None) -> None:
    """Make ``app`` the default (None: back to the one created last)."""
    global _chosen
    with _lock:
        _chosen = app


def app_created(app: Conveyor) -> None:
    """Called by every new app: it becomes the default unless one was set."""
    global _latest
    with _lock:
        _latest = weakref.ref(app)
