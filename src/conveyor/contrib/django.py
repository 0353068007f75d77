"""Django's fix-up, as Celery's: the worker's database connections handled as Django
handles a request's.

Enabled by ``conveyor worker`` and ``conveyor beat`` when ``DJANGO_SETTINGS_MODULE``
is set once the app is imported (a project's ``proj/celery.py`` sets it, as Celery's
guide writes it), as Celery enables its own; for a worker started in code::

    from conveyor.contrib.django import fixup

    fixup(app)

What it does, in the process where each thing happens:

* as the app is loaded: ``django.setup()``, if nothing did yet;
* ``worker_init`` (the worker, before a prefork pool forks): closes the worker's
  own connections, so that no child is forked holding one;
* ``process_init`` in each prefork child, just forked: the connections it inherited
  are its parent's, their sockets shared: their file descriptors are closed first,
  so that closing them sends nothing on the parent's socket; then they are dropped,
  and so are cache connections. (With the other pools, tasks run in the worker's
  own process: nothing is inherited, nothing closed.)
* ``before_run`` and ``after_run`` (where the task runs): what Django does at the
  start and end of each request, ``close_old_connections()``: a connection past
  ``CONN_MAX_AGE`` (0, the default: after every task), one that failed and no longer
  works, or one left outside autocommit is closed, and the next query opens a fresh
  one; before the task, the query log of ``DEBUG`` is emptied; after it, cache
  connections are closed.

Not done for ``async def`` tasks on ``-P asyncio`` (their moments are on the event
loop, where Django refuses to close connections; the ORM's async calls use
connections of their own), nor for eager calls (``apply()``, ``task_always_eager``),
which run in the caller's request or test, with the caller's connections.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Any

from conveyor.hooks import Hook

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.task import Request, Task
    from conveyor.worker.job import Job, Outcome

__all__ = ["ENV", "DjangoFixup", "fixup"]

logger = logging.getLogger("conveyor.contrib.django")

#: The variable that turns the fix-up on (Django's own).
ENV = "DJANGO_SETTINGS_MODULE"


def fixup(app: Conveyor) -> DjangoFixup | None:
    """Install the Django fix-up on ``app`` (once) if ``DJANGO_SETTINGS_MODULE`` is set,
    setting Django up; None when it is not set, or Django is not installed (logged)."""
    if not os.environ.get(ENV):
        return None
    for hook in app.hooks:
        if isinstance(hook, DjangoFixup):
            return hook
    try:
        import django  # type: ignore[import-untyped]
        from django.apps import apps  # type: ignore[import-untyped]
    except ImportError:
        logger.warning("%s is set but Django is not installed: no Django fix-up", ENV)
        return None
    if not apps.ready:
        django.setup()
    hook = DjangoFixup()
    # First, as Celery connects its receivers before the project's: a task_prerun
    # receiver of the project's finds the connections already fresh.
    app.hooks.add(hook, first=True)
    return hook


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class DjangoFixup(Hook):
    """The hook ``fixup`` installs (see the module docstring)."""

    def __init__(self) -> None:
        from django import db
        from django.core import cache  # type: ignore[import-untyped]

        self._db = db
        self._caches = cache.caches
        #: The worker's process: a process that runs tasks with another pid was forked.
        self._worker_pid = os.getpid()

    # -- the worker ---------------------------------------------------------------------

    def worker_init(self, worker: Any) -> None:
        self._worker_pid = os.getpid()
        # Only before forking: with the other pools, this thread may be a test's, in
        # the middle of its transaction.
        if getattr(worker.pool, "forks_children", False):
            self.close_connections()

    # -- the process that runs tasks ----------------------------------------------------

    def process_init(self) -> None:
        if os.getpid() == self._worker_pid or _in_event_loop():
            return  # not a forked child: these connections are the worker's own
        for conn in self._db.connections.all(initialized_only=True):
            if conn.connection is not None:
                self._close_descriptor(conn)
        self.close_connections()
        self.close_caches()

    def before_run(self, job: Job, task: Task[..., Any], request: Request) -> None:
        if request.is_eager or _in_event_loop():
            return
        self._db.reset_queries()
        self._db.close_old_connections()

    def after_run(
        self,
        job: Job,
        task: Task[..., Any],
        request: Request,
        outcome: Outcome,
        value: Any,
        error: BaseException | None,
    ) -> None:
        if request.is_eager or _in_event_loop():
            return
        self._db.close_old_connections()
        self.close_caches()

    # -- helpers ------------------------------------------------------------------------

    def close_connections(self) -> None:
        """Close this thread's database connections, whatever their age; a connection
        that is already broken is dropped."""
        for conn in self._db.connections.all(initialized_only=True):
            try:
                conn.close()
            except (self._db.InterfaceError, self._db.DatabaseError) as exc:
                logger.debug("closing %s: %s", conn.alias, exc)

    def close_caches(self) -> None:
        """Close the cache connections (memcached, Redis), as Django after a request."""
        self._caches.close_all()

    def _close_descriptor(self, conn: Any) -> None:
        # A network driver's connection has its socket's descriptor (fileno); an
        # embedded one (SQLite) has none, and closing it touches only this process.
        fileno = getattr(conn.connection, "fileno", None)
        if fileno is None:
            return
        try:
            with conn.wrap_database_errors:
                os.close(fileno())
        except (OSError, self._db.InterfaceError, self._db.DatabaseError) as exc:
            logger.debug("closing the inherited descriptor of %s: %s", conn.alias, exc)
