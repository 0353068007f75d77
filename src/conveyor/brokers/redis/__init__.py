"""The Redis broker: key layout (``keys``), Lua scripts (``scripts/``), the broker."""

from __future__ import annotations

from conveyor.brokers.redis.broker import RedisBroker

__all__ = ["RedisBroker"]
