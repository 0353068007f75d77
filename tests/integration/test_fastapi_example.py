"""The FastAPI example (examples/fastapi_app) as its README runs it: a ``uvicorn``
process and a ``conveyor worker`` process, from the example's folder, on a real
redis-server; HTTP requests to the server."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import pytest
from harness import BANNER_END, wait_until

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fastapi_app"


class Service:
    """One process of the example, started from its folder, its output in a file."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "wb")  # noqa: SIM115 - closed by stop()
        self.proc = subprocess.Popen(
            argv,
            cwd=EXAMPLE,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the worker's pool goes too
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        def seen() -> re.Match[str] | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"exited with {self.proc.returncode}:\n{self.output()}")
            return re.search(pattern, self.output())

        return wait_until(seen, timeout, repr(pattern))

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


class Client:
    """JSON over HTTP to the example's server (no proxy: it is on this machine)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """(status, decoded JSON body)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base + path, data=data, method=method, headers={"content-type": "application/json"}
        )
        with self._opener.open(request, timeout=30) as response:
            return response.status, json.loads(response.read())


@pytest.fixture
def services(tmp_path: Path) -> Iterator[list[Service]]:
    """The processes a test starts, killed at teardown (their output shown on failure)."""
    started: list[Service] = []
    yield started
    for service in started:
        service.cleanup()
        print(f"----- {' '.join(service.proc.args[2:4])} -----\n{service.output()}")


def test_the_fastapi_example_sends_tasks_and_awaits_their_results(
    redis_url: str, tmp_path: Path, services: list[Service]
) -> None:
    # Given the README's two commands, run from the example's folder with the broker set
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env["CONVEYOR_BROKER_URL"] = redis_url
    worker_argv = [sys.executable, "-m", "conveyor", "-A", "tasks", "worker", "--loglevel=info"]
    worker = Service([*worker_argv, "-P", "threads", "-c", "4"], env, tmp_path / "worker.log")
    services.append(worker)
    web = Service(
        [sys.executable, "-m", "uvicorn", "main:app", "--host", "127.0.0.1", "--port", "0"],
        env,
        tmp_path / "uvicorn.log",
    )
    services.append(web)
    worker.wait_for(re.escape(BANNER_END))
    port = web.wait_for(r"Uvicorn running on http://127\.0\.0\.1:(\d+)").group(1)
    web.wait_for("Application startup complete")
    client = Client(f"http://127.0.0.1:{port}")

    # When a task is sent through the API, Then it answers at once with its id...
    status, sent = client.call("POST", "/tasks/add", {"x": 2, "y": 3})
    assert status == 202
    # ... and the task's result comes back through the API once the worker ran it
    status, outcome = client.call("GET", f"/tasks/{sent['task_id']}?wait=10")
    assert (status, outcome) == (
        200,
        {"task_id": sent["task_id"], "state": "SUCCESS", "result": 5, "error": None},
    )

    # When a task fails on the worker, Then the API reports its error
    _, sent = client.call("POST", "/tasks/divide", {"x": 1, "y": 0})
    _, outcome = client.call("GET", f"/tasks/{sent['task_id']}?wait=10")
    assert outcome["state"] == "FAILURE"
    assert outcome["error"] == "ZeroDivisionError: division by zero"

    # When a task is unknown (or not done), Then waiting ends with its state
    _, outcome = client.call("GET", "/tasks/no-such-task?wait=0.2")
    assert outcome["state"] == "PENDING"

    # When a request waits for a two-second task, and another comes in meanwhile
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(client.call, "POST", "/square", {"x": 7, "seconds": 2.0})
        wait_until(lambda: "tasks.square[" in worker.output(), 10, "the slow task to start")
        began = time.monotonic()
        status, _ = client.call("POST", "/tasks/add", {"x": 1, "y": 1})
        took = time.monotonic() - began
        # Then the slow one gets its value, and the other was not held up behind it:
        # the one server process's event loop was free while the first awaited
        assert slow.result(timeout=30) == (200, {"result": 49})
    assert status == 202
    assert took < 1.0, f"a request took {took:.2f} s while another awaited its task"

    # And both stop cleanly on SIGTERM (uvicorn, its shutdown done, raises the signal
    # again to exit by it)
    assert web.stop() in (0, -signal.SIGTERM), web.output()
    assert "Application shutdown complete." in web.output()
    assert worker.stop() == 0, worker.output()
