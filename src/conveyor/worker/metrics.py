"""Task counters of one worker: counts by (task, state) and a runtime histogram by task,
gathered in memory and added to the broker's counters as deltas (``Broker.counters_add``).

Counters are kept in the broker, so that every reader (Prometheus scrapes of any
dashboard, ``conveyor.monitoring.metrics``) sees the same totals and a reader's restart
loses nothing. Their names (``|`` separates the parts; a task name may hold ``|``)::

    tasks|<task>|<state>           runs that ended so: SUCCESS, FAILURE, RETRY, REVOKED,
                                   REJECTED, IGNORED (see ``worker/monitors.py``)
    runtime_bucket|<task>|<le>     runs whose runtime fell in the bucket that ends at <le>
                                   (not cumulative: the reader sums them up); <le> is one
                                   of ``BUCKETS`` written as ``repr(float)``, or ``+Inf``
    runtime_sum|<task>             seconds run, in total
    runtime_count|<task>           runs timed (every end in the pool; not a lost process)

A worker adds its deltas every ``FLUSH_EVERY`` seconds and as it stops; a delta the
broker refused is added again to the next. A worker killed with SIGKILL loses what it
gathered since its last flush (at most ``FLUSH_EVERY`` seconds of counts).
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections import defaultdict
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from conveyor.brokers.base import Broker

logger = logging.getLogger("conveyor.worker")

#: Seconds between two flushes of a worker's counts.
FLUSH_EVERY: Final = 2.0
#: Upper bounds of the runtime buckets (seconds): Prometheus' defaults, and longer ones
#: for tasks that run minutes; one more, ``+Inf``, takes the rest.
BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    30.0, 60.0, 300.0,
)  # fmt: skip
INF: Final = "+Inf"
_BOUNDS: Final = (*(repr(b) for b in BUCKETS), INF)

TASKS: Final = "tasks|"
RUNTIME_BUCKET: Final = "runtime_bucket|"
RUNTIME_SUM: Final = "runtime_sum|"
RUNTIME_COUNT: Final = "runtime_count|"


def bucket_of(runtime: float) -> str:
    """The bound of the bucket ``runtime`` falls in (``le``: at most that)."""
    return _BOUNDS[bisect.bisect_left(BUCKETS, runtime)]


class TaskCounts:
    """Counts gathered since the last flush; thread-safe, never blocks on the broker."""

    def __init__(self) -> None:
        self._deltas: defaultdict[str, float] = defaultdict(float)
        self._lock = threading.Lock()
        self._failing = False

    def count(self, task: str, state: str) -> None:
        """One more run of ``task`` that ended in ``state``."""
        with self._lock:
            self._deltas[f"{TASKS}{task}|{state}"] += 1

    def observe(self, task: str, runtime: float) -> None:
        """One more run of ``task`` that took ``runtime`` seconds."""
        runtime = max(0.0, runtime)
        with self._lock:
            deltas = self._deltas
            deltas[f"{RUNTIME_BUCKET}{task}|{bucket_of(runtime)}"] += 1
            deltas[f"{RUNTIME_SUM}{task}"] += runtime
            deltas[f"{RUNTIME_COUNT}{task}"] += 1

    def pending(self) -> dict[str, float]:
        """The deltas not flushed yet."""
        with self._lock:
            return dict(self._deltas)

    def flush(self, broker: Broker) -> bool:
        """Add the deltas to the broker's counters in one call; on failure they stay
        for the next flush. Returns whether nothing is left to add."""
        with self._lock:
            deltas, self._deltas = self._deltas, defaultdict(float)
        if not deltas:
            return True
        try:
            broker.counters_add(deltas)
        except Exception as exc:
            with self._lock:
                for name, value in deltas.items():
                    self._deltas[name] += value
            if not self._failing:
                logger.warning("could not add task counters to the broker (kept): %s", exc)
            self._failing = True
            return False
        if self._failing:
            logger.info("task counters added to the broker again")
        self._failing = False
        return True
