"""``delay_on_commit``: sent when a real Django transaction commits, never on rollback."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import django
import pytest
from django.conf import settings
from django.db import connection, transaction

from conveyor import Conveyor


@pytest.fixture(scope="module", autouse=True)
def django_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A configured Django with a SQLite database file."""
    if not settings.configured:
        path: Path = tmp_path_factory.mktemp("django") / "db.sqlite3"
        settings.configure(
            DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(path)}},
            INSTALLED_APPS=[],
            USE_TZ=True,
        )
        django.setup()
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY)")
    yield
    connection.close()


def make_app() -> Conveyor:
    return Conveyor("unit", broker=f"memory://on-commit-{uuid.uuid4().hex}")


def queued(app: Conveyor) -> int:
    return sum(s.ready for s in app.broker.stats())


def test_delay_on_commit_sends_nothing_until_the_transaction_commits() -> None:
    app = make_app()

    @app.task
    def notify(order_id: int) -> None: ...

    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("INSERT INTO orders (id) VALUES (1)")
        notify.delay_on_commit(1)
        assert queued(app) == 0  # the order is not visible to a worker yet

    assert queued(app) == 1


def test_delay_on_commit_sends_nothing_when_the_transaction_rolls_back() -> None:
    app = make_app()

    @app.task
    def notify(order_id: int) -> None: ...

    def view() -> None:
        with transaction.atomic():
            notify.delay_on_commit(2)
            raise RuntimeError("the view failed")

    with pytest.raises(RuntimeError):
        view()

    assert queued(app) == 0


def test_outside_a_transaction_it_is_sent_at_once() -> None:
    app = make_app()

    @app.task
    def notify(order_id: int) -> None: ...

    notify.apply_async_on_commit((3,), task_id="known-id")
    assert queued(app) == 1
    assert app.AsyncResult("known-id").id == "known-id"


def test_bad_arguments_fail_at_the_call_not_at_commit() -> None:
    app = make_app()

    @app.task
    def notify(order_id: int) -> None: ...

    with transaction.atomic(), pytest.raises(TypeError):
        notify.delay_on_commit(1, 2, 3)
    assert queued(app) == 0
