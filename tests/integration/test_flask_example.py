"""The Flask app (examples/flask_app), Flask's "Background Tasks with Celery" pattern, as
its README runs it: ``conveyor -A make_celery worker`` (prefork) and ``flask -A task_app
run``, from the example's folder, on a real redis-server; HTTP requests to the server."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from harness import BANNER_END, ExampleProcess, wait_until

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "flask_app"


def Example(argv: list[str], env: dict[str, str], log_path: Path) -> ExampleProcess:
    """A process of this example, started from its folder."""
    return ExampleProcess(argv, env, log_path, EXAMPLE)


class Client:
    """Form posts and JSON answers, as the example's page sends them (no proxy)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def post(self, path: str, **form: Any) -> str:
        """POST a form to a route that starts a task: the task's id."""
        data = urllib.parse.urlencode(form).encode()
        with self._opener.open(self.base + path, data=data, timeout=30) as response:
            result_id: str = json.loads(response.read())["result_id"]
            return result_id

    def result(self, result_id: str) -> dict[str, Any]:
        with self._opener.open(f"{self.base}/tasks/result/{result_id}", timeout=30) as response:
            found: dict[str, Any] = json.loads(response.read())
            return found

    def finished(self, result_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """Poll the result route, as the example's page does, until the task is ready."""
        return wait_until(
            lambda: (found := self.result(result_id))["ready"] and found, timeout, result_id
        )


def test_the_flask_app_runs_tasks_in_its_app_context(
    redis_url: str, tmp_path: Path, example_processes: list[ExampleProcess]
) -> None:
    # Given the README's two commands, the broker and result backend set in Flask's
    # config from the environment (from_prefixed_env), and a greeting of our own
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "FLASK_"))}
    env |= {
        "FLASK_CELERY__broker_url": redis_url,
        "FLASK_CELERY__result_backend": redis_url,
        "FLASK_GREETING": "Bonjour, {name} !",
    }
    worker = Example(
        [sys.executable, "-m", "conveyor", "-A", "make_celery", "worker", "--loglevel", "INFO"],
        env,
        tmp_path / "worker.log",
    )
    example_processes.append(worker)
    web = Example(
        [sys.executable, "-m", "flask", "-A", "task_app", "run", "--port", "0"],
        env,
        tmp_path / "flask.log",
    )
    example_processes.append(web)
    worker.wait_for(re.escape(BANNER_END))
    port = web.wait_for(r"Running on http://127\.0\.0\.1:(\d+)").group(1)
    client = Client(f"http://127.0.0.1:{port}")
    # (the worker is a prefork one, on the broker Flask's config names)
    assert "pool:     prefork" in worker.output()
    assert f"broker:   {redis_url}" in worker.output()

    # When a form starts a task, Then its result comes back through AsyncResult(id)
    added = client.post("/tasks/add", a=2, b=3)
    assert client.finished(added) == {"ready": True, "successful": True, "value": 5}

    # When a task reads current_app.config, Then it runs inside the worker's Flask app
    # context (the FlaskTask's __call__), with the config create_app() built
    greeted = client.post("/tasks/greet", name="Ann")
    assert client.finished(greeted)["value"] == "Bonjour, Ann !"

    # When a task reports its progress with update_state, Then the result route shows
    # the progress while it runs, and its value once done
    processing = client.post("/tasks/process", total=2)
    progress = wait_until(
        lambda: (found := client.result(processing))["value"] and found, 10, "progress"
    )
    assert (progress["ready"], progress["successful"]) == (False, None)
    assert progress["value"] in ({"current": 1, "total": 2}, {"current": 2, "total": 2})
    assert client.finished(processing) == {
        "ready": True,
        "successful": True,
        "value": {"current": 2, "total": 2},
    }

    # When a task is sent whose result is ignored (task_ignore_result in Flask's config)
    blocked = client.post("/tasks/block")
    worker.wait_for(re.escape(f"task_app.tasks.block[{blocked}] received"))
    # Then it runs, and there is no result to wait for
    assert client.result(blocked) == {"ready": False, "successful": None, "value": None}

    # And both stop on SIGTERM (the worker waits for the five-second task to finish)
    assert web.stop() in (0, -signal.SIGTERM), web.output()
    assert worker.stop() == 0, worker.output()
    assert f"task_app.tasks.block[{blocked}] succeeded" in worker.output()
