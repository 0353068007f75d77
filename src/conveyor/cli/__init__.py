"""The ``conveyor`` command: one click group, one module per command family."""

from __future__ import annotations

import sys
from typing import Any

import click

from conveyor.cli.appref import find_app
from conveyor.exceptions import ConveyorError


class _Group(click.Group):
    """Turns conveyor's errors into one clear line and exit code 1, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConveyorError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-A",
    "--app",
    "app_spec",
    envvar="CONVEYOR_APP",
    metavar="MODULE[:ATTR]",
    help="The application, e.g. proj.tasks or proj.tasks:app (env CONVEYOR_APP).",
)
@click.pass_context
def cli(ctx: click.Context, app_spec: str | None) -> None:
    """conveyor: a distributed task queue with Celery's API."""
    ctx.obj = _AppRef(app_spec)


class _AppRef:
    """Imports the app on first use, so `conveyor version` needs none."""

    def __init__(self, spec: str | None):
        self.spec = spec

    def load(self) -> Any:
        if not self.spec:
            raise click.UsageError("this command needs the application: conveyor -A MODULE ...")
        return find_app(self.spec)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="conveyor")


# command modules register themselves on the group
from conveyor.cli import (  # noqa: E402
    beat_cmd,
    control_cmds,
    dashboard_cmd,
    events_cmd,
    health_cmd,
    inspect_cmds,
    task_cmds,
    worker_cmd,
)

__all__ = [
    "beat_cmd",
    "cli",
    "control_cmds",
    "dashboard_cmd",
    "events_cmd",
    "health_cmd",
    "inspect_cmds",
    "main",
    "task_cmds",
    "worker_cmd",
]
