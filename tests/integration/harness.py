"""Running real ``conveyor`` processes from tests: workers, CLI commands, waiting."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, TypeVar

from conveyor.brokers.base import Broker, QueueStats
from redis_server import free_port

#: tests/integration: the working directory of every process, so ``-A apps.tasks`` imports.
HERE = Path(__file__).resolve().parent
APP = "apps.tasks"
#: The banner's last heading: a worker prints it once connected, just before it starts.
BANNER_END = "  tasks:"

T = TypeVar("T")


def conveyor_command(*args: str, app: str | None = APP) -> list[str]:
    """``python -m conveyor [-A app] ARGS`` with this interpreter (the venv's)."""
    head = [sys.executable, "-m", "conveyor"]
    return [*head, "-A", app, *args] if app else [*head, *args]


def wait_until(probe: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Call ``probe`` until it returns something truthy; return that, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def _state(pid: int) -> str | None:
    """The one-letter state of a process (R, S, Z...), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rpartition(")")[2].split()[0]


class WorkerProcess:
    """One ``conveyor worker`` process, the leader of its own process group.

    Its stdout and stderr go to a file, so no pipe can fill up and block it.
    """

    #: The ``conveyor`` command it runs.
    command = "worker"

    def __init__(self, args: Sequence[str], env: Mapping[str, str], log_path: Path, app: str = APP):
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "wb")  # noqa: SIM115 - closed by cleanup()
        try:
            self.proc = subprocess.Popen(
                conveyor_command(self.command, *args, app=app),
                cwd=HERE,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: kill_group() gets the children
            )
        except BaseException:
            self._log.close()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr_text(self) -> str:
        """Everything the worker printed so far (banner and log lines)."""
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 15.0) -> WorkerProcess:
        """Block until the banner is out: the broker is connected and the pool starting."""

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"worker exited with code {self.proc.returncode} before it was ready:\n"
                    + self.stderr_text()
                )
            return BANNER_END in self.stderr_text()

        wait_until(ready, timeout, "the worker banner")
        return self

    def pool_pids(self) -> list[int]:
        """Process ids of the worker's live children (its prefork pool), from /proc.

        Each thread has its own ``children`` list (a replacement child is forked by
        the pool's reader thread), and a child that died but is not yet reaped is
        a zombie, not a pool member.
        """
        pids = []
        for children in Path(f"/proc/{self.pid}/task").glob("*/children"):
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                pids += [int(pid) for pid in children.read_text().split()]
        return sorted(pid for pid in pids if _state(pid) not in ("Z", "X", None))

    def terminate(self) -> None:
        """SIGTERM to the worker process alone (as a process manager sends it)."""
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        """The exit code, waiting at most ``timeout`` seconds for it."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"worker still running after {timeout} s:\n{self.stderr_text()}"
            ) from None

    def kill_group(self) -> None:
        """SIGKILL the worker and its pool children at once (a host or container dying)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)

    def cleanup(self) -> None:
        """Kill whatever of the group is left, reap the worker, close the log."""
        self.kill_group()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self._log.close()


class DashboardProcess(WorkerProcess):
    """One ``conveyor dashboard`` process on a loopback port, run and killed as a worker."""

    command = "dashboard"

    def __init__(
        self,
        args: Sequence[str],
        env: Mapping[str, str],
        log_path: Path,
        app: str = APP,
        port: int | None = None,
    ):
        self.port = port or free_port()
        argv = ["--port", str(self.port), "--address", "127.0.0.1", "-l", "warning", *args]
        super().__init__(argv, env, log_path, app=app)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def wait_ready(self, timeout: float = 20.0) -> DashboardProcess:
        """Block until it answers HTTP (any status: it may want credentials)."""

        def answers() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"dashboard exited with {self.proc.returncode}:\n{self.stderr_text()}"
                )
            try:
                with urllib.request.urlopen(self.url, timeout=2):
                    return True
            except urllib.error.HTTPError:
                return True
            except OSError:
                return False

        wait_until(answers, timeout, "the dashboard to answer", interval=0.1)
        return self


class BeatProcess(WorkerProcess):
    """One ``conveyor beat`` process, run and killed as a worker is."""

    command = "beat"

    def wait_ready(self, timeout: float = 15.0) -> BeatProcess:
        """Block until its log says it started: the entries are read, the loop is on."""

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"beat exited with code {self.proc.returncode} before it was ready:\n"
                    + self.stderr_text()
                )
            return " started with " in self.stderr_text()

        wait_until(ready, timeout, "beat to start")
        return self


def run_conveyor(
    *args: str, env: Mapping[str, str], app: str | None = APP, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Run one ``conveyor`` command to completion and capture its output."""
    return subprocess.run(
        conveyor_command(*args, app=app),
        cwd=HERE,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


#: The ``start_worker`` fixture: ``start_worker(*worker_args, env=None) -> WorkerProcess``.
StartWorker = Callable[..., WorkerProcess]


def workers_of(start_worker: StartWorker, app: str) -> StartWorker:
    """``start_worker`` for the app module ``app``: an integration app that adds tasks
    to the app of ``apps.tasks`` (``apps.canvas_tasks``, ``apps.limit_tasks``, ...)."""
    return functools.partial(start_worker, app=app)


#: The ``start_beat`` fixture: ``start_beat(*beat_args, env=None, app=...) -> BeatProcess``.
StartBeat = Callable[..., BeatProcess]

#: The ``conveyor_cli`` fixture: ``conveyor_cli(*args, app="apps.tasks") -> CompletedProcess``.
RunCli = Callable[..., "subprocess.CompletedProcess[str]"]


def ids_in_queue(broker: Broker, queue: str = "celery") -> set[str]:
    """The ids of the ready messages of ``queue``, looked at through the broker contract:
    lease them all, then release each at once (release undoes the delivery count)."""
    deliveries = broker.fetch([queue], 100_000, consumer="test-inspector", timeout=0)
    for delivery in deliveries:
        assert broker.release(delivery), f"could not hand back {delivery.id}"
    return {delivery.id for delivery in deliveries}


def queue_stats(broker: Broker, queue: str = "celery") -> QueueStats:
    """The counts of one queue."""
    [stats] = broker.stats([queue])
    return stats


class ExampleProcess:
    """One process of an example project (a web server, its worker), started from the
    example's folder as its README says, its output in a file; the leader of its own
    process group, so that ``cleanup`` takes a worker's pool too."""

    def __init__(self, argv: list[str], env: Mapping[str, str], log_path: Path, cwd: Path):
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "wb")  # noqa: SIM115 - closed by cleanup()
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        """The first match of ``pattern`` in the output, once it appears."""

        def seen() -> re.Match[str] | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"exited with {self.proc.returncode}:\n{self.output()}")
            return re.search(pattern, self.output())

        return wait_until(seen, timeout, repr(pattern))

    def processes(self) -> list[int]:
        """This process and its children (a worker's prefork pool), from /proc."""
        pids = [self.proc.pid]
        for children in Path(f"/proc/{self.proc.pid}/task").glob("*/children"):
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                pids += [int(pid) for pid in children.read_text().split()]
        return pids

    def stop(self) -> int:
        """SIGTERM, as a process manager stops it; the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running 30 s after SIGTERM:\n{self.output()}") from None

    def cleanup(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self._log.close()
