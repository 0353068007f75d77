"""The quickstart app: the tutorial's tasks, on the embedded SQLite default."""

from __future__ import annotations

import time

from conveyor import Conveyor

app = Conveyor(
    "quickstart"
)  # no broker given: sqlite:///conveyor.sqlite3 (or $CONVEYOR_BROKER_URL)
app.conf.task_acks_late = True
app.conf.worker_prefetch_multiplier = 1


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def send_welcome_email(user_id: int) -> str:
    time.sleep(0.02)  # stands in for a call to a mail API
    if user_id % 10 == 0:
        raise ValueError(f"user {user_id} has no e-mail address")
    return f"welcome mail sent to user {user_id}"
