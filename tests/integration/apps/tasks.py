"""The integration tests' app: small tasks that record every execution.

Settings a test tunes come from the environment, read at import (in the
worker process, at start-up; in the test process, again by ``configure``):

* ``CONVEYOR_TEST_LEASE_TIMEOUT``: ``broker_lease_timeout`` in seconds [2.0]
* ``CONVEYOR_TEST_MAX_DELIVERIES``: ``broker_max_deliveries`` [5]
* ``CONVEYOR_TEST_ACKS_LATE``: ``task_acks_late``, ``1`` or ``0`` [1]
* ``CONVEYOR_TEST_RESULT_EXPIRES``: ``result_expires`` in seconds [the setting's default]
* ``CONVEYOR_TEST_CONNECTION_TIMEOUT``: ``broker_connection_timeout`` in seconds
  [the setting's default]
* ``CONVEYOR_TEST_ALLOW_EVICTION``: ``redis_allow_eviction``, ``1`` or ``0`` [0]
* ``CONVEYOR_TEST_EXECUTIONS``: the executions log (see ``apps.executions``)
* ``CONVEYOR_TEST_REPLICA_ACKS``: ``broker_replica_acks`` behind Sentinel [1]

The broker and results come from ``$CONVEYOR_BROKER_URL``, as in production. A
``sentinel://`` URL names the test topology's sentinels, which watch ``mymaster``.
"""

from __future__ import annotations

import os
import time
from typing import Any

from apps.executions import record_event
from conveyor import Conveyor, Task
from conveyor.config import SETTINGS
from conveyor.task import current_request

app = Conveyor("integration")


def _seconds(variable: str, setting: str) -> float:
    """``$variable`` as seconds, or the default of ``setting`` when it is unset or empty."""
    value = os.environ.get(variable)
    return float(value) if value else float(SETTINGS[setting].default)


#: The master the test suite's sentinels watch (tests/redis_topology.py).
SENTINEL_MASTER = "mymaster"


def settings_from_env() -> dict[str, Any]:
    """The settings this app takes from the environment."""
    # reset when not behind Sentinel: a test process runs tests of every broker in turn
    sentinel: dict[str, Any] = {"broker_transport_options": {}, "broker_replica_acks": 0}
    if os.environ.get("CONVEYOR_BROKER_URL", "").startswith("sentinel://"):
        sentinel = {
            "broker_transport_options": {"master_name": SENTINEL_MASTER},
            "broker_replica_acks": int(os.environ.get("CONVEYOR_TEST_REPLICA_ACKS", "1")),
        }
    return {
        **sentinel,
        "broker_lease_timeout": float(os.environ.get("CONVEYOR_TEST_LEASE_TIMEOUT", "2.0")),
        "broker_max_deliveries": int(os.environ.get("CONVEYOR_TEST_MAX_DELIVERIES", "5")),
        "task_acks_late": os.environ.get("CONVEYOR_TEST_ACKS_LATE", "1") == "1",
        "result_expires": _seconds("CONVEYOR_TEST_RESULT_EXPIRES", "result_expires"),
        "broker_connection_timeout": _seconds(
            "CONVEYOR_TEST_CONNECTION_TIMEOUT", "broker_connection_timeout"
        ),
        "redis_allow_eviction": os.environ.get("CONVEYOR_TEST_ALLOW_EVICTION", "0") == "1",
    }


def configure() -> None:
    """Re-read the environment: the test process calls this once per test."""
    app.close()
    app.conf.update(settings_from_env())


configure()


class Boom(ValueError):
    """What ``fail`` raises: a class the test process can import, to check re-raising."""


def _record(event: str) -> None:
    request = current_request()
    record_event(request.id if request else None, event)


@app.task
def add(x: int, y: int) -> int:
    _record("start")
    _record("end")
    return x + y


@app.task
def record(x: Any) -> Any:
    """Records its execution, then returns ``x``."""
    _record("start")
    _record("end")
    return x


@app.task
def sleep_then_record(seconds: float) -> float:
    """Records its start, sleeps, records its end; returns ``seconds``."""
    _record("start")
    time.sleep(seconds)
    _record("end")
    return seconds


@app.task(ignore_result=True)
def record_without_result(x: Any) -> Any:
    """``record``, declared with ``ignore_result=True``: its return value is never stored."""
    _record("start")
    _record("end")
    return x


@app.task(bind=True)
def record_eta(self: Task[..., Any], x: Any) -> float | None:
    """Records its execution; returns the due time its message carried (UNIX seconds)."""
    _record("start")
    _record("end")
    eta = self.request.eta
    return None if eta is None else eta.timestamp()


@app.task
def sleep_then_report(seconds: float) -> dict[str, Any]:
    """``sleep_then_record``, returning who ran it: the worker's hostname and the pids."""
    _record("start")
    time.sleep(seconds)
    _record("end")
    request = current_request()
    return {
        "hostname": request.hostname if request else None,
        "pid": os.getpid(),
        "ppid": os.getppid(),
    }


@app.task
def fail(message: str = "boom") -> None:
    _record("start")
    raise Boom(message)


@app.task
def die() -> None:
    """Kills the process running it, as a segfault or the OOM killer would."""
    _record("start")
    os._exit(1)


@app.task(bind=True)
def whoami(self: Task[..., Any]) -> dict[str, Any]:
    """The parts of ``self.request`` a task may rely on."""
    request = self.request
    return {
        "id": request.id,
        "task": request.task,
        "retries": request.retries,
        "delivery_count": request.delivery_count,
        "queue": request.queue,
        "hostname": request.hostname,
        "is_eager": request.is_eager,
    }
