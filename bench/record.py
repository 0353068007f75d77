"""What every benchmark task calls: one line per execution, appended to a file.

Each process appends ``"<task number> <time.time_ns()> <extra>\\n"`` to its own
file in ``$BENCH_RECORD_DIR`` with one ``os.write`` (atomic for an O_APPEND file),
so counting executions costs every system the same few microseconds and no Redis
command. ``extra`` is the task's due time (delayed) or start time (I/O-bound).
"""

from __future__ import annotations

import os
import threading
import time

_lock = threading.Lock()
_fd: int | None = None
_pid = 0


def _open() -> int:
    global _fd, _pid
    with _lock:
        if _fd is None or _pid != os.getpid():
            directory = os.environ["BENCH_RECORD_DIR"]
            _pid = os.getpid()
            path = os.path.join(directory, f"{_pid}.log")
            _fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        return _fd


def record(i: int, extra: float = 0.0) -> None:
    """Note that task ``i`` ran now (``extra``: a due or start time, in seconds)."""
    fd = _fd if _fd is not None and _pid == os.getpid() else _open()
    os.write(fd, f"{i} {time.time_ns()} {extra}\n".encode())
