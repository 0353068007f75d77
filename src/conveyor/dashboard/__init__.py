"""The web dashboard: a small ASGI app over the broker's state (``conveyor dashboard``).

It keeps nothing of its own: every page reads the broker (workers, queues, dead
letters, counters, the events stream, beat's marks) and the result backend when
asked, so its memory stays flat and any number of dashboards agree. Starlette is
needed (``pip install 'conveyor[dashboard]'``); ``create_app`` says so when it is not.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

from conveyor.exceptions import ConfigurationError

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from conveyor.app import Conveyor

__all__ = ["create_app", "require"]

#: What the dashboard imports: its HTTP framework, its server, the metrics exposition.
EXTRAS = ("starlette", "uvicorn", "prometheus_client")


def require(*modules: str) -> None:
    """Raise a clear error when one of the dashboard's optional dependencies is missing.

    Raises:
        ConfigurationError: naming the missing modules and ``pip install 'conveyor[dashboard]'``.
    """
    missing = [m for m in modules or EXTRAS if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigurationError(
            f"the dashboard needs {', '.join(missing)}: pip install 'conveyor[dashboard]'"
        )


def create_app(
    conveyor_app: Conveyor, *, basic_auth: str | None = None, token: str | None = None
) -> Starlette:
    """The dashboard of ``conveyor_app`` as an ASGI app; see
    ``conveyor.dashboard.server.create_app``.

    Raises:
        ConfigurationError: Starlette or prometheus-client is not installed.
    """
    require("starlette", "prometheus_client")
    from conveyor.dashboard.server import create_app as create

    return create(conveyor_app, basic_auth=basic_auth, token=token)
