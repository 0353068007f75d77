"""Tasks that retry, on the app of ``apps.tasks`` (workers: ``-A apps.retry_tasks``)."""

from __future__ import annotations

from typing import Any

from apps.executions import record_event
from apps.tasks import app
from conveyor import Task
from conveyor.task import current_request

__all__ = ["Flaky", "app", "backoff_then_fail", "retry_into_dead_letters", "retry_until"]

#: ``backoff_then_fail``'s curve: 0.5 s, 1 s, 2 s (factor 0.5, doubling, no jitter).
BACKOFF_FACTOR = 0.5
BACKOFF_RETRIES = 3


class Flaky(ConnectionError):
    """What the retrying tasks raise: importable in the test process too."""


def _record(event: str) -> None:
    request = current_request()
    record_event(request.id if request else None, event)


@app.task(
    autoretry_for=(Flaky,),
    retry_backoff=BACKOFF_FACTOR,
    retry_jitter=False,
    max_retries=BACKOFF_RETRIES,
)
def backoff_then_fail() -> None:
    """Always raises Flaky: retried with exponential backoff, then fails with Flaky."""
    _record("start")
    raise Flaky("still down")


@app.task(bind=True, max_retries=10)
def retry_until(self: Task[..., Any], runs: int, countdown: float) -> int:
    """Retries (``self.retry``) until its ``runs``-th run, which returns the retry count."""
    _record("start")
    if self.request.retries + 1 < runs:
        raise self.retry(exc=Flaky(f"run {self.request.retries + 1}"), countdown=countdown)
    return self.request.retries


@app.task(bind=True, max_retries=1, default_retry_delay=0.1, dead_letter_on_failure=True)
def retry_into_dead_letters(self: Task[..., Any]) -> None:
    """Fails, retries once, fails for good: lands in the dead letters."""
    _record("start")
    raise self.retry(exc=Flaky("never works"))
