"""Celery's ``app.control``: inspect and steer running workers through the broker.

::

    protocol.py  the control and reply streams' format, the registry's beat and TTL
    client.py    ``Control`` (``app.control``) and ``Inspect`` (``app.control.inspect()``)
    settings.py  settings as an operator may see them: JSON-safe, secrets masked

The workers' side is ``conveyor.worker.remote``.
"""

from __future__ import annotations

from conveyor.control.client import Control, Inspect
from conveyor.control.protocol import HEARTBEAT_SECONDS, WORKER_TTL

__all__ = ["HEARTBEAT_SECONDS", "WORKER_TTL", "Control", "Inspect"]
