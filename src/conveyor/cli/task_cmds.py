"""``conveyor call`` and ``conveyor result``: send a task, read a result."""

from __future__ import annotations

import json
from typing import Any

import click

from conveyor import __version__
from conveyor.cli import _AppRef, cli
from conveyor.exceptions import TimeoutError


def _json(value: str, what: str, kind: type) -> Any:
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint=what) from None
    if not isinstance(parsed, kind):
        raise click.BadParameter(f"must be a JSON {kind.__name__}", param_hint=what)
    return parsed


@cli.command()
@click.argument("name")
@click.option("--args", "args_json", default="[]", help='Positional arguments as JSON: [1, "a"].')
@click.option("--kwargs", "kwargs_json", default="{}", help='Keyword arguments as JSON: {"x": 1}.')
@click.option("--countdown", type=float, help="Run no earlier than this many seconds from now.")
@click.option("--queue", help="Send to this queue instead of the routed one.")
@click.option("--priority", type=click.IntRange(0, 9), help="0-9, higher runs first.")
@click.pass_obj
def call(
    ref: _AppRef,
    name: str,
    args_json: str,
    kwargs_json: str,
    countdown: float | None,
    queue: str | None,
    priority: int | None,
) -> None:
    """Send task NAME and print its id (what a platform cron job runs instead of beat)."""
    app = ref.load()
    result = app.send_task(
        name,
        _json(args_json, "--args", list),
        _json(kwargs_json, "--kwargs", dict),
        countdown=countdown,
        queue=queue,
        priority=priority,
    )
    click.echo(result.id)


@cli.command()
@click.argument("task_id")
@click.option("--wait", is_flag=True, help="Block until the task is done.")
@click.option("--timeout", type=float, default=None, help="With --wait: give up after seconds.")
@click.pass_obj
def result(ref: _AppRef, task_id: str, wait: bool, timeout: float | None) -> None:
    """Print a task's state and result (or exception) as JSON."""
    app = ref.load()
    handle = app.AsyncResult(task_id)
    if wait:
        try:
            handle.get(timeout=timeout, propagate=False)
        except TimeoutError:
            raise click.ClickException(f"task {task_id} not ready after {timeout} s") from None
    state = handle.state
    out: dict[str, Any] = {"id": task_id, "state": state}
    value = handle.result
    if isinstance(value, BaseException):
        out["exception"] = f"{type(value).__name__}: {value}"
    else:
        out["result"] = value
    click.echo(json.dumps(out, default=str))
    if state == "FAILURE":
        raise SystemExit(1)


@cli.command()
def version() -> None:
    """Print conveyor's version."""
    click.echo(__version__)
