"""The dashboard's memory under load: it must stay flat, whatever the number of tasks.

Starts a redis-server, a worker with ``-E`` (task events) and ``conveyor dashboard``,
sends 100,000 no-op tasks while polling every API route every 2 s (as open browser
tabs would, all pages at once), and samples the dashboard's resident memory (RSS).
Prints the start, end and largest RSS. Run: ``.venv/bin/python -m bench.dashboard_memory
[--tasks N]`` (redis-server must be on PATH: ``make redis``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

APP = """
from conveyor import Conveyor

app = Conveyor("dashboard-bench")


@app.task(ignore_result=True)
def noop(i):
    return None
"""
ROUTES = (
    "api/overview",
    "api/queues",
    "api/workers",
    "api/tasks",
    "api/tasks?state=SUCCESS",
    "api/dead",
    "api/schedules",
    "metrics",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` in MiB (``VmRSS``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        body: bytes = response.read()
        return body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    args = parser.parse_args()
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        sys.exit("redis-server is not on PATH: run `make redis`")
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        (directory / "dashboard_bench_app.py").write_text(APP)
        redis_port, dash_port = free_port(), free_port()
        url = f"redis://127.0.0.1:{redis_port}/0"
        env = {**os.environ, "CONVEYOR_BROKER_URL": url, "PYTHONPATH": str(directory)}
        env.pop("CONVEYOR_RESULT_BACKEND", None)
        conveyor = [sys.executable, "-m", "conveyor", "-A", "dashboard_bench_app"]
        processes: list[subprocess.Popen[bytes]] = []

        def start(argv: list[str], name: str) -> subprocess.Popen[bytes]:
            log = open(directory / f"{name}.log", "wb")  # noqa: SIM115 - closed with the dir
            proc = subprocess.Popen(argv, cwd=directory, env=env, stdout=log, stderr=log)
            processes.append(proc)
            return proc

        try:
            start([redis_server, "--port", str(redis_port), "--bind", "127.0.0.1",
                   "--save", "", "--appendonly", "no"], "redis")  # fmt: skip
            time.sleep(0.5)
            start([*conveyor, "worker", "-E", "-c", "2", "-l", "warning"], "worker")
            dashboard = start(
                [*conveyor, "dashboard", "--port", str(dash_port), "-l", "warning"], "dashboard"
            )
            base = f"http://127.0.0.1:{dash_port}/"
            deadline = time.monotonic() + 30
            while True:
                try:
                    get(base)
                    break
                except (OSError, urllib.error.URLError):
                    if time.monotonic() > deadline:
                        sys.exit((directory / "dashboard.log").read_text())
                    time.sleep(0.2)
            for route in ROUTES:  # warm: every route's imports and caches loaded once
                get(base + route)
            start_rss = rss_mib(dashboard.pid)
            samples = [start_rss]
            stop = threading.Event()

            def poll() -> None:
                while not stop.is_set():
                    for route in ROUTES:
                        with contextlib.suppress(OSError):
                            get(base + route)
                    stop.wait(2.0)

            def sample() -> None:
                while not stop.is_set():
                    samples.append(rss_mib(dashboard.pid))
                    stop.wait(0.5)

            threads = [threading.Thread(target=poll), threading.Thread(target=sample)]
            for thread in threads:
                thread.start()

            sys.path.insert(0, str(directory))
            os.environ["CONVEYOR_BROKER_URL"] = url
            from dashboard_bench_app import app  # type: ignore[import-not-found]

            began = time.monotonic()
            for first in range(0, args.tasks, 1000):
                with app.publishing():
                    for i in range(first, min(first + 1000, args.tasks)):
                        app.send_task("dashboard_bench_app.noop", [i], ignore_result=True)
            sent = time.monotonic() - began
            done = 0.0
            while done < args.tasks:
                done = app.broker.counters("tasks|").get(
                    "tasks|dashboard_bench_app.noop|SUCCESS", 0
                )
                time.sleep(1.0)
            elapsed = time.monotonic() - began
            time.sleep(4.0)  # two more polls with everything done
            stop.set()
            for thread in threads:
                thread.join()
            end_rss = rss_mib(dashboard.pid)
            print(f"tasks: {args.tasks:,} sent in {sent:.1f} s, all run after {elapsed:.1f} s")
            print(f"polls: every route every 2 s ({len(ROUTES)} routes)")
            print(
                f"dashboard RSS: start {start_rss:.1f} MiB, end {end_rss:.1f} MiB, "
                f"max {max(samples):.1f} MiB ({len(samples)} samples)"
            )
            app.close()
        finally:
            for proc in reversed(processes):
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)


if __name__ == "__main__":
    main()
