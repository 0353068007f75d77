"""The app: the task registry, calling and sending tasks, routing, settings and discovery."""

from __future__ import annotations

import datetime as dt
import importlib
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import conveyor
from conveyor import Celery, Conveyor, states
from conveyor.brokers.base import QueueStats
from conveyor.config import BROKER_URL_ENV, RESULT_BACKEND_ENV
from conveyor.exceptions import ConfigurationError, EncodeError, NotRegistered
from conveyor.message import Message, decode
from conveyor.result import AsyncResult, EagerResult
from conveyor.task import Request, Task

WriteModules = Callable[[dict[str, str]], None]


def add(x: int, y: int) -> int:
    return x + y


@pytest.fixture(autouse=True)
def _no_conveyor_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BROKER_URL_ENV, raising=False)
    monkeypatch.delenv(RESULT_BACKEND_ENV, raising=False)


@pytest.fixture
def write_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WriteModules]:
    """Write importable modules (``{"pkg/mod.py": source}``) into tmp_path; forget them after."""
    monkeypatch.syspath_prepend(str(tmp_path))
    tops: set[str] = set()

    def write(files: dict[str, str]) -> None:
        for relative, source in files.items():
            path = tmp_path / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(source)
            tops.add(Path(relative).parts[0].removesuffix(".py"))
        importlib.invalidate_caches()

    yield write
    for name in list(sys.modules):
        if name.split(".")[0] in tops:
            del sys.modules[name]


def own_tasks(app: Conveyor, package: str) -> list[str]:
    """The app's tasks defined in ``package`` (every app also has the shared tasks that
    other modules of this process define, as in Celery)."""
    return sorted(name for name in app.tasks if name.startswith(f"{package}."))


def stats(app: Conveyor, queue: str = "celery") -> QueueStats:
    return app.broker.stats([queue])[0]


def take(app: Conveyor, queue: str = "celery", timeout: float = 0.0) -> list[Message]:
    """Every ready message of ``queue``, fetched from the broker and decoded."""
    deliveries = app.broker.fetch([queue], 100, consumer="unit-test", timeout=timeout)
    app.broker.ack(deliveries)
    return [decode(d.body) for d in deliveries]


def take_one(app: Conveyor, queue: str = "celery", timeout: float = 0.0) -> Message:
    messages = take(app, queue, timeout)
    assert len(messages) == 1, messages
    return messages[0]


# --- the public API ----------------------------------------------------------------------------


def test_the_public_api_is_exactly_this() -> None:
    assert conveyor.__all__ == [
        "AsyncResult",
        "BrokerUnavailable",
        "Celery",
        "ConfigurationError",
        "Conveyor",
        "ConveyorError",
        "DecodeError",
        "EagerResult",
        "EncodeError",
        "Exchange",
        "GroupResult",
        "Ignore",
        "MaxRetriesExceededError",
        "NotRegistered",
        "Queue",
        "Reject",
        "Request",
        "Retry",
        "Signature",
        "SoftTimeLimitExceeded",
        "Task",
        "TaskError",
        "TaskRevokedError",
        "TimeLimitExceeded",
        "TimeoutError",
        "__version__",
        "chain",
        "chord",
        "chunks",
        "group",
        "maybe_signature",
        "shared_task",
        "signature",
        "states",
        "xmap",
        "xstarmap",
    ]
    for name in conveyor.__all__:
        assert hasattr(conveyor, name), name


def test_celery_is_the_same_class_as_conveyor() -> None:
    assert Celery is Conveyor


# --- registering tasks -------------------------------------------------------------------------


def test_a_task_is_named_after_its_module_and_function(app: Conveyor) -> None:
    # When a module-level function is registered without a name
    task = app.task(add)

    # Then it is named module.function and registered under that name
    assert task.name == f"{__name__}.add"
    assert app.tasks[task.name] is task
    assert app.get_task(task.name) is task


def test_a_task_defined_inside_a_function_is_named_module_dot_function(app: Conveyor) -> None:
    # When a function defined inside this test is registered without a name
    @app.task
    def ping() -> str:
        return "pong"

    # Then, as in Celery, the enclosing function is not part of the name
    assert ping.name == f"{__name__}.ping"


def test_a_task_defined_in_main_is_named_after_the_app(app: Conveyor) -> None:
    # Given a function of the __main__ module (a script run directly)
    def report() -> None:
        pass

    report.__module__ = "__main__"

    # When it is registered, Then its name uses the app's main name, as Celery does
    assert app.task(report).name == "unit.report"


def test_the_bare_decorator_registers_a_task(app: Conveyor) -> None:
    # When a function is decorated with @app.task
    @app.task
    def double(x: int) -> int:
        """Double it."""
        return x * 2

    # Then it becomes a Task that still looks like the function
    assert isinstance(double, Task)
    assert app.tasks[double.name] is double
    assert double.__name__ == "double"
    assert double.__doc__ == "Double it."


def test_the_decorator_with_options_sets_them(app: Conveyor) -> None:
    # When a task is declared with options
    @app.task(name="billing.charge", bind=True, queue="billing", priority=5, max_retries=7)
    def charge(self: Task[..., Any], amount: int) -> int:
        return amount

    # Then the task carries them and is registered under the given name
    assert charge.name == "billing.charge"
    assert app.tasks["billing.charge"] is charge
    assert charge.bind is True
    assert charge.queue == "billing"
    assert charge.priority == 5
    assert charge.max_retries == 7


def test_an_unknown_task_option_is_a_configuration_error(app: Conveyor) -> None:
    with pytest.raises(ConfigurationError, match="acks_lat"):
        app.task(acks_lat=True)


def test_a_task_priority_outside_0_to_9_is_refused_at_declaration(app: Conveyor) -> None:
    with pytest.raises(ValueError, match="priority must be 0-9"):
        app.task(priority=10)(add)


def test_an_unregistered_name_is_not_registered_error(app: Conveyor) -> None:
    with pytest.raises(NotRegistered, match="nope"):
        app.get_task("nope")


# --- calling a task here -----------------------------------------------------------------------


def test_calling_a_task_runs_it_in_this_process(app: Conveyor) -> None:
    # Given a task
    task = app.task(add)

    # When it is called like a function, Then it runs here and nothing is sent
    assert task(2, 3) == 5
    assert stats(app) == QueueStats("celery")


def test_a_bound_task_receives_itself(app: Conveyor) -> None:
    # Given a bound task that returns what it was given as self
    seen: list[Any] = []

    @app.task(bind=True)
    def whoami(self: Task[..., Any]) -> None:
        seen.append((self, self.request))

    # When it is called
    whoami()

    # Then self is the task, with an empty request outside a worker
    assert seen[0][0] is whoami
    assert seen[0][1] == Request()


def test_an_async_task_is_run_to_completion_when_called(app: Conveyor) -> None:
    @app.task
    async def fetch_number() -> int:
        return 42

    assert fetch_number() == 42


# --- sending a task ------------------------------------------------------------------------------


def test_delay_publishes_a_message_and_returns_its_handle(app: Conveyor) -> None:
    # Given a task
    task = app.task(add)

    # When it is sent
    result = task.delay(2, y=3)

    # Then one message with the call is ready in the default queue, under the handle's id
    assert isinstance(result, AsyncResult)
    assert stats(app).ready == 1
    message = take_one(app)
    assert message.id == result.id
    assert message.root_id == result.id
    assert message.task == task.name
    assert message.args == [2]
    assert message.kwargs == {"y": 3}
    assert message.queue == "celery"
    assert message.priority == 0
    assert message.eta is None
    assert message.expires is None


def test_delay_with_arguments_that_do_not_fit_raises_and_sends_nothing(app: Conveyor) -> None:
    # Given a task of two parameters
    task = app.task(add)

    # When it is sent with arguments its signature refuses
    with pytest.raises(TypeError, match=r"add\(\): missing a required argument: 'y'"):
        task.delay(1)
    with pytest.raises(TypeError, match="unexpected keyword argument 'z'"):
        task.delay(1, 2, z=3)

    # Then nothing was enqueued
    assert stats(app) == QueueStats("celery")


def test_a_bound_task_is_checked_without_its_self_parameter(app: Conveyor) -> None:
    @app.task(bind=True)
    def tagged(self: Task[..., Any], tag: str) -> str:
        return tag

    tagged.delay("x")
    with pytest.raises(TypeError):
        tagged.delay("x", "y")
    assert stats(app).ready == 1


@pytest.mark.parametrize(
    ("args", "kwargs", "fits"),
    [
        ((1,), {"k": 2}, True),
        ((1, 2, 3, 4), {"k": 2}, True),
        ((), {"k": 2}, False),  # a is missing
        ((1,), {}, False),  # k is keyword-only and has no default
        ((1,), {"k": 2, "z": 3}, False),
    ],
)
def test_the_fast_positional_check_agrees_with_binding(
    app: Conveyor, args: tuple[Any, ...], kwargs: dict[str, Any], fits: bool
) -> None:
    @app.task
    def varied(a: int, b: int = 0, *rest: int, k: int) -> int:
        return a

    @app.task
    def plain(a: int, b: int = 0) -> int:
        return a

    if fits:
        varied.apply_async(args, kwargs)
    else:
        with pytest.raises(TypeError, match=r"varied\(\)"):
            varied.apply_async(args, kwargs)
    plain.delay(1)
    plain.delay(1, 2)
    for bad in ((), (1, 2, 3)):
        with pytest.raises(TypeError, match=r"plain\(\)"):
            plain.apply_async(bad)


def test_arguments_that_are_not_json_raise_encode_error_and_send_nothing(app: Conveyor) -> None:
    # Given a task
    @app.task(name="proj.store")
    def store_items(items: Any) -> None:
        pass

    # When it is sent with a set, Then EncodeError names the task and nothing is enqueued
    with pytest.raises(EncodeError, match=r"proj\.store"):
        store_items.delay({1, 2})
    assert stats(app) == QueueStats("celery")


def test_apply_async_takes_a_task_id(app: Conveyor) -> None:
    task = app.task(add)
    result = task.apply_async((1, 2), task_id="my-id")
    assert result.id == "my-id"
    assert take_one(app).id == "my-id"


def test_ignore_result_travels_in_the_message(app: Conveyor) -> None:
    quiet = app.task(ignore_result=True)(add)
    quiet.delay(1, 2)
    add_task = app.task(name="loud")(add)
    add_task.apply_async((1, 2), ignore_result=True)
    assert [m.ignore_result for m in take(app)] == [True, True]


def test_a_priority_outside_0_to_9_is_a_value_error_at_send(app: Conveyor) -> None:
    task = app.task(add)
    for priority in (-1, 10):
        with pytest.raises(ValueError, match="priority must be 0-9"):
            task.apply_async((1, 2), priority=priority)
    assert stats(app) == QueueStats("celery")


def test_an_unknown_send_option_is_a_type_error(app: Conveyor) -> None:
    task = app.task(add)
    with pytest.raises(TypeError, match="not_an_option"):
        task.apply_async((1, 2), not_an_option="other")
    assert stats(app) == QueueStats("celery")


def test_send_task_sends_a_task_this_process_does_not_know(app: Conveyor) -> None:
    # Given no task registered under the name
    assert "remote.only" not in app.tasks

    # When it is sent by name
    result = app.send_task("remote.only", [1], {"k": "v"}, queue="remote", priority=3)

    # Then the message is published for whichever worker knows it
    message = take_one(app, "remote")
    assert message == Message(
        id=result.id,
        task="remote.only",
        args=[1],
        kwargs={"k": "v"},
        queue="remote",
        priority=3,
        root_id=result.id,
    )


def test_send_task_keeps_the_parent_root_and_headers(app: Conveyor) -> None:
    app.send_task("t", parent_id="p", root_id="r", headers={"h": 1})
    message = take_one(app)
    assert (message.parent_id, message.root_id, message.headers) == ("p", "r", {"h": 1})


# --- eager mode ----------------------------------------------------------------------------------


def test_always_eager_runs_the_task_at_delay_and_sends_nothing(
    make_app: Callable[..., Conveyor],
) -> None:
    # Given an app that runs tasks eagerly
    app = make_app(task_always_eager=True)
    seen: list[Request] = []

    @app.task(bind=True)
    def remember(self: Task[..., Any], x: int) -> int:
        seen.append(self.request)
        return x * 10

    # When a task is sent
    result = remember.delay(4)

    # Then it ran here: an EagerResult holds its value, and no message was published
    assert isinstance(result, EagerResult)
    assert result.state == states.SUCCESS
    assert result.successful()
    assert result.get() == 40
    assert seen[0].is_eager
    assert seen[0].id == result.id
    assert seen[0].args == [4]
    assert stats(app) == QueueStats("celery")


def test_always_eager_stores_a_failure_in_the_result(make_app: Callable[..., Conveyor]) -> None:
    # Given an eager app that does not propagate
    app = make_app(task_always_eager=True)

    @app.task
    def explode() -> None:
        raise ValueError("boom")

    # When the failing task is sent
    result = explode.delay()

    # Then the failure is held by the result and raised by get()
    assert result.state == states.FAILURE
    assert result.failed()
    assert isinstance(result.result, ValueError)
    assert result.traceback is not None
    assert "boom" in result.traceback
    with pytest.raises(ValueError, match="boom"):
        result.get()


def test_always_eager_with_propagation_raises_at_delay(make_app: Callable[..., Conveyor]) -> None:
    app = make_app(task_always_eager=True, task_eager_propagates=True)

    @app.task
    def explode() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        explode.delay()


def test_always_eager_still_checks_the_arguments(make_app: Callable[..., Conveyor]) -> None:
    app = make_app(task_always_eager=True)
    task = app.task(add)
    with pytest.raises(TypeError):
        task.delay(1)


def test_apply_runs_the_task_here_without_eager_mode(app: Conveyor) -> None:
    task = app.task(add)
    result = task.apply((1, 2))
    assert isinstance(result, EagerResult)
    assert result.get() == 3
    assert stats(app) == QueueStats("celery")


# --- routing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "routes",
    [
        pytest.param({"proj.mail.send": {"queue": "mail"}}, id="exact-name"),
        pytest.param({"proj.mail.send": "mail"}, id="exact-name-to-queue-name"),
        pytest.param({"proj.mail.*": {"queue": "mail"}}, id="glob"),
        pytest.param([{"other.*": "wrong"}, {"proj.*": {"queue": "mail"}}], id="list-of-dicts"),
        pytest.param(lambda name, args, kwargs, options: {"queue": "mail"}, id="callable"),
        pytest.param(lambda name, args, kwargs, options: "mail", id="callable-to-queue-name"),
        pytest.param([lambda *a: None, {"proj.mail.send": "mail"}], id="callable-then-dict"),
    ],
)
def test_task_routes_choose_the_queue(make_app: Callable[..., Conveyor], routes: Any) -> None:
    # Given routes that send proj.mail.send to the "mail" queue
    app = make_app(task_routes=routes)
    send = app.task(name="proj.mail.send")(add)

    # When the task is sent
    send.delay(1, 2)

    # Then its message is in "mail", not in the default queue
    assert take_one(app, "mail").queue == "mail"
    assert stats(app) == QueueStats("celery")


def test_an_unmatched_task_goes_to_the_default_queue(make_app: Callable[..., Conveyor]) -> None:
    app = make_app(task_routes={"proj.mail.*": "mail"}, task_default_queue="main")
    app.task(name="proj.billing.charge")(add).delay(1, 2)
    assert take_one(app, "main").task == "proj.billing.charge"


def test_the_first_matching_route_wins(make_app: Callable[..., Conveyor]) -> None:
    app = make_app(task_routes=[{"proj.*": "first"}, {"proj.mail.send": "second"}])
    app.task(name="proj.mail.send")(add).delay(1, 2)
    assert take_one(app, "first").queue == "first"


def test_a_callable_route_sees_the_task_name_and_arguments(
    make_app: Callable[..., Conveyor],
) -> None:
    # Given a router that picks the queue from the arguments
    calls: list[tuple[Any, ...]] = []

    def router(name: str, args: list[Any], kwargs: dict[str, Any], options: Any) -> Any:
        calls.append((name, args, kwargs))
        return {"queue": f"tenant-{kwargs['tenant']}"}

    app = make_app(task_routes=router)

    # When a task is sent
    app.send_task("proj.report", [1], {"tenant": "acme"})

    # Then the router saw the call and chose its queue
    assert calls == [("proj.report", [1], {"tenant": "acme"})]
    assert take_one(app, "tenant-acme").task == "proj.report"


def test_a_route_can_set_the_priority(make_app: Callable[..., Conveyor]) -> None:
    app = make_app(task_routes={"urgent.*": {"queue": "fast", "priority": 8}})
    app.send_task("urgent.page")
    assert take_one(app, "fast").priority == 8


def test_an_explicit_queue_and_priority_override_the_routes(
    make_app: Callable[..., Conveyor],
) -> None:
    # Given a route for the task
    app = make_app(task_routes={"urgent.*": {"queue": "fast", "priority": 8}})
    task = app.task(name="urgent.page")(add)

    # When it is sent with its own queue and priority
    task.apply_async((1, 2), queue="manual", priority=1)

    # Then those win
    message = take_one(app, "manual")
    assert message.priority == 1
    assert stats(app, "fast") == QueueStats("fast")


def test_the_tasks_own_queue_and_priority_override_the_routes(
    make_app: Callable[..., Conveyor],
) -> None:
    app = make_app(task_routes={"urgent.*": {"queue": "fast", "priority": 8}})
    task = app.task(name="urgent.page", queue="declared", priority=2)(add)
    task.delay(1, 2)
    assert take_one(app, "declared").priority == 2


def test_the_default_priority_setting_applies_to_unrouted_tasks(
    make_app: Callable[..., Conveyor],
) -> None:
    app = make_app(task_default_priority=4)
    app.send_task("t")
    assert take_one(app).priority == 4


# --- due times and expiry ------------------------------------------------------------------------


def test_countdown_holds_the_message_in_the_broker_until_due(app: Conveyor) -> None:
    # Given a task
    task = app.task(add)

    # When it is sent with a countdown
    before = time.time()
    task.apply_async((1, 2), countdown=0.3)

    # Then the broker holds it as delayed, with nothing ready yet
    assert stats(app) == QueueStats("celery", delayed=1)
    assert take(app) == []

    # And once due it can be fetched, carrying its due time
    message = take_one(app, timeout=3.0)
    assert time.time() >= before + 0.3
    assert message.eta is not None
    assert before + 0.3 <= message.eta <= time.time()


def test_a_naive_eta_is_read_as_utc(app: Conveyor) -> None:
    # Given a naive datetime a little in the future, in UTC
    due = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=0.3)
    naive = due.replace(tzinfo=None)

    # When a task is sent with it as eta
    app.task(add).apply_async((1, 2), eta=naive)

    # Then it is delayed until that UTC time
    assert stats(app) == QueueStats("celery", delayed=1)
    message = take_one(app, timeout=3.0)
    assert message.eta == pytest.approx(due.timestamp())
    assert time.time() >= due.timestamp()


def test_an_aware_eta_is_read_in_its_own_zone(app: Conveyor) -> None:
    # Given an aware datetime in UTC+05:00 a little in the future
    zone = dt.timezone(dt.timedelta(hours=5))
    due = dt.datetime.now(zone) + dt.timedelta(seconds=0.3)

    # When a task is sent with it as eta
    app.task(add).apply_async((1, 2), eta=due)

    # Then it is delayed until that instant
    assert stats(app) == QueueStats("celery", delayed=1)
    message = take_one(app, timeout=3.0)
    assert message.eta == pytest.approx(due.timestamp())


def test_an_eta_in_the_past_is_ready_at_once(app: Conveyor) -> None:
    app.task(add).apply_async((1, 2), eta=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    assert stats(app).ready == 1


def test_expires_in_seconds_becomes_a_time(app: Conveyor) -> None:
    before = time.time()
    app.task(add).apply_async((1, 2), expires=60)
    message = take_one(app)
    assert message.expires is not None
    assert before + 60 <= message.expires <= time.time() + 60


def test_expires_as_a_datetime_is_kept(app: Conveyor) -> None:
    when = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    app.task(add).apply_async((1, 2), expires=when)
    assert take_one(app).expires == when.timestamp()


def test_expires_as_a_naive_datetime_is_utc(app: Conveyor) -> None:
    app.task(add).apply_async((1, 2), expires=dt.datetime(2030, 1, 2, 3, 4, 5))
    assert take_one(app).expires == dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC).timestamp()


@pytest.mark.parametrize(
    ("option", "value"),
    [
        pytest.param("eta", dt.datetime.max, id="eta-datetime-max"),
        pytest.param("eta", float("nan"), id="eta-nan"),
        pytest.param("eta", float("inf"), id="eta-inf"),
        pytest.param("eta", 1e300, id="eta-1e300"),
        pytest.param("eta", 10**400, id="eta-int-beyond-float"),
        pytest.param("expires", dt.datetime.max, id="expires-datetime-max"),
        pytest.param("expires", float("nan"), id="expires-nan"),
        pytest.param("expires", float("-inf"), id="expires-minus-inf"),
        pytest.param("expires", 1e300, id="expires-1e300"),
        pytest.param("expires", dt.timedelta.max, id="expires-timedelta-max"),
        pytest.param("countdown", float("nan"), id="countdown-nan"),
        pytest.param("countdown", float("inf"), id="countdown-inf"),
        pytest.param("countdown", -1e300, id="countdown-minus-1e300"),
        pytest.param("countdown", dt.timedelta.max, id="countdown-timedelta-max"),
    ],
)
def test_a_time_option_out_of_range_fails_at_send_naming_it_and_sends_nothing(
    app: Conveyor, option: str, value: Any
) -> None:
    # Given a task
    task = app.task(add)

    # When it is sent with a time no datetime can hold (NaN, infinite, past year 9999)
    # Then the send fails naming the option, and nothing is published
    with pytest.raises(ValueError, match=f"^{option}=.* out of range"):
        task.apply_async((1, 2), **{option: value})
    with pytest.raises(ValueError, match=f"^{option}=.* out of range"):
        app.send_task(task.name, [1, 2], **{option: value})
    assert stats(app) == QueueStats("celery")


def test_a_unique_task_refused_for_its_eta_leaves_its_key_free(app: Conveyor) -> None:
    # Given a unique task whose first send fails on its eta
    task = app.task(add)
    with pytest.raises(ValueError, match="eta="):
        task.apply_async((1, 2), unique_key="only-one", eta=float("nan"))

    # When it is sent again with a valid eta, Then it is published: no key was kept
    task.apply_async((1, 2), unique_key="only-one")
    assert stats(app).ready == 1


# --- results -------------------------------------------------------------------------------------


def test_app_async_result_is_a_handle_on_the_apps_backend(app: Conveyor) -> None:
    # Given an id nobody has stored
    result = app.AsyncResult("some-id")

    # Then the handle reads the app's backend
    assert isinstance(result, AsyncResult)
    assert result.id == "some-id"
    assert result.backend is app.backend
    assert result.state == states.PENDING
    assert app.task(add).AsyncResult("x").backend is app.backend


# --- settings and storage ------------------------------------------------------------------------


def test_settings_are_given_at_construction(make_app: Callable[..., Conveyor]) -> None:
    app = make_app(task_default_queue="main", task_acks_late=False)
    assert app.conf.task_default_queue == "main"
    assert app.conf.task_acks_late is False


def test_an_unknown_setting_at_construction_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="did you mean 'task_acks_late'"):
        Conveyor("x", broker="memory://unused", task_acks_lat=True)


def test_config_from_object_reads_a_module_by_path(
    app: Conveyor, write_modules: WriteModules
) -> None:
    # Given a settings module with a helper import and two settings
    write_modules(
        {
            "unit_settings_plain.py": (
                "import os\ntask_default_queue = 'main'\nTASK_ACKS_LATE = False\n"
            )
        }
    )

    # When the app reads it by path
    app.config_from_object("unit_settings_plain")

    # Then the settings are set, lower- or uppercase
    assert app.conf.task_default_queue == "main"
    assert app.conf.task_acks_late is False


def test_config_from_object_with_a_namespace_reads_only_that_prefix(
    app: Conveyor, write_modules: WriteModules
) -> None:
    # Given a Django-style settings module
    write_modules(
        {
            "unit_settings_django.py": (
                "DEBUG = True\nSECRET_KEY = 'x'\n"
                "CELERY_TASK_DEFAULT_QUEUE = 'django'\nCELERY_TASK_DEFAULT_PRIORITY = 6\n"
            )
        }
    )

    # When it is read with namespace CELERY
    app.config_from_object("unit_settings_django", namespace="CELERY")

    # Then the prefixed settings are read and the rest ignored
    assert app.conf.task_default_queue == "django"
    assert app.conf.task_default_priority == 6


def test_config_from_object_reads_an_attribute_path(
    app: Conveyor, write_modules: WriteModules
) -> None:
    write_modules(
        {"unit_settings_attr.py": "class Config:\n    task_default_queue = 'from-class'\n"}
    )
    app.config_from_object("unit_settings_attr:Config")
    assert app.conf.task_default_queue == "from-class"


def test_config_from_object_with_a_typo_names_the_right_setting(
    app: Conveyor, write_modules: WriteModules
) -> None:
    write_modules({"unit_settings_typo.py": "task_default_queu = 'x'\n"})
    with pytest.raises(ConfigurationError, match="did you mean 'task_default_queue'"):
        app.config_from_object("unit_settings_typo")


def test_config_from_object_of_a_missing_module_is_a_configuration_error(app: Conveyor) -> None:
    with pytest.raises(ConfigurationError, match="unit_settings_missing"):
        app.config_from_object("unit_settings_missing")


def test_the_broker_url_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given CONVEYOR_BROKER_URL and an app without a broker argument
    url = f"memory://unit-env-{uuid.uuid4().hex}"
    monkeypatch.setenv(BROKER_URL_ENV, url)
    app = Conveyor("env")
    try:
        # Then broker and result backend both use that URL
        assert app.broker_url == url
        assert app.backend_url == url
        assert app.broker.url == url
    finally:
        app.close()


def test_a_broker_argument_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BROKER_URL_ENV, "memory://from-env")
    app = Conveyor("env", broker="memory://from-arg")
    assert app.broker_url == "memory://from-arg"
    app.close()


def test_the_result_backend_can_differ_from_the_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    name = uuid.uuid4().hex
    app = Conveyor("x", broker=f"memory://b-{name}", backend=f"memory://r-{name}")
    try:
        assert app.backend.url == f"memory://r-{name}"
        assert app.broker.url == f"memory://b-{name}"
    finally:
        app.close()


def test_close_lets_the_app_connect_again(app: Conveyor) -> None:
    first = app.broker
    app.close()
    assert app.broker.url == first.url


# --- discovering tasks ---------------------------------------------------------------------------

APP_MODULE = (
    "from conveyor import Conveyor\napp = Conveyor('found', broker='memory://unit-found')\n"
)
TASKS_MODULE = "from {pkg}.celery_app import app\n\n@app.task\ndef ping():\n    return 'pong'\n"


def test_import_modules_imports_the_include_list(write_modules: WriteModules) -> None:
    # Given an app whose tasks live in a module it includes
    write_modules(
        {
            "unit_incl/__init__.py": "",
            "unit_incl/celery_app.py": (
                "from conveyor import Conveyor\n"
                "app = Conveyor('incl', broker='memory://unit-incl', include=['unit_incl.jobs'])\n"
            ),
            "unit_incl/jobs.py": TASKS_MODULE.format(pkg="unit_incl"),
        }
    )
    app = importlib.import_module("unit_incl.celery_app").app
    assert own_tasks(app, "unit_incl") == []

    # When the worker imports the app's modules
    app.import_modules()

    # Then the tasks defined there are registered
    assert own_tasks(app, "unit_incl") == ["unit_incl.jobs.ping"]


def test_autodiscover_tasks_imports_the_tasks_module_of_each_package(
    write_modules: WriteModules,
) -> None:
    # Given two packages with a tasks module and one without
    write_modules(
        {
            "unit_disc/__init__.py": "",
            "unit_disc/celery_app.py": APP_MODULE,
            "unit_disc/tasks.py": TASKS_MODULE.format(pkg="unit_disc"),
            "unit_disc/billing/__init__.py": "",
            "unit_disc/billing/tasks.py": (
                "from unit_disc.celery_app import app\n\n@app.task\ndef charge():\n    pass\n"
            ),
            "unit_disc/static/__init__.py": "",
        }
    )
    app = importlib.import_module("unit_disc.celery_app").app

    # When tasks are discovered
    app.autodiscover_tasks(["unit_disc", "unit_disc.billing", "unit_disc.static"])

    # Then the tasks of both modules are registered, and the package without one is skipped
    assert own_tasks(app, "unit_disc") == ["unit_disc.billing.tasks.charge", "unit_disc.tasks.ping"]


def test_autodiscover_tasks_does_not_hide_an_import_error_inside_a_tasks_module(
    write_modules: WriteModules,
) -> None:
    # Given a tasks module that imports something missing
    write_modules(
        {
            "unit_broken/__init__.py": "",
            "unit_broken/tasks.py": "import unit_dependency_that_is_missing\n",
        }
    )
    app = Conveyor("x", broker="memory://unused")

    # When tasks are discovered, Then the real error surfaces
    with pytest.raises(ModuleNotFoundError, match="unit_dependency_that_is_missing"):
        app.autodiscover_tasks(["unit_broken"])


def test_countdown_and_expires_accept_timedelta(tmp_path):
    # Given an app on a real SQLite file
    app = Conveyor("td", broker=f"sqlite:///{tmp_path / 'td.sqlite3'}")
    try:

        @app.task
        def noop():
            return None

        # When countdown and expires are timedeltas
        before = time.time()
        noop.apply_async(countdown=dt.timedelta(seconds=0.5), expires=dt.timedelta(minutes=5))
        # Then the message waits in the broker's delayed state ...
        [stats] = app.broker.stats(["celery"])
        assert stats.delayed == 1
        # ... becomes ready half a second later, and expires five minutes out
        [delivery] = app.broker.fetch(["celery"], 1, consumer="t", timeout=3)
        msg = decode(delivery.body)
        assert msg.eta is not None
        assert 0.4 <= msg.eta - before <= 1.0
        assert time.time() >= msg.eta
        assert msg.expires is not None
        assert 299 <= msg.expires - before <= 301
    finally:
        app.close()


def test_store_eager_result_writes_to_the_backend(tmp_path):
    # Given an eager app that stores eager results
    app = Conveyor(
        "eager",
        broker=f"sqlite:///{tmp_path / 'e.sqlite3'}",
        task_always_eager=True,
        task_store_eager_result=True,
    )
    try:

        @app.task
        def double(x):
            return 2 * x

        # When the task is called with delay
        result = double.delay(21)
        # Then its result can be read back through the backend by id
        assert app.AsyncResult(result.id).get(timeout=1) == 42
    finally:
        app.close()
