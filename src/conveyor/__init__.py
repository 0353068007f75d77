"""conveyor: a distributed task queue with Celery's API and the guarantees Celery lacks."""

from __future__ import annotations

from conveyor import states
from conveyor.app import Celery, Conveyor
from conveyor.canvas import Signature, chain, chord, group, signature
from conveyor.exceptions import (
    BrokerUnavailable,
    ConfigurationError,
    ConveyorError,
    DecodeError,
    EncodeError,
    MaxRetriesExceededError,
    NotRegistered,
    Retry,
    SoftTimeLimitExceeded,
    TaskError,
    TaskRevokedError,
    TimeLimitExceeded,
    TimeoutError,
)
from conveyor.result import AsyncResult, EagerResult, GroupResult
from conveyor.task import Request, Task

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
    "GroupResult",
    "MaxRetriesExceededError",
    "NotRegistered",
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
    "group",
    "signature",
    "states",
]
