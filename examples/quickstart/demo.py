"""`make demo`: a worker on the embedded SQLite broker runs a batch of tasks.

Starts `conveyor -A tasks worker` as a real subprocess, enqueues tasks (some of
which fail), shows progress as results arrive, prints a summary and shuts the
worker down with SIGTERM (a warm shutdown, as a deploy would).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

HERE = Path(__file__).resolve().parent
EMAILS = 200
ADDS = 100


def main() -> int:
    console = Console()
    workdir = Path(tempfile.mkdtemp(prefix="conveyor-demo-"))
    os.environ["CONVEYOR_BROKER_URL"] = f"sqlite:///{workdir / 'conveyor.sqlite3'}"
    sys.path.insert(0, str(HERE))
    from tasks import add, send_welcome_email  # imported once the broker is chosen

    console.print(f"[bold]broker:[/] {os.environ['CONVEYOR_BROKER_URL']}")
    log_path = workdir / "worker.log"
    log = log_path.open("w")
    worker = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "-A", "tasks", "worker", "-c", "4", "-l", "info"],
        cwd=HERE,
        env=os.environ.copy(),
        stderr=log,
    )
    deadline = time.monotonic() + 30
    while "tasks:" not in log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    banner = log_path.read_text().split("\n[", 1)[0]
    console.print(banner, markup=False, highlight=False)
    try:
        started = time.perf_counter()
        handles = [
            ("send_welcome_email", send_welcome_email.delay(i)) for i in range(1, EMAILS + 1)
        ]
        handles += [("add", add.delay(i, i)) for i in range(ADDS)]
        enqueued = time.perf_counter() - started
        console.print(f"enqueued {len(handles)} tasks in {enqueued:.2f} s")

        outcome: Counter[tuple[str, str]] = Counter()
        failures: dict[str, str] = {}
        columns = (
            *Progress.get_default_columns()[:1],
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console) as progress:
            bar = progress.add_task("running", total=len(handles))
            for name, handle in handles:
                value = handle.get(timeout=60, propagate=False)
                state = handle.state
                outcome[(name, state)] += 1
                if isinstance(value, BaseException):
                    failures.setdefault(name, f"{type(value).__name__}: {value}")
                progress.advance(bar)
        elapsed = time.perf_counter() - started

        table = Table(
            title=f"{len(handles)} tasks in {elapsed:.2f} s "
            f"({len(handles) / elapsed:.0f} tasks/s, 4 worker processes)"
        )
        table.add_column("task")
        table.add_column("succeeded", justify="right", style="green")
        table.add_column("failed", justify="right", style="red")
        table.add_column("first failure")
        for name in ("send_welcome_email", "add"):
            table.add_row(
                name,
                str(outcome[(name, "SUCCESS")]),
                str(outcome[(name, "FAILURE")]),
                failures.get(name, ""),
            )
        console.print(table)
        expected_failures = EMAILS // 10
        ok = (
            outcome[("send_welcome_email", "FAILURE")] == expected_failures
            and outcome[("add", "SUCCESS")] == ADDS
        )
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=30)
        log.close()
    console.print(f"worker log: {log_path}")
    console.print(
        f"worker shut down cleanly (exit code {code})"
        if code == 0
        else f"[red]worker exited with code {code}[/]"
    )
    return 0 if ok and code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
