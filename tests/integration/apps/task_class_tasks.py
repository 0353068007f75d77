"""Tasks for ``test_task_classes.py`` and ``test_celery_guide.py``, on the app of
``apps.tasks`` (a worker started with ``-A apps.task_class_tasks`` runs these and every
task of ``apps.tasks``).

What runs in a worker writes one JSON line per event to ``$CONVEYOR_TEST_EVENTS``
(``write``): the event, the pid and parent pid of the process it ran in, and its
fields. ``flask_app`` (made on first use) is a second app whose ``task_cls`` is
Flask's documented ``FlaskTask``.
"""

from __future__ import annotations

import contextvars
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from apps.tasks import add, app, fail, settings_from_env
from conveyor import Conveyor, Ignore, Reject, Task, group, shared_task, states
from conveyor.result import allow_join_result
from conveyor.utils.log import get_task_logger

__all__ = ["add", "app", "fail"]

EVENTS = "CONVEYOR_TEST_EVENTS"

logger = get_task_logger(__name__)


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    return type(value).__name__


def write(event: str, **fields: Any) -> None:
    """Append one event line (a no-op without ``$CONVEYOR_TEST_EVENTS``)."""
    path = os.environ.get(EVENTS)
    if not path:
        return
    record = {"event": event, "pid": os.getpid(), "ppid": os.getppid(), **_plain(fields)}
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
    finally:
        os.close(fd)


def wait_for(path: str, timeout: float = 20.0) -> None:
    """Block until the file ``path`` exists (the test's go-ahead)."""
    deadline = time.monotonic() + timeout
    while not Path(path).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {path} after {timeout} s")
        time.sleep(0.02)


# -- a base class with every handler (Celery's Tasks guide, "Handlers") ----------------


class RecordingTask(Task):
    """Writes each handler call with the arguments Celery documents."""

    def before_start(self, task_id: str, args: list[Any], kwargs: dict[str, Any]) -> None:
        write("before_start", task=self.name, task_id=task_id, args=args, kwargs=kwargs)

    def on_success(
        self, retval: Any, task_id: str, args: list[Any], kwargs: dict[str, Any]
    ) -> None:
        write("on_success", task_id=task_id, retval=retval, args=args, kwargs=kwargs)

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        write(
            "on_failure",
            task_id=task_id,
            exc=exc,
            args=args,
            kwargs=kwargs,
            einfo=type(einfo).__name__,
            traceback="Traceback" in str(einfo),
        )

    def on_retry(self, exc: Any, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        write("on_retry", task_id=task_id, exc=exc, args=args, kwargs=kwargs)

    def after_return(
        self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        write("after_return", task_id=task_id, status=status, retval=retval)


@app.task(base=RecordingTask)
def handled_add(x: int, y: int) -> int:
    return x + y


@app.task(base=RecordingTask)
def handled_fail(message: str) -> None:
    raise ValueError(message)


@app.task(base=RecordingTask, bind=True, max_retries=1, default_retry_delay=0.1)
def handled_retry(self: Task[..., Any], x: int) -> int:
    if self.request.retries == 0:
        raise self.retry(exc=KeyError("again"))
    return x


class Multiply(app.Task):
    """A task written as a class, registered with ``app.register_task``."""

    name = "apps.task_class_tasks.multiply"

    def run(self, x: int, y: int) -> int:
        return x * y


multiply = app.register_task(Multiply())


# -- states ---------------------------------------------------------------------------


@app.task(bind=True)
def progress(self: Task[..., Any], gate: str) -> str:
    """PROGRESS with its meta, then (once ``gate`` exists) done."""
    self.update_state(state="PROGRESS", meta={"current": 1, "total": 2})
    wait_for(gate)
    return "done"


@app.task(bind=True, track_started=True)
def started(self: Task[..., Any], gate: str) -> int:
    wait_for(gate)
    return os.getpid()


# -- Ignore and Reject ---------------------------------------------------------------------


@app.task
def ignored() -> str:
    write("ran", task="ignored")
    raise Ignore()


@app.task(bind=True)
def stores_then_ignores(self: Task[..., Any], value: Any) -> None:
    """The Tasks guide's ``get_tweets``: the result stored by hand, then Ignore."""
    self.update_state(state=states.SUCCESS, meta=value)
    raise Ignore()


@app.task(bind=True, acks_late=True)
def reject_once(self: Task[..., Any]) -> int:
    """Rejected back to the queue on its first delivery; returns the delivery count."""
    write("ran", task="reject_once", delivery=self.request.delivery_count)
    if not self.request.delivery_info["redelivered"]:
        raise Reject("first delivery", requeue=True)
    return self.request.delivery_count


@app.task(acks_late=True)
def reject_for_good(reason: str) -> None:
    raise Reject(reason, requeue=False)


# -- replace ----------------------------------------------------------------------------


@app.task(bind=True)
def replaced_by_add(self: Task[..., Any], x: int) -> Any:
    return self.replace(add.s(x, 10))


@app.task(bind=True)
def replaced_by_chain(self: Task[..., Any], x: int) -> Any:
    return self.replace(add.s(x, 1) | add.s(100))


@app.task(bind=True)
def replaced_by_group(self: Task[..., Any], n: int) -> Any:
    return self.replace(group(add.s(i, i) for i in range(n)))


@app.task
def summed(values: list[int]) -> int:
    return sum(values)


# -- error callbacks ------------------------------------------------------------------------


@app.task
def celery_errback(request: Any, exc: Any, traceback: Any) -> None:
    """Celery's errback: called where the task failed, after its failure was stored."""
    with allow_join_result():
        stored = app.AsyncResult(request.id).state
    write(
        "celery_errback",
        request_id=request.id,
        request_args=request.args,
        exc=exc,
        traceback=traceback,
        stored=stored,
    )


@app.task
def json_errback(task_id: str, exc_type: str, message: str) -> None:
    """conveyor's errback, sent as a task with JSON arguments."""
    write("json_errback", task_id=task_id, exc_type=exc_type, message=message)


@app.task(time_limit=0.5)
def overruns() -> None:
    """Ended at its hard time limit: its process cannot call its error callbacks."""
    time.sleep(10)


@app.task
def id_errback(task_id: str) -> None:
    """Celery's one-argument errback, sent as a task with the failed task's id."""
    write("id_errback", task_id=task_id)


# -- shared tasks, waiting inside a task, logging ---------------------------------------------


@shared_task
def shared_mul(x: int, y: int) -> int:
    return x * y


@app.task
def waits_inside(x: int) -> int:
    """Waits for another task: refused (the worker could deadlock)."""
    return add.delay(x, x).get(timeout=10)


@app.task
def waits_inside_allowed(x: int) -> int:
    return add.delay(x, x).get(timeout=10, disable_sync_subtasks=False)


@app.task
def logs(x: int) -> int:
    logger.info("adding %s", x)
    return x


# -- Flask's pattern (Flask's "Background Tasks with Celery") ---------------------------------

_flask_context: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "flask_context", default=None
)


@contextmanager
def app_context() -> Iterator[None]:
    """What ``flask_app.app_context()`` does for a task: makes the web app current."""
    token = _flask_context.set("web-app")
    try:
        yield
    finally:
        _flask_context.reset(token)


class FlaskTask(Task):
    def __call__(self, *args: object, **kwargs: object) -> object:
        with app_context():
            return self.run(*args, **kwargs)


def _make_flask_app() -> Conveyor:
    flask_app = Conveyor("flask-style", task_cls=FlaskTask, **settings_from_env())

    @flask_app.task(name="flask.in_app_context")
    def in_app_context() -> str | None:
        return _flask_context.get()

    return flask_app


def __getattr__(name: str) -> Any:
    # made on first use, so that importing this module leaves the default app alone
    if name == "flask_app":
        globals()["flask_app"] = made = _make_flask_app()
        return made
    raise AttributeError(name)


# == The code of Celery's Tasks, Calling and Periodic Tasks guides (test_celery_guide.py) ======
#
# As printed, but for the stand-ins of what the guides leave out (a User model, Twitter,
# a renderer, a web client: ``_StandIn`` objects that record what they are asked), and
# for names apps.tasks has already (``add`` is ``apps.tasks.add``; the guide's other
# ``add`` functions get the name of their section).


class _StandIn:
    """Whatever a snippet calls that the guide does not define: records the call."""

    def __init__(
        self, name: str, returns: Any = None, raises: dict[str, BaseException] | None = None
    ):
        self._name = name
        self._returns = returns
        self._raises = raises or {}

    def __getattr__(self, attribute: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            write("stand_in", call=f"{self._name}.{attribute}", args=args, kwargs=kwargs)
            for marker, exc in self._raises.items():
                if marker in map(str, args):
                    raise exc
            return self._returns

        return call


class _Objects:
    objects = _StandIn("User.objects")


User = _Objects
twitter = _StandIn("twitter", returns=["tweet 1", "tweet 2"])
renderer = _StandIn("renderer", raises={"huge.blend": MemoryError("scene too big")})
myhttplib = _StandIn("myhttplib", returns="<html>page</html>")
myparser = _StandIn("myparser", returns={"title": "page"})


class _PageInfos:
    objects = _StandIn("PageInfo.objects")

    @staticmethod
    def create(url: str, info: Any) -> None:
        write("stand_in", call="PageInfo.create", args=[url, info])


PageInfo = _PageInfos


def get_file(path: str) -> str:
    return path


class _RevokedSet:
    """The guide's ``redis.ismember('tasks.revoked', id)``: ids listed in a file."""

    def ismember(self, key: str, member: str) -> bool:
        path = os.environ.get(EVENTS, "") + ".revoked"
        found = Path(path).exists() and member in Path(path).read_text().split()
        write("ismember", key=key, member=member, found=found)
        return found


redis = _RevokedSet()


# -- Tasks guide: Basics, Names, Task Request, Logging -----------------------------------------


@app.task(serializer="json")
def create_user(username: str, password: str) -> None:
    User.objects.create(username=username, password=password)


@app.task(bind=True)
def bound_add(self: Task[..., Any], x: int, y: int) -> None:
    logger.info(self.request.id)


class MyTask(Task):
    def on_failure(self, exc: Any, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        print(f"{task_id!r} failed: {exc!r}")


@app.task(base=MyTask)
def inheriting_add(x: int, y: int) -> None:
    raise KeyError()


@app.task(name="sum-of-two-numbers")
def sum_of_two(x: int, y: int) -> int:
    return x + y


@app.task(bind=True)
def dump_context(self: Task[..., Any], x: int, y: int) -> None:
    request = self.request  # (the guide formats self.request itself: one line here)
    print("Executing task id {0.id}, args: {0.args!r} kwargs: {0.kwargs!r}".format(request))  # noqa: UP032


@app.task
def logging_add(x: int, y: int) -> int:
    logger.info(f"Adding {x} + {y}")
    return x + y


# -- Tasks guide: States, Semipredicates ---------------------------------------------------------


@app.task(bind=True)
def upload_files(self: Task[..., Any], filenames: list[str]) -> None:
    for i, _file in enumerate(filenames):
        if not self.request.called_directly:
            self.update_state(state="PROGRESS", meta={"current": i, "total": len(filenames)})


@app.task(bind=True)
def some_task(self: Task[..., Any]) -> str:
    if redis.ismember("tasks.revoked", self.request.id):
        raise Ignore()
    return "ran"


@app.task(bind=True)
def get_tweets(self: Task[..., Any], user: str) -> None:
    timeline = twitter.get_timeline(user)
    if not self.request.called_directly:
        self.update_state(state=states.SUCCESS, meta=timeline)
    raise Ignore()


@app.task(bind=True, acks_late=True)
def render_scene(self: Task[..., Any], path: str) -> None:
    file = get_file(path)
    try:
        renderer.render_scene(file)

    # if the file is too big to fit in memory
    # we reject it so that it's redelivered to the dead letter exchange
    # and we can manually inspect the situation.
    except MemoryError as exc:
        raise Reject(exc, requeue=False) from exc
    except OSError as exc:
        import errno

        if exc.errno == errno.ENOMEM:
            raise Reject(exc, requeue=False) from exc

    # For any other error we retry after 10 seconds.
    except Exception as exc:
        raise self.retry(exc, countdown=10) from exc


@app.task(bind=True, acks_late=True)
def requeues(self: Task[..., Any]) -> None:
    if not self.request.delivery_info["redelivered"]:
        raise Reject("no reason", requeue=True)
    print("received two times")


# -- Tasks guide: Custom task classes --------------------------------------------------------------


class NaiveAuthenticateServer(Task):
    name = "apps.task_class_tasks.NaiveAuthenticateServer"  # (the guide registers it by class)

    def __init__(self) -> None:
        self.users = {"george": "password"}

    def run(self, username: str, password: str) -> bool:
        try:
            return self.users[username] == password
        except KeyError:
            return False


naive_authenticate = app.register_task(NaiveAuthenticateServer())


class Database:
    @staticmethod
    def connect() -> Any:
        write("stand_in", call="Database.connect", pid=os.getpid())
        return SimpleNamespace(table=_StandIn("db.table", returns=["row 1", "row 2"]))


class DatabaseTask(Task):
    _db = None

    @property
    def db(self) -> Any:
        if self._db is None:
            self._db = Database.connect()
        return self._db


def process_row(row: str) -> None:
    write("processed", row=row)


@app.task(base=DatabaseTask)
def process_rows() -> None:
    for row in process_rows.db.table.all():
        process_row(row)


# -- Tasks guide: Tips (results, synchronous subtasks) ------------------------------------------


@app.task
def mytask(x: int, y: int) -> int:
    return x + y


@app.task
def update_page_info(url: str) -> None:
    page = fetch_page.delay(url).get()
    info = parse_page.delay(url, page).get()
    store_page_info.delay(url, info)


@app.task
def update_page_info_sync(url: str) -> None:  # the guide's third update_page_info
    page = fetch_page.delay(url).get(disable_sync_subtasks=False)
    info = parse_page.delay(url, page).get(disable_sync_subtasks=False)
    store_page_info.delay(url, info)


@app.task
def fetch_page(url: str) -> Any:
    return myhttplib.get(url)


@app.task
def parse_page(url: str, page: str) -> Any:
    return myparser.parse_document(page)


@app.task(ignore_result=True)
def store_page_info(info: Any, url: str) -> None:
    PageInfo.objects.create(url=url, info=info)


# -- Calling guide: Linking (callbacks/errbacks) ---------------------------------------------------


@app.task
def error_handler(request: Any, exc: Any, traceback: Any) -> None:
    print(f"Task {request.id} raised exception: {exc!r}\n{traceback!r}")


@app.task
def on_error(task_id: str) -> None:
    with allow_join_result():
        result = app.AsyncResult(task_id)
        exc = result.get(propagate=False)
        print(f"Task {task_id} raised exception: {exc!r}")


@app.task
def other_task(value: Any) -> None:
    write("other_task", value=value)


# -- Periodic Tasks guide: Scheduling groups and other workflows -------------------------------


@app.task
def run_add_group() -> None:
    group(add.s(i, i) for i in range(10)).apply_async()


if os.environ.get("CONVEYOR_TEST_GUIDE_BEAT"):  # only the guide's beat test schedules it

    @app.on_after_configure.connect
    def setup_periodic_tasks(sender: Conveyor, **kwargs: Any) -> None:
        # (every second, not the guide's 30: a test waits for it)
        sender.add_periodic_task(1.0, run_add_group.s(), name="add group every 30")
