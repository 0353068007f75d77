"""``conveyor beat``: send periodic tasks (any number may run), or ``--list`` them."""

from __future__ import annotations

import logging
import signal
import sys
import time

import click

from conveyor import __version__
from conveyor.app import Conveyor
from conveyor.beat import Beat, describe_time
from conveyor.beat.scheduler import default_hostname
from conveyor.brokers.base import safe_url
from conveyor.cli import _AppRef, cli
from conveyor.cli.common import hostname_option, load_app, logging_options
from conveyor.relay import SignalRelay
from conveyor.worker.logs import as_record_line

logger = logging.getLogger("conveyor.beat")


def summary(beat: Beat) -> str:
    """One line on what a beat sends: ``3 entries, time zone UTC``."""
    n = len(beat.entries)
    return f"{n} entr{'y' if n == 1 else 'ies'}, time zone {beat.tz.key}"


def banner(app: Conveyor, beat: Beat) -> str:
    """The lines ``conveyor beat`` prints when it starts; passwords in URLs are masked."""
    lines = [
        f"conveyor {__version__} beat {beat.owner}",
        f"  app:      {app.main or '__main__'}",
        f"  broker:   {safe_url(app.broker_url)} (holds the claims and last-run times)",
        f"  schedule: {summary(beat)}, looks at least every {beat.max_interval:g} s",
    ]
    lines += [
        f"    . {name}: {entry.task} {entry.schedule.describe()}"
        for name, entry in sorted(beat.entries.items())
    ]
    return "\n".join(lines)


def list_entries(beat: Beat) -> str:
    """``beat --list``: each entry with its schedule in words, last and next run."""
    if not beat.entries:
        return "no periodic tasks (beat_schedule is empty)"
    now = time.time()
    blocks = []
    for name, entry in sorted(beat.entries.items()):
        last = beat.last_run(entry)
        blocks.append(
            "\n".join(
                [
                    name,
                    f"  task:     {entry.task}",
                    f"  schedule: {entry.schedule.describe()}",
                    f"  misfire:  {entry.misfire}",
                    f"  last run: {'never' if last is None else describe_time(last, beat.tz)}",
                    f"  next run: {describe_time(beat.next_run(entry, now), beat.tz)}",
                ]
            )
        )
    return "\n\n".join(blocks)


@cli.command()
@click.option("--list", "list_only", is_flag=True, help="Print every entry with its runs, exit.")
@click.option("-n", "--hostname", help="Scheduler name in logs and claims; %h is the host name.")
@click.option(
    "--max-interval",
    type=click.FloatRange(min=0, min_open=True),
    help="Longest sleep between looks at the schedule, in seconds [beat_max_loop_interval=1].",
)
@logging_options
@click.option("-s", "--schedule", "schedule_file", hidden=True, help="Celery's; ignored.")
@click.pass_obj
def beat(
    ref: _AppRef,
    list_only: bool,
    hostname: str | None,
    max_interval: float | None,
    loglevel: str,
    log_format: str | None,
    schedule_file: str | None,
) -> None:
    """Send the periodic tasks of beat_schedule until SIGTERM or Ctrl-C.

    Run as many as you like (one per host, or `worker --beat` in every worker): each
    slot is claimed in the broker and sent once.
    """
    app, log_format = load_app(ref, loglevel, log_format)
    scheduler = Beat(
        app,
        hostname=hostname_option(hostname, default_hostname()),
        max_interval=max_interval,
    )
    if list_only:
        click.echo(list_entries(scheduler))
        app.close()
        return
    if schedule_file:
        logger.warning(
            "--schedule %s is ignored: beat keeps its state in the broker", schedule_file
        )
    for name, reason in app.conf.ignored_settings():
        logger.warning("setting %s has no effect in conveyor: %s", name, reason)
    click.echo(as_record_line(banner(app, scheduler), log_format, "conveyor.beat"), err=True)

    def on_signal(signum: int) -> None:
        logger.info("%s: stopping", signal.Signals(signum).name)
        scheduler.stop()

    SignalRelay(on_signal).install()
    scheduler.run()
    app.close()
    sys.exit(0)
