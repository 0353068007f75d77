"""What a fetched message must pass before it may run: revokes, global rate limits,
global concurrency caps, and unique-task claims. All of it lives in the broker's
coordination store (see ``Broker.revoke`` and below), so it holds across every worker
of the cluster, not per worker as in Celery.

A message that may not run yet is put back in the broker's delayed store with
``Broker.retry`` (same body, delivery count reset): it waits there, not in a slot.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

from conveyor.brokers.base import Broker, Delivery
from conveyor.config import parse_rate
from conveyor.task import UNIQUE_KEY, UNIQUE_UNTIL, Task, unique_claim_key

logger = logging.getLogger("conveyor.worker")


def rate_key(task_name: str) -> str:
    return f"rate:{task_name}"


def concurrency_key(task_name: str) -> str:
    return f"concurrency:{task_name}"


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a message may run now; if not, when to look again (UNIX time)."""

    run: bool
    retry_at: float = 0.0
    why: str = ""


RUN = Verdict(True)


class Admission:
    """Checks one fetched message against its task's cluster-wide limits."""

    def __init__(self, broker: Broker, default_rate: str | float | None, slot_ttl: float):
        self.broker = broker
        self.default_rate = default_rate
        self.slot_ttl = slot_ttl

    def revoked(self, deliveries: Sequence[Delivery]) -> dict[str, bool]:
        """The revoked ones among a fetched batch, id -> terminate: from the fetch itself
        where the broker looked them up (Redis), else in one round trip."""
        if all(d.revoked is not None for d in deliveries):  # looked up by the fetch
            return {d.id: False for d in deliveries if d.revoked}
        return self.broker.revoked([d.id for d in deliveries]) if deliveries else {}

    def admit(self, task: Task[..., object], delivery: Delivery) -> Verdict:
        """Take the message's rate permit and concurrency slot, or say when to retry.

        A slot taken here is the delivery's (its holder is the delivery token) until
        ``finished`` gives it back, or until it expires if this worker dies.
        """
        rate = task.rate_limit if task.rate_limit is not None else self.default_rate
        if rate is not None:
            limit, period = parse_rate(rate)
            # the delivery names the request: a retried call takes no second permit
            wait = self.broker.rate_acquire(
                rate_key(task.name), limit, period, request=delivery.token
            )
            if wait > 0:
                # Spread the waiting messages over one interval: they do not all come
                # back at the instant the next permit frees up.
                spread = random.uniform(0.0, period / limit)
                return Verdict(False, time.time() + wait + spread, f"rate limit {rate}")
        cap = task.concurrency_limit
        if cap is not None and not self.broker.slot_acquire(
            concurrency_key(task.name), cap, delivery.token, self.slot_ttl
        ):
            return Verdict(
                False, time.time() + random.uniform(0.2, 0.6), f"concurrency limit {cap}"
            )
        return RUN

    def finished(self, task: Task[..., object] | None, delivery: Delivery) -> None:
        """Give back what ``admit`` took for this delivery (its concurrency slot)."""
        if task is not None and task.concurrency_limit is not None:
            self.broker.slot_release(concurrency_key(task.name), delivery.token)

    def renew(self, held: Sequence[tuple[Task[..., object], Delivery]]) -> None:
        """Keep the concurrency slots of running deliveries (called with the leases)."""
        by_key: dict[str, list[str]] = {}
        for task, delivery in held:
            if task.concurrency_limit is not None:
                by_key.setdefault(concurrency_key(task.name), []).append(delivery.token)
        for key, holders in by_key.items():
            self.broker.slot_renew(key, holders, self.slot_ttl)

    def release_unique(self, headers: dict[str, object], task_id: str, moment: str) -> None:
        """At ``moment`` (``started`` or ``finished``), free the unique key the message
        holds if its mode says so."""
        key = headers.get(UNIQUE_KEY)
        if isinstance(key, str) and headers.get(UNIQUE_UNTIL, "finished") == moment:
            self.broker.release_claim(unique_claim_key(key), task_id)
