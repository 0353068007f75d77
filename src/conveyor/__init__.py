"""conveyor: a distributed task queue with Celery's API and the guarantees Celery lacks."""

from __future__ import annotations

from conveyor import states
from conveyor.app import Celery, Conveyor
from conveyor.canvas import (
    Signature,
    chain,
    chord,
    chunks,
    group,
    maybe_signature,
    signature,
    xmap,
    xstarmap,
)
from conveyor.exceptions import (
    BrokerUnavailable,
    ConfigurationError,
    ConveyorError,
    DecodeError,
    EncodeError,
    Ignore,
    MaxRetriesExceededError,
    NotRegistered,
    Reject,
    Retry,
    SoftTimeLimitExceeded,
    TaskError,
    TaskRevokedError,
    TimeLimitExceeded,
    TimeoutError,
)
from conveyor.queues import Exchange, Queue
from conveyor.result import AsyncResult, EagerResult, GroupResult
from conveyor.task import Request, Task, shared_task

__version__ = "0.1.0"

__all__ = [
    "AsyncResult",
    "BrokerUnavailable",
    "Celery",
    "ConfigurationError",
    "Conveyor",
    "ConveyorError",
    "DecodeError",
    "EagerResult",
    "EncodeError",
    "Exchange",
    "GroupResult",
    "Ignore",
    "MaxRetriesExceededError",
    "NotRegistered",
    "Queue",
    "Reject",
    "Request",
    "Retry",
    "Signature",
    "SoftTimeLimitExceeded",
    "Task",
    "TaskError",
    "TaskRevokedError",
    "TimeLimitExceeded",
    "TimeoutError",
    "__version__",
    "chain",
    "chord",
    "chunks",
    "group",
    "maybe_signature",
    "shared_task",
    "signature",
    "states",
    "xmap",
    "xstarmap",
]
