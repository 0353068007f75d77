"""The contract between the scenarios and one task-queue system.

An adapter runs in that system's own virtual environment (conveyor in the
project's ``.venv``, each peer in ``.bench/venvs/<name>``), talks to the benchmark's
redis-server at ``redis_url`` and names the worker command for each scenario.

Every system defines the same four tasks in its ``*_tasks`` module, each a
one-liner around ``bench.record.record``:

* ``noop(i)``: record ``i``; the result is not stored (the system's cheapest way);
* ``sleep(i)``: sleep 20 ms (``asyncio.sleep`` where the worker is async), record
  ``i`` with the start time as ``extra``;
* ``late(i, due)``: record ``i`` with ``due`` (seconds since the epoch) as ``extra``;
* ``echo(i)``: return ``i`` with the result stored (round trip, Redis cost).
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import ModuleType

#: Every system, in the order of the tables; each is ``bench.systems.<name>_adapter``.
SYSTEMS = ("conveyor", "conveyor_events", "celery", "dramatiq", "rq", "arq", "saq")

#: Variants of conveyor, not peers: measured beside it in some scenarios only, for the
#: cost of a feature (``conveyor_events``: workers started with ``-E``).
VARIANTS: dict[str, tuple[str, ...]] = {"conveyor_events": ("enqueue+drain", "cost")}

#: The scenarios whose worker an adapter configures.
WORKER_ROLES = ("drain", "io", "delayed", "roundtrip")


@dataclass
class WorkerSpec:
    """How to start the system's worker for one scenario."""

    argv: list[str]
    pool: str  # for the table: "prefork -c 2", "threads x50", ...
    env: dict[str, str] = field(default_factory=dict)


class Adapter:
    """One system; subclasses live in ``bench/systems/<name>_adapter.py``."""

    name = ""

    def __init__(self, redis_url: str):
        self.redis_url = redis_url

    def versions(self) -> dict[str, str]:
        """Package versions worth printing beside the results."""
        raise NotImplementedError

    def enqueue(self, task: str, ids: Sequence[int], countdown: float | None = None) -> None:
        """Send ``task(i)`` for each ``i``, one call each (``late`` gets ``i, due`` where
        ``due`` is the time of the call plus ``countdown``)."""
        raise NotImplementedError

    def enqueue_bulk(self, task: str, ids: Sequence[int]) -> bool:
        """Send ``task(i)`` for each ``i`` with the system's bulk API; False if it has none."""
        return False

    def pending(self) -> int:
        """Messages waiting in the default queue (to check that enqueue lost nothing)."""
        raise NotImplementedError

    def roundtrip(self, ids: Sequence[int], timeout: float) -> list[float]:
        """For each ``i`` in turn: send ``echo(i)``, wait for its result, check it is ``i``;
        the seconds each took. Raises if a result is wrong or late."""
        raise NotImplementedError

    def worker(self, role: str, concurrency: int) -> WorkerSpec:
        """The worker command for ``role`` (one of ``WORKER_ROLES``)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections (the process ends soon after)."""


def timed_calls(ids: Sequence[int], call: Callable[[int], object]) -> list[float]:
    """``call(i)`` for each ``i`` in turn (send ``echo(i)``, wait for its result),
    which must return ``i``: the seconds each took."""
    times = []
    for i in ids:
        t0 = time.perf_counter()
        value = call(i)
        times.append(time.perf_counter() - t0)
        if value != i:
            raise AssertionError(f"echo({i}) returned {value!r}")
    return times


def send_each(tasks: ModuleType, task: str, ids: Sequence[int], countdown: float | None) -> None:
    """``Adapter.enqueue`` through Celery's API (``apply_async``), which conveyor keeps."""
    if task == "late":
        late = tasks.late.apply_async
        assert countdown is not None
        for i in ids:
            late((i, time.time() + countdown), countdown=countdown)
        return
    send = getattr(tasks, task).apply_async
    for i in ids:
        send((i,), countdown=countdown)


def load(name: str, redis_url: str) -> Adapter:
    """The adapter of system ``name``."""
    module = importlib.import_module(f"bench.systems.{name}_adapter")
    adapter: Adapter = module.ADAPTER(redis_url)
    return adapter
