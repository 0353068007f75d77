"""The chaos producer: sends the plan's tasks in a steady stream, journaling every attempt.

Run as ``python -m chaos.producer PLAN JOURNAL START`` from tests/ (the chaos
engine starts it, and may SIGKILL it and start it again at any time). For every
task it journals ``try`` before calling ``apply_async`` with the task's id,
then ``ok`` or ``error``; a send that raised is tried again (same id) until it
succeeds. A new producer reads the journal first and sends again what has no
``ok``: a send that raised, or was cut off by the kill, may or may not have been
stored, and the report counts the copies that may exist.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from pathlib import Path

import orjson
from apps.chaos_tasks import Journal, chaos_work, read_journal

#: Pause before trying a failed send again.
RETRY_PAUSE = 0.2


def main(plan_path: Path, journal_path: Path, start: float) -> int:
    done: set[str] = set()
    attempts: Counter[str] = Counter()
    for record in read_journal(journal_path):
        if record["ev"] == "try":
            attempts[record["id"]] += 1
        elif record["ev"] == "ok":
            done.add(record["id"])
    journal = Journal(journal_path)
    pid = os.getpid()
    journal.write(ev="begin", pid=pid, t=time.time())
    with plan_path.open("rb") as plan:
        for line in plan:
            task = orjson.loads(line)
            task_id = task["id"]
            if task_id in done:
                continue
            pause = start + task["at"] - time.time()
            if pause > 0:
                time.sleep(pause)
            while True:
                attempts[task_id] += 1
                n = attempts[task_id]
                journal.write(ev="try", id=task_id, n=n, pid=pid, t=time.time())
                try:
                    chaos_work.apply_async(
                        (task["seq"], task["seconds"]),
                        task_id=task_id,
                        countdown=task["countdown"],
                    )
                except Exception as exc:
                    error = f"{type(exc).__name__}: {exc}"[:300]
                    journal.write(ev="error", id=task_id, n=n, pid=pid, t=time.time(), err=error)
                    time.sleep(RETRY_PAUSE)
                    continue
                journal.write(ev="ok", id=task_id, n=n, pid=pid, t=time.time())
                break
    journal.write(ev="done", pid=pid, t=time.time())
    return 0


if __name__ == "__main__":
    plan_arg, journal_arg, start_arg = sys.argv[1:4]
    sys.exit(main(Path(plan_arg), Path(journal_arg), float(start_arg)))
