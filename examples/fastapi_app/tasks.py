"""The example's tasks, run by ``conveyor -A tasks worker``.

The broker (and result backend) is ``$CONVEYOR_BROKER_URL``, e.g.
``redis://localhost:6379/0``; without it, a SQLite file in the current directory.
"""

from __future__ import annotations

import time

from conveyor import Conveyor

app = Conveyor("fastapi_app")
app.conf.task_acks_late = True
app.conf.worker_prefetch_multiplier = 1


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def divide(x: int, y: int) -> float:
    return x / y  # y == 0: the task fails with ZeroDivisionError


@app.task
def square(x: int, seconds: float = 0.0) -> int:
    """``x * x`` after ``seconds`` of (simulated) work."""
    time.sleep(seconds)
    return x * x
