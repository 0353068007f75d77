"""Snippets of Celery's Signals user guide, as written there but for the import
(``celery`` -> ``conveyor``) and the names of this test app's tasks and workers.

What they print goes to the worker's log (a worker's stdout), or to the test's
output for the signals sent where the task is sent.
"""

from __future__ import annotations

import os
from typing import Any

from apps.tasks import app
from conveyor.signals import (
    after_task_publish,
    celeryd_init,
    setup_logging,
    task_failure,
    task_success,
    worker_process_init,
)

__all__ = ["app", "divide", "ping"]


@app.task
def ping() -> str:
    return "pong"


@app.task
def divide(x: float, y: float) -> float:
    return x / y


# -- Basics ------------------------------------------------------------------------------------


@after_task_publish.connect
def task_sent_handler(sender=None, headers=None, body=None, **kwargs):  # type: ignore[no-untyped-def]
    # information about task are located in headers for task messages
    # using the task protocol version 2.
    info = headers if "task" in headers else body
    print("after_task_publish for task id {info[id]}".format(info=info))  # noqa: UP032


@after_task_publish.connect(sender="apps.guide_signals.ping")
def ping_sent_handler(sender=None, headers=None, body=None, **kwargs):  # type: ignore[no-untyped-def]
    info = headers if "task" in headers else body
    print("after_task_publish of ping {info[id]}".format(info=info))  # noqa: UP032


# -- celeryd_init: configure one worker by its name --------------------------------------------


@celeryd_init.connect(sender="guide12@example.com")
def configure_worker12(conf=None, **kwargs):  # type: ignore[no-untyped-def]
    conf.task_default_rate_limit = "10/m"


@celeryd_init.connect
def configure_workers(sender=None, conf=None, **kwargs):  # type: ignore[no-untyped-def]
    if sender in ("guide1@example.com", "guide2@example.com"):
        conf.task_default_rate_limit = "10/m"
    print(f"configured {sender}: rate limit {conf.task_default_rate_limit}")


# -- the task signals, filtered by their sender (the task) --------------------------------------


@task_success.connect(sender=ping)
def on_ping_success(sender=None, result=None, **kwargs):  # type: ignore[no-untyped-def]
    print(f"ping succeeded with {result!r} in process {os.getpid()}")


@task_failure.connect(sender=divide)
def on_divide_failure(sender=None, task_id=None, exception=None, **kwargs):  # type: ignore[no-untyped-def]
    print(f"divide {task_id} failed: {exception!r}")


# -- worker_process_init: what each process that runs tasks sets up once -------------------------


@worker_process_init.connect
def init_worker(**kwargs: Any) -> None:
    print(f"process {os.getpid()} ready for tasks")


# -- setup_logging: take logging over, when the environment asks for it -------------------------

if os.environ.get("GUIDE_OWN_LOGGING") == "1":

    @setup_logging.connect
    def config_loggers(*args, **kwargs):  # type: ignore[no-untyped-def]
        from logging.config import dictConfig

        dictConfig(
            {
                "version": 1,
                "disable_existing_loggers": False,
                "formatters": {"own": {"format": "OWN %(levelname)s %(message)s"}},
                "handlers": {"err": {"class": "logging.StreamHandler", "formatter": "own"}},
                "root": {"handlers": ["err"], "level": "INFO"},
            }
        )
