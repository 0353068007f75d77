"""Every exception conveyor raises, in one tree.

::

    ConveyorError
    ├── ConfigurationError          bad setting name or value (names the closest valid one)
    ├── NotRegistered               no task of that name in the registry
    ├── EncodeError (TypeError)     arguments or result cannot go on the wire
    ├── DecodeError (ValueError)    bytes that are not a conveyor message
    ├── BrokerError
    │   └── BrokerUnavailable       the broker cannot be reached
    ├── BackendError                the result backend failed or is disabled
    ├── TimeoutError (builtins.TimeoutError)   AsyncResult.get() ran out of time
    ├── TaskError                   a task failed remotely; its class cannot be imported here
    ├── TaskRevokedError            the task was revoked (or expired) and will not run
    ├── ChordError                  a chord's header task failed: its body does not run
    ├── WorkerLostError             the process running the task died (stored as its failure)
    └── MaxRetriesExceededError     ``self.retry()`` with no exception once retries ran out

    Control flow raised inside tasks (not failures):
    TaskControl
    ├── Retry                       raised by ``self.retry()``: run the task again later
    ├── Ignore                      acknowledge the message; store no state, send no callbacks
    └── Reject                      requeue the message (``requeue=True``) or dead-letter it

    Raised inside a running task by the worker:
    SoftTimeLimitExceeded (Exception)   the task may catch it and clean up
    TimeLimitExceeded (Exception)       stored as the failure of a task that was ended

``ExceptionInfo`` (not an exception) is what Celery's handlers and signals get as ``einfo``.
"""

from __future__ import annotations

import builtins
import traceback as tb
from dataclasses import dataclass
from typing import Any


class ConveyorError(Exception):
    """Base of every error conveyor raises."""


class ConfigurationError(ConveyorError):
    """A setting name or value is not valid."""


class NotRegistered(ConveyorError, KeyError):
    """No task is registered under this name."""

    def __str__(self) -> str:
        return Exception.__str__(self)


class EncodeError(ConveyorError, TypeError):
    """A value cannot be encoded for the wire (arguments, result)."""


class DecodeError(ConveyorError, ValueError):
    """Bytes that are not a valid conveyor message."""


class BrokerError(ConveyorError):
    """The broker refused or failed an operation."""


class BrokerUnavailable(BrokerError):
    """The broker could not be reached within ``broker_connection_timeout``."""


class BackendError(ConveyorError):
    """The result backend failed, or no backend is configured."""


class TimeoutError(ConveyorError, builtins.TimeoutError):
    """Waiting for a result took longer than the timeout."""


class TaskError(ConveyorError):
    """A task failed with an exception whose class cannot be imported here.

    Attributes:
        type_name: the remote exception's qualified class name.
        message: ``str()`` of the remote exception.
        remote_traceback: the formatted traceback from the worker.
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str | None = None):
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback


class TaskRevokedError(ConveyorError):
    """The task was revoked, or expired before it could run."""


class ChordError(ConveyorError):
    """A task of a chord's header failed, so the body never runs: stored as the
    body's failure (``get()`` on the chord's result raises it)."""


class WorkerLostError(ConveyorError):
    """The process running the task died before reporting back."""


class MaxRetriesExceededError(ConveyorError):
    """``self.retry()`` was called without ``exc`` after the task's last retry."""


class TaskControl(Exception):
    """Base of exceptions a task raises to steer its own handling."""


class Retry(TaskControl):
    """Raised by ``Task.retry``: the worker sends the task again, due at ``eta``
    (a UNIX time), with ``args``/``kwargs`` and its retry count one higher.

    ``exc`` is the exception that caused the retry (stored with the RETRY state).
    """

    def __init__(
        self,
        message: str = "",
        *,
        exc: BaseException | None = None,
        eta: float,
        args: list[object] | None = None,
        kwargs: dict[str, object] | None = None,
    ):
        super().__init__(message or (f"retry: {exc!r}" if exc is not None else "retry"))
        self.exc = exc
        self.eta = eta
        self.args_override = args
        self.kwargs_override = kwargs


class Ignore(TaskControl):
    """Raised by a task to end without a result: the worker acknowledges the message,
    stores no state (an earlier ``update_state`` stays), and sends no callbacks."""


class Reject(TaskControl):
    """Raised by a task (``acks_late``) to give its message back to the broker: with
    ``requeue=True`` to its queue (the attempt counts toward ``broker_max_deliveries``),
    else to the dead letters with ``reason``. No state is stored, no callbacks are sent.
    A message acknowledged when it started (acks early) has nothing left to reject."""

    def __init__(self, reason: object = None, requeue: bool = False):
        super().__init__(reason, requeue)
        self.reason = reason
        self.requeue = requeue

    def __str__(self) -> str:
        return f"Reject(requeue={self.requeue}): {self.reason}"


class SoftTimeLimitExceeded(Exception):
    """Raised inside a task when its soft time limit is reached."""


class TimeLimitExceeded(Exception):
    """The task was ended because it reached its hard time limit."""


@dataclass(frozen=True, slots=True)
class ExceptionInfo:
    """What Celery passes as ``einfo`` (signals, task handlers): the exception, its type
    and its traceback, as an object (``tb``) and formatted (``traceback``)."""

    exception: BaseException
    type: type[BaseException]
    tb: Any
    traceback: str

    @classmethod
    def of(cls, exc: BaseException) -> ExceptionInfo:
        text = "".join(tb.format_exception(exc))
        return cls(exc, type(exc), exc.__traceback__, text)

    def __str__(self) -> str:
        return self.traceback
