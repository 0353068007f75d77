"""Stored result payloads, rebuilt exceptions, and the AsyncResult handle over a real backend."""

from __future__ import annotations

import builtins
import datetime as dt
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

import conveyor
from conveyor import states
from conveyor.backends import connect_backend
from conveyor.backends.base import ResultBackend, ResultWrite
from conveyor.exceptions import EncodeError, TaskError, TaskRevokedError
from conveyor.result import (
    AsyncResult,
    EagerResult,
    encode_failure,
    encode_state,
    encode_success,
    rebuild_exception,
)


class PaymentDeclined(Exception):
    """A user exception defined in an imported module (this one)."""


class Order:
    class DoesNotExist(Exception):
        """Nested in a class, as Django's ``Model.DoesNotExist``."""


class NeedsTwoArguments(Exception):
    def __init__(self, code: int, reason: str):
        super().__init__(f"{code}: {reason}")
        self.code = code


def raised(exc: BaseException) -> BaseException:
    """``exc`` with a real traceback, as a task would leave it."""
    try:
        raise exc
    except BaseException as caught:
        return caught


def meta_of(payload: bytes) -> dict[str, object]:
    doc: dict[str, object] = orjson.loads(payload)
    return doc


@pytest.fixture
def backend() -> Iterator[ResultBackend]:
    backend = connect_backend(f"memory://unit-result-{uuid.uuid4().hex}")
    yield backend
    backend.close()


def store(backend: ResultBackend, task_id: str, state: str, payload: bytes) -> None:
    backend.store(ResultWrite(task_id, state, payload, ttl=60.0))


# --- payloads --------------------------------------------------------------------------------


def test_success_payload_holds_the_value_task_and_completion_time() -> None:
    # Given a task's return value
    before = dt.datetime.now(dt.UTC)

    # When it is encoded as a success
    meta = meta_of(encode_success("proj.add", {"sum": 5}, worker="w1", retries=2))

    # Then the payload carries the value and who/when
    assert meta["status"] == states.SUCCESS
    assert meta["result"] == {"sum": 5}
    assert meta["task"] == "proj.add"
    assert meta["worker"] == "w1"
    assert meta["retries"] == 2
    assert dt.datetime.fromisoformat(str(meta["date_done"])) >= before


def test_success_with_a_value_that_is_not_json_is_an_encode_error_naming_the_task() -> None:
    with pytest.raises(EncodeError, match=r"return value of task 'proj\.sets'"):
        encode_success("proj.sets", {1, 2})


def test_failure_payload_keeps_type_message_args_and_traceback() -> None:
    # Given an exception raised by a task
    exc = raised(ValueError("bad input", 42))

    # When it is encoded as a failure
    meta = meta_of(encode_failure("proj.parse", exc))

    # Then the payload names its class and keeps its message, args and traceback
    assert meta["status"] == states.FAILURE
    assert meta["exc_type"] == "builtins.ValueError"
    assert meta["exc_message"] == "('bad input', 42)"
    assert meta["exc_args"] == ["bad input", 42]
    assert "ValueError" in str(meta["traceback"])
    assert meta["task"] == "proj.parse"


def test_failure_with_arguments_that_are_not_json_keeps_the_message() -> None:
    # Given an exception whose args cannot be stored as JSON
    exc = ValueError({1, 2})

    # When it is encoded
    meta = meta_of(encode_failure("proj.t", exc))

    # Then its args are replaced by its message rather than failing
    assert meta["exc_args"] == ["{1, 2}"]


def test_failure_can_be_stored_under_another_state() -> None:
    meta = meta_of(encode_failure("proj.t", TaskRevokedError("expired"), state=states.REVOKED))
    assert meta["status"] == states.REVOKED


# --- rebuilding exceptions ---------------------------------------------------------------------


def test_a_builtin_exception_is_rebuilt_with_its_class() -> None:
    # Given a stored ValueError
    meta = meta_of(encode_failure("proj.t", raised(ValueError("bad input"))))

    # When it is rebuilt
    exc = rebuild_exception(meta)

    # Then it is a ValueError with the same message, and the remote traceback as a note
    assert type(exc) is ValueError
    assert str(exc) == "bad input"
    assert exc.__notes__[0].startswith("Remote traceback:")
    assert "ValueError: bad input" in exc.__notes__[0]


def test_a_user_exception_from_an_imported_module_is_rebuilt_with_its_class() -> None:
    # Given a stored exception whose class lives in this (imported) module
    meta = meta_of(encode_failure("proj.pay", raised(PaymentDeclined("card expired"))))
    assert meta["exc_type"] == f"{__name__}.PaymentDeclined"

    # When it is rebuilt
    exc = rebuild_exception(meta)

    # Then it has its own class again
    assert type(exc) is PaymentDeclined
    assert exc.args == ("card expired",)


def test_an_exception_class_nested_in_a_class_is_rebuilt_with_its_class() -> None:
    # Given a stored exception whose class is an attribute of a class
    meta = meta_of(encode_failure("proj.get", raised(Order.DoesNotExist("no order 7"))))
    assert meta["exc_type"] == f"{__name__}.Order.DoesNotExist"

    # When it is rebuilt, Then it has its own class again
    exc = rebuild_exception(meta)
    assert type(exc) is Order.DoesNotExist
    assert str(exc) == "no order 7"


def test_an_exception_from_a_module_not_imported_here_becomes_task_error() -> None:
    # Given a failure whose class lives in a module this process has not imported
    module = "conveyor_never_imported_" + uuid.uuid4().hex
    meta = {
        "status": states.FAILURE,
        "exc_type": f"{module}.QuotaExceeded",
        "exc_message": "over quota",
        "exc_args": ["over quota"],
        "traceback": "Traceback (most recent call last):\n  ...\nQuotaExceeded: over quota\n",
    }

    # When it is rebuilt
    exc = rebuild_exception(meta)

    # Then it is a TaskError carrying the remote type, message and traceback
    assert isinstance(exc, TaskError)
    assert exc.type_name == f"{module}.QuotaExceeded"
    assert exc.message == "over quota"
    assert exc.remote_traceback is not None
    assert "QuotaExceeded: over quota" in exc.remote_traceback
    assert str(exc) == f"{module}.QuotaExceeded: over quota"
    # And the module was not imported to find out
    assert module not in sys.modules


def test_rebuild_never_imports_a_module_even_when_it_is_importable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an importable module defining the exception, not imported by this process
    module = "conveyor_importable_" + uuid.uuid4().hex
    (tmp_path / f"{module}.py").write_text("class Boom(Exception):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    meta = {"exc_type": f"{module}.Boom", "exc_message": "m", "exc_args": ["m"]}

    # When a stored failure naming it is rebuilt
    exc = rebuild_exception(meta)

    # Then it falls back to TaskError: a stored payload never makes this process import code
    assert isinstance(exc, TaskError)
    assert module not in sys.modules


def test_an_exception_whose_init_needs_other_arguments_becomes_task_error() -> None:
    # Given a stored exception whose constructor cannot be called with its args
    meta = meta_of(encode_failure("proj.t", raised(NeedsTwoArguments(402, "payment required"))))

    # When it is rebuilt
    exc = rebuild_exception(meta)

    # Then it is a TaskError naming the class and keeping the message
    assert isinstance(exc, TaskError)
    assert exc.type_name == f"{__name__}.NeedsTwoArguments"
    assert exc.message == "402: payment required"


def test_a_name_that_is_not_an_exception_class_becomes_task_error() -> None:
    # Given a payload naming something that is not an exception (e.g. a tampered record)
    meta = {"exc_type": "builtins.print", "exc_message": "x"}

    # When it is rebuilt, Then nothing is called and a TaskError comes back
    exc = rebuild_exception(meta)
    assert isinstance(exc, TaskError)
    assert exc.type_name == "builtins.print"


# --- AsyncResult over a real memory backend ----------------------------------------------------


def test_an_unknown_id_is_pending_and_not_ready(backend: ResultBackend) -> None:
    # Given a backend with nothing stored
    result = AsyncResult("nobody-stored-this", backend=backend)

    # Then the result is pending, with no value, traceback or completion time
    assert result.state == states.PENDING
    assert result.status == states.PENDING
    assert result.result is None
    assert result.traceback is None
    assert result.date_done is None
    assert not result.ready()
    assert not result.successful()
    assert not result.failed()


def test_a_stored_success_is_visible_through_the_handle(backend: ResultBackend) -> None:
    # Given a stored success
    store(backend, "t-ok", states.SUCCESS, encode_success("proj.add", 5))
    result = AsyncResult("t-ok", backend=backend)

    # Then the handle reports it
    assert result.state == states.SUCCESS
    assert result.result == 5
    assert result.traceback is None
    assert isinstance(result.date_done, dt.datetime)
    assert result.date_done.tzinfo is not None
    assert result.ready()
    assert result.successful()
    assert not result.failed()
    assert result.get(timeout=1) == 5


def test_a_stored_failure_is_visible_through_the_handle(backend: ResultBackend) -> None:
    # Given a stored failure
    store(backend, "t-bad", states.FAILURE, encode_failure("p.t", raised(KeyError("k"))))
    result = AsyncResult("t-bad", backend=backend)

    # Then the handle reports the exception and its traceback
    assert result.state == states.FAILURE
    assert isinstance(result.result, KeyError)
    assert result.traceback is not None
    assert "KeyError" in result.traceback
    assert result.ready()
    assert result.failed()
    assert not result.successful()


def test_an_unready_state_is_reported_but_not_ready(backend: ResultBackend) -> None:
    # Given a task that has started
    store(backend, "t-run", states.STARTED, encode_state("p.t", states.STARTED, worker="w"))
    result = AsyncResult("t-run", backend=backend)

    # Then the state is STARTED and the task is not ready
    assert result.state == states.STARTED
    assert not result.ready()
    assert result.result is None


def test_get_raises_the_tasks_exception(backend: ResultBackend) -> None:
    store(backend, "t-bad", states.FAILURE, encode_failure("p.t", raised(ValueError("nope"))))
    with pytest.raises(ValueError, match="nope"):
        AsyncResult("t-bad", backend=backend).get(timeout=1)


def test_wait_is_gets_older_name(backend: ResultBackend) -> None:
    # Given a stored success and a stored failure (Flask's older guide calls wait())
    store(backend, "t-ok", states.SUCCESS, encode_success("p.t", 65))
    store(backend, "t-bad", states.FAILURE, encode_failure("p.t", raised(ValueError("nope"))))

    # Then wait() returns the value, raises the exception, or returns it, as get() does
    assert AsyncResult("t-ok", backend=backend).wait(timeout=1) == 65
    with pytest.raises(ValueError, match="nope"):
        AsyncResult("t-bad", backend=backend).wait(timeout=1)
    assert isinstance(AsyncResult("t-bad", backend=backend).wait(propagate=False), ValueError)
    assert EagerResult("e", states.SUCCESS, encode_success("p.t", 1)).wait() == 1


def test_get_without_propagate_returns_the_exception(backend: ResultBackend) -> None:
    # Given a stored failure
    store(backend, "t-bad", states.FAILURE, encode_failure("p.t", raised(ValueError("nope"))))

    # When get is asked not to propagate
    value = AsyncResult("t-bad", backend=backend).get(timeout=1, propagate=False)

    # Then the exception is returned, not raised
    assert isinstance(value, ValueError)
    assert str(value) == "nope"


def test_get_of_a_revoked_task_raises_task_revoked_error(backend: ResultBackend) -> None:
    payload = encode_failure("p.t", TaskRevokedError("expired"), state=states.REVOKED)
    store(backend, "t-rev", states.REVOKED, payload)
    with pytest.raises(TaskRevokedError, match="expired"):
        AsyncResult("t-rev", backend=backend).get(timeout=1)


def test_get_times_out_when_nothing_is_stored(backend: ResultBackend) -> None:
    # Given no record for the id
    result = AsyncResult("never", backend=backend)

    # When get waits briefly, Then conveyor's TimeoutError is raised, also a builtin one
    with pytest.raises(conveyor.TimeoutError) as caught:
        result.get(timeout=0.2)
    assert isinstance(caught.value, builtins.TimeoutError)


def test_get_times_out_while_the_task_is_unready(backend: ResultBackend) -> None:
    store(backend, "t-run", states.STARTED, encode_state("p.t", states.STARTED))
    with pytest.raises(conveyor.TimeoutError):
        AsyncResult("t-run", backend=backend).get(timeout=0.2)


def test_forget_deletes_the_stored_result(backend: ResultBackend) -> None:
    # Given a stored success that has been read
    store(backend, "t-ok", states.SUCCESS, encode_success("p.t", 1))
    result = AsyncResult("t-ok", backend=backend)
    assert result.get(timeout=1) == 1

    # When it is forgotten
    result.forget()

    # Then the record is gone and the handle is pending again
    assert backend.get("t-ok") is None
    assert result.state == states.PENDING


def test_handles_are_equal_by_id(backend: ResultBackend) -> None:
    a = AsyncResult("same", backend=backend)
    b = AsyncResult("same", backend=backend)
    assert a == b
    assert hash(a) == hash(b)
    assert a.task_id == "same"
    assert a != AsyncResult("other", backend=backend)


def test_a_handle_without_an_app_reads_the_default_apps_backend(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given an app (the one created last is the default), with a stored result
    app = conveyor.Conveyor("unit", broker=f"memory://unit-result-{uuid.uuid4().hex}")
    store(app.backend, "by-default", states.SUCCESS, encode_success("p.t", 7))

    # Then AsyncResult(id), as Flask's guide writes it, reads it
    assert AsyncResult("by-default").get(timeout=1) == 7
    app.close()

    # ... and without any app, it says what it needs
    monkeypatch.setattr(conveyor.current, "_chosen", None)
    monkeypatch.setattr(conveyor.current, "_latest", None)
    with pytest.raises(TypeError, match="app="):
        AsyncResult("id")


def test_the_info_of_a_state_is_its_meta_and_of_a_retry_the_exception(
    backend: ResultBackend,
) -> None:
    # Given a custom state, STARTED with Celery's meta, and a RETRY
    store(backend, "custom", "PROGRESS", encode_state("p.t", "PROGRESS", {"done": 3}))
    store(backend, "started", states.STARTED, encode_state("p.t", states.STARTED, {"pid": 9}))
    retry = encode_failure("p.t", raised(ConnectionError("down")), state=states.RETRY)
    store(backend, "retrying", states.RETRY, retry)

    # Then info (and result) is the meta, and for RETRY the exception (as Celery's)
    assert AsyncResult("custom", backend=backend).info == {"done": 3}
    assert AsyncResult("started", backend=backend).result == {"pid": 9}
    assert isinstance(AsyncResult("retrying", backend=backend).info, ConnectionError)
    assert not AsyncResult("custom", backend=backend).ready()


def test_a_state_meta_that_is_not_json_is_an_encode_error() -> None:
    with pytest.raises(EncodeError, match="PROGRESS"):
        encode_state("p.t", "PROGRESS", {"when": object()})


def test_celerys_failure_meta_dict_rebuilds_the_named_exception(backend: ResultBackend) -> None:
    # Given the meta Celery's tasks give update_state(state=FAILURE) before raising Ignore
    meta = {"exc_type": "ValueError", "exc_message": ["bad", "input"], "custom": "x"}
    store(backend, "manual", states.FAILURE, encode_state("p.t", states.FAILURE, meta))

    # Then the result is that exception, with its arguments
    exc = AsyncResult("manual", backend=backend).result
    assert isinstance(exc, ValueError)
    assert exc.args == ("bad", "input")


def test_an_async_result_is_generic_in_its_value() -> None:
    # typing only: AsyncResult[int] is the same class at run time
    assert AsyncResult[int] is not None
    assert EagerResult("e", states.SUCCESS, encode_success("p.t", 1)).get() == 1


def test_an_eager_result_of_an_ignored_run_gets_none() -> None:
    for state in (states.IGNORED, states.REJECTED):
        assert EagerResult("e", state, encode_state("p.t", state)).get() is None


def test_an_eager_result_answers_without_a_backend() -> None:
    # Given a result computed in this process
    result = EagerResult("e1", states.SUCCESS, encode_success("p.t", [1, 2]))

    # Then it is ready at once and forget is harmless
    assert result.ready()
    assert result.get() == [1, 2]
    result.forget()
    assert result.get() == [1, 2]
