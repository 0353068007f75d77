"""Typed tasks: ``@app.task`` and ``@shared_task`` keep the function's parameters and
return type, through sending, results, signatures and the task's own call."""

from __future__ import annotations

from typing import Any, assert_type

from conveyor import AsyncResult, Conveyor, EagerResult, Task, shared_task

app = Conveyor("typing", broker="memory://")


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task(queue="q", max_retries=2)
def greet(name: str, *, shout: bool = False) -> str:
    return name.upper() if shout else name


@app.task(bind=True)
def whoami(self: Task[..., Any], prefix: str) -> str:
    return f"{prefix}{self.request.id}"


@app.task
async def fetch(url: str) -> bytes:
    return url.encode()


@shared_task
def mul(x: int, y: int) -> int:
    return x * y


@shared_task(bind=True, ignore_result=False)
def shared_bound(self: Task[..., Any], n: int) -> list[int]:
    return [n]


def check_results() -> None:
    assert_type(add.delay(1, 2), AsyncResult[int])
    assert_type(add.delay(1, 2).get(), int)
    assert_type(add.apply_async((1, 2)).get(timeout=1), int)
    assert_type(add(1, 2), int)
    assert_type(add.apply((1, 2)), EagerResult[int])
    assert_type(greet.delay("x", shout=True).get(), str)
    assert_type(whoami.delay("id: ").get(), str)
    assert_type(fetch.delay("u").get(), bytes)
    assert_type(fetch("u"), bytes)
    assert_type(mul.delay(2, 3).get(), int)
    assert_type(shared_bound.delay(2).get(), list[int])
    assert_type(add.AsyncResult("some-id").get(), int)
    assert_type(app.AsyncResult("some-id").get(), Any)
    assert_type(AsyncResult("some-id").get(), Any)


async def check_async() -> None:
    assert_type(await add.adelay(1, 2), AsyncResult[int])
    assert_type(await (await add.adelay(1, 2)).aget(), int)
    assert_type(await fetch.acall("u"), bytes)


def check_errors() -> None:
    add.delay("x", 2)  # type: ignore[arg-type]
    add.delay(1)  # type: ignore[call-arg]
    add.delay(1, 2, 3)  # type: ignore[call-arg]
    add(1, z=2)  # type: ignore[call-arg]
    greet.delay(1)  # type: ignore[arg-type]
    greet.delay("x", True)  # type: ignore[call-arg]
    whoami.delay(1)  # type: ignore[arg-type]
    mul.delay("2", 3)  # type: ignore[arg-type]
    shared_bound.delay("2")  # type: ignore[arg-type]
    text: str = add.delay(1, 2).get()  # type: ignore[assignment]
    del text
