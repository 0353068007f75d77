"""Fixtures for tests that run real ``conveyor worker`` processes on a real broker.

Every test that uses the broker runs twice: on its own SQLite file in
``tmp_path`` and on the session's redis-server (flushed before the test). The
broker's URL is exported as ``$CONVEYOR_BROKER_URL`` (results go to the same
place); each test also gets an executions log and a ``start_worker`` factory
whose processes are always killed at teardown. ``@pytest.mark.brokers("redis")``
limits a test to some of the brokers.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `apps` and `harness`, any import mode

from apps import executions as executions_log
from apps import tasks
from harness import (
    APP,
    BeatProcess,
    ExampleProcess,
    RunCli,
    StartBeat,
    StartWorker,
    WorkerProcess,
    run_conveyor,
)

from conveyor import Conveyor

#: Every broker the suite runs on, by the id pytest shows: ``test_x[sqlite]``, ``test_x[redis]``.
BROKERS = ("sqlite", "redis")
#: Brokers a test runs on only when its ``brokers`` marker names them: Redis behind the
#: session's sentinels (``sentinel``, the core cases).
OPT_IN_BROKERS = ("sentinel",)
#: The core cases: the marker of a test that runs on every broker, Sentinel included.
EVERY_BROKER = (*BROKERS, *OPT_IN_BROKERS)

#: (test id, what, value) of every figure a test measured, shown after the run.
_MEASURED: list[tuple[str, str, object]] = []

#: The environment the test app reads (see apps/tasks.py); ``@pytest.mark.app_env`` adds to it.
DEFAULT_APP_ENV = {
    "CONVEYOR_TEST_LEASE_TIMEOUT": "2.0",
    "CONVEYOR_TEST_MAX_DELIVERIES": "5",
    "CONVEYOR_TEST_ACKS_LATE": "1",
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "app_env(**variables): environment for the test app, in the test and its workers",
    )
    config.addinivalue_line(
        "markers",
        f"brokers(*names): run the test on these brokers only (of {', '.join(EVERY_BROKER)})",
    )


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Keep the figures tests measured (``record_property("measured: what", value)``)."""
    if report.when == "call":
        for name, value in report.user_properties:
            if str(name).startswith("measured: "):
                _MEASURED.append((report.nodeid, str(name)[len("measured: ") :], value))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Show the measured figures at the end of the run, pass or fail."""
    if _MEASURED:
        terminalreporter.section("measured")
        for nodeid, name, value in _MEASURED:
            terminalreporter.write_line(f"{nodeid.rpartition('::')[2]}: {name} = {value}")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run every test that uses the broker once per broker (``brokers`` marker: some)."""
    if "broker_url" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("brokers")
    names = marker.args if marker else BROKERS
    unknown = set(names) - set(EVERY_BROKER)
    if unknown:
        raise pytest.UsageError(f"{metafunc.function.__name__}: unknown brokers {unknown}")
    metafunc.parametrize("broker_url", names, indirect=True)


@pytest.fixture
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """This test's broker, empty: a fresh SQLite file (absolute path: four slashes), the
    session's redis-server, flushed, or the session's sentinels (the test app then sets
    ``master_name`` and ``broker_replica_acks = 1``: see apps/tasks.py)."""
    if request.param in ("redis", "sentinel"):
        url: str = request.getfixturevalue(f"{request.param}_url")
        return url
    return f"sqlite:///{tmp_path / 'conveyor.sqlite3'}"


@pytest.fixture
def executions(tmp_path: Path) -> executions_log.Executions:
    """The log every task of this test's workers appends its runs to."""
    return executions_log.Executions(tmp_path / "executions.log")


@pytest.fixture
def app(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    broker_url: str,
    executions: executions_log.Executions,
) -> Iterator[Conveyor]:
    """The test app, in this process, on this test's broker; its environment is what
    the workers started by ``start_worker`` inherit."""
    env = dict(DEFAULT_APP_ENV)
    for marker in reversed(list(request.node.iter_markers("app_env"))):
        env.update(marker.kwargs)
    env["CONVEYOR_BROKER_URL"] = broker_url
    env[executions_log.ENV] = str(executions.path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("CONVEYOR_RESULT_BACKEND", raising=False)
    monkeypatch.delenv("CONVEYOR_APP", raising=False)
    tasks.configure()
    yield tasks.app
    tasks.app.close()


@pytest.fixture
def start_worker(app: Conveyor, tmp_path: Path) -> Iterator[StartWorker]:
    """``start_worker(*worker_args, env={...}, app="apps.tasks")`` starts
    ``conveyor -A <app> worker``.

    Each worker is named ``wN@<host>`` unless ``-n`` is given, logs at info level
    to ``tmp_path/wN.log``, and is killed (its whole process group) at teardown.
    """
    started: list[WorkerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, app: str = APP) -> WorkerProcess:
        number = len(started) + 1
        argv = list(args)
        if "-n" not in argv and "--hostname" not in argv:
            argv += ["-n", f"w{number}@%h"]
        if "-l" not in argv and "--loglevel" not in argv:
            argv += ["-l", "info"]
        env = {**os.environ, **(env or {})}
        worker = WorkerProcess(argv, env, tmp_path / f"w{number}.log", app=app)
        started.append(worker)
        return worker

    yield start
    for number, worker in enumerate(started, 1):
        worker.cleanup()
        # shown by pytest only when the test failed
        print(f"----- worker w{number} (exit code {worker.proc.returncode}) -----")
        print(worker.stderr_text())


@pytest.fixture
def start_beat(app: Conveyor, tmp_path: Path) -> Iterator[StartBeat]:
    """``start_beat(*beat_args, env={...}, app="apps.tasks")`` starts ``conveyor -A <app>
    beat``, named ``bN@<host>`` unless ``-n`` is given, logging at info level to
    ``tmp_path/bN.log``; killed at teardown, as ``start_worker``'s workers are."""
    started: list[BeatProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, app: str = APP) -> BeatProcess:
        number = len(started) + 1
        argv = list(args)
        if "-n" not in argv and "--hostname" not in argv:
            argv += ["-n", f"b{number}@%h"]
        if "-l" not in argv and "--loglevel" not in argv:
            argv += ["-l", "info"]
        env = {**os.environ, **(env or {})}
        beat = BeatProcess(argv, env, tmp_path / f"b{number}.log", app=app)
        started.append(beat)
        return beat

    yield start
    for number, beat in enumerate(started, 1):
        beat.cleanup()
        print(f"----- beat b{number} (exit code {beat.proc.returncode}) -----")
        print(beat.stderr_text())


@pytest.fixture
def conveyor_cli(app: Conveyor) -> RunCli:
    """``conveyor_cli(*args, app="apps.tasks")`` runs one ``conveyor`` command to the end."""

    def run(*args: str, app: str | None = "apps.tasks") -> subprocess.CompletedProcess[str]:
        return run_conveyor(*args, env=dict(os.environ), app=app)

    return run


@pytest.fixture
def example_processes() -> Iterator[list[ExampleProcess]]:
    """The processes of an example a test starts (append them), killed at teardown, their
    output shown if the test failed."""
    started: list[ExampleProcess] = []
    yield started
    for process in started:
        process.cleanup()
        print(f"----- {' '.join(map(str, process.proc.args[1:5]))} -----\n{process.output()}")
