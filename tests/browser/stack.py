"""A running system for the dashboard's tests and screenshots: a redis-server, workers
(``-E``), ``conveyor dashboard`` as a subprocess, and a headless Chromium driven by
Selenium through Debian's chromedriver (never Selenium Manager: no download)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
sys.path[:0] = [str(TESTS / "integration"), str(TESTS), str(HERE)]  # harness, apps, redis_server

from harness import DashboardProcess, WorkerProcess  # noqa: E402

from conveyor import Conveyor  # noqa: E402
from redis_server import RedisServer  # noqa: E402

#: The app module of every process (tests/browser/dashboard_tasks.py).
APP = "dashboard_tasks"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def app_env(broker_url: str, executions: Path) -> dict[str, str]:
    """The environment of every process: the test app's settings on this broker, and
    this folder importable (``-A dashboard_tasks``)."""
    env = {
        **os.environ,
        "CONVEYOR_BROKER_URL": broker_url,
        "CONVEYOR_TEST_LEASE_TIMEOUT": "2.0",
        "CONVEYOR_TEST_MAX_DELIVERIES": "5",
        "CONVEYOR_TEST_ACKS_LATE": "1",
        "CONVEYOR_TEST_EXECUTIONS": str(executions),
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p
        ),
    }
    for name in ("CONVEYOR_RESULT_BACKEND", "CONVEYOR_APP"):
        env.pop(name, None)
    return env


@dataclass
class Stack:
    """The running system: its broker, processes and the test process's app on it."""

    directory: Path
    redis: RedisServer
    env: dict[str, str]
    app: Conveyor
    dashboard: DashboardProcess | None = None
    workers: list[WorkerProcess] = field(default_factory=list)

    def start_worker(self, name: str, *args: str) -> WorkerProcess:
        """``conveyor -A dashboard_tasks worker -E -n NAME ARGS``, ready."""
        worker = WorkerProcess(
            ["-E", "-n", name, "-l", "info", *args],
            self.env,
            self.directory / f"{name.partition('@')[0]}.log",
            app=APP,
        )
        self.workers.append(worker)
        return worker.wait_ready()

    def start_dashboard(self, *args: str) -> DashboardProcess:
        self.dashboard = DashboardProcess(args, self.env, self.directory / "dashboard.log", app=APP)
        return self.dashboard.wait_ready()

    def logs(self) -> str:
        processes: list[WorkerProcess] = [*self.workers]
        if self.dashboard is not None:
            processes.append(self.dashboard)
        return "\n".join(f"----- {p.log_path.name} -----\n{p.stderr_text()}" for p in processes)


@contextlib.contextmanager
def running_stack(directory: Path) -> Iterator[Stack]:
    """A redis-server of its own (no other test flushes it), the test app of this
    process on it (``apps.tasks``, its settings restored after), nothing started yet."""
    from apps import tasks

    (directory / "redis").mkdir(parents=True, exist_ok=True)
    redis = RedisServer(directory / "redis")
    redis.start()
    env = app_env(redis.url, directory / "executions.log")
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    tasks.configure()
    stack = Stack(directory, redis, env, tasks.app)
    try:
        yield stack
    finally:
        for process in [*stack.workers, *([stack.dashboard] if stack.dashboard else [])]:
            process.cleanup()
        tasks.app.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        tasks.configure()
        redis.stop()


def chromium(profile: Path, width: int = 1280, height: int = 900) -> object:
    """A headless Chromium under Selenium, with a fresh profile in ``profile``."""
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never download anything
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
