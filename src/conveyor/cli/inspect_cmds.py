"""``conveyor queues``, ``purge`` and ``dead``: look at and tidy the broker."""

from __future__ import annotations

import datetime as dt

import click
from rich.console import Console
from rich.table import Column, Table

from conveyor.cli import _AppRef, cli


@cli.command()
@click.pass_obj
def queues(ref: _AppRef) -> None:
    """Show every queue's depth: ready, delayed, in flight, dead."""
    app = ref.load()
    table = Table("queue", "ready", "delayed", "in flight", "dead")
    for s in app.broker.stats(None):
        table.add_row(s.queue, str(s.ready), str(s.delayed), str(s.in_flight), str(s.dead))
    Console().print(table)


@cli.command()
@click.option("-Q", "--queues", "names", help="Comma-separated queues [all].")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def purge(ref: _AppRef, names: str | None, force: bool) -> None:
    """Delete ready and delayed messages (running ones and dead letters stay)."""
    app = ref.load()
    targets = [q for q in (names or "").split(",") if q] or [
        s.queue for s in app.broker.stats(None)
    ]
    if not targets:
        click.echo("no queues hold messages")
        return
    if not force:
        click.confirm(f"Delete waiting messages of {', '.join(targets)}?", abort=True)
    total = sum(app.broker.purge(q) for q in targets)
    click.echo(f"purged {total} message(s) from {len(targets)} queue(s)")


@cli.group()
def dead() -> None:
    """List, show, requeue, drop or purge dead letters."""


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@dead.command("list")
@click.option("-Q", "--queue", help="Only this queue.")
@click.option("--limit", type=int, default=100, show_default=True)
@click.pass_obj
def dead_list(ref: _AppRef, queue: str | None, limit: int) -> None:
    """Dead letters, oldest first."""
    app = ref.load()
    letters = app.broker.dead_letters(queue, limit)
    # The id is what `dead show/requeue/drop` take: never cut it, however narrow the
    # terminal (or the 80 columns rich assumes when the output is piped).
    id_width = max((len(d.id) for d in letters), default=2)
    table = Table(
        Column("id", no_wrap=True, min_width=id_width), "queue", "deliveries", "died", "reason"
    )
    for d in letters:
        table.add_row(d.id, d.queue, str(d.deliveries), _when(d.died_at), d.reason)
    Console().print(table)


@dead.command("show")
@click.argument("message_id")
@click.pass_obj
def dead_show(ref: _AppRef, message_id: str) -> None:
    """One dead letter: reason, delivery history and body."""
    d = ref.load().broker.get_dead(message_id)
    if d is None:
        raise click.ClickException(f"no dead letter {message_id}")
    click.echo(f"id:         {d.id}\nqueue:      {d.queue}\nreason:     {d.reason}")
    click.echo(f"deliveries: {d.deliveries}\ndied:       {_when(d.died_at)}")
    for record in d.history:
        click.echo(f"  delivered to {record.consumer} at {_when(record.at)}")
    click.echo(f"body:       {d.body.decode('utf-8', 'replace')}")


@dead.command("requeue")
@click.argument("message_id")
@click.pass_obj
def dead_requeue(ref: _AppRef, message_id: str) -> None:
    """Put a dead letter back in its queue."""
    if not ref.load().broker.requeue_dead(message_id):
        raise click.ClickException(f"no dead letter {message_id}")
    click.echo(f"requeued {message_id}")


@dead.command("drop")
@click.argument("message_id")
@click.pass_obj
def dead_drop(ref: _AppRef, message_id: str) -> None:
    """Delete a dead letter for good."""
    if not ref.load().broker.drop_dead(message_id):
        raise click.ClickException(f"no dead letter {message_id}")
    click.echo(f"dropped {message_id}")


@dead.command("purge")
@click.option("-Q", "--queue", help="Only this queue [all].")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def dead_purge(ref: _AppRef, queue: str | None, force: bool) -> None:
    """Delete dead letters for good."""
    app = ref.load()
    if not force:
        where = f"of queue {queue}" if queue else "of every queue"
        click.confirm(f"Delete every dead letter {where}?", abort=True)
    click.echo(f"purged {app.broker.purge_dead(queue)} dead letter(s)")
