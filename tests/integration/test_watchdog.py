"""The worker's fetch-loop watchdog, against a redis-server frozen with SIGSTOP."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import pytest

from conveyor import Conveyor
from conveyor.worker import Worker, WorkerOptions


@pytest.mark.parametrize("pool", ["threads", "solo"])
def test_a_fetch_loop_stuck_on_a_frozen_broker_is_restarted_and_work_resumes(
    redis_server, redis_url: str, caplog: pytest.LogCaptureFixture, pool: str
) -> None:
    # Given a worker on Redis with a one-second watchdog (solo: it runs tasks in that
    # loop, and is restarted all the same when it is stuck fetching)
    app = Conveyor("watchdog", broker=redis_url)

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    options = WorkerOptions(
        queues=["celery"], concurrency=1, pool=pool, fetch_timeout=0.2, watchdog_timeout=1.0
    )
    worker = Worker(app, options)
    runner = threading.Thread(target=worker.run, daemon=True)
    caplog.set_level(logging.INFO, logger="conveyor")
    runner.start()
    try:
        assert add.delay(1, 1).get(timeout=10) == 2
        pid = redis_server._proc.pid

        # When Redis freezes (its socket accepts, nothing answers) for longer than that
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(2.5)
        finally:
            os.kill(pid, signal.SIGCONT)

        # Then the watchdog restarted the fetch loop, and tasks run again
        assert "restarting the fetch loop" in caplog.text
        assert add.delay(2, 3).get(timeout=20) == 5
    finally:
        worker.request_shutdown()
        runner.join(30)
        app.close()
    assert not runner.is_alive()
