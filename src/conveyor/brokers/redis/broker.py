"""The production broker: Redis, every state change one atomic Lua script.

Round trips: publish 1 (plus one ``SADD`` per queue per process), fetch 1 when
work is ready (plus a ``BLPOP`` on the queues' wake lists when none is), ack 1
per queue per batch, renew 1 per queue per heartbeat. See ``keys.py`` for the
layout and ``scripts/`` for each script's contract.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import resources
from typing import Any, TypeVar

import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError

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
    check_finite,
    check_positive,
    check_priority,
)
from conveyor.brokers.redis.keys import (
    QueueKeys,
    claim_key,
    counter_key,
    mark_key,
    queue_keys,
    queues_key,
    rate_key,
    revoked_key,
    slots_key,
)
from conveyor.exceptions import BrokerUnavailable
from conveyor.storage.redis import KeyWrite, RedisConnection, as_str

HISTORY_LENGTH = 20
RECLAIM_BATCH = 500
PUBLISH_BATCH = 1000
#: Longest single BLPOP, so a fetch with a long timeout notices shutdown and outages.
MAX_BLOCK = 5.0

T = TypeVar("T")

_SCRIPTS = (
    "publish",
    "fetch",
    "ack",
    "settle",
    "renew",
    "reclaim",
    "dead",
    "purge",
    "revoke",
    "rate",
    "slots",
    "claim",
    "incr",
    "advance",
)


def _load(name: str) -> str:
    folder = resources.files("conveyor.brokers.redis") / "scripts"
    common = (folder / "_common.lua").read_text()
    return common + "\n" + (folder / f"{name}.lua").read_text()


def _us(seconds: float) -> int:
    return int(seconds * 1_000_000)


def _ttl_ms(ttl: float) -> int:
    """A positive ttl in whole milliseconds, rounded up (PX 0 would be an error)."""
    return max(math.ceil(check_positive("ttl", ttl) * 1000), 1)


class RedisBroker(Broker):
    """A broker on Redis (``redis://``, ``rediss://``, ``unix://``).

    Args:
        url: the server, with credentials if needed (they never appear in logs).
        options: lease length and delivery limit.
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
        self._conn = RedisConnection(url, BrokerUnavailable, retry_for)
        self._sources = {name: _load(name) for name in _SCRIPTS}
        self._scripts: dict[tuple[int, str], Script] = {}
        self._shas = {
            name: hashlib.sha1(source.encode()).hexdigest()
            for name, source in self._sources.items()
        }
        self._registered: set[str] = set()
        self._suffix = secrets.token_hex(4)
        # When this process last found Redis out of reach, or reached it again after
        # that (monotonic): reclaim waits one lease from then (see ``reclaim``).
        self._unreachable_at = -math.inf
        self._down = False
        self._queue_keys: dict[str, QueueKeys] = {}

    # -- plumbing ----------------------------------------------------------------

    def _keys(self, queue: str) -> QueueKeys:
        keys = self._queue_keys.get(queue)
        if keys is None:  # validated once per name (a hot path: every message)
            keys = self._queue_keys[queue] = queue_keys(self.prefix, queue)
        return keys

    def _call(self, fn: Callable[[redis.Redis], T], *, retry_for: float | None = None) -> T:
        """``fn(client)`` with the connection's retries, noting when Redis was out of
        reach and when it was reached again."""
        first = True

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
            self._unreachable_at = time.monotonic()
        return result

    def _run(
        self, name: str, keys: Sequence[str], args: Sequence[Any], retry_for: float | None = None
    ) -> Any:
        return self._call(lambda _: self._eval(name, keys, args), retry_for=retry_for)

    def _eval(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """One script, on a connection of ``RedisConnection.execute`` (no pool checkout)."""
        sha = self._shas[name]
        try:
            return self._conn.execute("EVALSHA", sha, len(keys), *keys, *args)
        except NoScriptError:  # a restarted Redis has forgotten every script
            self._conn.execute("SCRIPT", "LOAD", self._sources[name])
            return self._conn.execute("EVALSHA", sha, len(keys), *keys, *args)

    def _script(self, client: redis.Redis, name: str) -> Script:
        # Script objects hold the SHA; EVALSHA falls back to loading after NOSCRIPT
        # (a restarted Redis has forgotten every script).
        key = (os.getpid(), name)
        script = self._scripts.get(key)
        if script is None:
            script = client.register_script(self._sources[name])
            self._scripts[key] = script
        return script

    def _register(self, queue: str) -> None:
        if queue not in self._registered:
            self._call(lambda c: c.sadd(queues_key(self.prefix), queue))
            self._registered.add(queue)

    def _known_queues(self) -> list[str]:
        members = self._call(lambda c: c.smembers(queues_key(self.prefix)))
        return sorted(as_str(m) for m in members)

    def _settle_keys(self, queue: str) -> list[str]:
        k = self._keys(queue)
        return [k.ready, k.delayed, k.inflight, k.msg, k.wake, k.dead]

    # -- producing -------------------------------------------------------------

    def publish_many(self, messages: Sequence[OutgoingMessage]) -> None:
        for m in messages:
            check_priority(m.priority)
            self._keys(m.queue)  # validates the name before anything is written
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
                    keys += [k.ready, k.delayed, k.msg, k.wake, k.seq]
                eta = "" if m.eta is None else _us(m.eta)
                args += [index[m.queue], m.id, m.body, m.priority, eta]
            calls.append((keys, args))
        for queue in {m.queue for m in messages}:
            self._register(queue)
        if len(calls) == 1:  # one script is atomic by itself
            self._run("publish", *calls[0])
            return

        def call(client: redis.Redis) -> None:
            # One MULTI/EXEC: every batch is stored, or none is.
            pipe = client.pipeline(transaction=True)
            for keys, args in calls:
                self._script(client, "publish")(keys=keys, args=args, client=pipe)
            pipe.execute()

        self._call(call)

    # -- consuming -------------------------------------------------------------

    def fetch(
        self, queues: Sequence[str], limit: int, *, consumer: str, timeout: float
    ) -> list[Delivery]:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        all_keys = [self._keys(q) for q in queues]
        keys: list[str] = []
        for k in all_keys:
            keys += [k.ready, k.delayed, k.inflight, k.msg, k.wake]
        keys.append(revoked_key(self.prefix))
        args = [
            len(queues),
            limit,
            consumer,
            _us(self.options.lease_seconds),
            self._suffix,
            HISTORY_LENGTH,
        ]
        wake_keys = [k.wake for k in all_keys]
        deadline = time.monotonic() + timeout
        while True:
            reply = self._run("fetch", keys, args)
            count = int(reply[0])
            if count:
                return self._deliveries(queues, reply[2:], count)
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            wait_us = int(reply[1])
            block = min(left, MAX_BLOCK) if wait_us < 0 else min(left, MAX_BLOCK, wait_us / 1e6)
            if block <= 0.001:
                continue
            self._block(wake_keys, block)

    def _block(self, wake_keys: list[str], seconds: float) -> None:
        """Sleep on the wake lists until a publish pushes to one, or ``seconds`` pass."""

        def call(client: redis.Redis) -> None:
            client.blpop(wake_keys, timeout=seconds)

        self._call(call)

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
        result: dict[str, bool] = {}
        by_queue: dict[str, list[Delivery]] = defaultdict(list)
        for d in deliveries:
            by_queue[d.queue].append(d)
        for queue, batch in by_queue.items():
            k = self._keys(queue)
            keys = [k.inflight, k.msg]
            args: list[Any] = [len(batch), *(d.token for d in batch)]
            for index, d in enumerate(batch, 1):
                w = writes.get(d.token)
                if w is not None:
                    assert isinstance(w, KeyWrite), "writes_for() of another broker"
                    keys.append(w.key)
                    args += [index, w.value, w.px_ms, w.notify]
            attempts = 0

            def call(_: redis.Redis, keys: list[str] = keys, args: list[Any] = args) -> Any:
                nonlocal attempts
                attempts += 1
                return self._eval("ack", keys, args)

            codes = self._call(call)
            for d, code in zip(batch, codes, strict=True):
                # -1 (gone) after a retry: our earlier attempt acked it (and stored its
                # result) before the connection dropped. On a first attempt it means
                # another consumer did.
                result[d.token] = int(code) == 1 or (int(code) == -1 and attempts > 1)
        return [result[d.token] for d in deliveries]

    @property
    def redis_url(self) -> str:
        """The server this broker keeps its data on (a result backend on the same URL
        can have its writes applied with the acks)."""
        return self._conn.url

    def _settle(self, delivery: Delivery, *args: Any) -> str:
        return as_str(self._run("settle", self._settle_keys(delivery.queue), args))

    def release(self, delivery: Delivery) -> bool:
        return self._settle(delivery, "release", delivery.token) == "released"

    def requeue(self, delivery: Delivery) -> Disposition:
        reason = (
            f"delivered {delivery.deliveries} times without finishing "
            f"(max_deliveries={self.options.max_deliveries})"
        )
        outcome = self._settle(
            delivery, "requeue", delivery.token, self.options.max_deliveries, reason
        )
        return {"requeued": Disposition.REQUEUED, "dead": Disposition.DEAD}.get(
            outcome, Disposition.STALE
        )

    def retry(self, delivery: Delivery, body: bytes, eta: float | None) -> bool:
        due = "" if eta is None else _us(eta)
        return self._settle(delivery, "retry", delivery.token, body, due) == "retried"

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
            positions = self._run("renew", [k.inflight, k.msg], tokens, retry_for=retry_for)
            lost.update(batch[int(p) - 1].id for p in positions)
        return lost

    def reclaim(self) -> list[Reclaimed]:
        """See ``Broker.reclaim``; after an outage, nothing for one lease.

        While Redis is out of reach nobody can renew, so when it is back every
        lease held across the outage looks expired, live workers' included. So
        this process takes nothing over until it has reached Redis again for
        ``lease_seconds`` (every live worker renews in that time), and a sweep is
        never retried: a retry would run the moment Redis is back, before anyone
        could renew.
        """
        out: list[Reclaimed] = []
        for queue in self._known_queues():
            if time.monotonic() - self._unreachable_at < self.options.lease_seconds:
                break
            k = self._keys(queue)
            flat = self._run(
                "reclaim",
                [k.ready, k.inflight, k.msg, k.wake, k.dead],
                [self.options.max_deliveries, RECLAIM_BATCH],
                retry_for=0,
            )
            for i in range(0, len(flat), 3):
                disposition = Disposition(as_str(flat[i + 1]))
                out.append(Reclaimed(as_str(flat[i]), queue, disposition, int(flat[i + 2])))
        return out

    # -- dead letters ----------------------------------------------------------

    def dead_letter(self, delivery: Delivery, reason: str) -> bool:
        return self._settle(delivery, "dead", delivery.token, reason) == "dead"

    def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        out: list[DeadLetter] = []
        for name in [queue] if queue else self._known_queues():
            k = self._keys(name)
            flat = self._run("dead", [k.dead, k.msg, k.ready, k.wake], ["list", limit])
            for i in range(0, len(flat), 7):
                mid, body, priority, reason, dl, died, hist = flat[i : i + 7]
                records = json.loads(hist) or []
                out.append(
                    DeadLetter(
                        id=as_str(mid),
                        queue=name,
                        body=bytes(body),
                        priority=int(priority),
                        reason=as_str(reason),
                        deliveries=int(dl),
                        died_at=int(died) / 1e6,
                        history=tuple(DeliveryRecord(str(c), float(at) / 1e6) for c, at in records),
                    )
                )
        out.sort(key=lambda d: d.died_at)
        return out[:limit]

    def _dead_action(self, action: str, message_id: str) -> bool:
        for name in self._known_queues():
            k = self._keys(name)
            if int(self._run("dead", [k.dead, k.msg, k.ready, k.wake], [action, message_id])):
                return True
        return False

    def requeue_dead(self, message_id: str) -> bool:
        return self._dead_action("requeue", message_id)

    def drop_dead(self, message_id: str) -> bool:
        return self._dead_action("drop", message_id)

    # -- inspection ------------------------------------------------------------

    def stats(self, queues: Iterable[str] | None = None) -> list[QueueStats]:
        names = list(queues) if queues is not None else self._known_queues()

        def call(client: redis.Redis) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for name in names:
                k = self._keys(name)
                for key in (k.ready, k.delayed, k.inflight, k.dead):
                    pipe.zcard(key)
            return pipe.execute()

        counts = self._call(call)
        out = []
        for i, name in enumerate(names):
            ready, delayed, in_flight, dead = (int(c) for c in counts[i * 4 : i * 4 + 4])
            if queues is None and not (ready or delayed or in_flight or dead):
                continue
            out.append(QueueStats(name, ready, delayed, in_flight, dead))
        return out

    def purge(self, queue: str) -> int:
        k = self._keys(queue)
        return int(self._run("purge", [k.ready, k.delayed, k.msg, k.wake], []))

    # -- coordination: one script on one key per call (see keys.py) ---------------

    def revoke(self, task_ids: Sequence[str], ttl: float, *, terminate: bool = False) -> None:
        ttl_ms = _ttl_ms(ttl)
        if task_ids:
            args = ["add", ttl_ms, int(terminate), *task_ids]
            self._run("revoke", [revoked_key(self.prefix)], args)

    def revoked(self, task_ids: Sequence[str]) -> dict[str, bool]:
        if not task_ids:
            return {}
        codes = self._run("revoke", [revoked_key(self.prefix)], ["check", *task_ids])
        return {i: int(c) == 2 for i, c in zip(task_ids, codes, strict=True) if int(c)}

    def rate_acquire(self, key: str, limit: int, period: float) -> float:
        check_positive("limit", limit)
        period_us = check_positive("period", period) * 1e6
        wait_us = self._run("rate", [rate_key(self.prefix, key)], [period_us / limit, period_us])
        return int(wait_us) / 1e6

    def slot_acquire(self, key: str, limit: int, holder: str, ttl: float) -> bool:
        check_positive("limit", limit)
        args = ["acquire", _ttl_ms(ttl), limit, holder]
        return bool(int(self._run("slots", [slots_key(self.prefix, key)], args)))

    def slot_renew(self, key: str, holders: Sequence[str], ttl: float) -> None:
        ttl_ms = _ttl_ms(ttl)
        if holders:
            self._run("slots", [slots_key(self.prefix, key)], ["renew", ttl_ms, *holders])

    def slot_release(self, key: str, holder: str) -> None:
        self._run("slots", [slots_key(self.prefix, key)], ["release", holder])

    def claim(self, key: str, owner: str, ttl: float) -> str | None:
        args = ["claim", owner, _ttl_ms(ttl)]
        current = self._run("claim", [claim_key(self.prefix, key)], args)
        return None if current is None else as_str(current)

    def release_claim(self, key: str, owner: str) -> bool:
        args = ["release", owner]
        return bool(int(self._run("claim", [claim_key(self.prefix, key)], args)))

    def incr(self, key: str, ttl: float) -> int:
        return int(self._run("incr", [counter_key(self.prefix, key)], [_ttl_ms(ttl)]))

    def advance(self, key: str, value: float | None, ttl: float) -> float | None:
        ttl_ms = _ttl_ms(ttl)
        arg = "" if value is None else repr(float(check_finite("value", value)))
        previous = self._run("advance", [mark_key(self.prefix, key)], [arg, ttl_ms])
        return None if previous is None else float(as_str(previous))

    def close(self) -> None:
        self._conn.close()
