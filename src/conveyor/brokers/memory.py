"""An in-process broker for tests and ``memory://``: one lock, no persistence."""

from __future__ import annotations

import heapq
import itertools
import secrets
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from conveyor.brokers.base import (
    Broker,
    BrokerOptions,
    DeadLetter,
    Delivery,
    DeliveryRecord,
    Disposition,
    OutgoingMessage,
    QueueStats,
    Reclaimed,
    StreamEntry,
    check_finite,
    check_positive,
    check_priority,
    gcra,
    now,
)

#: How often (at most) the coordination records are swept of expired entries.
SWEEP_SECONDS = 10.0
#: How long a reclaimed token is remembered (its late ack or settle is refused).
LOST_MEMORY_SECONDS = 3600.0


@dataclass(slots=True)
class _Message:
    seq: int
    id: str
    queue: str
    body: bytes
    priority: int
    due_at: float  # when it became ready: its place in the queue (see the SQLite broker)
    deliveries: int = 0
    history: list[DeliveryRecord] = field(default_factory=list)
    token: str = ""
    lease_until: float = 0.0


@dataclass(slots=True)
class _Stream:
    entries: deque[tuple[int, bytes]] = field(default_factory=deque)
    expires: float | None = None  # now() time; None: kept


_Entry = tuple[int, float, int, _Message]  # heap order: priority desc, then due_at, then seq


class MemoryBroker(Broker):
    """A broker held in this process's memory, safe for any number of threads.

    Messages do not survive the process; use it in tests, or with ``memory://``
    when producer and worker share one process.
    """

    def __init__(self, url: str = "memory://", options: BrokerOptions | None = None):
        self.url = url
        self.options = options or BrokerOptions()
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._ready: dict[str, list[_Entry]] = {}
        self._delayed: list[tuple[float, int, _Message]] = []
        self._inflight: dict[str, _Message] = {}  # by token
        self._dead: list[DeadLetter] = []
        self._lost: dict[str, float] = {}  # reclaimed token -> when
        # Coordination records, each with its expiry (``now()`` time), under their own lock.
        self._coord = threading.Lock()
        self._revoked: dict[str, tuple[float, bool]] = {}  # id -> (expires, terminate)
        self._rates: dict[str, tuple[float, float]] = {}  # key -> (tat, expires)
        self._slots: dict[str, dict[str, float]] = {}  # key -> holder -> expires
        self._claims: dict[str, tuple[str, float]] = {}  # key -> (owner, expires)
        self._tallies: dict[str, tuple[set[str], float]] = {}  # key -> (members, expires)
        self._grants: dict[tuple[str, str], float] = {}  # (key, request) -> expires
        self._marks: dict[str, tuple[float, float]] = {}  # key -> (value, expires)
        self._next_sweep = 0.0
        # Monitoring: worker beats, streams and counters, under their own condition.
        self._mon = threading.Condition()
        self._workers: dict[str, tuple[bytes, float]] = {}  # name -> (info, expires)
        self._streams: dict[str, _Stream] = {}
        # One sequence for every stream: a cursor never repeats, even in a stream
        # that expired and was made again.
        self._stream_seq = itertools.count(1)
        self._counters: dict[str, float] = {}
        self._next_stream_sweep = 0.0

    # -- internal moves (the caller holds the lock) ---------------------------

    def _make_ready(self, message: _Message) -> None:
        entry = (-message.priority, message.due_at, message.seq, message)
        heapq.heappush(self._ready.setdefault(message.queue, []), entry)
        self._cond.notify_all()

    def _schedule(self, message: _Message, eta: float | None, t: float) -> None:
        message.due_at = max(eta or t, t)
        if message.due_at > t:
            heapq.heappush(self._delayed, (message.due_at, message.seq, message))
            self._cond.notify_all()  # a waiter may need to wake earlier
        else:
            self._make_ready(message)

    def _promote(self, t: float) -> None:
        while self._delayed and self._delayed[0][0] <= t:
            self._make_ready(heapq.heappop(self._delayed)[2])

    def _settle(self, delivery: Delivery) -> _Message | None:
        """Take the message out of flight if ``delivery`` holds its current token."""
        message = self._inflight.pop(delivery.token, None)
        if message is not None:
            message.token = ""
        return message

    def _settled_earlier(self, delivery: Delivery) -> bool:
        """For a token that holds nothing: True if it settled its message itself
        earlier, False if its lease was lost (reclaimed)."""
        return delivery.token not in self._lost

    def _bury(self, message: _Message, reason: str, t: float) -> None:
        self._dead.append(
            DeadLetter(
                id=message.id,
                queue=message.queue,
                body=message.body,
                priority=message.priority,
                reason=reason,
                deliveries=message.deliveries,
                died_at=t,
                history=tuple(message.history),
            )
        )

    # -- the contract ---------------------------------------------------------

    def publish_many(self, messages: Sequence[OutgoingMessage]) -> None:
        for m in messages:
            check_priority(m.priority)
        with self._cond:
            t = now()
            for m in messages:
                message = _Message(next(self._seq), m.id, m.queue, m.body, m.priority, t)
                self._schedule(message, m.eta, t)

    def fetch(
        self, queues: Sequence[str], limit: int, *, consumer: str, timeout: float
    ) -> list[Delivery]:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit!r}")
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                t = now()
                self._promote(t)
                deliveries = self._claim(queues, limit, consumer, t)
                remaining = deadline - time.monotonic()
                if deliveries or remaining <= 0:
                    return deliveries
                if self._delayed:
                    remaining = min(remaining, self._delayed[0][0] - t)
                self._cond.wait(remaining)

    def _claim(self, queues: Sequence[str], limit: int, consumer: str, t: float) -> list[Delivery]:
        heaps = {q: heap for q in queues if (heap := self._ready.get(q))}
        deliveries: list[Delivery] = []
        while heaps and len(deliveries) < limit:
            queue = min(heaps, key=lambda q: heaps[q][0][:3])  # the best head across queues
            heap = heaps[queue]
            message = heapq.heappop(heap)[3]
            if not heap:
                del heaps[queue], self._ready[queue]
            message.token = secrets.token_hex(12)
            message.deliveries += 1
            message.history.append(DeliveryRecord(consumer, t))
            message.lease_until = t + self.options.lease_seconds
            self._inflight[message.token] = message
            deliveries.append(
                Delivery(
                    message.id,
                    message.queue,
                    message.body,
                    message.priority,
                    message.token,
                    message.deliveries,
                )
            )
        return deliveries

    def ack(self, deliveries: Sequence[Delivery]) -> list[bool]:
        with self._cond:
            return [self._settle(d) is not None or self._settled_earlier(d) for d in deliveries]

    def release(self, delivery: Delivery) -> bool:
        with self._cond:
            message = self._settle(delivery)
            if message is None:
                return self._settled_earlier(delivery)
            message.deliveries -= 1
            message.history.pop()
            self._make_ready(message)
            return True

    def requeue(self, delivery: Delivery) -> Disposition:
        with self._cond:
            message = self._settle(delivery)
            if message is None:
                return (
                    Disposition.REQUEUED if self._settled_earlier(delivery) else Disposition.STALE
                )
            if message.deliveries >= self.options.max_deliveries:
                n = message.deliveries
                self._bury(message, f"delivered {n} times; the last attempt was lost", now())
                return Disposition.DEAD
            self._make_ready(message)
            return Disposition.REQUEUED

    def retry(self, delivery: Delivery, body: bytes, eta: float | None) -> bool:
        with self._cond:
            message = self._settle(delivery)
            if message is None:
                return self._settled_earlier(delivery)
            message.body = body
            message.deliveries = 0
            self._schedule(message, eta, now())
            return True

    def renew(self, deliveries: Sequence[Delivery]) -> set[str]:
        with self._cond:
            lease_until = now() + self.options.lease_seconds
            lost: set[str] = set()
            for d in deliveries:
                message = self._inflight.get(d.token)
                if message is None:
                    if d.token in self._lost:
                        lost.add(d.id)
                else:
                    message.lease_until = lease_until
            return lost

    def reclaim(self) -> list[Reclaimed]:
        with self._cond:
            t = now()
            expired = [m for m in self._inflight.values() if m.lease_until < t]
            reclaimed = []
            for message in expired:
                del self._inflight[message.token]
                self._lost[message.token] = t
                message.token = ""
                if message.deliveries >= self.options.max_deliveries:
                    reason = f"lease expired after {message.deliveries} deliveries (consumer gone)"
                    self._bury(message, reason, t)
                    disposition = Disposition.DEAD
                else:
                    self._make_ready(message)
                    disposition = Disposition.REQUEUED
                reclaimed.append(
                    Reclaimed(message.id, message.queue, disposition, message.deliveries)
                )
            self._trim(t)
            return reclaimed

    def _trim(self, t: float) -> None:
        """Forget old reclaimed tokens; keep the dead letters within their expiry and
        each queue's cap, dropping the oldest (lock held)."""
        self._lost = {k: at for k, at in self._lost.items() if at > t - LOST_MEMORY_SECONDS}
        oldest = t - self.options.dead_letter_expires
        kept: list[DeadLetter] = []
        per_queue: defaultdict[str, int] = defaultdict(int)
        for dead in reversed(self._dead):  # newest first
            if dead.died_at >= oldest and per_queue[dead.queue] < self.options.dead_letter_max:
                per_queue[dead.queue] += 1
                kept.append(dead)
        self._dead = kept[::-1]

    def dead_letter(self, delivery: Delivery, reason: str) -> bool:
        with self._cond:
            message = self._settle(delivery)
            if message is not None:
                self._bury(message, reason, now())
            return message is not None or self._settled_earlier(delivery)

    def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        with self._cond:
            found = (d for d in self._dead if queue is None or d.queue == queue)
            return list(itertools.islice(found, max(limit, 0)))

    def get_dead(self, message_id: str) -> DeadLetter | None:
        with self._cond:
            return next((d for d in self._dead if d.id == message_id), None)

    def purge_dead(self, queue: str | None = None) -> int:
        with self._cond:
            kept = [d for d in self._dead if queue is not None and d.queue != queue]
            purged = len(self._dead) - len(kept)
            self._dead = kept
            return purged

    def _pop_dead(self, message_id: str) -> DeadLetter | None:
        for i, dead in enumerate(self._dead):
            if dead.id == message_id:
                return self._dead.pop(i)
        return None

    def requeue_dead(self, message_id: str) -> bool:
        with self._cond:
            dead = self._pop_dead(message_id)
            if dead is not None:
                t = now()
                message = _Message(
                    next(self._seq), dead.id, dead.queue, dead.body, dead.priority, t
                )
                self._make_ready(message)
            return dead is not None

    def drop_dead(self, message_id: str) -> bool:
        with self._cond:
            return self._pop_dead(message_id) is not None

    def stats(self, queues: Iterable[str] | None = None) -> list[QueueStats]:
        with self._cond:
            self._promote(now())  # a due delayed message counts as ready
            counts: defaultdict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
            oldest: dict[str, float] = {}
            for queue, heap in self._ready.items():
                counts[queue][0] += len(heap)
                if heap:  # the heads of the priority bands are not all at the top
                    oldest[queue] = min(entry[1] for entry in heap)
            for _, _, message in self._delayed:
                counts[message.queue][1] += 1
            for message in self._inflight.values():
                counts[message.queue][2] += 1
            for dead in self._dead:
                counts[dead.queue][3] += 1
        names = sorted(counts) if queues is None else dict.fromkeys(queues)
        out = []
        for q in names:
            ready, delayed, in_flight, n_dead = counts.get(q, (0, 0, 0, 0))
            out.append(QueueStats(q, ready, delayed, in_flight, n_dead, oldest.get(q)))
        return out

    def purge(self, queue: str) -> int:
        with self._cond:
            purged = len(self._ready.pop(queue, ()))
            kept = [entry for entry in self._delayed if entry[2].queue != queue]
            purged += len(self._delayed) - len(kept)
            heapq.heapify(kept)
            self._delayed = kept
            return purged

    # -- coordination ----------------------------------------------------------

    def _sweep(self, t: float) -> None:
        """Drop expired coordination records, at most every ``SWEEP_SECONDS`` (lock held)."""
        if t < self._next_sweep:
            return
        self._next_sweep = t + SWEEP_SECONDS
        self._revoked = {k: v for k, v in self._revoked.items() if v[0] > t}
        self._rates = {k: v for k, v in self._rates.items() if v[1] > t}
        self._claims = {k: v for k, v in self._claims.items() if v[1] > t}
        self._tallies = {k: v for k, v in self._tallies.items() if v[1] > t}
        self._grants = {k: v for k, v in self._grants.items() if v > t}
        self._marks = {k: v for k, v in self._marks.items() if v[1] > t}
        for key in list(self._slots):
            self._live_slots(key, t)

    def _live_slots(self, key: str, t: float) -> dict[str, float]:
        """The unexpired holders of ``key`` (expired ones dropped; lock held)."""
        holders = {h: e for h, e in self._slots.get(key, {}).items() if e > t}
        if holders:
            self._slots[key] = holders
        else:
            self._slots.pop(key, None)
        return holders

    def revoke(self, task_ids: Sequence[str], ttl: float, *, terminate: bool = False) -> None:
        check_positive("ttl", ttl)
        with self._coord:
            t = now()
            self._sweep(t)
            for task_id in task_ids:
                expires, was_terminate = self._revoked.get(task_id, (0.0, False))
                if expires <= t:
                    was_terminate = False
                self._revoked[task_id] = (max(expires, t + ttl), was_terminate or terminate)

    def revoked(self, task_ids: Sequence[str]) -> dict[str, bool]:
        with self._coord:
            t = now()
            found = {i: self._revoked.get(i) for i in task_ids}
        return {i: rec[1] for i, rec in found.items() if rec is not None and rec[0] > t}

    def rate_acquire(
        self, key: str, limit: int, period: float, *, request: str | None = None
    ) -> float:
        check_positive("limit", limit)
        check_positive("period", period)
        with self._coord:
            t = now()
            self._sweep(t)
            if request is not None and self._grants.get((key, request), 0.0) > t:
                return 0.0
            stored = self._rates.get(key)
            tat = stored[0] if stored is not None and stored[1] > t else None
            new_tat, wait = gcra(tat, t, limit, period)
            if not wait:
                self._rates[key] = (new_tat, new_tat)  # a past tat means nothing
                if request is not None:
                    self._grants[(key, request)] = new_tat
            return wait

    def slot_acquire(self, key: str, limit: int, holder: str, ttl: float) -> bool:
        check_positive("limit", limit)
        check_positive("ttl", ttl)
        with self._coord:
            t = now()
            self._sweep(t)
            holders = self._live_slots(key, t)
            if holder not in holders and len(holders) >= limit:
                return False
            self._slots.setdefault(key, holders)[holder] = t + ttl
            return True

    def slot_renew(self, key: str, holders: Sequence[str], ttl: float) -> None:
        check_positive("ttl", ttl)
        with self._coord:
            t = now()
            live = self._live_slots(key, t)
            for holder in holders:
                if holder in live:
                    live[holder] = t + ttl

    def slot_release(self, key: str, holder: str) -> None:
        with self._coord:
            live = self._live_slots(key, now())
            live.pop(holder, None)
            if not live:
                self._slots.pop(key, None)

    def claim(self, key: str, owner: str, ttl: float) -> str | None:
        check_positive("ttl", ttl)
        with self._coord:
            t = now()
            self._sweep(t)
            current = self._claims.get(key)
            if current is not None and current[1] > t:
                return None if current[0] == owner else current[0]
            self._claims[key] = (owner, t + ttl)
            return None

    def release_claim(self, key: str, owner: str) -> bool:
        with self._coord:
            current = self._claims.get(key)
            if current is None or current[1] <= now() or current[0] != owner:
                return False
            del self._claims[key]
            return True

    def tally(self, key: str, member: str, ttl: float) -> int:
        check_positive("ttl", ttl)
        with self._coord:
            t = now()
            self._sweep(t)
            members, expires = self._tallies.get(key, (set(), 0.0))
            if expires <= t:
                members = set()
            members.add(member)
            self._tallies[key] = (members, t + ttl)
            return len(members)

    def advance(self, key: str, value: float | None, ttl: float) -> float | None:
        check_positive("ttl", ttl)
        if value is not None:
            check_finite("value", value)
        with self._coord:
            t = now()
            self._sweep(t)
            stored = self._marks.get(key)
            previous = stored[0] if stored is not None and stored[1] > t else None
            if value is not None and (previous is None or value > previous):
                self._marks[key] = (value, t + ttl)
            return previous

    # -- monitoring --------------------------------------------------------------

    def worker_beat(self, name: str, info: bytes, ttl: float) -> None:
        check_positive("ttl", ttl)
        with self._mon:
            self._workers[name] = (bytes(info), now() + ttl)

    def worker_gone(self, name: str) -> None:
        with self._mon:
            self._workers.pop(name, None)

    def workers(self) -> dict[str, bytes]:
        with self._mon:
            t = now()
            self._workers = {n: w for n, w in self._workers.items() if w[1] > t}
            return {n: info for n, (info, _) in self._workers.items()}

    def _stream(self, stream: str, t: float) -> _Stream | None:
        """The live stream ``stream`` (an expired one is deleted; lock held)."""
        found = self._streams.get(stream)
        if found is not None and found.expires is not None and found.expires <= t:
            del self._streams[stream]
            return None
        return found

    def stream_add(
        self, stream: str, bodies: Sequence[bytes], maxlen: int, ttl: float | None = None
    ) -> None:
        check_positive("maxlen", maxlen)
        if ttl is not None:
            check_positive("ttl", ttl)
        with self._mon:
            t = now()
            self._sweep_streams(t)
            found = self._stream(stream, t) or self._streams.setdefault(stream, _Stream())
            found.entries.extend((next(self._stream_seq), bytes(body)) for body in bodies)
            while len(found.entries) > maxlen:
                found.entries.popleft()
            if ttl is not None:
                found.expires = t + ttl
            self._mon.notify_all()

    def _sweep_streams(self, t: float) -> None:
        """Delete expired streams (reply streams nobody reads), at most every
        ``SWEEP_SECONDS`` (lock held)."""
        if t >= self._next_stream_sweep:
            self._next_stream_sweep = t + SWEEP_SECONDS
            for name in list(self._streams):
                self._stream(name, t)

    def stream_read(
        self, stream: str, after: str, timeout: float = 0.0, count: int = 1000
    ) -> list[StreamEntry]:
        check_positive("count", count)
        if not (after.isascii() and after.isdigit()):
            raise ValueError(f"not a stream cursor: {after!r}")
        cursor = int(after)
        deadline = time.monotonic() + timeout
        with self._mon:
            while True:
                found = self._stream(stream, now())
                if found is not None and found.entries and found.entries[-1][0] > cursor:
                    newer = (e for e in found.entries if e[0] > cursor)
                    return [StreamEntry(str(s), b) for s, b in itertools.islice(newer, count)]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                self._mon.wait(remaining)

    def stream_last(self, stream: str) -> str:
        with self._mon:
            found = self._stream(stream, now())
            return str(found.entries[-1][0]) if found is not None and found.entries else "0"

    def stream_tail(self, stream: str, count: int) -> list[StreamEntry]:
        with self._mon:
            found = self._stream(stream, now())
            if found is None or count <= 0:
                return []
            tail = list(found.entries)[-count:]
        return [StreamEntry(str(s), b) for s, b in tail]

    def counters_add(self, deltas: Mapping[str, float]) -> None:
        for delta in deltas.values():
            check_finite("delta", delta)
        with self._mon:
            for name, delta in deltas.items():
                self._counters[name] = self._counters.get(name, 0.0) + delta

    def counters(self, prefix: str = "") -> dict[str, float]:
        with self._mon:
            return {n: v for n, v in self._counters.items() if n.startswith(prefix)}

    def counters_reset(self) -> None:
        with self._mon:
            self._counters.clear()
