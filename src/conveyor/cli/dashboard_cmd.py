"""``conveyor dashboard``: serve the web dashboard with uvicorn (loopback unless told)."""

from __future__ import annotations

import ipaddress
import sys

import click

from conveyor.cli import _AppRef, cli
from conveyor.cli.common import load_app, logging_options
from conveyor.dashboard import create_app, require
from conveyor.exceptions import ConfigurationError


def is_loopback(address: str) -> bool:
    """Whether only this host can reach ``address`` (``localhost``, 127.0.0.0/8, ::1)."""
    if address.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_exposure(address: str, basic_auth: str | None, token: str | None) -> None:
    """Refuse to serve beyond this host without credentials.

    Raises:
        ConfigurationError: ``address`` is not loopback and neither is given.
    """
    if not is_loopback(address) and basic_auth is None and token is None:
        raise ConfigurationError(
            f"refusing to serve the dashboard on {address} without authentication:"
            " give --basic-auth USER:PASSWORD or --token TOKEN (or use 127.0.0.1)"
        )


@cli.command()
@click.option("--port", type=click.IntRange(0, 65535), default=5555, show_default=True)
@click.option(
    "--address",
    default="127.0.0.1",
    show_default=True,
    help="Interface to listen on; any other than loopback needs --basic-auth or --token.",
)
@click.option(
    "--basic-auth",
    envvar="CONVEYOR_DASHBOARD_BASIC_AUTH",
    metavar="USER:PASSWORD",
    help="Require HTTP basic auth (env CONVEYOR_DASHBOARD_BASIC_AUTH).",
)
@click.option(
    "--token",
    envvar="CONVEYOR_DASHBOARD_TOKEN",
    help="Require this token: Authorization: Bearer TOKEN, or ?token=TOKEN once in the"
    " browser (env CONVEYOR_DASHBOARD_TOKEN).",
)
@logging_options
@click.pass_obj
def dashboard(
    ref: _AppRef,
    port: int,
    address: str,
    basic_auth: str | None,
    token: str | None,
    loglevel: str,
    log_format: str | None,
) -> None:
    """Serve the web dashboard: overview, queues, workers, tasks, dead letters, schedules,
    and Prometheus metrics at /metrics.

    Task listings need workers started with -E (task events), as with Flower.
    """
    check_exposure(address, basic_auth, token)
    require()
    import uvicorn

    app, _ = load_app(ref, loglevel, log_format)
    try:
        asgi = create_app(app, basic_auth=basic_auth, token=token)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    shown = f"[{address}]" if ":" in address else address
    click.echo(f"conveyor dashboard on http://{shown}:{port}/", err=True)
    uvicorn.run(asgi, host=address, port=port, log_level="warning", access_log=False)
    app.close()
    sys.exit(0)
