"""Screenshots of every dashboard page with real data, for docs/dashboard.md.

Run from the repository: ``.venv/bin/python tests/browser/screenshots.py [OUT_DIR]``
(default docs/images). It starts its own redis-server, two workers (``-E``) and the
dashboard, sends a mix of tasks for a while (so the overview's charts have a history),
leaves a backlog, dead letters and a running task, and saves
``dashboard-<page>.png`` for each page.
"""

from __future__ import annotations

import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from stack import TESTS, Stack, chromium, running_stack

from conveyor import states

PAGES = ("overview", "queues", "workers", "worker", "tasks", "task", "dead", "dead-letter",
         "schedules")  # fmt: skip


def load(stack: Stack, seconds: float) -> None:
    """About 40 tasks a second for ``seconds``: mostly successes, some failures."""
    app = stack.app
    end = time.monotonic() + seconds
    rng = random.Random(7)
    while time.monotonic() < end:
        for _ in range(rng.randint(2, 6)):
            roll = rng.random()
            if roll < 0.08:
                app.send_task("apps.tasks.fail", [f"bad input {rng.randint(1, 99)}"])
            elif roll < 0.5:
                app.send_task("apps.tasks.add", [rng.randint(1, 9), rng.randint(1, 9)])
            else:
                app.send_task("apps.tasks.record", [{"order": rng.randint(1000, 9999)}])
        time.sleep(0.1)


def shoot(browser: Any, stack: Stack, route: str, path: Path, settle: float = 2.5) -> None:
    assert stack.dashboard is not None
    browser.get(stack.dashboard.url + route)
    time.sleep(settle)  # a poll or two: the page shows its data
    height = browser.execute_script("return document.body.scrollHeight")
    browser.set_window_size(1280, max(720, min(int(height) + 40, 1600)))
    time.sleep(0.3)
    browser.save_screenshot(str(path))
    browser.set_window_size(1280, 900)
    print(f"saved {path}")


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, running_stack(Path(tmp)) as stack:
        stack.start_worker("alpha@%h", "-c", "4")
        stack.start_worker("beta@%h", "-c", "2", "-Q", "celery,reports")
        stack.start_dashboard()
        app = stack.app
        browser: Any = chromium(Path(tmp) / "profile")
        try:
            browser.get(stack.dashboard.url if stack.dashboard else "")
            feeder = threading.Thread(target=load, args=(stack, 40.0))
            feeder.start()
            time.sleep(4)
            # dead letters: a message nobody can decode, unknown tasks, a failure kept
            from conveyor.brokers.base import OutgoingMessage

            app.broker.publish(OutgoingMessage("corrupt-1", "celery", b"\x00not json"))
            app.send_task("billing.charge_card", [42], queue="celery")
            poisoned = app.send_task("dashboard_tasks.fail_until_flag", [str(Path(tmp) / "x")])
            # a backlog in a queue no worker consumes, and a delayed task
            for i in range(137):
                app.send_task("apps.tasks.record", [i], queue="emails")
            app.send_task("apps.tasks.record", ["later"], queue="emails", countdown=3600)
            feeder.join()
            running = app.send_task("apps.tasks.sleep_then_record", [60])
            failed = app.send_task("apps.tasks.fail", ["card declined"])
            while failed.state != states.FAILURE or app.broker.get_dead(poisoned.id) is None:
                time.sleep(0.1)
            time.sleep(1)
            shoot(browser, stack, "#/", out / "dashboard-overview.png", settle=1)
            shoot(browser, stack, "#/queues", out / "dashboard-queues.png")
            shoot(browser, stack, "#/workers", out / "dashboard-workers.png")
            [alpha] = [n for n in app.broker.workers() if n.startswith("alpha@")]
            [beta] = [n for n in app.broker.workers() if n.startswith("beta@")]
            holder = alpha if running.state == states.STARTED else beta
            shoot(browser, stack, f"#/worker/{holder}", out / "dashboard-worker.png", 3.5)
            shoot(browser, stack, "#/tasks", out / "dashboard-tasks.png")
            shoot(browser, stack, f"#/task/{failed.id}", out / "dashboard-task.png")
            shoot(browser, stack, "#/dead", out / "dashboard-dead.png")
            shoot(browser, stack, f"#/dead/{poisoned.id}", out / "dashboard-dead-letter.png")
            shoot(browser, stack, "#/schedules", out / "dashboard-schedules.png")
        finally:
            browser.quit()


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else TESTS.parent / "docs" / "images")
