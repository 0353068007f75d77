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

A ``*_tasks`` module also reads ``BENCH_PROFILE``: ``tutorial`` applies the settings
of the deployment tutorial users follow (docs/deployment.md), in the module as the
tutorial does, not as worker flags; conveyor's also reads ``REPLICA_ACKS_ENV``.
``EMBEDDED_SYSTEMS`` (Huey) take part only in the SQLite scenario, which runs
``noop`` alone: their modules define only that task.
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import ClassVar

#: Every system, in the order of the tables; each is ``bench.systems.<name>_adapter``.
SYSTEMS = ("conveyor", "conveyor_events", "celery", "dramatiq", "rq", "arq", "saq", "huey")

#: Systems measured only beside conveyor's embedded SQLite broker (no server), not as
#: Redis peers: they take part in the ``EMBEDDED_SCENARIOS`` only.
EMBEDDED_SYSTEMS = ("huey",)

#: Variants of conveyor, not peers: measured beside it in some scenarios only, for the
#: cost of a feature (``conveyor_events``: workers started with ``-E``).
VARIANTS: dict[str, tuple[str, ...]] = {"conveyor_events": ("enqueue+drain", "cost")}

#: The scenarios whose worker an adapter configures (``tutorial``: prefork, concurrency
#: 4 and ``BENCH_PROFILE=tutorial``; ``defaults``: the threads pool and nothing else;
#: ``sqlite_threads`` / ``sqlite_processes``: a worker of threads / processes on the
#: system's embedded SQLite storage, otherwise the system's defaults).
WORKER_ROLES = (
    "drain",
    "io",
    "delayed",
    "roundtrip",
    "tutorial",
    "defaults",
    "sqlite_threads",
    "sqlite_processes",
)

#: Scenarios of a deployment or an API not every system has: a system takes part
#: only if its adapter names them in ``Adapter.optional``; the others are skipped.
OPTIONAL_SCENARIOS = ("tutorial", "tutorial_results", "defaults", "producers")

#: Scenarios on each system's embedded SQLite storage, with no server: only the adapters
#: that name them in ``Adapter.optional`` take part (conveyor and ``EMBEDDED_SYSTEMS``).
EMBEDDED_SCENARIOS = ("sqlite",)

#: Scenarios measuring what a setting only conveyor has costs (``replicas``:
#: ``broker_replica_acks``): only the adapters that name them in ``Adapter.optional``
#: take part, and the others are not listed as lacking them (no peer has the setting).
FEATURE_SCENARIOS = ("replicas",)

#: In the ``FEATURE_SCENARIOS``, the ``broker_replica_acks`` of the run (set by
#: ``bench.scenario`` before the adapter loads, inherited by the worker).
REPLICA_ACKS_ENV = "BENCH_REPLICA_ACKS"

#: In the ``EMBEDDED_SCENARIOS``, the run's own SQLite file for the system (set by
#: ``bench.scenario`` before the adapter loads, inherited by the worker): the tasks
#: module then stores its queue there instead of in Redis.
SQLITE_PATH_ENV = "BENCH_SQLITE_PATH"


@dataclass
class WorkerSpec:
    """How to start the system's worker for one scenario."""

    argv: list[str]
    pool: str  # for the table: "prefork -c 2", "threads x50", ...
    env: dict[str, str] = field(default_factory=dict)


class Adapter:
    """One system; subclasses live in ``bench/systems/<name>_adapter.py``."""

    name = ""
    #: The ``OPTIONAL_SCENARIOS``, ``EMBEDDED_SCENARIOS`` and ``FEATURE_SCENARIOS``
    #: this system takes part in.
    optional: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def supports(cls, scenario: str) -> bool:
        """Whether this system takes part in ``scenario``."""
        if scenario in OPTIONAL_SCENARIOS + EMBEDDED_SCENARIOS + FEATURE_SCENARIOS:
            return scenario in cls.optional
        return True

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

    def enqueue_threads(self, task: str, ids: Sequence[int], threads: int) -> bool:
        """Send ``task(i)`` for each ``i`` one call each, from ``threads`` threads of this
        process at once (each an equal share); False if the system does not support it."""
        return False

    def enqueue_async(self, task: str, ids: Sequence[int], coroutines: int) -> bool:
        """Send ``task(i)`` for each ``i`` one await each, from ``coroutines`` asyncio tasks
        of one event loop at once; False if the system has no asyncio API for it."""
        return False

    def pending(self) -> int:
        """Messages waiting in the default queue (to check that enqueue lost nothing)."""
        raise NotImplementedError

    def roundtrip(self, ids: Sequence[int], timeout: float) -> list[float]:
        """For each ``i`` in turn: send ``echo(i)``, wait for its result, check it is ``i``;
        the seconds each took. Raises if a result is wrong or late."""
        raise NotImplementedError

    def worker(self, role: str, concurrency: int) -> WorkerSpec:
        """The worker command for ``role`` (one of ``WORKER_ROLES``; ``defaults`` leaves
        the concurrency to the system, ``concurrency`` is then only for the label)."""
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


def send_in_threads(send: Callable[[int], object], ids: Sequence[int], threads: int) -> None:
    """``send(i)`` for each ``i`` from ``threads`` threads, each with every
    ``threads``-th id, released together once all exist; re-raises a thread's error."""
    start = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def run(share: Sequence[int]) -> None:
        start.wait()
        try:
            for i in share:
                send(i)
        except BaseException as exc:  # the caller re-raises it
            errors.append(exc)

    pool = [threading.Thread(target=run, args=(ids[k::threads],)) for k in range(threads)]
    for thread in pool:
        thread.start()
    start.wait()
    for thread in pool:
        thread.join()
    if errors:
        raise errors[0]


def adapter_class(name: str) -> type[Adapter]:
    """The adapter class of system ``name`` (imports its module: run in its environment)."""
    module = importlib.import_module(f"bench.systems.{name}_adapter")
    cls: type[Adapter] = module.ADAPTER
    return cls


def load(name: str, redis_url: str) -> Adapter:
    """The adapter of system ``name``."""
    return adapter_class(name)(redis_url)
