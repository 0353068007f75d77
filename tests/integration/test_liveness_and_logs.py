"""The heartbeat file with ``conveyor worker-health``, and the worker's log lines, in real
worker processes."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from apps import logging_tasks, tasks
from harness import RunCli, StartWorker, WorkerProcess, wait_until

from conveyor import Conveyor

#: Logging tasks live in their own module; a worker started with it runs them too.
LOGGING_APP = "apps.logging_tasks"
ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@dataclass(frozen=True)
class Probe:
    """What one ``conveyor worker-health`` run printed, and its wall time."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float


def health(conveyor_cli: RunCli, path: Path, *options: str) -> Probe:
    """Run ``conveyor worker-health --file PATH OPTIONS`` (no -A), timing it."""
    started = time.perf_counter()
    done = conveyor_cli("worker-health", "--file", str(path), *options, app=None)
    return Probe(done.returncode, done.stdout, done.stderr, time.perf_counter() - started)


@pytest.fixture
def start_logging_worker(app: Conveyor, tmp_path: Path) -> Iterator[Any]:
    """``start_logging_worker(*args)``: ``conveyor -A apps.logging_tasks worker -c 1 ARGS``."""
    started: list[WorkerProcess] = []

    def start(*args: str) -> WorkerProcess:
        log = tmp_path / f"logging-worker-{len(started) + 1}.log"
        worker = WorkerProcess(["-c", "1", *args], dict(os.environ), log, app=LOGGING_APP)
        started.append(worker)
        return worker.wait_ready()

    yield start
    for worker in started:
        worker.cleanup()
        print(f"----- {worker.log_path.name} (exit code {worker.proc.returncode}) -----")
        print(worker.stderr_text())


def stopped(worker: WorkerProcess) -> str:
    """SIGTERM the worker, wait for a clean exit, and return everything it printed."""
    worker.terminate()
    assert worker.wait(30) == 0
    return worker.stderr_text()


# -- the heartbeat file ----------------------------------------------------------------


def test_a_running_worker_keeps_a_heartbeat_file_that_worker_health_reads_as_alive(
    app: Conveyor, start_worker: StartWorker, conveyor_cli: RunCli, tmp_path: Path
) -> None:
    # Given a worker started with a heartbeat file
    path = tmp_path / "heartbeat.json"
    worker = start_worker("-c", "1", "--heartbeat-file", str(path)).wait_ready()

    # When the probe reads it, without the app
    wait_until(lambda: path.exists(), 10, "the heartbeat file")
    checked = health(conveyor_cli, path)

    # Then it exits 0 at once, and the file names the worker's pid and a recent fetch
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith(f"ok: pid {worker.pid}")
    print(f"worker-health wall time, interpreter start included: {checked.seconds * 1000:.0f} ms")
    assert checked.seconds < 2.0
    assert f"  liveness: {path} (read by conveyor worker-health)" in worker.stderr_text()
    beat = json.loads(path.read_text())
    assert beat["pid"] == worker.pid
    assert set(beat) == {"pid", "fetch_alive", "written", "hostname"}
    assert time.time() - beat["fetch_alive"] < 10
    # ... and the file keeps being rewritten
    written = beat["written"]
    wait_until(lambda: json.loads(path.read_text())["written"] > written, 5, "a rewrite")


@pytest.mark.brokers("sqlite")
def test_worker_health_says_stale_while_the_worker_is_frozen_longer_than_max_age(
    app: Conveyor, start_worker: StartWorker, conveyor_cli: RunCli, tmp_path: Path
) -> None:
    # Given a live worker with a heartbeat file
    path = tmp_path / "heartbeat.json"
    worker = start_worker("-c", "1", "-P", "threads", "--heartbeat-file", str(path)).wait_ready()
    wait_until(lambda: health(conveyor_cli, path, "--max-age", "3").returncode == 0, 10, "alive")

    # When the worker is frozen (SIGSTOP) for longer than --max-age
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        time.sleep(4.5)
        checked = health(conveyor_cli, path, "--max-age", "3")
    finally:
        os.kill(worker.pid, signal.SIGCONT)

    # Then the probe exits 1 with one line saying the file is stale
    assert checked.returncode == 1
    assert checked.stderr.startswith("stale: "), checked.stderr
    assert checked.stderr.count("\n") == 1
    # ... and once the worker runs again, it is alive again
    wait_until(lambda: health(conveyor_cli, path, "--max-age", "3").returncode == 0, 10, "alive")


@pytest.mark.brokers("sqlite")
def test_a_cleanly_stopped_worker_removes_its_heartbeat_file_and_worker_health_fails(
    app: Conveyor, start_worker: StartWorker, conveyor_cli: RunCli, tmp_path: Path
) -> None:
    # Given a worker with a heartbeat file
    path = tmp_path / "heartbeat.json"
    worker = start_worker("-c", "1", "--heartbeat-file", str(path)).wait_ready()
    wait_until(lambda: path.exists(), 10, "the heartbeat file")

    # When it stops on SIGTERM
    stopped(worker)

    # Then the file is gone, and the probe exits 1 saying so
    assert not path.exists()
    checked = health(conveyor_cli, path)
    assert checked.returncode == 1
    assert "is missing" in checked.stderr


@pytest.mark.brokers("sqlite")
def test_worker_health_says_the_pid_is_gone_after_the_worker_was_killed(
    app: Conveyor, start_worker: StartWorker, conveyor_cli: RunCli, tmp_path: Path
) -> None:
    # Given a worker with a heartbeat file
    path = tmp_path / "heartbeat.json"
    worker = start_worker("-c", "1", "--heartbeat-file", str(path)).wait_ready()
    wait_until(lambda: path.exists(), 10, "the heartbeat file")

    # When it is killed (no chance to remove the file)
    worker.kill_group()
    worker.wait(10)

    # Then the file is left behind, and the probe exits 1 naming the dead pid
    assert path.exists()
    checked = health(conveyor_cli, path)
    assert checked.returncode == 1
    assert f"pid {worker.pid} is gone" in checked.stderr


@pytest.mark.brokers("sqlite")
def test_a_heartbeat_file_that_cannot_be_written_stops_the_worker_at_start(
    app: Conveyor, start_worker: StartWorker, tmp_path: Path
) -> None:
    # When a worker is started with a heartbeat file in a directory that does not exist
    worker = start_worker("-c", "1", "--heartbeat-file", str(tmp_path / "no" / "hb.json"))

    # Then it exits 1 at once with one line naming the file
    assert worker.wait(30) == 1
    assert f"Error: cannot write the heartbeat file {tmp_path / 'no' / 'hb.json'}" in (
        worker.stderr_text()
    )


# -- log lines -------------------------------------------------------------------------


@pytest.mark.brokers("sqlite")
def test_json_log_lines_parse_and_carry_each_tasks_name_id_and_runtime(
    app: Conveyor, start_logging_worker: Any
) -> None:
    # Given a worker logging JSON
    worker = start_logging_worker("--log-format", "json")

    # When it runs a task that logs, one that logs an exception, and one that does not
    said = logging_tasks.log_line.delay("hello")
    caught = logging_tasks.log_exception.delay()
    added = tasks.add.delay(2, 3)
    assert said.get(timeout=10) == "hello"
    caught.get(timeout=10)
    assert added.get(timeout=10) == 5
    lines = [json.loads(line) for line in stopped(worker).splitlines()]

    # Then every line on stderr is a JSON object with the standard keys, the banner too
    for line in lines:
        assert {"time", "level", "logger", "process", "message"} <= set(line)
        assert ISO_UTC.fullmatch(line["time"]), line["time"]
    assert "  tasks:" in lines[0]["message"]
    # ... each task has a received and a finished line with its name, id and runtime
    for result, name in [(said, "apps.logging_tasks.log_line"), (added, "apps.tasks.add")]:
        mine = [line for line in lines if line.get("task_id") == result.id]
        assert all(line["task_name"] == name for line in mine)
        assert any(line["message"] == f"{name}[{result.id}] received" for line in mine)
        [finished] = [line for line in mine if "succeeded in" in line["message"]]
        assert finished["level"] == "INFO"
        assert isinstance(finished["runtime"], float)
    # ... the task's own line is in the task's context
    [own] = [line for line in lines if line["message"] == "task says hello"]
    assert own["logger"] == "apps.logging_tasks"
    assert (own["task_name"], own["task_id"]) == ("apps.logging_tasks.log_line", said.id)
    # ... and a logged exception carries its traceback
    [error] = [line for line in lines if line["message"] == "task caught an error"]
    assert error["level"] == "ERROR"
    assert error["task_id"] == caught.id
    assert "Traceback" in error["exc_info"]
    assert "KeyError: 'missing'" in error["exc_info"]


@pytest.mark.brokers("sqlite")
def test_a_tasks_own_text_log_line_carries_its_name_and_id(
    app: Conveyor, start_logging_worker: Any
) -> None:
    # Given a worker logging text (the default)
    worker = start_logging_worker()

    # When a task logs through logging.getLogger(__name__)
    said = logging_tasks.log_line.delay("hello")
    assert said.get(timeout=10) == "hello"
    text = stopped(worker)

    # Then its line names the task and its id, and the worker's lines frame it
    label = re.escape(f"apps.logging_tasks.log_line[{said.id}]")
    assert re.search(rf"^\[[^\]]* INFO/\S+ {label}\] task says hello$", text, re.MULTILINE)
    assert re.search(rf"^\[[^\]]* INFO/MainProcess\] {label} received$", text, re.MULTILINE)
    assert re.search(rf"{label} succeeded in \d+\.\d{{4}}s: 'hello'$", text, re.MULTILINE)


@pytest.mark.brokers("sqlite")
def test_loglevel_warning_hides_info_lines(app: Conveyor, start_logging_worker: Any) -> None:
    # Given a worker started with -l warning
    worker = start_logging_worker("-l", "warning")

    # When tasks log at INFO and at WARNING
    assert logging_tasks.log_line.delay("quietly").get(timeout=10) == "quietly"
    assert logging_tasks.log_line.delay("loudly", "warning").get(timeout=10) == "loudly"
    text = stopped(worker)

    # Then only the WARNING lines are there: no task's INFO line, no received/succeeded line
    assert "task says loudly" in text
    assert "task says quietly" not in text
    assert " INFO/" not in text
    assert "received" not in text
