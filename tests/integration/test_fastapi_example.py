"""The FastAPI example (examples/fastapi_app) as its README runs it: a ``uvicorn``
process and a ``conveyor worker`` process, from the example's folder, on a real
redis-server; HTTP requests to the server."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from harness import BANNER_END, ExampleProcess, wait_until

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fastapi_app"


def Example(argv: list[str], env: dict[str, str], log_path: Path) -> ExampleProcess:
    """A process of this example, started from its folder."""
    return ExampleProcess(argv, env, log_path, EXAMPLE)


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


def test_the_fastapi_example_sends_tasks_and_awaits_their_results(
    redis_url: str, tmp_path: Path, example_processes: list[ExampleProcess]
) -> None:
    # Given the README's two commands, run from the example's folder with the broker set
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env["CONVEYOR_BROKER_URL"] = redis_url
    worker_argv = [sys.executable, "-m", "conveyor", "-A", "tasks", "worker", "--loglevel=info"]
    worker = Example([*worker_argv, "-P", "threads", "-c", "4"], env, tmp_path / "worker.log")
    example_processes.append(worker)
    web = Example(
        [sys.executable, "-m", "uvicorn", "main:app", "--host", "127.0.0.1", "--port", "0"],
        env,
        tmp_path / "uvicorn.log",
    )
    example_processes.append(web)
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
