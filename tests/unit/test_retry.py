"""Retry semantics that need no worker: the backoff curve, limits, eager retries."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from conveyor import Conveyor, MaxRetriesExceededError, Retry, Task
from conveyor.task import Request, request_context


def make_app(**settings: Any) -> Conveyor:
    return Conveyor("unit", broker=f"memory://retry-{uuid.uuid4().hex}", **settings)


class Flaky(ConnectionError):
    pass


def test_backoff_doubles_from_its_factor_and_stops_at_its_maximum() -> None:
    app = make_app()

    @app.task(retry_backoff=0.5, retry_backoff_max=3.0, retry_jitter=False)
    def t() -> None: ...

    assert [t.backoff(n) for n in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_backoff_true_is_factor_one_and_jitter_draws_below_the_curve() -> None:
    app = make_app()

    @app.task(retry_backoff=True)
    def t() -> None: ...

    draws = [t.backoff(3) for _ in range(200)]
    assert all(0.0 <= d <= 8.0 for d in draws)
    assert len(set(draws)) > 100  # drawn, not fixed


def test_retry_raises_retry_due_after_the_countdown_with_new_arguments() -> None:
    app = make_app()

    @app.task(bind=True)
    def t(self: Task[..., Any], x: int) -> None:
        raise self.retry(args=(x + 1,), countdown=5, exc=Flaky("down"))

    with request_context(Request(id="r1", task=t.name, retries=0)), pytest.raises(Retry) as raised:
        t(1)
    assert raised.value.args_override == [2]
    assert isinstance(raised.value.exc, Flaky)
    assert time.time() + 4 < raised.value.eta < time.time() + 6


def test_retry_after_the_last_retry_raises_the_exception_or_max_retries_exceeded() -> None:
    app = make_app()

    @app.task(bind=True, max_retries=2)
    def with_exc(self: Task[..., Any]) -> None:
        raise self.retry(exc=Flaky("down"))

    @app.task(bind=True, max_retries=2)
    def without(self: Task[..., Any]) -> None:
        raise self.retry()

    with request_context(Request(id="r1", task=with_exc.name, retries=2)):
        with pytest.raises(Flaky):
            with_exc()
        with pytest.raises(MaxRetriesExceededError, match="max_retries=2"):
            without()


def test_autoretry_makes_a_retry_only_of_the_listed_exceptions_while_retries_remain() -> None:
    app = make_app()

    @app.task(autoretry_for=(Flaky,), retry_kwargs={"max_retries": 1, "countdown": 7})
    def t() -> None: ...

    with request_context(Request(id="r1", task=t.name, retries=0)):
        retry = t.autoretry(Flaky("x"))
        assert retry is not None
        assert time.time() + 6 < retry.eta < time.time() + 8
        assert t.autoretry(ValueError("not listed")) is None
    with request_context(Request(id="r1", task=t.name, retries=1)):
        assert t.autoretry(Flaky("x")) is None  # out of retries: the task fails with it


def test_retry_kwargs_refuses_what_it_does_not_know() -> None:
    app = make_app()
    with pytest.raises(TypeError, match="retry_kwargs"):

        @app.task(retry_kwargs={"max_retry": 3})
        def t() -> None: ...


def test_an_eager_task_retries_at_once_until_it_succeeds() -> None:
    app = make_app(task_always_eager=True)
    seen: list[int] = []

    @app.task(bind=True, max_retries=5)
    def t(self: Task[..., Any]) -> int:
        seen.append(self.request.retries)
        if self.request.retries < 3:
            raise self.retry(countdown=60)
        return self.request.retries

    assert t.delay().get() == 3
    assert seen == [0, 1, 2, 3]


def test_an_eager_autoretry_that_runs_out_fails_with_the_last_exception() -> None:
    app = make_app(task_always_eager=True)
    runs: list[int] = []

    @app.task(autoretry_for=(Flaky,), max_retries=2, retry_backoff=True)
    def t() -> None:
        runs.append(1)
        raise Flaky(f"run {len(runs)}")

    with pytest.raises(Flaky, match="run 3"):
        t.delay().get()
    assert len(runs) == 3
