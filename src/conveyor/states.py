"""Task state names, as in Celery."""

from __future__ import annotations

PENDING = "PENDING"
STARTED = "STARTED"
RETRY = "RETRY"
SUCCESS = "SUCCESS"
FAILURE = "FAILURE"
REVOKED = "REVOKED"

#: States after which a task's record no longer changes.
READY_STATES = frozenset({SUCCESS, FAILURE, REVOKED})
#: States a task passes through before it is ready.
UNREADY_STATES = frozenset({PENDING, STARTED, RETRY})
ALL_STATES = READY_STATES | UNREADY_STATES

#: How a run ended when the task raised ``Ignore`` (or was replaced) or ``Reject``: what
#: ``task_postrun`` and an eager result report (as Celery's); never stored.
IGNORED = "IGNORED"
REJECTED = "REJECTED"
#: States whose stored result is an exception (``AsyncResult.result`` rebuilds it).
EXCEPTION_STATES = frozenset({RETRY, FAILURE, REVOKED})
