"""Task classes as Celery's: options as class attributes, ``run``, ``base=``,
``task_cls``, ``app.Task``, ``register_task``, the handlers and ``__call__``, in this
process (eagerly, and with a worker in a thread: ``conveyor.testing``)."""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor, Task
from conveyor.exceptions import ConfigurationError, ExceptionInfo
from conveyor.message import decode
from conveyor.task import Request, request_context
from conveyor.testing import start_worker


class Recorder(Task):
    """Records every handler call, with its arguments."""

    calls: list[tuple[Any, ...]] = []

    def before_start(self, task_id: str, args: list[Any], kwargs: dict[str, Any]) -> None:
        self.calls.append(("before_start", task_id, args, kwargs))

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        self.calls.append(("on_success", retval, task_id, args, kwargs))

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        self.calls.append(("on_failure", exc, task_id, args, kwargs, einfo))

    def on_retry(self, exc: Any, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        self.calls.append(("on_retry", exc, task_id, args, kwargs, type(einfo)))

    def after_return(
        self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        self.calls.append(("after_return", status, retval, task_id, args, kwargs))


# -- what @app.task makes ---------------------------------------------------------------------


def test_the_decorator_makes_a_subclass_of_the_apps_task_class_per_function(app: Conveyor) -> None:
    # When a function is decorated with options
    def add(x: int, y: int) -> int:
        """Add them."""
        return x + y

    task = app.task(max_retries=7, queue="maths")(add)

    # Then the task is an instance of its own subclass of app.Task, named after it
    assert isinstance(task, app.Task)
    assert type(task).__name__ == "add"
    assert type(task).__mro__[1] is app.Task
    # ... whose options are class attributes, and whose run is the function itself
    assert type(task).max_retries == 7
    assert type(task).queue == "maths"
    assert task.run is add
    assert task.__wrapped__ is add
    assert (task.__name__, task.__doc__, task.__module__) == ("add", "Add them.", __name__)
    assert task.app is app


def test_a_bound_tasks_run_is_a_method_of_the_task(app: Conveyor) -> None:
    @app.task(bind=True)
    def whoami(self: Task[..., Any], x: int) -> Any:
        return (self, x)

    assert whoami.run(1) == (whoami, 1)
    assert whoami(2) == (whoami, 2)
    with pytest.raises(TypeError, match="whoami"):
        whoami.delay(1, 2)  # type: ignore[call-arg]


def test_base_gives_the_task_its_class_and_the_attributes_it_defines(app: Conveyor) -> None:
    # Given a base class with an attribute of its own and a cached resource
    class DatabaseTask(Task):
        _db: list[str] | None = None
        pool_size: int = 1

        @property
        def db(self) -> list[str]:
            if self._db is None:
                self._db = ["connected"]
            return self._db

    # When a task is declared with it, setting the base's own attribute
    @app.task(base=DatabaseTask, pool_size=4)
    def process_rows() -> list[str]:
        return process_rows.db

    # Then the task is one, with the attribute and the base's behaviour
    assert isinstance(process_rows, DatabaseTask)
    assert process_rows.pool_size == 4
    assert process_rows() == ["connected"]
    assert process_rows.db is process_rows.db
    # ... and an attribute no base defines is still a typo
    with pytest.raises(ConfigurationError, match="pool_sise"):
        app.task(base=DatabaseTask, pool_sise=4)


def test_celerys_options_conveyor_does_not_need_are_accepted(app: Conveyor) -> None:
    @app.task(serializer="json", trail=True, send_events=False, throws=(KeyError,))
    def quiet() -> None: ...

    assert quiet.serializer == "json"
    with pytest.raises(ConfigurationError, match="JSON"):
        app.task(serializer="pickle")(lambda: None)


def test_a_class_checks_its_options_when_it_is_defined() -> None:
    with pytest.raises(ConfigurationError, match="rate"):

        class TooFast(Task):
            rate_limit = "lots"

    with pytest.raises(ValueError, match="priority must be 0-9"):

        class TooUrgent(Task):
            priority = 12


# -- app.Task, task_cls and register_task -------------------------------------------------------


def test_app_task_is_task_cls_bound_to_the_app(make_app: Callable[..., Conveyor]) -> None:
    class Base(Task):
        marker = "base"

    app = make_app(task_cls=Base)

    assert issubclass(app.Task, Base)
    assert app.Task is app.Task  # made once
    assert app.Task.__name__ == "Base"
    assert app.Task().app is app

    @app.task
    def plain() -> str:
        return plain.marker

    assert isinstance(plain, Base)
    assert plain() == "base"


def test_task_cls_may_be_a_module_colon_class_path_imported_when_first_needed(
    make_app: Callable[..., Conveyor], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a module, not imported yet, that defines a task class
    (tmp_path / "unit_task_cls.py").write_text(
        "from conveyor import Task\n\nclass DatabaseTask(Task):\n    marker = 'from the path'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "unit_task_cls", raising=False)

    # When an app names it as Celery's docs show
    app = make_app(task_cls="unit_task_cls:DatabaseTask")
    assert "unit_task_cls" not in sys.modules  # not before it is needed

    # Then its tasks are of that class
    @app.task
    def uses_it() -> str:
        return uses_it.marker

    assert uses_it() == "from the path"
    assert type(uses_it).__mro__[2].__module__ == "unit_task_cls"


def test_a_task_cls_that_is_no_task_class_is_refused(make_app: Callable[..., Conveyor]) -> None:
    app = make_app(task_cls="collections:OrderedDict")
    with pytest.raises(ConfigurationError, match=r"not a subclass of conveyor\.Task"):
        _ = app.Task


def test_a_task_written_as_a_class_is_registered_by_its_name(app: Conveyor) -> None:
    # Given Celery's class-based task, subclassing app.Task, with its own __init__
    class NaiveAuthenticateServer(app.Task):  # type: ignore[name-defined, misc]
        name = "auth.naive"

        def __init__(self) -> None:  # no super().__init__(), as Celery's guide writes it
            self.users = {"george": "password"}

        def run(self, username: str, password: str) -> bool:
            try:
                return bool(self.users[username] == password)
            except KeyError:
                return False

    # When it is registered
    task = app.register_task(NaiveAuthenticateServer())

    # Then it is the app's task of that name, callable and checkable
    assert app.tasks["auth.naive"] is task
    assert task("george", "password") is True
    assert task.apply(("george", "nope")).get() is False
    with pytest.raises(TypeError, match=r"auth\.naive"):
        task.delay("george")


def test_a_class_without_a_name_is_named_by_its_module_and_class(app: Conveyor) -> None:
    class Adder(Task):
        def run(self, x: int, y: int) -> int:
            return x + y

    task = app.register_task(Adder)  # the class itself, as Celery takes it too
    assert task.name == f"{__name__}.Adder"
    assert task.app is app
    assert app.get_task(task.name)(1, 2) == 3


def test_gen_task_name_is_celerys_to_override(make_app: Callable[..., Conveyor]) -> None:
    class MyCelery(Conveyor):
        def gen_task_name(self, name: str, module: str) -> str:
            if module.endswith(".tasks"):
                module = module[:-6]
            return super().gen_task_name(name, module)

    app = MyCelery("main", broker=f"memory://unit-names-{uuid.uuid4().hex}")

    def task_a() -> None: ...

    task_a.__module__ = "moduleA.tasks"
    assert app.task(task_a).name == "moduleA.task_a"
    app.close()


# -- handlers and __call__ ----------------------------------------------------------------------


def test_handlers_get_celerys_arguments_in_an_eager_run(app: Conveyor) -> None:
    Recorder.calls = []

    @app.task(base=Recorder)
    def double(x: int) -> int:
        return x * 2

    @app.task(base=Recorder)
    def broken(x: int) -> None:
        raise KeyError(x)

    ok = double.apply((2,), task_id="ok-1")
    bad = broken.apply((3,), task_id="bad-1")

    assert ok.get() == 4
    assert isinstance(bad.result, KeyError)
    assert Recorder.calls[:3] == [
        ("before_start", "ok-1", [2], {}),
        ("on_success", 4, "ok-1", [2], {}),
        ("after_return", "SUCCESS", 4, "ok-1", [2], {}),
    ]
    name, exc, task_id, args, kwargs, einfo = Recorder.calls[4]
    assert (name, type(exc), task_id, args, kwargs) == ("on_failure", KeyError, "bad-1", [3], {})
    assert isinstance(einfo, ExceptionInfo)
    assert "KeyError: 3" in einfo.traceback
    assert Recorder.calls[5][:3] == ("after_return", "FAILURE", exc)


def test_on_retry_is_called_for_each_eager_retry(make_app: Callable[..., Conveyor]) -> None:
    Recorder.calls = []
    app = make_app()

    @app.task(base=Recorder, bind=True, max_retries=1)
    def flaky(self: Task[..., Any]) -> str:
        if self.request.retries == 0:
            raise self.retry(exc=ConnectionError("down"), countdown=0)
        return "up"

    assert flaky.apply(task_id="f-1").get() == "up"
    retries = [call for call in Recorder.calls if call[0] == "on_retry"]
    assert [(type(c[1]), c[2], c[5]) for c in retries] == [(ConnectionError, "f-1", ExceptionInfo)]


def test_a_handler_that_raises_is_logged_and_the_outcome_stands(
    app: Conveyor, caplog: pytest.LogCaptureFixture
) -> None:
    class Clumsy(Task):
        def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
            raise RuntimeError("handler bug")

    @app.task(base=Clumsy)
    def fine() -> int:
        return 1

    assert fine.apply().get() == 1
    assert "on_success raised" in caplog.text


def test_a_task_cls_with_its_own_call_wraps_every_run(
    make_app: Callable[..., Conveyor],
) -> None:
    # Given Flask's pattern: a Task subclass whose __call__ opens a context
    entered: list[str] = []

    class ContextTask(Task):
        def __call__(self, *args: object, **kwargs: object) -> object:
            entered.append(self.name)
            return self.run(*args, **kwargs)

    app = make_app(task_cls=ContextTask)

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    # When it runs called, eagerly, and on a worker
    assert add(1, 2) == 3
    assert add.apply((2, 2)).get() == 4
    with start_worker(app):
        assert add.delay(3, 3).get(timeout=5) == 6

    # Then each run went through the subclass's __call__
    assert entered == [add.name] * 3


def test_an_async_tasks_own_call_is_awaited_by_the_worker(
    make_app: Callable[..., Conveyor],
) -> None:
    seen: list[str] = []

    class Tracing(Task):
        def __call__(self, *args: object, **kwargs: object) -> object:
            seen.append("call")
            return self.run(*args, **kwargs)

    app = make_app(task_cls=Tracing)

    @app.task
    async def answer() -> int:
        return 42

    with start_worker(app):
        assert answer.delay().get(timeout=5) == 42
    with start_worker(app, pool="asyncio"):
        assert answer.delay().get(timeout=5) == 42
    assert seen == ["call", "call"]


# -- the request ---------------------------------------------------------------------------------


def test_the_request_tells_a_direct_call_from_a_run(app: Conveyor) -> None:
    @app.task(bind=True)
    def who(self: Task[..., Any]) -> bool:
        return self.request.called_directly

    assert who() is True
    assert who.apply().get() is False
    with start_worker(app):
        assert who.delay().get(timeout=5) is False


def test_the_request_gives_celerys_names_for_what_the_headers_carry() -> None:
    request = Request(
        id="r",
        delivery_count=2,
        queue="q",
        headers={"chain": [{"task": "a"}, {"task": "b"}], "group_id": "g", "group_index": 1},
    )
    assert request.delivery_info["redelivered"] is True
    assert request.delivery_info["routing_key"] == "q"
    assert request.chain == [{"task": "b"}, {"task": "a"}]  # last first, as Celery's
    assert (request.group, request.group_index) == ("g", 1)
    assert (request.callbacks, request.errbacks, request.chord) == (None, None, None)
    with request_context(request):
        assert Task().request is request


def test_a_tasks_expires_is_the_default_of_its_sends(app: Conveyor) -> None:
    @app.task(expires=60)
    def perishable() -> None: ...

    result = perishable.delay()
    [delivery] = app.broker.fetch(["celery"], 1, consumer="unit", timeout=0)
    message = decode(delivery.body)
    assert message.id == result.id
    assert message.expires is not None
    assert 55 < message.expires - time.time() <= 60


def test_dont_autoretry_for_excludes_exceptions_autoretry_for_would_retry(app: Conveyor) -> None:
    runs: list[str] = []

    @app.task(autoretry_for=(Exception,), dont_autoretry_for=(KeyError,), max_retries=3)
    def picky(kind: str) -> None:
        runs.append(kind)
        raise KeyError(kind) if kind == "key" else ValueError(kind)

    assert isinstance(picky.apply(("key",)).result, KeyError)
    assert runs == ["key"]
    assert isinstance(picky.apply(("value",)).result, ValueError)
    assert runs == ["key"] + ["value"] * 4  # retried three times
