"""What the long-running commands (``worker``, ``beat``) share: their logging options,
loading the app with logging set up, and ``-n`` with ``%h``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from conveyor import signals
from conveyor.contrib import django as django_fixup
from conveyor.worker.logs import FORMATS, LEVELS, setup_logging

if TYPE_CHECKING:
    from conveyor.cli import _AppRef

F = TypeVar("F", bound=Callable[..., Any])


def logging_options(command: F) -> F:
    """``-l/--loglevel`` and ``--log-format``."""
    command = click.option(
        "--log-format",
        type=click.Choice(FORMATS),
        help="Log lines as text or as JSON objects [worker_log_format=text].",
    )(command)
    return click.option(
        "-l", "--loglevel", type=click.Choice(LEVELS, case_sensitive=False), default="info"
    )(command)


def load_app(ref: _AppRef, loglevel: str, log_format: str | None) -> tuple[Any, str]:
    """The app, its modules imported, and the log format in force (the option, else
    ``worker_log_format``). Logging is set up before the app is imported (its import
    may log) and again once the app's setting is known."""
    setup_logging(loglevel, log_format or "text")
    app = ref.load()
    # Celery's Django fix-up, on when the app's import set DJANGO_SETTINGS_MODULE
    # (a project's proj/celery.py does): Django is set up before the task modules.
    django_fixup.fixup(app)
    app.import_modules()
    log_format = log_format or app.conf.worker_log_format
    if signals.setup_logging.has_receivers():
        # Celery's rule: a receiver of setup_logging configures logging itself.
        signals.setup_logging.send(
            None, loglevel=loglevel.upper(), logfile=None, format=log_format, colorize=False
        )
    else:
        if log_format != "text":
            setup_logging(loglevel, log_format)
        for signal, name in (
            (signals.after_setup_logger, ""),
            (signals.after_setup_task_logger, "conveyor.task"),
        ):
            signal.send(
                None,
                logger=logging.getLogger(name),
                loglevel=loglevel.upper(),
                logfile=None,
                format=log_format,
                colorize=False,
            )
    app.finalize()
    return app, log_format


def hostname_option(value: str | None, default: str) -> str:
    """``-n`` as Celery reads it: ``%h`` is the host name (``default`` without its
    ``name@``); no value means ``default``."""
    if not value:
        return default
    return value.replace("%h", default.split("@", 1)[-1])
