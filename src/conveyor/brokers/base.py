"""The broker contract: what every broker guarantees, in a few primitives.

A broker moves opaque message bodies between producers and workers. It knows a
message id, a queue, a priority (0-9, higher first), a due time and bytes;
nothing about tasks. Everything above (retries, dead letters of undecodable
messages, results) is built on these primitives by the layers above.

Delivery life cycle::

    publish ──> ready ──fetch──> in flight (lease: owner, expiry, token)
      │ eta       ▲                │ ack ──────────> gone
      v           │                │ release ───────> ready   (unstarted; not counted)
    delayed ──due─┘                │ requeue ───────> ready, or dead past max_deliveries
                                   │ retry ─────────> delayed (new body, count reset)
                                   │ dead_letter ───> dead
                                   └ lease expires ─> ready, or dead past max_deliveries
                                                      (any consumer's ``reclaim``)

Every call that settles a delivery is fenced by the delivery's token: once a
lease has expired and the message was delivered again, the old token is stale
and its ack, release, requeue, retry, dead-letter and renewal are refused.
Every call may be retried after a lost reply: it then answers as the first
attempt did, and does nothing twice.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from conveyor.brokers.coalescing import Coalescer
from conveyor.config import redact_url

MIN_PRIORITY = 0
MAX_PRIORITY = 9
DEFAULT_LEASE_SECONDS = 10.0
DEFAULT_MAX_DELIVERIES = 5
DEFAULT_DEAD_LETTER_MAX = 10_000
DEFAULT_DEAD_LETTER_EXPIRES = 180 * 86400.0


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """A message to publish: an id, its queue, priority, optional due time and body."""

    id: str
    queue: str
    body: bytes
    priority: int = 0
    eta: float | None = None  # UNIX time; None or past means ready now


@dataclass(frozen=True, slots=True)
class Delivery:
    """One fetched copy of a message, leased to one consumer.

    ``token`` fences this copy: it is the only handle that may settle it.
    ``deliveries`` counts every delivery of the message so far, this one
    included (1 on first delivery); crashes and lease expiries count.
    ``revoked``: whether the message's id was revoked (see ``revoke``) when it
    was fetched, for brokers that look it up in the fetch itself; None: not
    looked up (ask ``revoked``).
    """

    id: str
    queue: str
    body: bytes
    priority: int
    token: str
    deliveries: int
    revoked: bool | None = None


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """One past delivery of a message: who took it and when."""

    consumer: str
    at: float


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that was taken out of circulation, with the reason and its history."""

    id: str
    queue: str
    body: bytes
    priority: int
    reason: str
    deliveries: int
    died_at: float
    history: tuple[DeliveryRecord, ...] = ()


@dataclass(frozen=True, slots=True)
class QueueStats:
    """How many messages a queue holds in each state."""

    queue: str
    ready: int = 0
    delayed: int = 0
    in_flight: int = 0
    dead: int = 0
    #: When the oldest ready message became ready (UNIX time; None: nothing ready).
    #: Its age is the queue's latency: how long the next fetch's message has waited.
    #: A time, not a count: left out of ``==``, so that stats compare by their counts.
    oldest_ready_at: float | None = field(default=None, compare=False)


class Disposition(enum.Enum):
    """What became of a delivery that was handed back to the broker."""

    REQUEUED = "requeued"
    DEAD = "dead"
    STALE = "stale"  # the token was no longer current: nothing changed


@dataclass(frozen=True, slots=True)
class Reclaimed:
    """A message whose lease had expired, and where it went."""

    id: str
    queue: str
    disposition: Disposition
    deliveries: int


@dataclass(frozen=True, slots=True)
class StreamEntry:
    """One entry of a capped stream: its cursor (opaque, increasing) and body."""

    id: str
    body: bytes


@dataclass(slots=True)
class BrokerOptions:
    """Tuning shared by every broker.

    ``lease_seconds``: how long a delivery stays leased without renewal; the
    worker renews well before that, so only a dead or frozen consumer loses a
    lease. ``max_deliveries``: deliveries after which a message that keeps
    coming back (crash, lost lease) is dead-lettered instead.
    ``connection_timeout``: how long a call to a networked broker retries
    through connection errors before raising BrokerUnavailable.
    ``dead_letter_max`` and ``dead_letter_expires``: a queue keeps at most this
    many dead letters (the oldest go first), each for at most this many seconds.
    ``allow_eviction``: use a server that may evict data under memory pressure
    (Redis ``maxmemory-policy`` other than ``noeviction``), which is refused otherwise.
    ``transport_options``: how to reach the server (Sentinel's ``master_name``).
    ``replica_acks``: replicas that must hold each publish, ack and result write
    before it returns (Redis ``WAIT``).
    """

    lease_seconds: float = DEFAULT_LEASE_SECONDS
    max_deliveries: int = DEFAULT_MAX_DELIVERIES
    connection_timeout: float = 10.0
    dead_letter_max: int = DEFAULT_DEAD_LETTER_MAX
    dead_letter_expires: float = DEFAULT_DEAD_LETTER_EXPIRES
    allow_eviction: bool = False
    transport_options: Mapping[str, Any] = field(default_factory=dict)
    replica_acks: int = 0


class Broker(ABC):
    """The contract every broker implements. Each method states its guarantee;
    the shared contract suites (tests/contract/test_broker.py, and
    test_coordination.py for the coordination section) test that text."""

    url: str
    options: BrokerOptions

    def check(self) -> list[str]:
        """Make sure the server will not lose messages quietly; the worker calls it at
        start and logs what it returns: conditions the operator should know about.

        Raises:
            ConfigurationError: the server is set up to drop data (an evicting Redis),
                unless ``options.allow_eviction``.
        """
        return []

    # -- producing -------------------------------------------------------------

    @abstractmethod
    def publish_many(self, messages: Sequence[OutgoingMessage]) -> None:
        """Store every message durably before returning, all or none.

        A message with ``eta`` in the future is held by the broker (never by a
        worker) and becomes ready when due. Priority must be 0-9.

        Idempotent per message id where replies can be lost (a networked broker): a
        message whose id is already waiting in its queue (ready or delayed) is not
        stored again, so a call retried after a lost reply enqueues nothing twice.
        """

    def publish(self, message: OutgoingMessage) -> None:
        """Store one message; see ``publish_many``. Concurrent calls from threads of
        one process are sent together (``conveyor.brokers.coalescing``), each
        returning once the broker holds its own message."""
        self.validate(message)
        self._coalescer.publish(message)

    async def apublish(self, message: OutgoingMessage) -> None:
        """``publish`` from a coroutine. This default runs it in a thread of the loop's
        executor; a broker with an asyncio client publishes natively."""
        await asyncio.to_thread(self.publish, message)

    def validate(self, message: OutgoingMessage) -> None:
        """Raise ValueError for a message ``publish_many`` would refuse (priority, queue
        name), before it joins others in one send."""
        check_priority(message.priority)

    @functools.cached_property
    def _coalescer(self) -> Coalescer:
        return Coalescer(self.publish_many)

    # -- consuming -------------------------------------------------------------

    @abstractmethod
    def fetch(
        self, queues: Sequence[str], limit: int, *, consumer: str, timeout: float
    ) -> list[Delivery]:
        """Lease up to ``limit`` ready messages from ``queues`` to ``consumer``.

        Due delayed messages are made ready first. Order: highest priority
        first, then the order in which messages became ready, across all the
        given queues: publish order, a delayed message joining when it is due
        (retries too), and a message handed back (release, requeue, lost
        lease) keeping its place. ``limit`` must be at least 1. Each returned
        delivery is leased atomically with a fresh token and its delivery count
        incremented; no other consumer can fetch it while the lease holds.
        Waits up to ``timeout`` seconds for the first message, and returns as
        soon as any is ready (an empty list after the timeout).
        """

    @abstractmethod
    def ack(self, deliveries: Sequence[Delivery]) -> list[bool]:
        """Remove each delivered message for good; per delivery, True if the
        token was current, False (and nothing changed) if it was stale.

        Idempotent: acknowledging again with the same token (a call retried after a
        lost reply) is True once the first succeeded; a delivery whose lease was lost
        and reclaimed is False, even if the message is gone since.
        """

    def ack_storing(
        self, deliveries: Sequence[Delivery], writes: Mapping[str, object]
    ) -> list[bool]:
        """``ack``, and in the same atomic step apply, for each delivery acknowledged,
        the result write prepared for it (``writes``: token -> what the result
        backend's ``writes_for`` returned for this broker). Only called with writes
        a backend prepared for this broker."""
        raise NotImplementedError(f"{type(self).__name__} cannot store results with its acks")

    def ack_and_fetch(
        self,
        deliveries: Sequence[Delivery],
        writes: Mapping[str, object],
        queues: Sequence[str],
        limit: int,
        *,
        consumer: str,
    ) -> tuple[list[bool], list[Delivery]]:
        """``ack`` (``ack_storing`` when ``writes``), then ``fetch`` up to ``limit``
        more without waiting (``limit`` 0: none): a worker refills the room its acks
        free. One round trip where the broker can; the default makes both calls.
        The acks are applied before the fetch, so a retried call is safe: the acks
        are idempotent, and what a fetch whose reply was lost leased comes back when
        its lease expires."""
        acks = self.ack_storing(deliveries, writes) if writes else self.ack(deliveries)
        if limit < 1:
            return acks, []
        return acks, self.fetch(queues, limit, consumer=consumer, timeout=0.0)

    @abstractmethod
    def release(self, delivery: Delivery) -> bool:
        """Return an unstarted delivery to ready at once, undoing its count.

        For prefetched messages handed back at shutdown. False if stale.
        """

    @abstractmethod
    def requeue(self, delivery: Delivery) -> Disposition:
        """Return a delivery whose attempt was lost (its process died).

        The attempt counts: if the message has been delivered
        ``max_deliveries`` times it is dead-lettered instead (DEAD).
        STALE if the token is no longer current.
        """

    @abstractmethod
    def retry(self, delivery: Delivery, body: bytes, eta: float | None) -> bool:
        """Replace the message body and hold it until ``eta``, counting anew.

        An exception retry: the delivery count restarts, so retries never
        look like crashes. False if stale.
        """

    @abstractmethod
    def renew(self, deliveries: Sequence[Delivery]) -> set[str]:
        """Extend the leases of these deliveries by ``lease_seconds`` from now.

        Returns the ids whose lease was lost (it expired and was reclaimed); those
        leases are left untouched. A delivery settled since (acked, released...) has
        nothing to renew and is not lost.
        """

    @abstractmethod
    def reclaim(self) -> list[Reclaimed]:
        """Return every message whose lease has expired to ready, or to the
        dead letters once it has been delivered ``max_deliveries`` times.

        Safe to call from any number of consumers at once: each expired
        message is moved exactly once.
        """

    # -- dead letters ----------------------------------------------------------

    @abstractmethod
    def dead_letter(self, delivery: Delivery, reason: str) -> bool:
        """Move a delivered message to the dead letters with ``reason``.

        False (and nothing changed) if the token is stale.
        """

    @abstractmethod
    def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        """Dead letters, oldest first, optionally of one queue only.

        Each queue keeps at most ``options.dead_letter_max`` of them (the oldest are
        dropped first), each for ``options.dead_letter_expires`` seconds at most;
        the limits are applied as consumers reclaim, so a queue may briefly hold more.
        """

    @abstractmethod
    def get_dead(self, message_id: str) -> DeadLetter | None:
        """The oldest dead letter with this id, found without reading the others."""

    @abstractmethod
    def purge_dead(self, queue: str | None = None) -> int:
        """Delete the dead letters of ``queue`` (None: of every queue); returns how many."""

    @abstractmethod
    def requeue_dead(self, message_id: str) -> bool:
        """Put a dead letter back in its queue as a fresh message (count reset).

        Message ids may repeat: the oldest dead letter with this id is taken.
        """

    @abstractmethod
    def drop_dead(self, message_id: str) -> bool:
        """Delete a dead letter for good (the oldest, if the id repeats)."""

    # -- inspection ------------------------------------------------------------

    @abstractmethod
    def stats(self, queues: Iterable[str] | None = None) -> list[QueueStats]:
        """Counts per queue; with ``queues=None`` every queue that holds anything."""

    @abstractmethod
    def purge(self, queue: str) -> int:
        """Delete the ready and delayed messages of ``queue``; returns how many.

        In-flight messages and dead letters are left alone.
        """

    # -- coordination: state shared by every worker and producer ----------------
    #
    # Small atomic records kept in the broker's store (never in one worker's memory),
    # each with a time to live so that nothing outlives its use. Keys are chosen by
    # the caller (a task name, a unique key, a group id) and may be any string.

    @abstractmethod
    def revoke(self, task_ids: Sequence[str], ttl: float, *, terminate: bool = False) -> None:
        """Record these task ids as revoked for ``ttl`` seconds (from now; a later call
        extends it). ``terminate`` is recorded too: running copies should be stopped."""

    @abstractmethod
    def revoked(self, task_ids: Sequence[str]) -> dict[str, bool]:
        """The ids among ``task_ids`` that are revoked and not expired, each mapped to
        its ``terminate`` flag. One round trip for the whole batch."""

    @abstractmethod
    def rate_acquire(
        self, key: str, limit: int, period: float, *, request: str | None = None
    ) -> float:
        """Take one of ``limit`` permits per ``period`` seconds for ``key``, shared by
        every process: 0.0 if taken, else the seconds until one is free (nothing taken).

        A burst of up to ``limit`` at once is allowed, then one permit per
        ``period / limit`` seconds (the generic cell rate algorithm), so over any
        window of T seconds at most ``limit + limit * T / period`` permits are given.
        ``request`` names the request: asking again with the same one (a retried
        call) while the key is busy answers 0.0 and takes no second permit.
        """

    @abstractmethod
    def slot_acquire(self, key: str, limit: int, holder: str, ttl: float) -> bool:
        """Hold one of at most ``limit`` slots of ``key`` as ``holder`` for ``ttl``
        seconds. True if held (also if ``holder`` already held one: its ttl is
        extended); False if ``limit`` other holders hold unexpired slots. Expired
        holders (a crashed worker's) are dropped first."""

    @abstractmethod
    def slot_renew(self, key: str, holders: Sequence[str], ttl: float) -> None:
        """Extend the slots of these holders of ``key`` to ``ttl`` seconds from now
        (holders that hold none are ignored)."""

    @abstractmethod
    def slot_release(self, key: str, holder: str) -> None:
        """Give back ``holder``'s slot of ``key`` (nothing if it holds none)."""

    @abstractmethod
    def claim(self, key: str, owner: str, ttl: float) -> str | None:
        """Claim ``key`` for ``owner`` for ``ttl`` seconds if nobody holds it: returns
        None when claimed (or already ``owner``'s: the ttl is not changed), else the
        current owner. For unique tasks (owner: the task id) and beat's slots."""

    @abstractmethod
    def release_claim(self, key: str, owner: str) -> bool:
        """Delete the claim on ``key`` if ``owner`` holds it; True if deleted."""

    @abstractmethod
    def tally(self, key: str, member: str, ttl: float) -> int:
        """Count ``member`` under ``key`` once and return how many distinct members
        ``key`` has counted; the tally expires ``ttl`` seconds after its last call.
        Adding a member again (a retried call, a task that ran twice) counts nothing.
        Atomic across processes: of N distinct members added from anywhere, exactly
        one call is answered N. For chords, which count their header tasks."""

    @abstractmethod
    def advance(self, key: str, value: float | None, ttl: float) -> float | None:
        """Raise the mark ``key`` to ``value`` if that is above its current value (or it
        has none), and return the value it had before (None if none). A raised mark
        expires ``ttl`` seconds after it was raised; a mark left as it was keeps its
        expiry. ``value=None`` only reads. Atomic across processes: of concurrent
        advances, each is answered the value left by the one before it. For beat's
        last-run times."""

    # -- monitoring: worker registry, streams, counters ------------------------------
    #
    # What operators see (``conveyor inspect``, events, Prometheus, the dashboard) is
    # kept here, in the broker, so that any number of readers agree and a reader's
    # restart loses nothing. None of it is on a task's hot path.

    @abstractmethod
    def worker_beat(self, name: str, info: bytes, ttl: float) -> None:
        """Record worker ``name`` as alive with ``info`` (an opaque body) for ``ttl``
        seconds from now; a later beat replaces both."""

    @abstractmethod
    def worker_gone(self, name: str) -> None:
        """Forget worker ``name`` at once (a worker that stops cleanly)."""

    @abstractmethod
    def workers(self) -> dict[str, bytes]:
        """The info of every worker whose last beat has not expired, by name."""

    @abstractmethod
    def stream_add(
        self, stream: str, bodies: Sequence[bytes], maxlen: int, ttl: float | None = None
    ) -> None:
        """Append ``bodies`` to the capped stream ``stream``, in order, in one round
        trip; entries beyond the newest ``maxlen`` are dropped. With ``ttl`` the whole
        stream is deleted ``ttl`` seconds after its last append (a reply stream)."""

    @abstractmethod
    def stream_read(
        self, stream: str, after: str, timeout: float = 0.0, count: int = 1000
    ) -> list[StreamEntry]:
        """At most ``count`` entries newer than cursor ``after``, oldest first
        (``"0"``: from the oldest kept); when there are none, waits up to ``timeout``
        seconds for the first to arrive. Never blocks longer than ``timeout``."""

    @abstractmethod
    def stream_last(self, stream: str) -> str:
        """The cursor of the newest entry (``"0"`` when empty): reading after it gives
        only entries added from now on."""

    @abstractmethod
    def stream_tail(self, stream: str, count: int) -> list[StreamEntry]:
        """The newest ``count`` entries, oldest first."""

    @abstractmethod
    def counters_add(self, deltas: Mapping[str, float]) -> None:
        """Add each delta to its named counter (created at 0), atomically and in one
        round trip. Counters are kept until ``counters_reset``."""

    @abstractmethod
    def counters(self, prefix: str = "") -> dict[str, float]:
        """Every counter whose name starts with ``prefix``, by name."""

    @abstractmethod
    def counters_reset(self) -> None:
        """Delete every counter."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections. The broker must not be used afterwards."""


def now() -> float:
    """The wall clock every broker uses for due times and leases."""
    return time.time()


def safe_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, for banners and logs."""
    return redact_url(url)


def check_priority(priority: int) -> int:
    """``priority`` if it is within 0-9, else ValueError."""
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise ValueError(f"priority must be {MIN_PRIORITY}-{MAX_PRIORITY}, got {priority!r}")
    return priority


def check_positive(name: str, value: float) -> float:
    """``value`` if it is above zero (a ttl, a period, a limit), else ValueError."""
    if not value > 0:  # NaN too
        raise ValueError(f"{name} must be positive, got {value!r}")
    return value


def check_finite(name: str, value: float) -> float:
    """``value`` if it is a finite number (a mark), else ValueError."""
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return value


def gcra(tat: float | None, t: float, limit: int, period: float) -> tuple[float, float]:
    """One request of the generic cell rate algorithm at time ``t``.

    ``tat`` is the stored theoretical arrival time (None: nothing stored). With
    emission interval ``T = period / limit`` and burst tolerance ``period - T``,
    returns ``(new_tat, 0.0)`` when a permit is granted (store ``new_tat``, which
    may be forgotten once it has passed), else ``(max(tat, t), wait)`` with
    ``wait > 0`` seconds until one is free (store nothing).
    """
    interval = period / limit
    base = t if tat is None else max(tat, t)
    allow_at = base + interval - period
    if allow_at > t:
        return base, allow_at - t
    return base + interval, 0.0
