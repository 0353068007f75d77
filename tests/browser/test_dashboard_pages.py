"""Every page of ``conveyor dashboard`` in a real headless Chromium, against a real
worker (``-E``) on a real redis-server: what it shows and what its buttons do."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

from harness import wait_until
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
)
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select
from stack import Stack

from conveyor import states
from conveyor.control.protocol import HEARTBEAT_SECONDS

T = TypeVar("T")
#: The page polls its data every 2 s.
POLL_SECONDS = 2.0


def until(browser: Any, probe: Callable[[], T], timeout: float, what: str) -> T:
    """``probe()`` once truthy; the page re-renders its data every poll, so an element
    found a moment ago may be gone: that counts as not yet."""

    def safe() -> T | None:
        try:
            return probe()
        except (StaleElementReferenceException, NoSuchElementException):
            return None

    try:
        return wait_until(safe, timeout, what, interval=0.1)
    except AssertionError:
        raise AssertionError(
            f"{what}: not seen in {timeout} s; the page shows:\n"
            + browser.find_element(By.TAG_NAME, "main").text
        ) from None


def click(browser: Any, css: str, what: str, timeout: float = 10.0) -> None:
    """Click the element ``css`` once it is there (found again if re-rendered)."""

    def clicked() -> bool:
        browser.find_element(By.CSS_SELECTOR, css).click()
        return True

    until(browser, clicked, timeout, what)


def confirm(browser: Any) -> None:
    """Accept the page's confirmation dialog."""
    until(browser, lambda: browser.find_element(By.ID, "confirm").get_attribute("open") is not None,
          5, "the confirmation dialog")  # fmt: skip
    browser.find_element(By.ID, "confirm-ok").click()


def open_page(browser: Any, stack: Stack, route: str) -> None:
    assert stack.dashboard is not None
    browser.get(stack.dashboard.url + route)


def cells(browser: Any, row_css: str) -> list[str]:
    row = browser.find_element(By.CSS_SELECTOR, row_css)
    return [td.text for td in row.find_elements(By.TAG_NAME, "td")]


def present(browser: Any, css: str) -> bool:
    return bool(browser.find_elements(By.CSS_SELECTOR, css))


def number(browser: Any, css: str) -> float:
    return float(browser.find_element(By.CSS_SELECTOR, css).text.replace(",", ""))


def test_overview_shows_totals_by_state_and_draws_the_rates(stack: Stack, browser: Any) -> None:
    # Given tasks that succeeded and one that failed
    app = stack.app
    done = [app.send_task("apps.tasks.add", [i, 1]) for i in range(3)]
    failed = app.send_task("apps.tasks.fail", ["overview"])
    assert [r.get(timeout=15) for r in done] == [1, 2, 3]
    wait_until(lambda: failed.state == states.FAILURE, 15, "the failure")

    # When the overview is open
    open_page(browser, stack, "#/")

    # Then it shows the totals by state (the workers flush their counts every 2 s)
    until(
        browser,
        lambda: (
            number(browser, "#total-SUCCESS .value") >= 3
            and number(browser, "#total-FAILURE .value") >= 1
        ),
        15,
        "the totals",
    )
    assert number(browser, "#total-workers .value") >= 1
    assert cells(browser, "tr[data-task='apps.tasks.add']")[0] == "apps.tasks.add"
    # ... and the rate charts, drawn from two successive readings at least
    until(browser, lambda: present(browser, "#chart-throughput svg path"), 10, "the chart")


def test_queues_page_shows_depth_and_latency_and_purges(stack: Stack, browser: Any) -> None:
    # Given a queue no worker consumes, holding 4 messages
    app = stack.app
    for i in range(4):
        app.send_task("apps.tasks.record", [i], queue="dash-idle")

    # When the queues page is open
    open_page(browser, stack, "#/queues")

    # Then the queue's depth and latency are shown
    row = "tr[data-queue='dash-idle']"
    until(browser, lambda: cells(browser, row)[1] == "4", 10, "4 ready in dash-idle")
    queue, _ready, delayed, held, dead, latency, _ = cells(browser, row)
    assert (queue, delayed, held, dead) == ("dash-idle", "0", "0", "0")
    assert latency.endswith(("ms", "s")), latency

    # When the queue is purged from the page, after its confirmation
    click(browser, f"{row} button[data-action='purge']", "the purge button")
    confirm(browser)

    # Then the broker holds nothing in it any more, and the page says so
    wait_until(lambda: app.broker.stats(["dash-idle"])[0].ready == 0, 10, "the purge")
    until(browser, lambda: "Purged 4 message(s)" in browser.find_element(By.ID, "flash").text,
          5, "the purge's message")  # fmt: skip


def test_workers_page_shows_live_workers_and_drops_a_killed_one(
    stack: Stack, browser: Any, record_property: Callable[[str, object], None]
) -> None:
    # Given a second worker, with a pool of one
    victim = stack.start_worker("victim@%h", "-c", "1")
    open_page(browser, stack, "#/workers")
    row = "tr[data-worker^='victim@']"
    until(browser, lambda: cells(browser, row)[2] == "1", 10, "the victim with concurrency 1")
    assert present(browser, "tr[data-worker^='dash1@']")

    # When its pool is grown from the page
    click(browser, f"{row} button[data-action='grow']", "the +1 button")

    # Then its next heartbeat reports the larger pool
    until(browser, lambda: cells(browser, row)[2] == "2", 10, "concurrency 2")

    # When the worker is killed (no goodbye)
    victim.kill_group()
    killed = time.monotonic()

    # Then it leaves the page within 3 heartbeats (and one poll of the page)
    until(browser, lambda: not present(browser, row), 3 * HEARTBEAT_SECONDS + POLL_SECONDS + 2,
          "the killed worker to go")  # fmt: skip
    record_property("measured: killed worker gone from the page after (s)",
                    round(time.monotonic() - killed, 1))  # fmt: skip
    assert present(browser, "tr[data-worker^='dash1@']")


def test_a_worker_shut_down_from_the_page_exits_cleanly_and_leaves_it(
    stack: Stack, browser: Any
) -> None:
    # Given a third worker on the workers page
    leaver = stack.start_worker("leaver@%h", "-c", "1")
    open_page(browser, stack, "#/workers")
    row = "tr[data-worker^='leaver@']"
    until(browser, lambda: present(browser, row), 10, "the worker on the page")

    # When it is shut down from the page, after the confirmation
    click(browser, f"{row} button[data-action='shutdown']", "the shut down button")
    confirm(browser)

    # Then it exits as after a SIGTERM (0) and leaves the page at once (not 3 beats later)
    assert leaver.wait(15) == 0
    until(browser, lambda: not present(browser, row), POLL_SECONDS + 2, "the worker to go")
    assert present(browser, "tr[data-worker^='dash1@']")


def test_worker_page_lists_its_active_tasks(stack: Stack, browser: Any) -> None:
    # Given a task running on dash1
    app = stack.app
    [name] = [n for n in app.broker.workers() if n.startswith("dash1@")]
    running = app.send_task("apps.tasks.sleep_then_record", [4])

    # When its page is open
    open_page(browser, stack, f"#/worker/{name}")

    # Then the task is among its active tasks (asked to the worker: inspect active)
    until(browser, lambda: present(browser, f"#active tr[data-task='{running.id}']"), 10,
          "the running task")  # fmt: skip
    assert "apps.tasks.sleep_then_record" in cells(browser, f"tr[data-task='{running.id}']")[1]


def test_dead_letter_is_listed_requeued_from_the_page_and_then_runs(
    stack: Stack, browser: Any
) -> None:
    # Given a task that failed into the dead letters (its flag file is missing)
    app = stack.app
    flag = stack.directory / "flag"
    poisoned = app.send_task("dashboard_tasks.fail_until_flag", [str(flag)])
    wait_until(lambda: app.broker.get_dead(poisoned.id), 15, "the dead letter")

    # When the dead letters page is open
    open_page(browser, stack, "#/dead")

    # Then it is listed with its task and reason
    row = f"tr[data-dead='{poisoned.id}']"
    until(browser, lambda: present(browser, row), 10, "the dead letter's row")
    assert "dashboard_tasks.fail_until_flag" in cells(browser, row)[1]
    assert "dead_letter_on_failure" in cells(browser, row)[3]

    # ... and its page shows the body and the delivery history
    click(browser, f"{row} a", "the dead letter's link")
    until(browser, lambda: str(flag) in browser.find_element(By.ID, "dead-body").text, 10,
          "the body")  # fmt: skip

    # When the cause is fixed and it is requeued from its page
    flag.touch()
    click(browser, "button[data-action='requeue']", "the requeue button")

    # Then the task runs again and succeeds, and it is no dead letter any more
    # (a fresh handle: one that saw FAILURE keeps it, as Celery's does)
    wait_until(lambda: app.AsyncResult(poisoned.id).state == states.SUCCESS, 15,
               "the requeued task to succeed")  # fmt: skip
    assert app.AsyncResult(poisoned.id).result == "flag found"
    assert app.broker.get_dead(poisoned.id) is None
    open_page(browser, stack, "#/dead")
    until(browser, lambda: "dead letter(s)" in browser.find_element(By.ID, "dead-summary").text,
          5, "the list")  # fmt: skip
    assert not present(browser, row)


def test_task_is_revoked_from_its_page(stack: Stack, browser: Any) -> None:
    # Given a long task running on the worker
    app = stack.app
    long = app.send_task("apps.tasks.sleep_then_record", [30])

    # When it is found on the tasks page (by name and state) and opened
    open_page(browser, stack, "#/tasks?name=sleep_then_record&state=STARTED")
    click(browser, f"tr[data-task='{long.id}'] a", "the running task's link", timeout=15)
    until(browser, lambda: browser.find_element(By.ID, "task-state").text == "STARTED", 10,
          "the STARTED state")  # fmt: skip

    # ... and revoked and terminated from there
    click(browser, "#terminate", "the revoke and terminate button")
    confirm(browser)

    # Then the task is REVOKED, in the backend and on the page
    until(browser, lambda: browser.find_element(By.ID, "task-state").text == "REVOKED", 10,
          "the REVOKED state")  # fmt: skip
    assert long.state == states.REVOKED


def test_tasks_are_filtered_by_state_and_a_failure_is_shown_and_sent_again(
    stack: Stack, browser: Any
) -> None:
    # Given a task that succeeded and one that failed
    app = stack.app
    ok = app.send_task("apps.tasks.add", [20, 22])
    bad = app.send_task("apps.tasks.fail", ["filtered"])
    assert ok.get(timeout=15) == 42
    wait_until(lambda: bad.state == states.FAILURE, 15, "the failure")

    # When the tasks page is filtered by the FAILURE state
    open_page(browser, stack, "#/tasks")
    until(browser, lambda: present(browser, f"tr[data-task='{ok.id}']"), 10, "the success")
    Select(browser.find_element(By.ID, "filter-state")).select_by_value("FAILURE")

    # Then only failures are listed
    until(browser, lambda: not present(browser, f"tr[data-task='{ok.id}']"), 10, "the filter")
    listed = browser.find_elements(By.CSS_SELECTOR, "#tasks tr[data-task]")
    assert {r.get_attribute("data-state") for r in listed} == {"FAILURE"}
    assert present(browser, f"tr[data-task='{bad.id}']")

    # When the failure is opened: its arguments, exception and traceback are shown
    click(browser, f"tr[data-task='{bad.id}'] a", "the failure's link")
    until(browser, lambda: "Boom" in browser.find_element(By.ID, "task-traceback").text, 10,
          "the traceback")  # fmt: skip
    assert "filtered" in browser.find_element(By.ID, "task").text

    # ... and sent again from there: a new task of the same name and arguments runs
    click(browser, "#retry", "the retry button")
    flash = until(browser, lambda: re.search(r"Sent again as (\S+)",
                  browser.find_element(By.ID, "flash").text), 10, "the new id")  # fmt: skip
    again = app.AsyncResult(flash.group(1))
    wait_until(lambda: again.state == states.FAILURE, 15, "the task sent again to run")
    assert str(again.result) == "filtered"


def test_schedules_page_lists_the_beat_entry(stack: Stack, browser: Any) -> None:
    # When the schedules page is open
    open_page(browser, stack, "#/schedules")

    # Then the app's beat entry is listed with its schedule, last and next fire
    row = "tr[data-entry='dashboard-report']"
    until(browser, lambda: present(browser, row), 10, "the entry")
    entry, task, schedule, last, next_fire = cells(browser, row)
    assert (entry, task, schedule, last) == (
        "dashboard-report",
        "apps.tasks.record",
        "every hour",
        "never",
    )
    assert "(in " in next_fire
