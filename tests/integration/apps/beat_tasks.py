"""Periodic tasks for the beat tests, on the app of ``apps.tasks``.

A process started with ``-A apps.beat_tasks`` (``beat``, or ``worker --beat``)
schedules the entries named in the environment, each every
``CONVEYOR_TEST_BEAT_EVERY`` seconds (default 1), all sending ``record_slot``:

* ``CONVEYOR_TEST_BEAT_ENTRIES``: comma-separated entry names (none: no entry)
* ``CONVEYOR_TEST_BEAT_EVERY``: the interval in seconds [1]

Only processes import this module (never the test process: it sets the shared
app's ``beat_schedule``).
"""

from __future__ import annotations

import os

from apps.executions import record_event
from apps.tasks import app
from conveyor.task import current_request

__all__ = ["app", "record_slot"]

EVERY = float(os.environ.get("CONVEYOR_TEST_BEAT_EVERY") or 1.0)
ENTRIES = [n for n in os.environ.get("CONVEYOR_TEST_BEAT_ENTRIES", "").split(",") if n]

app.conf.beat_schedule = {
    name: {"task": "apps.beat_tasks.record_slot", "schedule": EVERY} for name in ENTRIES
}


@app.task
def record_slot() -> None:
    """Records ``beat,<entry>,<slot>,<sender>`` (from the headers beat adds) as the
    event of its task id, in the executions log."""
    request = current_request()
    assert request is not None
    headers = request.headers
    event = f"beat,{headers['beat_entry']},{headers['beat_slot']:.3f},{headers['beat_sender']}"
    record_event(request.id, event)
