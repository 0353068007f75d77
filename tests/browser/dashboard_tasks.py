"""The dashboard tests' app: ``apps.tasks`` plus a task that fails until a flag file
exists (a dead letter that succeeds once requeued) and one beat entry.

Only the worker and dashboard processes import it (``-A dashboard_tasks``, with this
folder on ``PYTHONPATH``), never the test process: it changes the shared app's
``beat_schedule``.
"""

from __future__ import annotations

from pathlib import Path

from apps.executions import record_event
from apps.tasks import app

from conveyor.task import current_request

__all__ = ["ENTRY", "app", "fail_until_flag"]

#: The beat entry the schedules page lists.
ENTRY = "dashboard-report"

app.conf.beat_schedule = {
    ENTRY: {"task": "apps.tasks.record", "schedule": 3600.0, "args": ("hourly",)},
}


class NotYet(RuntimeError):
    """What ``fail_until_flag`` raises while its flag file is missing."""


@app.task(dead_letter_on_failure=True)
def fail_until_flag(flag: str) -> str:
    """Fails (and so goes to the dead letters) until the file ``flag`` exists."""
    request = current_request()
    record_event(request.id if request else None, "start")
    if not Path(flag).exists():
        raise NotYet(f"{flag} does not exist yet")
    return "flag found"
