"""``--autoscale MAX,MIN``: the pool grows at once with demand and shrinks when it falls.

Demand is what the worker holds: jobs running plus jobs waiting for a slot. The
worker fetches for ``MAX`` slots, so demand can reach ``MAX``; the pool grows to
meet it on the spot (a thread or a fork: milliseconds) and shrinks back only after
demand has stayed lower for ``keepalive`` seconds, so a bursty queue does not
churn processes. Shrinking never interrupts a task.
"""

from __future__ import annotations

import logging
import threading
import time

from conveyor.worker.pools.base import Pool

logger = logging.getLogger("conveyor.worker")

#: Seconds demand must stay below the pool's size before the pool shrinks (Celery's 30 s).
KEEPALIVE = 30.0


def parse_autoscale(text: str) -> tuple[int, int]:
    """``"MAX,MIN"`` (or ``"MAX"``: MIN 0 is taken as 1) as ``(maximum, minimum)``.

    Raises:
        ValueError: not two whole numbers with 1 <= MIN <= MAX.
    """
    parts = [p.strip() for p in text.split(",")]
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        numbers = []
    if len(numbers) not in (1, 2):
        raise ValueError(f"expected MAX,MIN such as 10,3, not {text!r}")
    maximum = numbers[0]
    minimum = max(numbers[1] if len(numbers) == 2 else 1, 1)
    if maximum < minimum:
        raise ValueError(f"MAX ({maximum}) is below MIN ({minimum}) in {text!r}")
    return maximum, minimum


class Autoscaler:
    """Keeps ``pool``'s size between ``minimum`` and ``maximum``, following demand."""

    def __init__(self, pool: Pool, minimum: int, maximum: int, keepalive: float = KEEPALIVE):
        self.pool = pool
        self.minimum = minimum
        self.maximum = maximum
        self.keepalive = keepalive
        self._lock = threading.Lock()
        self._low_since: float | None = None

    def update(self, demand: int) -> None:
        """Grow at once to meet ``demand``; shrink once it has been lower for ``keepalive``."""
        target = min(max(demand, self.minimum), self.maximum)
        with self._lock:
            size = self.pool.concurrency
            if target > size:
                self._low_since = None
                reached = self.pool.resize(target)
                logger.info("autoscale: pool grew from %d to %d (demand %d)", size, reached, demand)
            elif target < size:
                now = time.monotonic()
                if self._low_since is None:
                    self._low_since = now
                elif now - self._low_since >= self.keepalive:
                    reached = self.pool.resize(target)
                    if reached != size:
                        logger.info("autoscale: pool shrank from %d to %d", size, reached)
                    self._low_since = None if reached <= target else now
            else:
                self._low_since = None
