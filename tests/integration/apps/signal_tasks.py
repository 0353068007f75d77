"""The signals tests' app: the app of ``apps.tasks``, with a receiver on every Celery
signal, each appending one JSON line per call to ``$CONVEYOR_TEST_SIGNALS``: the
signal, the pid and parent pid of the process it ran in, the sender, and the
keyword arguments that can be written down. A ``before_task_publish`` receiver
adds a header, which ``echo_header`` returns from the worker.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from apps.tasks import app
from conveyor import Task, signals

__all__ = ["app"]

ENV = "CONVEYOR_TEST_SIGNALS"


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Task):
        return f"task:{value.name}"
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    return type(value).__name__


def _write(signal_name: str, sender: Any, **kwargs: Any) -> None:
    path = os.environ.get(ENV)
    if not path:
        return
    record = {
        "signal": signal_name,
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "sender": _plain(sender),
        "kwargs": {k: _plain(v) for k, v in kwargs.items() if k != "signal"},
    }
    if signal_name == "task_received":
        record["request_id"] = kwargs["request"].id
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
    finally:
        os.close(fd)


def _receiver(name: str) -> Any:
    def receive(sender: Any = None, **kwargs: Any) -> None:
        _write(name, sender, **kwargs)

    receive.__name__ = f"on_{name}"
    return receive


# Module-level references: receivers are held weakly, as in Celery.
RECEIVERS = {
    name: _receiver(name)
    for name in (
        "before_task_publish",
        "after_task_publish",
        "task_received",
        "task_prerun",
        "task_postrun",
        "task_success",
        "task_failure",
        "task_retry",
        "task_revoked",
        "task_rejected",
        "task_unknown",
        "celeryd_init",
        "celeryd_after_setup",
        "worker_init",
        "worker_process_init",
        "worker_process_shutdown",
        "worker_ready",
        "worker_shutting_down",
        "worker_shutdown",
        "beat_init",
        "after_setup_logger",
        "after_setup_task_logger",
    )
}
for _name, _fun in RECEIVERS.items():
    getattr(signals, _name).connect(_fun)


@signals.before_task_publish.connect(sender="apps.signal_tasks.echo_header")
def add_header(sender: Any = None, headers: Any = None, **kwargs: Any) -> None:
    """What a tracing library does: put a context in the message's headers (here only
    for ``echo_header``: other tests of this process send messages too)."""
    if headers is not None:
        headers["x-trace"] = f"traced:{sender}"


@app.on_after_configure.connect
def setup_periodic_tasks(sender: Any, **kwargs: Any) -> None:
    """The Periodic Tasks guide's pattern: entries added once the app is configured."""
    _write("on_after_configure", sender)
    sender.add_periodic_task(1.0, echo_header.s(), name="from on_after_configure")


@app.task(bind=True)
def echo_header(self: Task[..., Any]) -> Any:
    """The trace header a before_task_publish receiver added, as the worker sees it."""
    return self.request.headers.get("x-trace")


@app.task
def boom() -> None:
    raise ValueError("boom")


@app.task(bind=True, max_retries=1, default_retry_delay=0.1)
def retry_once(self: Task[..., Any]) -> str:
    if self.request.retries == 0:
        raise self.retry(exc=KeyError("again"))
    return "done"


@app.task
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds
