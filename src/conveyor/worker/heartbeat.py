"""Lease renewal: one thread per worker process keeps every held lease alive.

Task code never runs on this thread (in prefork it runs in other processes),
so a busy or blocking task cannot starve it. The same thread reclaims leases
that other, dead consumers let expire.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

from conveyor.brokers.base import Broker, Delivery, Disposition

logger = logging.getLogger("conveyor.worker")


class Heartbeat:
    """Renews held leases every third of the lease; reclaims expired ones."""

    def __init__(
        self,
        broker: Broker,
        held: Callable[[], list[Delivery]],
        on_lost: Callable[[str], None],
        also: Callable[[], None] | None = None,
    ):
        """``also`` is called after each renewal: more to keep alive at the same pace
        (the concurrency slots of running tasks)."""
        self.broker = broker
        self.held = held
        self.on_lost = on_lost
        self.also = also
        lease = broker.options.lease_seconds
        self.renew_every = lease / 3
        # Reclaim often enough that a dead worker's tasks come back soon after
        # its leases expire, with jitter so workers do not all sweep at once.
        self.reclaim_every = min(lease / 4, 2.5)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="conveyor-heartbeat", daemon=True)
        self.last_beat = time.monotonic()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        next_renew = time.monotonic() + self.renew_every
        next_reclaim = time.monotonic()
        failing = False
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                if now >= next_renew or failing:
                    self.renew()
                    next_renew = now + self.renew_every
                if failing:
                    # Back from a broker outage: every lease may look expired now.
                    # Give every live worker one lease period to renew before any
                    # reclaim, so only the leases of dead workers are taken over.
                    logger.info("broker reachable again; leases renewed")
                    next_reclaim = now + self.broker.options.lease_seconds
                    failing = False
                if now >= next_reclaim:
                    self.reclaim()
                    next_reclaim = now + self.reclaim_every * random.uniform(0.8, 1.2)
                self.last_beat = now
            except Exception as exc:
                if not failing:
                    logger.error("heartbeat failed (%s); retrying", exc)
                failing = True
            wait = 0.5 if failing else min(next_renew, next_reclaim) - time.monotonic()
            self._stop.wait(max(0.05, wait))

    def renew(self) -> None:
        deliveries = self.held()
        if deliveries:
            for message_id in self.broker.renew(deliveries):
                self.on_lost(message_id)
        if self.also is not None:
            self.also()

    def reclaim(self) -> None:
        for item in self.broker.reclaim():
            if item.disposition is Disposition.DEAD:
                logger.error(
                    "message %s (%s) dead-lettered: lease expired after %d deliveries",
                    item.id,
                    item.queue,
                    item.deliveries,
                )
            else:
                logger.warning(
                    "message %s (%s) returned to the queue: its consumer stopped renewing",
                    item.id,
                    item.queue,
                )
