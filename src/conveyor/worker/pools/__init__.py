"""Pools run jobs; the consumer picks one by name."""

from __future__ import annotations

from conveyor.worker.pools.asyncio import AsyncExecute, AsyncioPool
from conveyor.worker.pools.base import Execute, OnDone, Pool
from conveyor.worker.pools.prefork import PreforkPool
from conveyor.worker.pools.solo import SoloPool
from conveyor.worker.pools.threads import ThreadPool

POOLS: dict[str, type[Pool]] = {
    "solo": SoloPool,
    "threads": ThreadPool,
    "prefork": PreforkPool,
    "asyncio": AsyncioPool,
}

__all__ = [
    "POOLS",
    "AsyncExecute",
    "AsyncioPool",
    "Execute",
    "OnDone",
    "Pool",
    "PreforkPool",
    "SoloPool",
    "ThreadPool",
]
