"""``conveyor worker``: start a worker process."""

from __future__ import annotations

import logging
import os
import sys
from types import SimpleNamespace

import click

from conveyor import Conveyor, __version__, signals
from conveyor.beat import Beat
from conveyor.cli import _AppRef, beat_cmd, cli
from conveyor.cli.common import hostname_option, load_app, logging_options
from conveyor.exceptions import BrokerError, ConfigurationError
from conveyor.worker import Worker, WorkerOptions, default_hostname
from conveyor.worker.autoscale import parse_autoscale
from conveyor.worker.banner import banner
from conveyor.worker.logs import as_record_line
from conveyor.worker.pools import POOLS

logger = logging.getLogger("conveyor.worker")


def check_broker(app: Conveyor) -> list[str]:
    """What the broker says the operator should know; exits with the reason if the broker
    would lose messages quietly (an evicting Redis)."""
    try:
        return app.broker.check()
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    except BrokerError as exc:  # checked again before the first fetch
        logger.warning("could not check the broker yet: %s", exc)
        return []


@cli.command()
@click.option("-c", "--concurrency", type=click.IntRange(min=1), help="Tasks run at once [CPUs].")
@click.option(
    "-P",
    "--pool",
    type=click.Choice(sorted(POOLS)),
    help="How tasks run: prefork (processes), threads, solo (in the worker's thread), "
    "asyncio (async def tasks on one event loop, sync ones in threads) [prefork].",
)
@click.option(
    "-Q",
    "--queues",
    help="Comma-separated queues to consume [every queue of task_queues, else task_default_queue].",
)
@click.option(
    "--prefetch-multiplier",
    type=click.IntRange(min=1),
    help="Messages held per concurrency slot [worker_prefetch_multiplier=1].",
)
@logging_options
@click.option(
    "--heartbeat-file",
    type=click.Path(dir_okay=False),
    help="Keep a liveness file here for `conveyor worker-health` [worker_heartbeat_file].",
)
@click.option(
    "--autoscale",
    metavar="MAX,MIN",
    help="Grow the pool up to MAX with demand and shrink it back to MIN (instead of -c).",
)
@click.option("-n", "--hostname", help="Worker name; %h expands to the host name.")
@click.option("--shutdown-timeout", type=float, help="Seconds running tasks get on SIGTERM [25].")
@click.option(
    "--watchdog-timeout",
    type=click.FloatRange(min=0, min_open=True),
    hidden=True,  # a testing knob: how long a stuck fetch loop is given [60]
    help="Seconds without progress of the fetch loop before it is restarted [60].",
)
@click.option(
    "-E",
    "--task-events",
    is_flag=True,
    help="Write task events for `conveyor events` and the dashboard [worker_send_task_events].",
)
@click.option(
    "-B",
    "--beat",
    "with_beat",
    is_flag=True,
    help="Also send the periodic tasks (beat in a thread; safe on every worker).",
)
@click.pass_obj
def worker(
    ref: _AppRef,
    concurrency: int | None,
    pool: str | None,
    queues: str | None,
    prefetch_multiplier: int | None,
    loglevel: str,
    log_format: str | None,
    heartbeat_file: str | None,
    autoscale: str | None,
    hostname: str | None,
    shutdown_timeout: float | None,
    watchdog_timeout: float | None,
    with_beat: bool,
    task_events: bool,
) -> None:
    """Start a worker: consume queues and run tasks until SIGTERM or Ctrl-C."""
    app, log_format = load_app(ref, loglevel, log_format)
    conf = app.conf
    host = hostname_option(hostname, default_hostname())
    if task_events:
        conf.worker_send_task_events = True
    # Celery's moment for per-worker configuration: before anything reads the settings,
    # with only the app and the name of the worker-to-be set.
    cli_options = {
        "concurrency": concurrency,
        "pool": pool,
        "queues": queues,
        "prefetch_multiplier": prefetch_multiplier,
        "loglevel": loglevel,
        "hostname": host,
        "autoscale": autoscale,
        "beat": with_beat,
    }
    starting = SimpleNamespace(app=app, hostname=host)
    signals.celeryd_init.send(host, instance=starting, conf=conf, options=cli_options)
    requested = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
    try:
        consumed = conf.declared_queues().consumed(requested)  # without -Q: task_queues
    except ConfigurationError as exc:
        raise click.BadParameter(str(exc), param_hint="'-Q' / '--queues'") from None
    options = WorkerOptions(
        queues=consumed,
        concurrency=concurrency or conf.worker_concurrency or os.cpu_count() or 1,
        pool=pool or conf.worker_pool,
        prefetch_multiplier=prefetch_multiplier or conf.worker_prefetch_multiplier,
        hostname=host,
        shutdown_timeout=(
            conf.worker_shutdown_timeout if shutdown_timeout is None else shutdown_timeout
        ),
        heartbeat_file=heartbeat_file or conf.worker_heartbeat_file,
        autoscale_keepalive=conf.worker_autoscale_keepalive,
    )
    if autoscale:
        if options.pool == "solo":
            raise click.UsageError("--autoscale needs a pool that can grow: not -P solo")
        try:
            options.autoscale = parse_autoscale(autoscale)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--autoscale") from None
        options.concurrency = options.autoscale[0]
    if watchdog_timeout is not None:
        options.watchdog_timeout = watchdog_timeout
    if options.pool == "solo":
        options.concurrency = 1
    for name, reason in conf.ignored_settings():
        logger.warning("setting %s has no effect in conveyor: %s", name, reason)
    scheduler = Beat(app, hostname=host) if with_beat else None
    runner = Worker(app, options, services=[scheduler] if scheduler else [])
    signals.celeryd_after_setup.send(host, instance=runner, conf=conf)
    extra = [f"  beat:     {beat_cmd.summary(scheduler)}"] if scheduler else []
    warnings = check_broker(app)
    text = banner(app, options, runner.hostname, __version__, extra)
    click.echo(as_record_line(text, log_format), err=True)
    for warning in warnings:
        logger.warning("%s", warning)
    code = runner.run()
    sys.exit(code)
