"""Fixtures the unit tests share: apps on a ``memory://`` broker of their own."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from conveyor import Conveyor, current

MakeApp = Callable[..., Conveyor]


@pytest.fixture
def make_app() -> Iterator[MakeApp]:
    """``make_app(**settings)``: apps on their own ``memory://`` broker, closed after the
    test; no default app is left behind."""
    apps: list[Conveyor] = []

    def make(**settings: Any) -> Conveyor:
        app = Conveyor("unit", broker=f"memory://unit-{uuid.uuid4().hex}", **settings)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()
    current.set_default_app(None)


@pytest.fixture
def app(make_app: MakeApp) -> Conveyor:
    """One such app."""
    return make_app()
