"""``conveyor.contrib.django``: Celery's Django fix-up, with a real Django, a real SQLite
file, real workers (a thread of this process; a forked child in a subprocess)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import django
import pytest
from django.conf import settings
from django.db import connection, connections

from conveyor import Conveyor
from conveyor.contrib.django import DjangoFixup, fixup
from conveyor.testing import start_worker


@pytest.fixture(scope="module", autouse=True)
def django_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A configured Django with a SQLite database file (or the one already configured
    in this process) holding one table; no connection left open in this thread."""
    if not settings.configured:
        path: Path = tmp_path_factory.mktemp("django") / "db.sqlite3"
        settings.configure(
            DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(path)}},
            INSTALLED_APPS=[],
            USE_TZ=True,
        )
        django.setup()
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS fixup_rows (id INTEGER PRIMARY KEY)")
    connection.close()
    yield
    connection.close()


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> Iterator[Conveyor]:
    """An app with the fix-up, as ``conveyor worker`` installs it for a Django project."""
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "configured.by.the.fixture")
    app = Conveyor("django-unit", broker=f"memory://django-{uuid.uuid4().hex}")
    assert fixup(app) is not None
    yield app
    app.close()


def database_descriptors() -> int:
    """How many file descriptors of this process are open on the database file."""
    path = os.path.realpath(settings.DATABASES["default"]["NAME"])
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor, closed since
            count += os.readlink(f"/proc/self/fd/{fd}") == path
    return count


def test_without_django_settings_module_there_is_no_fixup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a process whose environment names no Django settings
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE", raising=False)
    app = Conveyor("plain", broker="memory://django-plain")

    # When the fix-up is asked for, Then nothing is installed
    assert fixup(app) is None
    assert not any(isinstance(hook, DjangoFixup) for hook in app.hooks)


def test_the_fixup_is_installed_once_before_the_projects_hooks(app: Conveyor) -> None:
    # Given an app with the fix-up installed (the fixture), When it is asked for again
    again = fixup(app)

    # Then it is the same hook, once, first: before the signals' hook, as Celery connects
    # its receivers before the project's
    hooks = list(app.hooks)
    assert [type(hook) for hook in hooks].count(DjangoFixup) == 1
    assert hooks[0] is again


def test_a_task_leaves_no_connection_open_with_conn_max_age_0(app: Conveyor) -> None:
    # Given Django's default CONN_MAX_AGE (0: a connection lasts one request) and a task
    # that queries the database
    assert settings.DATABASES["default"].get("CONN_MAX_AGE", 0) == 0

    @app.task
    def count_rows() -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM fixup_rows")
            return int(cursor.fetchone()[0])

    with start_worker(app, concurrency=2):
        # When the worker runs it a few times
        assert [count_rows.delay().get(timeout=5) for _ in range(3)] == [0, 0, 0]

        # Then no connection is left open between tasks, as after a Django request
        assert database_descriptors() == 0


def test_a_persistent_connection_is_kept_from_one_task_to_the_next(
    app: Conveyor, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given persistent connections (CONN_MAX_AGE None), and tasks that report theirs
    monkeypatch.setitem(connections.settings["default"], "CONN_MAX_AGE", None)
    seen: list[object] = []

    @app.task
    def use_connection() -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM fixup_rows")
        seen.append(connection.connection)

    @app.task
    def close_connection() -> None:
        connection.close()

    with start_worker(app, concurrency=1):
        # When one worker thread runs two of them
        use_connection.delay().get(timeout=5)
        use_connection.delay().get(timeout=5)

        # Then the second used the first's connection, still open between them
        assert seen[0] is seen[1]
        assert database_descriptors() == 1
        close_connection.delay().get(timeout=5)
    assert database_descriptors() == 0


#: A process with an open connection forks; the child runs the fix-up's process_init.
FORKED = textwrap.dedent(
    """
    import json, os, sys

    import django
    from django.conf import settings

    path = sys.argv[1]
    settings.configure(
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": path}},
        INSTALLED_APPS=[],
    )
    django.setup()
    from django.db import connection

    from conveyor.contrib.django import DjangoFixup

    def descriptors():
        found = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                found += os.readlink(f"/proc/self/fd/{fd}") == path
            except OSError:
                pass
        return found

    def count():
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM fixup_rows")
            return cursor.fetchone()[0]

    fixup = DjangoFixup()            # made in the worker's process, as conveyor worker does
    count()                          # the parent's connection, open as it forks
    parents = connection.connection
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        inherited = connection.connection is parents and descriptors() == 1
        fixup.process_init()
        report = {
            "inherited": inherited,
            "dropped": connection.connection is None and descriptors() == 0,
            "count": count(),
            "fresh": connection.connection is not parents,
        }
        os.write(write, json.dumps(report).encode())
        os._exit(0)
    os.close(write)
    child = json.loads(os.read(read, 4096))
    os.waitpid(pid, 0)
    child["parent_unchanged"] = connection.connection is parents and count() == 1
    fixup.process_init()             # in the worker's own process: nothing to close
    child["parent_kept"] = connection.connection is parents
    print(json.dumps(child))
    """
)


def test_a_forked_child_drops_the_connection_it_inherited(tmp_path: Path) -> None:
    # Given a database with one row, and a process that holds a connection to it
    import sqlite3

    path = tmp_path / "forked.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE fixup_rows (id INTEGER PRIMARY KEY)")
        db.execute("INSERT INTO fixup_rows VALUES (1)")
    db.close()

    # When it forks, and the child runs the fix-up's process_init
    done = subprocess.run(
        [sys.executable, "-c", FORKED, str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)

    # Then the child had inherited its parent's connection, and dropped it: its first
    # query opened one of its own; the parent's connection still works, and the same
    # call in the worker's own process (pools that do not fork) leaves it open
    assert report == {
        "inherited": True,
        "dropped": True,
        "count": 1,
        "fresh": True,
        "parent_unchanged": True,
        "parent_kept": True,
    }
