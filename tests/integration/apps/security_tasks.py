"""The security tests' worker app: the app of ``apps.tasks``, set up from the environment.

Only worker processes import it (``-A apps.security_tasks``), never the test process:
it changes the shared app's settings.

* ``CONVEYOR_TEST_SIGNING_KEYS``: comma-separated ``message_signing_keys`` [none]
* ``CONVEYOR_TEST_BEAT_RECORD``: with ``worker --beat``, send ``apps.tasks.record`` with
  this argument every half second [no schedule]
* ``CONVEYOR_TEST_RATE_LIMIT``: define ``apps.security_tasks.limited`` with this
  ``rate_limit`` [no such task]

Its tasks also use the broker's coordination features (a concurrency cap, a retry),
for the test that runs a worker as the least-privileged Redis user docs/security.md
describes.
"""

from __future__ import annotations

import os
from typing import Any

from apps.executions import record_event
from apps.tasks import app
from conveyor import Task
from conveyor.task import current_request

__all__ = ["app", "capped", "retry_once"]

_keys = [key for key in os.environ.get("CONVEYOR_TEST_SIGNING_KEYS", "").split(",") if key]
if _keys:
    app.conf.message_signing_keys = _keys

if os.environ.get("CONVEYOR_TEST_BEAT_RECORD"):
    app.conf.beat_schedule = {
        "signed-record": {
            "task": "apps.tasks.record",
            "schedule": 0.5,
            "args": (os.environ["CONVEYOR_TEST_BEAT_RECORD"],),
        }
    }


@app.task(bind=True, max_retries=3)
def retry_once(self: Task[..., Any], value: Any) -> Any:
    """Retries once (a message the worker itself sends), then returns ``value``."""
    request = current_request()
    record_event(request.id if request else None, "start")
    if self.request.retries == 0:
        raise self.retry(countdown=0.1)
    return value


@app.task(concurrency_limit=1)
def capped(value: Any) -> Any:
    """Returns ``value``; one at a time across the cluster (a broker-side slot)."""
    return value


_rate = os.environ.get("CONVEYOR_TEST_RATE_LIMIT")
if _rate:

    @app.task(rate_limit=_rate)
    def limited() -> None:
        """Defined only to check its ``rate_limit`` at import."""
