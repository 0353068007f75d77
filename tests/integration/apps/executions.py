"""The executions log: tasks append one line per event so tests count runs exactly.

Each line is ``"{task_id} {pid} {ppid} {event} {unix_time}"`` where ``event`` is
``start`` (a run began: this is what "executions" counts) or ``end`` (the task
body finished). Lines are written with one ``write`` on an ``O_APPEND`` file
descriptor, so lines from concurrent processes never interleave.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

#: The environment variable that names the log file (unset: nothing is recorded).
ENV = "CONVEYOR_TEST_EXECUTIONS"


def record_event(task_id: str | None, event: str) -> None:
    """Append one line for the running task; a no-op without ``$CONVEYOR_TEST_EXECUTIONS``."""
    path = os.environ.get(ENV)
    if not path:
        return
    line = f"{task_id} {os.getpid()} {os.getppid()} {event} {time.time():.6f}\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class Event:
    """One line of the log."""

    task_id: str
    pid: int
    ppid: int
    event: str
    at: float


class Executions:
    """Reads the log a test's workers write."""

    def __init__(self, path: Path):
        self.path = path

    def events(self, event: str | None = None) -> list[Event]:
        """Every complete line, in the order written, optionally of one kind."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        found = []
        for line in text.splitlines():
            parts = line.split()
            if len(parts) != 5:
                continue  # a line still being written
            task_id, pid, ppid, kind, at = parts
            if event is None or kind == event:
                found.append(Event(task_id, int(pid), int(ppid), kind, float(at)))
        return found

    def starts(self) -> Counter[str]:
        """How many times each task id started running."""
        return Counter(e.task_id for e in self.events("start"))

    def ends(self) -> Counter[str]:
        """How many times each task id's body ran to its end."""
        return Counter(e.task_id for e in self.events("end"))

    def count(self, task_id: str) -> int:
        """Executions (starts) of one task id."""
        return self.starts()[task_id]
