"""What a task does to its own run, in this process: ``update_state``, ``Ignore`` and
``Reject``, ``replace``, error callbacks by their parameters, ``shared_task``,
``autodiscover_tasks()``, ``get_task_logger``, and waiting for results inside a task
(eagerly, and with a worker in a thread: ``conveyor.testing``)."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor, Ignore, Reject, Task, current, group, shared_task, states
from conveyor.exceptions import ConfigurationError
from conveyor.result import allow_join_result, denied_join_result
from conveyor.task import Request, request_context
from conveyor.testing import start_worker
from conveyor.utils.log import get_task_logger

ROOT = Path(__file__).resolve().parents[2]


# -- update_state ------------------------------------------------------------------------------


def test_update_state_stores_a_state_of_the_tasks_own_with_its_meta(app: Conveyor) -> None:
    @app.task(bind=True)
    def upload_files(self: Task[..., Any], filenames: list[str]) -> int:
        for i, _ in enumerate(filenames):
            if not self.request.called_directly:
                self.update_state(state="PROGRESS", meta={"current": i, "total": len(filenames)})
        return len(filenames)

    with request_context(Request(id="up-1", task=upload_files.name)):
        upload_files(["a", "b"])
    seen = app.AsyncResult("up-1")
    assert (seen.state, seen.status, seen.info) == (
        "PROGRESS",
        "PROGRESS",
        {"current": 1, "total": 2},
    )
    assert not seen.ready()
    assert upload_files(["c"]) == 1  # called directly: nothing stored, as the guide's guard says


def test_update_state_of_another_task_and_its_refusals(app: Conveyor) -> None:
    @app.task
    def noop() -> None: ...

    noop.update_state("other-id", "QUEUED_ELSEWHERE", {"where": "x"})
    assert app.AsyncResult("other-id").info == {"where": "x"}
    with pytest.raises(ValueError, match="task_id"):
        noop.update_state(state="PROGRESS")
    with pytest.raises(ValueError, match="state"):
        noop.update_state("other-id")


def test_a_failure_stored_with_update_state_reads_back_as_the_exception(app: Conveyor) -> None:
    @app.task
    def noop() -> None: ...

    noop.update_state("f-1", states.FAILURE, {"exc_type": "KeyError", "exc_message": "gone"})
    noop.update_state("f-2", states.FAILURE, ValueError("bad"))
    assert isinstance(app.AsyncResult("f-1").info, KeyError)
    with pytest.raises(ValueError, match="bad"):
        app.AsyncResult("f-2").get(timeout=1)


# -- Ignore, Reject, replace (eager) ------------------------------------------------------------


def test_ignore_and_reject_end_an_eager_run_without_a_result(app: Conveyor) -> None:
    @app.task
    def skipped() -> None:
        raise Ignore()

    @app.task
    def refused() -> None:
        raise Reject("no", requeue=False)

    for task, state in ((skipped, states.IGNORED), (refused, states.REJECTED)):
        result = task.apply()
        assert result.state == state
        assert result.get() is None


def test_ignore_is_never_retried_even_under_autoretry_for_exception(app: Conveyor) -> None:
    runs: list[int] = []

    @app.task(autoretry_for=(Exception,))
    def skipped() -> None:
        runs.append(1)
        raise Ignore()

    assert skipped.apply().state == states.IGNORED
    assert runs == [1]


def test_replace_runs_the_replacement_here_in_an_eager_run(app: Conveyor) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(bind=True)
    def fan_out(self: Task[..., Any], n: int) -> Any:
        return self.replace(group(add.s(i, i) for i in range(n)))

    @app.task(bind=True)
    def to_add(self: Task[..., Any], x: int) -> Any:
        return self.replace(add.s(x, 1))

    assert to_add.apply((1,)).get() == 2
    assert fan_out.apply((3,)).get() == [0, 2, 4]


def test_a_replacement_cannot_be_part_of_a_chord_nor_an_empty_chain(app: Conveyor) -> None:
    from conveyor import chain

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(bind=True)
    def odd(self: Task[..., Any], which: str) -> Any:
        sig = add.s(1, 1).set(chord={"id": "c", "size": 1}) if which == "chord" else chain()
        return self.replace(sig)

    with pytest.raises(ConfigurationError, match="chord"):
        odd.apply(("chord",), throw=True)
    assert isinstance(odd.apply(("chain",)).result, ConfigurationError)


def test_a_replaced_task_on_a_worker_hands_its_id_to_the_replacement(app: Conveyor) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(bind=True)
    def replaced(self: Task[..., Any], x: int) -> Any:
        return self.replace(add.s(x, 100))

    with start_worker(app, concurrency=2):
        result = replaced.delay(1)
        assert result.get(timeout=5) == 101


# -- error callbacks by their parameters ------------------------------------------------------


def test_error_callbacks_are_called_by_their_parameters_in_an_eager_run(app: Conveyor) -> None:
    seen: list[tuple[Any, ...]] = []

    @app.task
    def celery_style(request: Any, exc: Any, traceback: Any) -> None:
        seen.append(("celery", request.id, type(exc).__name__, traceback.splitlines()[0]))

    @app.task
    def by_id(task_id: str) -> None:
        seen.append(("id", task_id))

    @app.task
    def json_style(task_id: str, exc_type: str, message: str) -> None:
        seen.append(("json", task_id, exc_type, message))

    @app.task(bind=True)
    def bound(self: Task[..., Any], task_id: str, exc_type: str, message: str) -> None:
        seen.append(("bound", task_id))

    @app.task
    def broken() -> None:
        raise KeyError("k")

    errbacks = [celery_style.s(), by_id.s(), json_style.s(), bound.s()]
    broken.apply(task_id="b-1", link_error=errbacks)

    assert seen == [
        ("celery", "b-1", "KeyError", "Traceback (most recent call last):"),
        ("id", "b-1"),
        ("json", "b-1", "KeyError", "'k'"),
        ("bound", "b-1"),
    ]


def test_celery_style_error_callbacks_run_where_the_task_ran_on_a_worker(app: Conveyor) -> None:
    seen: list[tuple[Any, ...]] = []

    @app.task
    def log_error(request: Any, exc: Any, traceback: Any) -> None:
        seen.append((request.id, request.args, repr(exc)))

    @app.task
    def broken(x: int) -> None:
        raise KeyError(x)

    with start_worker(app):
        result = broken.apply_async((5,), link_error=log_error.s())
        with pytest.raises(KeyError):
            result.get(timeout=5)
    assert seen == [(result.id, [5], "KeyError(5)")]


# -- shared_task ----------------------------------------------------------------------------------


def test_a_shared_task_is_registered_on_every_app_and_sends_with_the_default(
    make_app: Callable[..., Conveyor],
) -> None:
    # Given an app created before the shared task, and one after
    before = make_app()

    @shared_task(name="unit.shared_add")
    def shared_add(x: int, y: int) -> int:
        return x + y

    after = make_app()

    # Then both have it, as a task of their own
    assert before.tasks["unit.shared_add"].app is before
    assert after.tasks["unit.shared_add"].app is after
    # ... and the shared object is the default app's: the one created last, or the one set
    assert shared_add.app is after
    before.set_default()
    assert shared_add.app is before
    assert shared_add(2, 3) == 5
    assert isinstance(shared_add, Task)
    with start_worker(before):
        assert shared_add.delay(2, 3).get(timeout=5) == 5


def test_a_shared_task_without_any_app_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    @shared_task
    def lonely() -> None: ...

    monkeypatch.setattr(current, "_chosen", None)
    monkeypatch.setattr(current, "_latest", None)
    with pytest.raises(ConfigurationError, match="needs an app"):
        lonely.delay()


# -- autodiscover_tasks ---------------------------------------------------------------------------


def test_autodiscover_with_a_callable_imports_when_the_worker_imports_its_modules(
    app: Conveyor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "unit_lazy_disc"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "tasks.py").write_text("IMPORTED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "unit_lazy_disc.tasks", raising=False)
    asked: list[int] = []

    def packages() -> list[str]:
        asked.append(1)
        return ["unit_lazy_disc"]

    app.autodiscover_tasks(packages)
    assert asked == []
    assert "unit_lazy_disc.tasks" not in sys.modules
    app.import_modules()
    assert asked == [1]
    assert "unit_lazy_disc.tasks" in sys.modules
    app.import_modules()
    assert asked == [1]  # once


def test_autodiscover_without_packages_and_without_django_finds_nothing(app: Conveyor) -> None:
    app.autodiscover_tasks(force=True)  # no error, no import


def test_autodiscover_without_packages_imports_the_django_apps_tasks(tmp_path: Path) -> None:
    # Given a Django project with an installed app that has a tasks module (in its own
    # process: Django's settings are global)
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "__init__.py").write_text("")
    (tmp_path / "shop" / "tasks.py").write_text(
        "from conveyor import shared_task\n\n@shared_task\ndef restock(n):\n    return n\n"
    )
    (tmp_path / "proj_settings.py").write_text(
        "SECRET_KEY = 'x'\nINSTALLED_APPS = ['django.contrib.contenttypes', 'shop']\n"
    )
    script = textwrap.dedent(
        """
        import os
        os.environ["DJANGO_SETTINGS_MODULE"] = "proj_settings"
        from conveyor import Conveyor
        app = Conveyor("proj", broker="memory://")
        app.config_from_object("django.conf:settings", namespace="CELERY")
        app.autodiscover_tasks()
        import sys
        assert "shop.tasks" not in sys.modules
        app.import_modules()
        print(sorted(name for name in app.tasks if name.startswith("shop.")))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['shop.tasks.restock']"


# -- get_task_logger ----------------------------------------------------------------------------


def test_a_task_logger_is_a_child_of_conveyor_task_and_carries_the_task(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = get_task_logger("unit.shop.tasks")
    assert logger.parent is logging.getLogger("conveyor.task")
    with caplog.at_level(logging.INFO, logger="unit.shop.tasks"):
        with request_context(Request(id="t-1", task="shop.tasks.add")):
            logger.info("inside")
        logger.info("outside")
    inside, outside = caplog.records
    assert (inside.task_name, inside.task_id) == ("shop.tasks.add", "t-1")  # type: ignore[attr-defined]
    assert (outside.task_name, outside.task_id) == ("???", "???")  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="reserved"):
        get_task_logger("conveyor.task")


# -- waiting inside a task -------------------------------------------------------------------


def test_get_inside_a_running_task_raises_unless_allowed(app: Conveyor) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    with start_worker(app):
        result = add.delay(1, 2)
        assert result.get(timeout=5) == 3
        fresh = app.AsyncResult(result.id)
        with denied_join_result():
            with pytest.raises(RuntimeError, match=r"Never call result\.get\(\) within a task"):
                fresh.get(timeout=5)
            assert fresh.get(timeout=5, disable_sync_subtasks=False) == 3
            with allow_join_result():
                assert fresh.get(timeout=5) == 3
            assert add.apply((2, 2)).get() == 4  # an eager result never waits


def test_a_result_sent_with_ignore_result_returns_none_at_once(app: Conveyor) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(ignore_result=True)
    def fire_and_forget() -> int:
        return 1

    # no worker runs: a wait would time out
    assert add.apply_async((1, 2), ignore_result=True).get(timeout=0.1) is None
    assert fire_and_forget.delay().get(timeout=0.1) is None


def test_ignore_and_reject_are_not_failures_to_signal_receivers(app: Conveyor) -> None:
    from conveyor.signals import task_failure, task_postrun

    failures: list[Any] = []
    ends: list[str] = []

    def on_failure(sender: Any = None, **kwargs: Any) -> None:
        failures.append(kwargs["exception"])

    def on_postrun(sender: Any = None, **kwargs: Any) -> None:
        ends.append(kwargs["state"])

    @app.task
    def skipped() -> None:
        raise Ignore()

    task_failure.connect(on_failure)
    task_postrun.connect(on_postrun)
    try:
        with start_worker(app):
            skipped.delay()
            deadline = time.monotonic() + 5
            while not ends and time.monotonic() < deadline:
                time.sleep(0.01)
    finally:
        task_failure.disconnect(on_failure)
        task_postrun.disconnect(on_postrun)
    assert ends == [states.IGNORED]
    assert failures == []


def test_reject_of_a_message_acknowledged_when_it_started_is_dropped(
    make_app: Callable[..., Conveyor], caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(task_acks_late=False)

    @app.task
    def refused() -> None:
        raise Reject("too late", requeue=True)

    with start_worker(app):
        refused.delay()
        deadline = time.monotonic() + 5
        while "acks early" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.01)
    assert "acknowledged when it started (acks early): dropped" in caplog.text
    stats = app.broker.stats(["celery"])[0]
    assert (stats.ready, stats.delayed, stats.in_flight, stats.dead) == (0, 0, 0, 0)


def test_a_task_pickles_as_its_name_and_comes_back_as_the_default_apps(app: Conveyor) -> None:
    import pickle

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    app.set_default()
    assert pickle.loads(pickle.dumps(add)) is add
