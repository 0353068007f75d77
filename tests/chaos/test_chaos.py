"""The chaos suite, short: a steady stream of tasks through killed workers and a broker
that is restarted, killed and stalled; nothing sent may be lost, and every task that
ran twice must have a cause the harness recorded (docs/reliability.md).

About half a minute per broker; ``make chaos`` runs the long version.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from redis_server import executable

from .config import Broker, short
from .engine import run

pytestmark = [pytest.mark.slow, pytest.mark.chaos, pytest.mark.timeout(240)]


@pytest.mark.parametrize("broker", ["redis", "sqlite"])
def test_under_chaos_no_task_is_lost_and_every_task_run_twice_has_a_recorded_cause(
    broker: Broker, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    if broker == "redis" and executable() is None:
        pytest.fail("redis-server is not on PATH: run `make test` (it installs it)", pytrace=False)
    # Given three workers (prefork and threads pools) and a producer sending tasks of mixed
    # lengths, some with countdowns, at a steady rate
    config = short(broker)

    # When workers are SIGKILLed and restarted meanwhile (on SQLite the producer too, mid-send),
    # and on Redis the server is restarted, SIGKILLed and stalled longer than the lease
    report = run(config, tmp_path / broker)
    print(report.text())  # shown by pytest when the test fails
    record_property("chaos table", [*report.text().splitlines()[2:4], report.data["workdir"]])

    # Then every task sent ran to its end, none was dead-lettered, each has its result
    summary = report.summary
    assert summary["sent"] == config.tasks, report.text()
    assert summary["lost"] == 0, report.text()
    assert summary["dead_letters"] == summary["missing_results"] == 0, report.text()
    # ... every task that ran twice did so for a cause the harness recorded
    assert summary["unexplained"] == 0, report.text()
    # ... each disturbance happened, and a killed worker's task ran again within 30 s
    events = summary["events"]
    assert events.get("kill worker") == config.worker_kills
    if broker == "redis":
        assert (events.get("redis restart"), events.get("redis kill")) == (1, 1)
        assert events.get("redis stall") == 1
    assert summary["redelivery"]["count"] > 0, "no kill caught a running task: nothing was tested"
    assert summary["redelivery"]["longest_s"] < 30
    assert report.passed, report.text()
