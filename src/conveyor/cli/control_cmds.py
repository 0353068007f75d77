"""``conveyor inspect``, ``control``, ``status`` and ``report``: Celery's commands to
look at and steer running workers (through ``app.control``)."""

from __future__ import annotations

import importlib.metadata
import json
import platform
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click

from conveyor import __version__
from conveyor.cli import _AppRef, cli
from conveyor.control import Control
from conveyor.control.settings import visible_settings

NO_REPLY = "No nodes replied within time constraint"

#: ``conveyor inspect`` actions: what each takes after its name.
INSPECT = {
    "ping": "",
    "active": "",
    "reserved": "",
    "scheduled": "",
    "registered": "[ATTRIBUTE...]",
    "stats": "",
    "revoked": "",
    "active_queues": "",
    "conf": "[with_defaults]",
    "query_task": "ID...",
}
#: ``conveyor control`` actions: what each takes after its name.
CONTROL = {
    "rate_limit": "TASK RATE",
    "time_limit": "TASK SOFT [HARD]",
    "add_consumer": "QUEUE",
    "cancel_consumer": "QUEUE",
    "pool_grow": "[N]",
    "pool_shrink": "[N]",
    "shutdown": "",
    "revoke": "ID...",
}


def _usage(table: dict[str, str]) -> str:
    return "\n".join(f"  {name} {args}".rstrip() for name, args in table.items())


def _common(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--timeout``, ``-d/--destination`` and ``-j/--json``."""
    command = click.option("-j", "--json", "as_json", is_flag=True, help="Print JSON.")(command)
    command = click.option(
        "-d", "--destination", help="Comma-separated worker names [every worker]."
    )(command)
    return click.option(
        "-t",
        "--timeout",
        type=click.FloatRange(min=0, min_open=True),
        default=1.0,
        show_default=True,
        help="Seconds to wait for replies.",
    )(command)


def _destination(text: str | None) -> list[str] | None:
    names = [n.strip() for n in (text or "").split(",") if n.strip()]
    return names or None


def _merged(replies: Sequence[dict[str, Any]] | None) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for one in replies or ():
        merged.update(one)
    if not merged:
        raise click.ClickException(NO_REPLY)
    return merged


def _arity(action: str, args: Sequence[str], least: int, most: int | None, usage: str) -> None:
    if len(args) < least or (most is not None and len(args) > most):
        raise click.UsageError(f"{action} takes {usage or 'no arguments'}")


def _number(text: str, what: str) -> float | None:
    if text.lower() in ("none", "null", "-"):
        return None
    try:
        return float(text)
    except ValueError:
        raise click.BadParameter(f"not a number: {text!r}", param_hint=what) from None


def _control_arguments(action: str, args: Sequence[str]) -> dict[str, Any]:
    """The arguments of a ``conveyor control`` action, checked (UsageError if wrong)."""
    usage = CONTROL[action]
    if action == "revoke":
        _arity(action, args, 1, None, usage)
        return {}
    if action == "rate_limit":
        _arity(action, args, 2, 2, usage)
        return {"task_name": args[0], "rate_limit": args[1]}
    if action == "time_limit":
        _arity(action, args, 2, 3, usage)
        hard = _number(args[2], "HARD") if len(args) > 2 else None
        return {"task_name": args[0], "soft": _number(args[1], "SOFT"), "hard": hard}
    if action in ("add_consumer", "cancel_consumer"):
        _arity(action, args, 1, 1, usage)
        return {"queue": args[0]}
    if action in ("pool_grow", "pool_shrink"):
        _arity(action, args, 0, 1, usage)
        try:
            return {"n": int(args[0]) if args else 1}
        except ValueError:
            raise click.BadParameter(f"not a whole number: {args[0]!r}", param_hint="N") from None
    _arity(action, args, 0, 0, usage)
    return {}


# -- output -------------------------------------------------------------------------------


def _is_error(reply: Any) -> bool:
    return isinstance(reply, dict) and set(reply) == {"error"}


def _body(action: str, reply: Any) -> list[str]:
    """The lines under a worker's name for one reply."""
    if isinstance(reply, dict) and set(reply) <= {"ok", "error"} and reply:
        return [str(next(iter(reply.values())))]
    if isinstance(reply, list):
        if not reply:
            return ["- empty -"]
        if all(isinstance(item, dict) and "id" in item for item in reply):
            return [f"* {_task_line(item)}" for item in reply]
        if all(isinstance(item, dict) and "name" in item for item in reply):  # active_queues
            return [f"* {q['name']} exchange={q['exchange']['name']}" for q in reply]
        return [f"* {item}" for item in reply]
    if action == "query_task" and isinstance(reply, dict):
        if not reply:
            return ["- empty -"]
        return [f"* {state}: {_task_line(info)}" for state, info in reply.values()]
    return json.dumps(reply, indent=2, sort_keys=True, default=str).splitlines()


def _task_line(task: dict[str, Any]) -> str:
    return (
        f"{task.get('name')}[{task.get('id')}] args={task.get('args')!r} "
        f"kwargs={task.get('kwargs')!r}"
    )


def _print(action: str, merged: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(merged, default=str))
        return
    for name, reply in sorted(merged.items()):
        click.echo(f"->  {name}: {'ERROR' if _is_error(reply) else 'OK'}")
        for line in _body(action, reply):
            click.echo(f"        {line}")


# -- commands -----------------------------------------------------------------------------


@cli.command("inspect", epilog="\b\nActions:\n" + _usage(INSPECT))
@click.argument("action", type=click.Choice(sorted(INSPECT)), metavar="ACTION")
@click.argument("args", nargs=-1)
@_common
@click.pass_obj
def inspect_cmd(
    ref: _AppRef,
    action: str,
    args: tuple[str, ...],
    timeout: float,
    destination: str | None,
    as_json: bool,
) -> None:
    """Ask the workers: ping, active, reserved, stats, registered, query_task ID..."""
    app = ref.load()
    asking = Control(app).inspect(destination=_destination(destination), timeout=timeout)
    reply: dict[str, Any] | None
    if action == "query_task":
        _arity(action, args, 1, None, INSPECT[action])
        reply = asking.query_task(*args)
    elif action == "registered":
        reply = asking.registered(*args)
    elif action == "conf":
        _arity(action, args, 0, 1, INSPECT[action])
        reply = asking.conf(with_defaults=bool(args) and args[0].lower() in ("1", "true", "yes"))
    else:
        _arity(action, args, 0, 0, INSPECT[action])
        reply = getattr(asking, action)()
    _print(action, _merged([reply] if reply else None), as_json)


@cli.command("control", epilog="\b\nActions:\n" + _usage(CONTROL))
@click.argument("action", type=click.Choice(sorted(CONTROL)), metavar="ACTION")
@click.argument("args", nargs=-1)
@click.option("--terminate", is_flag=True, help="revoke: also stop copies already running.")
@_common
@click.pass_obj
def control_cmd(
    ref: _AppRef,
    action: str,
    args: tuple[str, ...],
    terminate: bool,
    timeout: float,
    destination: str | None,
    as_json: bool,
) -> None:
    """Tell the workers: rate_limit, time_limit, add_consumer, pool_grow, shutdown...

    Exits 1 when no worker answers, or when one answers with an error."""
    arguments = _control_arguments(action, args)
    app = ref.load()
    if action == "revoke":
        app.control.revoke(list(args), terminate=terminate)
        click.echo(json.dumps({"revoked": list(args)}) if as_json else f"revoked {' '.join(args)}")
        return
    replies = Control(app).broadcast(
        action, arguments, destination=_destination(destination), reply=True, timeout=timeout
    )
    merged = _merged(replies)
    _print(action, merged, as_json)
    if any(_is_error(reply) for reply in merged.values()):
        sys.exit(1)


@cli.command()
@_common
@click.pass_obj
def status(ref: _AppRef, timeout: float, destination: str | None, as_json: bool) -> None:
    """One line per worker that answers a ping, then how many did."""
    app = ref.load()
    ctl = Control(app)
    merged = _merged(ctl.ping(destination=_destination(destination), timeout=timeout))
    if as_json:
        click.echo(json.dumps(merged))
        return
    known = ctl.workers()
    for name in sorted(merged):
        info = known.get(name)
        extra = ""
        if info:
            extra = (
                f" ({info.get('pool')} x{info.get('concurrency')}, {info.get('active')} active, "
                f"{info.get('processed')} processed)"
            )
        click.echo(f"->  {name}: OK{extra}")
    count = len(merged)
    click.echo(f"\n{count} {'node' if count == 1 else 'nodes'} online.")


@cli.command()
@click.pass_obj
def report(ref: _AppRef) -> None:
    """Versions, platform, the broker and backend (passwords masked), and the settings
    that differ from their defaults: what a bug report needs."""
    app = ref.load()
    shown = visible_settings(app.conf)
    broker, backend = shown.pop("broker_url"), shown.pop("result_backend")
    versions = [f"conveyor:{__version__}", f"py:{platform.python_version()}"]
    for package in ("redis", "hiredis", "orjson", "click", "rich"):
        try:
            versions.append(f"{package}:{importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    lines = [
        f"software -> {' '.join(versions)}",
        f"platform -> system:{platform.system()} arch:{platform.machine()} "
        f"kernel version:{platform.release()} imp:{platform.python_implementation()}",
        f"app      -> {app.main or '__main__'} ({len(app.tasks)} tasks)",
        f"settings -> transport:{broker.partition('://')[0]} results:{backend.partition('://')[0]}",
        "",
        f"broker_url: {broker!r}",
        f"result_backend: {backend!r}",
    ]
    lines += [f"{name}: {value!r}" for name, value in shown.items()]
    click.echo("\n".join(lines))
