"""An app configured as a Django project configures Celery: a real Django settings object
read with ``config_from_object(settings, namespace="CELERY")``, declaring ``task_queues``.

Its settings come from the environment, read at import (in the worker) and by ``configure``
(in the test process):

* ``CONVEYOR_BROKER_URL``: the broker (``CELERY_BROKER_URL``), and results beside it
* ``CONVEYOR_TEST_CREATE_MISSING_QUEUES``: ``task_create_missing_queues``, ``1`` or ``0`` [1]
* ``CONVEYOR_TEST_EXECUTIONS``: the executions log (see ``apps.executions``)
"""

from __future__ import annotations

import os

from django.conf import LazySettings

from apps.executions import record_event
from conveyor import Conveyor, Queue
from conveyor.task import current_request

#: Celery's settings of this app that conveyor accepts and does not need (logged at start).
UNUSED = {
    "CELERY_WORKER_HIJACK_ROOT_LOGGER": False,
    "CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP": True,
    "CELERY_RESULT_EXTENDED": True,
    "CELERY_TASK_DEFAULT_DELIVERY_MODE": "persistent",
}


def django_settings() -> LazySettings:
    """The project's settings.py, as Django holds it (its own defaults included)."""
    settings = LazySettings()
    settings.configure(
        DEBUG=False,
        SECRET_KEY="not-a-secret",
        INSTALLED_APPS=["django.contrib.contenttypes"],
        CELERY_BROKER_URL=os.environ.get("CONVEYOR_BROKER_URL"),
        CELERY_TASK_QUEUES=(
            Queue("high", routing_key="high.#", exchange_type="topic"),
            Queue("low", routing_key="low.#", exchange_type="topic"),
            Queue("mail"),
        ),
        CELERY_TASK_DEFAULT_QUEUE="mail",
        CELERY_TASK_ROUTES={"apps.queue_tasks.urgent": {"routing_key": "high.urgent"}},
        CELERY_TASK_CREATE_MISSING_QUEUES=(
            os.environ.get("CONVEYOR_TEST_CREATE_MISSING_QUEUES", "1") == "1"
        ),
        CELERYD_PREFETCH_MULTIPLIER=1,  # Celery's old name, read beside the namespace
        **UNUSED,
    )
    return settings


app = Conveyor("queues")


def configure() -> None:
    """Re-read the environment: the test process calls this once per test."""
    app.close()
    app.config_from_object(django_settings(), namespace="CELERY")


configure()


def _record() -> str:
    """Records the run, and returns the queue it came from."""
    request = current_request()
    assert request is not None
    record_event(request.id, "start")
    return str(request.queue)


@app.task
def where() -> str:
    """Returns the queue it ran from."""
    return _record()


@app.task
def urgent() -> str:
    """Routed by routing key (``high.urgent``) to the ``high`` queue."""
    return _record()
