"""The code of Celery's Tasks, Calling and Periodic Tasks user guides, about task
classes, states, semipredicates, shared tasks, logging, callbacks and subtasks, run
against real workers on SQLite and on Redis with only the import changed: ``from celery
import Task`` is ``from conveyor import Task``, ``celery.utils.log`` is
``conveyor.utils.log``, ``celery.exceptions`` is ``conveyor.exceptions``.

The guides' tasks are in ``apps/task_class_tasks.py`` (the second part), as printed but
for stand-ins of what the guides leave out (a User model, Twitter, a renderer) and for
names ``apps.tasks`` has already. Each test is one section; where the guide shows an
output, the test asserts it. Left out, with the reason:

* ``get(on_message=...)`` (Calling guide): conveyor's ``get`` waits for the end only;
  ``state``/``info`` show each intermediate state (``test_states``);
* the guide's "Good" ``update_page_info`` chain: its ``parse_page`` takes one argument
  where the other two versions pass two (the guide's own slip); chains are covered by
  ``test_celery_canvas_guide.py``;
* Retrying and the request's other fields: ``test_retries.py``, ``test_round_trip.py``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from apps import task_class_tasks as guide
from apps.tasks import add, fail
from harness import StartBeat, StartWorker, WorkerProcess, wait_until

from conveyor import Celery, Conveyor, Task, current, states
from conveyor.exceptions import Ignore  # noqa: F401 - the guides' import
from conveyor.utils.log import get_task_logger  # noqa: F401 - the guides' import

APP = "apps.task_class_tasks"
Events = Callable[..., list[dict[str, Any]]]


@pytest.fixture
def events(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Events:
    path = tmp_path / "events.jsonl"
    monkeypatch.setenv(guide.EVENTS, str(path))

    def read(name: str | None = None) -> list[dict[str, Any]]:
        if not path.exists():
            return []
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [line for line in lines if name is None or line["event"] == name]

    return read


@pytest.fixture
def worker(app: Conveyor, start_worker: StartWorker, events: Events) -> WorkerProcess:
    """One prefork worker of the guides' app (``print`` unbuffered: the guides print)."""
    app.set_default()
    started = start_worker("-c", "2", app=APP, env={"PYTHONUNBUFFERED": "1"}).wait_ready()
    yield started
    current.set_default_app(None)


def printed(worker: WorkerProcess, text: str) -> bool:
    return text in worker.stderr_text()


# -- Tasks guide -------------------------------------------------------------------------------


def test_basics_bound_tasks_and_task_inheritance(worker: WorkerProcess, events: Events) -> None:
    # Basics: @app.task(serializer='json')
    guide.create_user.delay("george", "password").get(timeout=15)
    [created] = events("stand_in")
    assert created["call"] == "User.objects.create"
    assert created["kwargs"] == {"username": "george", "password": "password"}
    # (shared_task: the guide's ``add`` is ``shared_mul`` here)
    assert guide.shared_mul.delay(8, 8).get(timeout=15) == 64

    # Bound tasks: logger.info(self.request.id), through get_task_logger(__name__)
    bound = guide.bound_add.delay(2, 2)
    bound.get(timeout=15)
    wait_until(lambda: printed(worker, f"] {bound.id}"), 15, "the request id logged")

    # Task inheritance: base=MyTask, whose on_failure prints
    failed = guide.inheriting_add.delay(2, 2)
    with pytest.raises(KeyError):
        failed.get(timeout=15)
    wait_until(lambda: printed(worker, f"{failed.id!r} failed: KeyError()"), 15, "on_failure")


def test_names(worker: WorkerProcess) -> None:
    assert guide.sum_of_two.name == "sum-of-two-numbers"
    assert guide.sum_of_two.delay(2, 3).get(timeout=15) == 5
    assert add.name == "apps.tasks.add"

    # Changing the automatic naming behavior
    class MyCelery(Celery):
        def gen_task_name(self, name: str, module: str) -> str:
            if module.endswith(".tasks"):
                module = module[:-6]
            return super().gen_task_name(name, module)

    app = MyCelery("main", broker="memory://guide-names")
    assert app.gen_task_name("taskA", "moduleA.tasks") == "moduleA.taskA"
    app.close()


def test_task_request_and_logging(worker: WorkerProcess) -> None:
    result = guide.dump_context.delay(2, 3)
    result.get(timeout=15)
    expected = f"Executing task id {result.id}, args: [2, 3] kwargs: {{}}"
    wait_until(lambda: printed(worker, expected), 15, "the printed context")

    assert guide.logging_add.delay(4, 4).get(timeout=15) == 8
    wait_until(lambda: printed(worker, "Adding 4 + 4"), 15, "the log line")


def test_argument_checking(worker: WorkerProcess) -> None:
    assert guide.sum_of_two.delay(8, 8).get(timeout=15) == 16
    with pytest.raises(TypeError, match="missing a required argument: 'y'"):
        guide.sum_of_two.delay(8)


def test_states(worker: WorkerProcess) -> None:
    # Custom states: upload_files reports PROGRESS as it goes
    result = guide.upload_files.delay(["a", "b", "c"])
    assert result.get(timeout=15) is None
    guide.upload_files(["a"])  # called directly: the guide's guard stores nothing

    # the state a client saw last before the end: PROGRESS with its meta (read back)
    progress = Path(os.environ[guide.EVENTS]).with_suffix(".gate")
    watched = guide.progress.delay(str(progress))
    wait_until(lambda: watched.state == "PROGRESS", 15, "PROGRESS")
    assert watched.info == {"current": 1, "total": 2}
    progress.touch()
    assert watched.get(timeout=15) == "done"

    # FAILURE's info is the exception
    failed = fail.delay("why")
    with pytest.raises(ValueError, match="why"):
        failed.get(timeout=15)
    assert isinstance(failed.info, ValueError)


def test_semipredicates_ignore(app: Conveyor, worker: WorkerProcess, events: Events) -> None:
    # Ignore: keeping revoked tasks in a set of one's own
    Path(os.environ[guide.EVENTS] + ".revoked").write_text("guide-revoked-id\n")
    skipped = guide.some_task.apply_async(task_id="guide-revoked-id")
    assert guide.some_task.delay().get(timeout=15) == "ran"
    wait_until(
        lambda: any(e["member"] == skipped.id and e["found"] for e in events("ismember")),
        15,
        "the revoked one to run",
    )
    wait_until(lambda: app.broker.stats(["celery"])[0].in_flight == 0, 15, "its ack")
    assert skipped.state == states.PENDING  # ignored: acknowledged, nothing stored

    # Ignore after storing the result by hand
    assert guide.get_tweets.delay("george").get(timeout=15) == ["tweet 1", "tweet 2"]


def test_semipredicates_reject(app: Conveyor, worker: WorkerProcess) -> None:
    # Reject(exc, requeue=False): to the dead letters, for someone to look at
    scene = guide.render_scene.delay("huge.blend")
    [dead] = wait_until(lambda: app.broker.dead_letters("celery"), 15, "the dead letter")
    assert dead.id == scene.id
    assert "scene too big" in dead.reason

    # Reject(requeue=True): the task runs a second time
    twice = guide.requeues.delay()
    assert twice.get(timeout=15) is None
    assert printed(worker, "received two times")


def test_custom_task_classes(worker: WorkerProcess, events: Events) -> None:
    # Instantiation: one instance per process, state kept between requests
    assert guide.naive_authenticate.delay("george", "password").get(timeout=15) is True
    assert guide.naive_authenticate.delay("george", "wrong").get(timeout=15) is False

    # Per task usage: base=DatabaseTask, the connection made once per process
    for _ in range(3):
        guide.process_rows.delay().get(timeout=15)
    assert [e["row"] for e in events("processed")] == ["row 1", "row 2"] * 3
    connects = [e for e in events("stand_in") if e["call"] == "Database.connect"]
    assert len(connects) == len({e["pid"] for e in connects}) <= 2  # once per child

    # App-wide usage: task_cls as a "module:Class" path
    app = Celery("tasks", broker="memory://guide-task-cls", task_cls=f"{APP}:DatabaseTask")
    assert issubclass(app.Task, guide.DatabaseTask)
    app.close()


def test_tips_ignore_results_and_synchronous_subtasks(
    worker: WorkerProcess, events: Events
) -> None:
    # Ignore results you don't want (the guide writes apply_async(1, 2, ...): its slip)
    result = guide.mytask.apply_async((1, 2), ignore_result=True)
    assert result.get() is None
    result = guide.mytask.apply_async((1, 2), ignore_result=False)
    assert result.get(timeout=15) == 3

    # Avoid launching synchronous subtasks: the "Bad" version is refused
    with pytest.raises(RuntimeError, match=r"Never call result\.get\(\) within a task"):
        guide.update_page_info.delay("https://example.com").get(timeout=15)

    # ... unless the task says it knows what it does
    guide.update_page_info_sync.delay("https://example.com").get(timeout=15)
    wait_until(
        lambda: any(e["call"] == "PageInfo.objects.create" for e in events("stand_in")),
        15,
        "the page info stored",
    )


# -- Calling guide -------------------------------------------------------------------------------


def test_linking_callbacks_and_errbacks(
    app: Conveyor, worker: WorkerProcess, events: Events
) -> None:
    # callbacks: (2 + 2) + 16
    result = add.apply_async((2, 2), link=add.s(16))
    assert result.get(timeout=15) == 4
    [child] = wait_until(lambda: result.children, 15, "the callback")
    assert child.get(timeout=15) == 20

    # an errback taking (request, exc, traceback), called as Celery calls it
    assert add.apply_async((2, 2), link_error=guide.error_handler.s()).get(timeout=15) == 4
    failed = fail.apply_async(("nope",), link_error=guide.error_handler.s())
    with pytest.raises(ValueError, match="nope"):
        failed.get(timeout=15)
    wait_until(
        lambda: printed(worker, f"Task {failed.id} raised exception: Boom('nope')"),
        15,
        "the errback's print",
    )

    # the one-argument form, for a task sent by name (the guide sends proj.tasks.add)
    sent = app.send_task("apps.tasks.fail", ("by name",), link_error=guide.on_error.s())
    wait_until(
        lambda: printed(worker, f"Task {sent.id} raised exception: Boom('by name')"),
        15,
        "on_error's print",
    )

    # link as a list: called in order, each with the value
    add.apply_async((2, 2), link=[add.s(16), guide.other_task.s()]).get(timeout=15)
    wait_until(lambda: events("other_task"), 15, "the second callback")
    assert events("other_task")[0]["value"] == 4


# -- Periodic Tasks guide --------------------------------------------------------------------------


@pytest.mark.app_env(CONVEYOR_TEST_GUIDE_BEAT="1")
def test_scheduling_a_group_through_a_wrapper_task(
    app: Conveyor, start_worker: StartWorker, start_beat: StartBeat, events: Events
) -> None:
    # Given the guide's wrapper task, scheduled in on_after_configure (every second here)
    worker = start_worker("-c", "2", app=APP).wait_ready()
    start_beat(app=APP).wait_ready()

    # Then beat sends it, and the group it dispatches runs without anyone waiting
    wait_until(lambda: worker.stderr_text().count("apps.tasks.add[") >= 20, 20, "the groups")
    assert "run_add_group[" in worker.stderr_text()


def test_a_task_type_check_matches_celerys_class(worker: WorkerProcess) -> None:
    assert isinstance(guide.process_rows, Task)
    assert isinstance(guide.naive_authenticate, guide.NaiveAuthenticateServer)
