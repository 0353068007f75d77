"""The app of ``apps.tasks`` with a password in a setting (``-A apps.remote_tasks``):
what ``inspect conf`` must never show. ``broker_read_url`` is accepted without effect,
so the workers run as with ``apps.tasks``."""

from __future__ import annotations

from apps.tasks import app

__all__ = ["PASSWORD", "app"]

PASSWORD = "hunter2-not-shown"

app.conf.broker_read_url = f"redis://operator:{PASSWORD}@replica.invalid:6379/0"
