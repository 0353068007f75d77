"""What a fetched message must pass before it may run: expiry, revokes, global rate
limits, global concurrency caps, and unique-task claims; a hook (``conveyor.hooks``).
All of it lives in the broker's coordination store (see ``Broker.revoke`` and below),
so it holds across every worker of the cluster, not per worker as in Celery.

A message that may not run yet is put back in the broker's delayed store with
``Broker.retry`` (same body, delivery count reset): it waits there, not in a slot.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from typing import Any

from conveyor.brokers.base import Broker, Delivery
from conveyor.config import parse_rate
from conveyor.hooks import Hook, Verdict
from conveyor.task import UNIQUE_KEY, UNIQUE_UNTIL, Task, unique_claim_key
from conveyor.worker.job import Job, Outcome

logger = logging.getLogger("conveyor.worker")


def rate_key(task_name: str) -> str:
    return f"rate:{task_name}"


def concurrency_key(task_name: str) -> str:
    return f"concurrency:{task_name}"


class Admission(Hook):
    """The worker's first hook: checks each fetched job against what its task may do
    now, cluster-wide, and gives back what it took once the job is finished."""

    def __init__(self, broker: Broker, default_rate: str | float | None, slot_ttl: float):
        self.broker = broker
        self.default_rate = default_rate
        self.slot_ttl = slot_ttl

    def admit(self, job: Job, task: Task[..., Any]) -> Verdict | None:
        """Expired or revoked: refused; else take the message's rate permit and
        concurrency slot, or say when to look again.

        A slot taken here is the delivery's (its holder is the delivery token) until
        ``finished`` gives it back, or until it expires if this worker dies.
        """
        expires = job.message.expires
        if expires is not None and time.time() > expires:
            return Verdict("expired", expired=True)
        if job.revoked:
            return Verdict("revoked")
        delivery = job.delivery
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
                return Verdict(f"rate limit {rate}", retry_at=time.time() + wait + spread)
        cap = task.concurrency_limit
        if cap is not None and not self.broker.slot_acquire(
            concurrency_key(task.name), cap, delivery.token, self.slot_ttl
        ):
            return Verdict(
                f"concurrency limit {cap}", retry_at=time.time() + random.uniform(0.2, 0.6)
            )
        return None

    def received(self, job: Job, task: Task[..., Any]) -> None:
        self.release_unique(job.message.headers, job.message.id, "started")

    def revoked(self, job: Job, task: Task[..., Any], *, expired: bool, terminated: bool) -> None:
        if not terminated:  # refused before it ran: nothing else will free its key
            self.release_unique(job.message.headers, job.message.id, "started")
            self.release_unique(job.message.headers, job.message.id, "finished")

    def finished(self, job: Job, task: Task[..., Any] | None, outcome: Outcome | None) -> None:
        """Give back the job's concurrency slot; free its unique key once it has ended
        for good (not when it retries, is requeued, or is lost and may run again)."""
        self._release_slot(task, job.delivery)
        if outcome is not None and not outcome.again:
            self.release_unique(job.message.headers, job.message.id, "finished")

    def _release_slot(self, task: Task[..., Any] | None, delivery: Delivery) -> None:
        """Give back what ``admit`` took for this delivery (its concurrency slot)."""
        if task is not None and task.concurrency_limit is not None:
            self.broker.slot_release(concurrency_key(task.name), delivery.token)

    def renew(self, held: Sequence[tuple[Task[..., Any], Delivery]]) -> None:
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
