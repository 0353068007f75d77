"""``conveyor worker-health``: a liveness probe that reads the worker's heartbeat file only."""

from __future__ import annotations

import sys

import click

from conveyor.cli import cli
from conveyor.worker.liveness import DEFAULT_MAX_AGE, check


@cli.command("worker-health")
@click.option(
    "--file",
    "path",
    required=True,
    type=click.Path(dir_okay=False),
    help="The worker's heartbeat file (worker --heartbeat-file, worker_heartbeat_file).",
)
@click.option(
    "--max-age",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_MAX_AGE,
    show_default=True,
    help="Seconds without progress of the fetch loop after which the worker is not alive.",
)
def worker_health(path: str, max_age: float) -> None:
    """Exit 0 if the worker keeping PATH is alive, else 1 with one line saying why.

    Alive: the file exists, its worker process runs on this host, and the worker's
    fetch loop made progress within --max-age seconds. Needs no -A: it neither
    imports the app nor contacts the broker, so it answers in milliseconds (for
    container liveness probes).
    """
    health = check(path, max_age)
    click.echo(health.reason, err=not health.ok)
    sys.exit(0 if health.ok else 1)
