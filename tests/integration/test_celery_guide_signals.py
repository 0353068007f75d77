"""The snippets of Celery's Signals user guide (``apps.guide_signals``), with real worker
processes: each does what the guide says it does."""

from __future__ import annotations

import pytest
from apps import guide_signals
from harness import StartWorker, wait_until, workers_of

from conveyor import Conveyor

APP = "apps.guide_signals"
pytestmark = pytest.mark.brokers("sqlite")
UNBUFFERED = {"PYTHONUNBUFFERED": "1"}


def test_after_task_publish_runs_where_the_task_is_sent_and_filters_by_task_name(
    app: Conveyor, capsys: pytest.CaptureFixture[str]
) -> None:
    ping = guide_signals.ping.delay()
    divide = guide_signals.divide.delay(1, 2)

    out = capsys.readouterr().out
    assert f"after_task_publish for task id {ping.id}" in out
    assert f"after_task_publish for task id {divide.id}" in out
    assert f"after_task_publish of ping {ping.id}" in out
    assert f"after_task_publish of ping {divide.id}" not in out


def test_celeryd_init_configures_one_worker_by_its_name(
    app: Conveyor, start_worker: StartWorker
) -> None:
    start = workers_of(start_worker, APP)
    named = start("-P", "threads", "-n", "guide12@example.com", env=UNBUFFERED).wait_ready()
    other = start("-P", "threads", "-n", "guide3@example.com", env=UNBUFFERED).wait_ready()

    assert "configured guide12@example.com: rate limit 10/m" in named.stderr_text()
    assert "configured guide3@example.com: rate limit None" in other.stderr_text()


def test_task_signals_filtered_by_their_task_and_process_init_run_in_the_pool_children(
    app: Conveyor, start_worker: StartWorker
) -> None:
    worker = workers_of(start_worker, APP)("-P", "prefork", "-c", "2", env=UNBUFFERED)
    worker.wait_ready()

    assert guide_signals.ping.delay().get(timeout=15) == "pong"
    with pytest.raises(ZeroDivisionError):
        guide_signals.divide.delay(1, 0).get(timeout=15)

    children = worker.pool_pids()
    log = lambda: worker.stderr_text()  # noqa: E731
    wait_until(lambda: "divide" in log() and "ping succeeded" in log(), 10, "the receivers")
    assert all(f"process {pid} ready for tasks" in log() for pid in children)
    [line] = [x for x in log().splitlines() if "ping succeeded" in x]
    assert line.startswith("ping succeeded with 'pong' in process ")
    assert int(line.rsplit(" ", 1)[1]) in children
    assert "failed: ZeroDivisionError('division by zero')" in log()


@pytest.mark.app_env(GUIDE_OWN_LOGGING="1")
def test_a_setup_logging_receiver_takes_logging_over(
    app: Conveyor, start_worker: StartWorker
) -> None:
    worker = workers_of(start_worker, APP)("-P", "threads", "-c", "1").wait_ready()

    assert guide_signals.ping.delay().get(timeout=15) == "pong"

    wait_until(lambda: "OWN INFO " in worker.stderr_text(), 10, "the receiver's format")
    lines = [x for x in worker.stderr_text().splitlines() if "succeeded in" in x]
    assert lines
    assert all(x.startswith("OWN INFO ") for x in lines)
