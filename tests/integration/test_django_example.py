"""The Django project (examples/django_project) as its README runs it: ``manage.py
migrate``, ``manage.py send_report`` (the platform scheduler's command), ``conveyor -A
proj worker`` (prefork) and ``manage.py runserver``, from the project's folder, on a
real redis-server and a real SQLite file; HTTP requests to the server."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from harness import BANNER_END, ExampleProcess, wait_until

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "django_project"


def Example(argv: list[str], env: dict[str, str], log_path: Path) -> ExampleProcess:
    """A process of this example, started from its folder."""
    return ExampleProcess(argv, env, log_path, EXAMPLE)


PYTHON = sys.executable
#: An order of two lines, 2 x 150 + 1 x 99 cents.
LINES = [
    {"sku": "tea", "quantity": 2, "price_cents": 150},
    {"sku": "mug", "quantity": 1, "price_cents": 99},
]


def run(argv: list[str], env: dict[str, str], *, check: bool = True) -> str:
    """One command of the README, from the project's folder, run to its end: its output."""
    done = subprocess.run(
        argv, cwd=EXAMPLE, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    output = done.stdout + done.stderr
    if check:
        assert done.returncode == 0, f"{argv} exited with {done.returncode}:\n{output}"
    return output


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def call(base: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """(status, decoded JSON body) of one request to the server (no proxy: it is local)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)
    try:
        with opener.open(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def open_on(pids: list[int], path: Path) -> list[int]:
    """Which of these processes have a file descriptor open on ``path`` (or its -wal)."""
    names = {str(path), f"{path}-wal", f"{path}-shm"}
    holding = []
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            fds = Path(f"/proc/{pid}/fd")
            targets = set()
            for fd in fds.iterdir():
                with contextlib.suppress(OSError):
                    targets.add(os.readlink(fd))
            if targets & names:
                holding.append(pid)
    return holding


def test_the_django_project_runs_its_tasks_on_committed_rows(
    redis_url: str, tmp_path: Path, example_processes: list[ExampleProcess]
) -> None:
    # Given the project's settings from the environment: Redis for conveyor, a SQLite
    # file for Django, pool children replaced every 10 tasks; and its database migrated
    database = tmp_path / "db.sqlite3"
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "CELERY_", "DJANGO_"))
    }
    env |= {
        "CELERY_BROKER_URL": redis_url,
        "DJANGO_DB_PATH": str(database),
        "CELERY_WORKER_MAX_TASKS_PER_CHILD": "10",
    }
    run([PYTHON, "manage.py", "migrate"], env)

    # When the platform's scheduler runs the report command, before any worker is up
    sent = run([PYTHON, "manage.py", "send_report"], env)
    report_id = re.search(r"report queued: task ([0-9a-f-]{36})", sent)
    assert report_id, sent
    # Then the task waits in the queue CELERY_TASK_ROUTES sends it to, one of
    # CELERY_TASK_QUEUES
    queues = run([PYTHON, "-m", "conveyor", "-A", "proj", "queues"], env)
    assert re.search(r"reports\s*│\s*1\s*│", queues), queues
    # ... and a send to a queue those settings do not declare is refused
    # (CELERY_TASK_CREATE_MISSING_QUEUES = False)
    refused = run(
        [
            *(PYTHON, "manage.py", "shell", "-c"),
            "from orders.tasks import build_report; build_report.apply_async(queue='nowhere')",
        ],
        env,
        check=False,
    )
    assert "ConfigurationError: queue 'nowhere' is not in task_queues" in refused, refused

    # When the worker starts (prefork, no -Q) and the web server beside it
    worker = Example(
        [PYTHON, "-m", "conveyor", "-A", "proj", "worker", "-l", "info", "-c", "3"],
        env,
        tmp_path / "worker.log",
    )
    example_processes.append(worker)
    port = free_port()
    web = Example(
        [PYTHON, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"],
        env,
        tmp_path / "web.log",
    )
    example_processes.append(web)
    worker.wait_for(re.escape(BANNER_END))
    web.wait_for(re.escape(f"Starting development server at http://127.0.0.1:{port}/"))
    base = f"http://127.0.0.1:{port}"

    # Then it consumes every declared queue, and runs the report waiting there
    assert re.search(r"queues:\s+orders, reports\n", worker.output()), worker.output()
    worker.wait_for(re.escape(f"orders.tasks.build_report[{report_id.group(1)}] succeeded"))
    with contextlib.closing(sqlite3.connect(database)) as db:
        assert db.execute("SELECT confirmed_orders FROM orders_report").fetchall() == [(0,)]

    # When the view creates an order, its lines after the delay_on_commit call
    status, order = call(base, "POST", "/orders/", {"customer": "ann", "lines": LINES})
    assert (status, order["status"]) == (201, "new")

    # Then the task, sent at commit, saw the committed order and all its lines
    def confirmed(order_id: int) -> dict[str, Any] | None:
        _, found = call(base, "GET", f"/orders/{order_id}/")
        return found if found["status"] == "confirmed" else None

    found = wait_until(lambda: confirmed(order["id"]), 10, "the order to be confirmed")
    assert (found["line_count"], found["total_cents"]) == (2, 399)

    # When a view's transaction rolls back after delay_on_commit (a refused line)
    bad = [*LINES, {"sku": "void", "quantity": 0, "price_cents": 1}]
    status, refusal = call(base, "POST", "/orders/", {"customer": "bob", "lines": bad})
    # Then nothing was committed, and nothing sent (checked below: one task per order)
    assert status == 400, refusal

    # When many orders come in at once (50 tasks for 3 children, each replaced after 10)
    with ThreadPoolExecutor(8) as pool:
        replies = list(
            pool.map(
                lambda n: call(base, "POST", "/orders/", {"customer": f"c{n}", "lines": LINES}),
                range(50),
            )
        )
    assert {status for status, _ in replies} == {201}
    ids = [reply["id"] for _, reply in replies]

    # Then every task did its database work, in many child processes, each with its own
    # connection (none inherited: a child forked after another's 10 tasks works too)
    confirmations = [wait_until(lambda i=i: confirmed(i), 20, f"order {i}") for i in ids]
    assert {(c["line_count"], c["total_cents"]) for c in confirmations} == {(2, 399)}
    children = {c["confirmed_by"].rpartition(" ")[2] for c in [found, *confirmations]}
    assert len(children) >= 6, children  # 51 tasks, at most 10 per child
    log = worker.output()
    assert " ERROR" not in log, log
    succeeded = re.findall(r"orders\.tasks\.confirm_order\[[0-9a-f-]+\] succeeded", log)
    assert len(succeeded) == 51  # none for the rolled-back order
    with contextlib.closing(sqlite3.connect(database)) as db:
        assert db.execute(
            "SELECT count(*) FROM orders_order WHERE customer = 'bob'"
        ).fetchone() == (0,)

    # And between tasks, no worker process holds the database open: CONN_MAX_AGE = 0
    # closes a task's connection after it, as Django does after a request
    wait_until(
        lambda: not open_on(worker.processes(), database), 5, "the workers to close the database"
    )

    # And both stop cleanly on SIGTERM
    assert worker.stop() == 0, worker.output()
    assert web.stop() in (0, -signal.SIGTERM), web.output()
