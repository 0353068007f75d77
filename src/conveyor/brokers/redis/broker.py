"""The production broker: Redis, every state change one atomic Lua script.

Round trips: publish 1 (plus one ``SADD`` per queue per process), fetch 1 when
work is ready (plus a ``BLPOP`` on the queues' wake lists when none is), ack 1
per queue per batch, renew 1 per queue per heartbeat. See ``keys.py`` for the
layout and ``scripts/`` for each script's contract.

Every call may be retried after a lost reply (see ``Broker``): a publish skips
messages whose id is already waiting, deliveries carry a token unique to their
fetch, and a reclaimed token is remembered, so a retry can tell its own earlier
effect from someone else's.
Before its first publish or fetch a process checks that Redis will not evict
data (``check``). A call that took far longer than it should (a stalled or
overloaded server) counts like an outage: nobody can have renewed a lease
meanwhile, so no lease is reclaimed until every live worker could renew again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import secrets
import time
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import redis
from redis.exceptions import ResponseError

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
    check_priority,
)
from conveyor.brokers.coalescing import AsyncCoalescer
from conveyor.brokers.redis.coordination import RedisCoordination
from conveyor.brokers.redis.keys import QueueKeys, queue_keys, queues_key, revoked_key, stall_key
from conveyor.brokers.redis.lua import Scripts
from conveyor.brokers.redis.monitoring import RedisMonitoring
from conveyor.brokers.redis.server import aread_settings, judge, server_warnings
from conveyor.exceptions import BrokerUnavailable
from conveyor.storage.redis import KeyWrite, RedisConnection, as_str

logger = logging.getLogger("conveyor.redis")

HISTORY_LENGTH = 20
RECLAIM_BATCH = 500
PUBLISH_BATCH = 1000
#: Messages deleted per call of purge (each call is a short script).
PURGE_BATCH = 1000
#: Longest single BLPOP, so a fetch with a long timeout notices shutdown and outages.
MAX_BLOCK = 5.0
#: A call slower than this fraction of the lease counts like an outage (see ``reclaim``);
#: never less than STALL_FLOOR seconds, which a busy client can take by itself.
STALL_FRACTION = 0.25
STALL_FLOOR = 0.25
#: How long, and how many, reclaimed tokens are remembered (``keys.py``: ``lost``).
LOST_MEMORY_SECONDS = 3600.0
LOST_MEMORY_COUNT = 100_000

T = TypeVar("T")


def _us(seconds: float) -> int:
    return int(seconds * 1_000_000)


class RedisBroker(RedisCoordination, RedisMonitoring, Broker):
    """A broker on Redis (``redis://``, ``rediss://``, ``unix://``).

    Args:
        url: the server, with credentials if needed (they never appear in logs).
        options: lease length, delivery limit, dead-letter limits.
        prefix: first part of every key, so several apps can share a server.
        retry_for: seconds a call keeps retrying through connection errors
            before raising BrokerUnavailable (``broker_connection_timeout``).
    """

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        options: BrokerOptions | None = None,
        *,
        prefix: str = "conveyor",
        retry_for: float = 10.0,
    ):
        self.url = url
        self.options = options or BrokerOptions()
        self.prefix = prefix
        self._conn = RedisConnection(
            url,
            BrokerUnavailable,
            retry_for,
            transport_options=self.options.transport_options,
            replica_acks=self.options.replica_acks,
        )
        self._scripts = Scripts(self._conn)
        self._registered: set[str] = set()
        self._acoalescers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncCoalescer] = (
            weakref.WeakKeyDictionary()
        )
        # When this process last found Redis out of reach or stalled, or reached it
        # again after that (monotonic): reclaim waits one lease from then.
        self._unreachable_at = -math.inf
        self._down = False
        self._stall_after = max(self.options.lease_seconds * STALL_FRACTION, STALL_FLOOR)
        self._checked = False
        self._queue_keys: dict[str, QueueKeys] = {}

    # -- plumbing ----------------------------------------------------------------

    def _keys(self, queue: str) -> QueueKeys:
        keys = self._queue_keys.get(queue)
        if keys is None:  # validated once per name (a hot path: every message)
            keys = self._queue_keys[queue] = queue_keys(self.prefix, queue)
        return keys

    def _call(
        self,
        fn: Callable[[redis.Redis], T],
        *,
        retry_for: float | None = None,
        blocking: float = 0.0,
    ) -> T:
        """``fn(client)`` with the connection's retries, noting when Redis was out of
        reach, reached again, or slow to answer (``blocking``: seconds the call may
        legitimately wait on the server, a BLPOP's timeout)."""
        first = True
        started = time.monotonic()

        def attempt(client: redis.Redis) -> T:
            nonlocal first
            if not first:  # the previous attempt failed
                self._down = True
                self._unreachable_at = time.monotonic()
            first = False
            return fn(client)

        try:
            result = self._conn.call(attempt, retry_for=retry_for)
        except BrokerUnavailable:
            self._down = True
            self._unreachable_at = time.monotonic()
            raise
        if self._down:
            self._down = False
            self._outage_over("was out of reach")
        elif time.monotonic() - started - blocking > self._stall_after:
            self._outage_over(f"took {time.monotonic() - started - blocking:.1f} s to answer")
        return result

    def _outage_over(self, what: str) -> None:
        """Redis is answering again after an outage or a stall: no reclaim for one lease
        from now, here and (through the stall key) in every process of the cluster."""
        self._unreachable_at = time.monotonic()
        logger.warning(
            "Redis %s: no lease is reclaimed for %.1f s, so that live workers can renew",
            what,
            self.options.lease_seconds,
        )
        px = max(math.ceil(self.options.lease_seconds * 1000), 1)
        try:
            self._conn.execute("SET", stall_key(self.prefix), "1", "PX", px)
        except Exception as exc:  # a hint for other processes; this one knows already
            logger.debug("could not record the stall in Redis: %s", exc)

    def _run(
        self, name: str, keys: Sequence[str], args: Sequence[Any], retry_for: float | None = None
    ) -> Any:
        return self._call(lambda _: self._scripts.run(name, keys, args), retry_for=retry_for)

    def check(self) -> list[str]:
        """See ``Broker.check``: reads Redis's eviction policy and persistence."""
        warnings = self._call(lambda _: server_warnings(self._conn, self.options.allow_eviction))
        self._checked = True
        return warnings

    def _check_once(self) -> None:
        if not self._checked:
            for warning in self.check():
                logger.warning("%s", warning)

    def _register(self, queue: str) -> None:
        if queue not in self._registered:
            self._call(lambda c: c.sadd(queues_key(self.prefix), queue))
            self._registered.add(queue)

    def _known_queues(self) -> list[str]:
        members = self._call(lambda c: c.smembers(queues_key(self.prefix)))
        return sorted(as_str(m) for m in members)

    # -- producing -------------------------------------------------------------

    def validate(self, message: OutgoingMessage) -> None:
        check_priority(message.priority)
        self._keys(message.queue)  # validates the name before anything is written

    def publish_many(self, messages: Sequence[OutgoingMessage]) -> None:
        for m in messages:
            self.validate(m)
        self._check_once()
        calls = self._publish_calls(messages)
        for queue in {m.queue for m in messages}:
            self._register(queue)
        if len(calls) == 1:  # one script is atomic by itself
            self._run("publish", *calls[0])
        else:
            self._call(lambda _: self._scripts.run_atomically("publish", calls))

    async def apublish(self, message: OutgoingMessage) -> None:
        """See ``Broker.apublish``: natively on the loop's own asyncio client, the
        concurrent calls of its coroutines sent together."""
        self.validate(message)
        loop = asyncio.get_running_loop()
        coalescer = self._acoalescers.get(loop)
        if coalescer is None:
            coalescer = self._acoalescers[loop] = AsyncCoalescer(self._apublish_many)
        await coalescer.publish(message)

    async def _apublish_many(self, messages: Sequence[OutgoingMessage]) -> None:
        if not self._checked:  # once per process, as _check_once
            settings = await aread_settings(self._conn)
            for warning in judge(self.url, *settings, self.options.allow_eviction):
                logger.warning("%s", warning)
            self._checked = True
        for queue in {m.queue for m in messages} - self._registered:
            await self._conn.aexecute("SADD", queues_key(self.prefix), queue)
            self._registered.add(queue)
        # at most MAX_BATCH messages: one script call, atomic by itself
        for keys, args in self._publish_calls(messages):
            await self._scripts.arun("publish", keys, args)

    def _publish_calls(
        self, messages: Sequence[OutgoingMessage]
    ) -> list[tuple[list[str], list[Any]]]:
        calls = []
        # Lua's unpack() has a stack limit: scripts take bounded batches.
        for start in range(0, len(messages), PUBLISH_BATCH):
            batch = messages[start : start + PUBLISH_BATCH]
            index: dict[str, int] = {}
            keys: list[str] = []
            args: list[Any] = [len(batch)]
            for m in batch:
                if m.queue not in index:
                    index[m.queue] = len(index)
                    k = self._keys(m.queue)
                    keys += [k.ready, k.delayed, k.msg, k.wake, k.seq, k.ids]
                eta = "" if m.eta is None else _us(m.eta)
                args += [index[m.queue], m.id, m.body, m.priority, eta]
            calls.append((keys, args))
        return calls

    # -- consuming -------------------------------------------------------------

    def _fetch_call(
        self, queues: Sequence[str], limit: int, consumer: str
    ) -> tuple[list[str], list[Any]]:
        keys: list[str] = []
        for q in queues:
            k = self._keys(q)
            keys += [k.ready, k.delayed, k.inflight, k.msg, k.wake, k.dead, k.deadids, k.ids]
        keys.append(revoked_key(self.prefix))
        lease = _us(self.options.lease_seconds)
        return keys, [len(queues), limit, consumer, lease, secrets.token_hex(6), HISTORY_LENGTH]

    def fetch(
        self, queues: Sequence[str], limit: int, *, consumer: str, timeout: float
    ) -> list[Delivery]:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._check_once()
        wake_keys = [self._keys(q).wake for q in queues]
        deadline = time.monotonic() + timeout
        while True:
            keys, args = self._fetch_call(queues, limit, consumer)
            reply = self._run("fetch", keys, args)
            count = int(reply[0])
            if count:
                return self._deliveries(queues, reply[2:], count)
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            wait_us = int(reply[1])
            longest = self._conn.longest_block(MAX_BLOCK)
            block = min(left, longest) if wait_us < 0 else min(left, longest, wait_us / 1e6)
            if block <= 0.001:
                continue
            # an idle consumer writes nothing that could tell it the master moved
            self._call(lambda _: self._conn.follow_master())
            self._block(wake_keys, block)

    def _block(self, wake_keys: list[str], seconds: float) -> None:
        """Sleep on the wake lists until a publish pushes to one, or ``seconds`` pass."""

        def call(client: redis.Redis) -> None:
            try:
                client.blpop(wake_keys, timeout=seconds)
            except ResponseError as exc:
                # a failover demoted the server under the wait: look again (the next
                # script finds the new master)
                if not str(exc).startswith("UNBLOCKED"):
                    raise

        self._call(call, blocking=seconds)

    @staticmethod
    def _deliveries(queues: Sequence[str], flat: list[Any], count: int) -> list[Delivery]:
        out = []
        for i in range(count):
            q, mid, body, priority, token, dl, revoked = flat[i * 7 : i * 7 + 7]
            out.append(
                Delivery(
                    id=as_str(mid),
                    queue=queues[int(q)],
                    body=bytes(body),
                    priority=int(priority),
                    token=as_str(token),
                    deliveries=int(dl),
                    revoked=bool(int(revoked)),
                )
            )
        return out

    def ack(self, deliveries: Sequence[Delivery]) -> list[bool]:
        return self.ack_storing(deliveries, {})

    def ack_storing(
        self, deliveries: Sequence[Delivery], writes: Mapping[str, object]
    ) -> list[bool]:
        acks, _ = self.ack_and_fetch(deliveries, writes, (), 0, consumer="")
        return acks

    def ack_and_fetch(
        self,
        deliveries: Sequence[Delivery],
        writes: Mapping[str, object],
        queues: Sequence[str],
        limit: int,
        *,
        consumer: str,
    ) -> tuple[list[bool], list[Delivery]]:
        """See ``Broker.ack_and_fetch``: one ``ack`` script per queue and the fetch
        script, pipelined in one round trip."""
        by_queue: dict[str, list[Delivery]] = defaultdict(list)
        for d in deliveries:
            by_queue[d.queue].append(d)
        calls: list[tuple[str, Sequence[str], Sequence[Any]]] = []
        for queue, batch in by_queue.items():
            k = self._keys(queue)
            keys = [k.inflight, k.msg, k.ids, k.lost]
            args: list[Any] = [len(batch), *(d.token for d in batch)]
            for index, d in enumerate(batch, 1):
                w = writes.get(d.token)
                if w is not None:
                    assert isinstance(w, KeyWrite), "writes_for() of another broker"
                    keys.append(w.key)
                    args += [index, w.value, w.px_ms, w.notify]
            calls.append(("ack", keys, args))
        if limit > 0:
            self._check_once()
            calls.append(("fetch", *self._fetch_call(queues, limit, consumer)))
        if not calls:
            return [], []
        if len(calls) == 1:
            replies = [self._run(*calls[0])]
        else:
            replies = self._call(lambda _: self._scripts.run_each(calls))
        result: dict[str, bool] = {}
        for batch, codes in zip(by_queue.values(), replies, strict=False):
            for d, code in zip(batch, codes, strict=True):
                # 2: acknowledged by an earlier attempt of this call (its result stored
                # with it), whose reply was lost
                result[d.token] = int(code) in (1, 2)
        fetched: list[Delivery] = []
        if limit > 0 and (count := int(replies[-1][0])):
            fetched = self._deliveries(queues, replies[-1][2:], count)
        return [result[d.token] for d in deliveries], fetched

    @property
    def redis_url(self) -> str:
        """The server this broker keeps its data on (a result backend on the same URL
        can have its writes applied with the acks)."""
        return self._conn.url

    def _settle(self, delivery: Delivery, *args: Any) -> str:
        k = self._keys(delivery.queue)
        keys = [k.ready, k.delayed, k.inflight, k.msg, k.wake, k.dead, k.deadids, k.ids, k.lost]
        return as_str(self._run("settle", keys, args))

    def release(self, delivery: Delivery) -> bool:
        return self._settle(delivery, "release", delivery.token) in ("released", "done")

    def requeue(self, delivery: Delivery) -> Disposition:
        reason = (
            f"delivered {delivery.deliveries} times without finishing "
            f"(max_deliveries={self.options.max_deliveries})"
        )
        outcome = self._settle(
            delivery, "requeue", delivery.token, self.options.max_deliveries, reason
        )
        # done: requeued by an earlier attempt, and delivered again since
        return {
            "requeued": Disposition.REQUEUED,
            "done": Disposition.REQUEUED,
            "dead": Disposition.DEAD,
        }.get(outcome, Disposition.STALE)

    def retry(self, delivery: Delivery, body: bytes, eta: float | None) -> bool:
        due = "" if eta is None else _us(eta)
        return self._settle(delivery, "retry", delivery.token, body, due) in ("retried", "done")

    def renew(self, deliveries: Sequence[Delivery]) -> set[str]:
        lost: set[str] = set()
        by_queue: dict[str, list[Delivery]] = defaultdict(list)
        for d in deliveries:
            by_queue[d.queue].append(d)
        lease = _us(self.options.lease_seconds)
        # The heartbeat renews again every half second while this fails: a quick
        # BrokerUnavailable lets it renew as soon as Redis is back, within the grace
        # that ``reclaim`` gives after an outage.
        retry_for = min(self._conn.retry_for, self.options.lease_seconds / 4)
        for queue, batch in by_queue.items():
            k = self._keys(queue)
            tokens = [lease, *(d.token for d in batch)]
            positions = self._run("renew", [k.inflight, k.msg, k.lost], tokens, retry_for=retry_for)
            lost.update(batch[int(p) - 1].id for p in positions)
        return lost

    def reclaim(self) -> list[Reclaimed]:
        """See ``Broker.reclaim``; after an outage or a stall, nothing for one lease.

        While Redis is out of reach or stalled nobody can renew, so when it answers
        again every lease held across the outage looks expired, live workers'
        included. So nothing is taken over until this process has reached Redis
        again for ``lease_seconds`` (every live worker renews in that time), nor
        while another process says it saw an outage or stall (the stall key), nor
        by a script that ran late (it waited behind a stalled server). A sweep is
        never retried: a retry would run the moment Redis is back.
        """
        lease = self.options.lease_seconds
        if time.monotonic() - self._unreachable_at < lease:
            return []
        queues = self._known_queues()
        look = [("TIME",), ("EXISTS", stall_key(self.prefix))]
        (seconds, micros), hinted = self._call(lambda _: self._conn.execute_many(look), retry_for=0)
        if int(hinted):
            return []
        read_at = int(seconds) * 1_000_000 + int(micros)
        out: list[Reclaimed] = []
        for queue in queues:
            if time.monotonic() - self._unreachable_at < lease:
                break
            k = self._keys(queue)
            keys = [k.ready, k.inflight, k.msg, k.wake, k.dead, k.deadids, k.ids, k.lost]
            args = [
                self.options.max_deliveries,
                RECLAIM_BATCH,
                read_at,
                _us(self._stall_after),
                self.options.dead_letter_max,
                _us(self.options.dead_letter_expires),
                _us(LOST_MEMORY_SECONDS),
                LOST_MEMORY_COUNT,
            ]
            flat = self._run("reclaim", keys, args, retry_for=0)
            if as_str(flat[0]) == "late":
                self._outage_over("stalled while a reclaim waited")
                break
            for i in range(1, len(flat), 3):
                disposition = Disposition(as_str(flat[i + 1]))
                out.append(Reclaimed(as_str(flat[i]), queue, disposition, int(flat[i + 2])))
        return out

    # -- dead letters ----------------------------------------------------------

    def dead_letter(self, delivery: Delivery, reason: str) -> bool:
        return self._settle(delivery, "dead", delivery.token, reason) in ("dead", "done")

    def _dead(self, queue: str, *args: Any) -> Any:
        k = self._keys(queue)
        return self._run("dead", [k.dead, k.msg, k.ready, k.wake, k.deadids, k.ids], args)

    @staticmethod
    def _dead_letters(queue: str, flat: list[Any]) -> list[DeadLetter]:
        out = []
        for i in range(0, len(flat), 7):
            mid, body, priority, reason, dl, died, hist = flat[i : i + 7]
            records = json.loads(hist) or []
            out.append(
                DeadLetter(
                    id=as_str(mid),
                    queue=queue,
                    body=bytes(body),
                    priority=int(priority),
                    reason=as_str(reason),
                    deliveries=int(dl),
                    died_at=int(died) / 1e6,
                    history=tuple(DeliveryRecord(str(c), float(at) / 1e6) for c, at in records),
                )
            )
        return out

    def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        out: list[DeadLetter] = []
        for name in [queue] if queue else self._known_queues():
            out += self._dead_letters(name, self._dead(name, "list", limit))
        out.sort(key=lambda d: d.died_at)
        return out[:limit]

    def get_dead(self, message_id: str) -> DeadLetter | None:
        found: list[DeadLetter] = []
        for name in self._known_queues():
            found += self._dead_letters(name, self._dead(name, "get", message_id))
        return min(found, key=lambda d: d.died_at, default=None)

    def _oldest_dead_queue(self, message_id: str) -> str | None:
        found = self.get_dead(message_id)
        return None if found is None else found.queue

    def requeue_dead(self, message_id: str) -> bool:
        queue = self._oldest_dead_queue(message_id)
        return queue is not None and bool(int(self._dead(queue, "requeue", message_id)))

    def drop_dead(self, message_id: str) -> bool:
        queue = self._oldest_dead_queue(message_id)
        return queue is not None and bool(int(self._dead(queue, "drop", message_id)))

    def purge_dead(self, queue: str | None = None) -> int:
        total = 0
        for name in [queue] if queue else self._known_queues():
            while (n := int(self._dead(name, "purge", PURGE_BATCH))) > 0:
                total += n
                if n < PURGE_BATCH:
                    break
        return total

    # -- inspection ------------------------------------------------------------

    def stats(self, queues: Iterable[str] | None = None) -> list[QueueStats]:
        names = list(queues) if queues is not None else self._known_queues()
        calls: list[tuple[Sequence[str], Sequence[Any]]] = []
        for name in names:
            k = self._keys(name)
            calls.append(([k.ready, k.delayed, k.inflight, k.dead], []))
        replies = self._call(lambda _: self._scripts.run_many("stats", calls)) if calls else []
        out = []
        for name, reply in zip(names, replies, strict=True):
            ready, delayed, in_flight, dead = (int(c) for c in reply[:4])
            if queues is None and not (ready or delayed or in_flight or dead):
                continue
            oldest = None if reply[4] is None else int(as_str(reply[4])) / 1e6
            out.append(QueueStats(name, ready, delayed, in_flight, dead, oldest))
        return out

    def purge(self, queue: str) -> int:
        k = self._keys(queue)
        keys = [k.ready, k.delayed, k.msg, k.wake, k.ids]
        # Bounded by what the queue held when the purge began: messages published
        # meanwhile may stay, but a busy producer cannot keep the purge going.
        [[ready, delayed]] = [(s.ready, s.delayed) for s in self.stats([queue])]
        total, left = 0, ready + delayed
        while left > 0:
            n = int(self._run("purge", keys, [min(PURGE_BATCH, left)]))
            total += n
            left -= n
            if n == 0:
                break
        return total

    def close(self) -> None:
        self._conn.close()
