"""Helpers for users' own tests: a real worker running in a thread of the test process.

Use with ``memory://`` (or a SQLite file in a temporary directory)::

    app = Conveyor("t", broker="memory://")
    with start_worker(app):
        assert add.delay(2, 3).get(timeout=5) == 5
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from conveyor.app import Conveyor
from conveyor.worker import Worker, WorkerOptions


@contextmanager
def start_worker(
    app: Conveyor,
    *,
    queues: Sequence[str] | None = None,
    concurrency: int = 1,
    pool: str = "threads",
    shutdown_timeout: float = 10.0,
) -> Iterator[Worker]:
    """Run a worker for ``app`` in this process while the block runs; stop it after.

    The default ``threads`` pool needs no fork, so it works under any test runner.
    """
    worker = Worker(
        app,
        WorkerOptions(
            queues=list(queues or [app.conf.task_default_queue]),
            concurrency=concurrency,
            pool=pool,
            prefetch_multiplier=app.conf.worker_prefetch_multiplier,
            hostname=f"testing@{threading.get_ident()}",
            shutdown_timeout=shutdown_timeout,
            fetch_timeout=0.2,
        ),
    )
    worker.start()
    try:
        yield worker
    finally:
        worker.request_shutdown()
        worker.shutdown()
