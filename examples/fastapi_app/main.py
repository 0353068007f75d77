"""A FastAPI app that sends conveyor tasks and waits for them without blocking its
event loop: ``await task.adelay(...)`` and ``await result.aget(...)``.

Run with ``uvicorn main:app``, beside a worker: ``conveyor -A tasks worker``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import tasks
from fastapi import FastAPI
from pydantic import BaseModel


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    yield
    tasks.app.close()  # the broker and backend connections of this process


app = FastAPI(title="conveyor + FastAPI", lifespan=lifespan)


class Pair(BaseModel):
    x: int
    y: int


class Work(BaseModel):
    x: int
    seconds: float = 0.0


class Sent(BaseModel):
    task_id: str


class Outcome(BaseModel):
    task_id: str
    state: str
    result: Any = None
    error: str | None = None


@app.post("/tasks/add", status_code=202)
async def send_add(pair: Pair) -> Sent:
    """Send ``add`` and answer at once with its id."""
    result = await tasks.add.adelay(pair.x, pair.y)
    return Sent(task_id=result.id)


@app.post("/tasks/divide", status_code=202)
async def send_divide(pair: Pair) -> Sent:
    """Send ``divide`` (dividing by zero makes it fail on the worker)."""
    result = await tasks.divide.adelay(pair.x, pair.y)
    return Sent(task_id=result.id)


@app.get("/tasks/{task_id}")
async def task_outcome(task_id: str, wait: float = 0.0) -> Outcome:
    """A task's state and value (or error), waiting up to ``wait`` seconds for it."""
    result = tasks.app.AsyncResult(task_id)
    try:
        value = await result.aget(timeout=wait, propagate=False)
    except TimeoutError:  # not finished yet: PENDING, STARTED, RETRY...
        return Outcome(task_id=task_id, state=result.state)
    if result.failed():
        return Outcome(
            task_id=task_id, state=result.state, error=f"{type(value).__name__}: {value}"
        )
    return Outcome(task_id=task_id, state=result.state, result=value)


@app.post("/square")
async def square(work: Work) -> dict[str, int]:
    """Send ``square`` and answer with its value once the worker has it. While this
    request waits, the server goes on serving others."""
    result = await tasks.square.adelay(work.x, work.seconds)
    return {"result": await result.aget(timeout=work.seconds + 30)}
