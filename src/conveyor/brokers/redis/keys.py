"""Every Redis key the broker uses, with its type and lifetime.

All keys of one queue share the hash tag ``{queue}`` so a script touching them
runs on one Cluster slot; every key a script touches is passed in KEYS.

| key | type | holds (lifetime) |
|---|---|---|
| `P:{q}:ready` | zset | member -> (9 - priority) x 9e14 + ready time in 4-us units: highest priority first, then the order messages became ready (until fetched) |
| `P:{q}:delayed` | zset | member -> due time in us (until due: fetch moves it to ready) |
| `P:{q}:inflight` | zset | member -> lease expiry in us (until ack, release, requeue, retry, dead-letter or reclaim) |
| `P:{q}:dead` | zset | member -> time of death in us (until requeued or dropped) |
| `P:{q}:msg` | hash | member -> msgpack record `{id, body, p, dl, n, ord, tok, con, hist, lt, lo, reason, died}` (until acked, purged or dropped) |
| `P:{q}:ids` | hash | message id -> member of its newest live record (until acked, purged or dead): a publish of a message whose id is waiting already stores nothing |
| `P:{q}:deadids` | hash | message id -> its dead members, space-separated, oldest first (until requeued, dropped, purged or expired): `dead show ID` is one lookup |
| `P:{q}:lost` | zset | token -> time it was reclaimed in us (one hour, at most 100,000): a late ack or settle of a reclaimed delivery is refused, never taken for success |
| `P:{q}:wake` | list | wake-up tokens that sleeping consumers BLPOP (at most 64; emptied when nothing is ready) |
| `P:{q}:seq` | string | counter for members (one per queue, kept) |
| `P:queues` | set | names of queues ever published to (kept; for stats and reclaim) |
| `P:stall` | string | set by a process that waited on a stalled or unreachable Redis (PX: one lease): no process reclaims leases meanwhile |
| `P:revoked` | zset | task id -> revoked until (ms) x 2 + terminate (0/1) (each revoke drops the expired members; the key expires with its last member) |
| `P:rate:<key>` | string | GCRA theoretical arrival time in us (PX: until it has passed) |
| `P:slots:<key>` | zset | holder -> slot expiry in ms (every call drops the expired holders; the key expires with its last holder) |
| `P:claim:<key>` | string | the owner of the claim (PX: the claim's ttl) |
| `P:tally:<key>` | set | the members counted under the key (PX: ttl from its last addition) |
| `P:mark:<key>` | string | a mark (`Broker.advance`): the highest value it was raised to, as a decimal string (PX: ttl from when it was last raised) |
| `P:workers` | hash | worker name -> `<expiry in ms>:<info>` of its last beat (each field until its expiry: reading the registry deletes the expired; the key expires with its longest-lived beat) |
| `P:stream:<name>` | stream | entries with one field `b`, the body; capped to the newest `maxlen` at every append (kept; PX: ttl from the last append when added to with a ttl, as reply streams are) |
| `P:counters` | hash | counter name -> value, a decimal string (HINCRBYFLOAT; kept until `counters_reset`) |

``P`` is the prefix (default ``conveyor``). A member is the message's sequence
number in its queue, zero-padded to 12 digits so equal scores sort FIFO. A
delivery's token is ``member.fetches.nonce`` (the nonce fresh for every fetch call, and
followed by the queue's position in it, members being numbered per queue):
unique per delivery, even after Redis lost data and reused a member, and it names
the member, so every settle call finds its record without a lookup. A record keeps
the token and outcome of its last settle (``lt``, ``lo``): a call retried after a
lost reply recognises its own earlier effect.

The coordination keys (``Broker.revoke`` to ``Broker.advance``) hold small records
shared by every worker and producer. ``<key>`` is the caller's key as it is (a
task name with dots, a unique key: any string). Each call is one script that
touches exactly one key, so on Redis Cluster they need no hash tag (braces in a
caller's key only choose that key's slot). Expiries are kept by the Redis server's
clock (``TIME`` in the scripts, ``PX``), so the clocks of the machines calling
them do not matter. Every key carries a TTL and is gone once its records expire.

The monitoring keys (``Broker.worker_beat`` to ``Broker.counters_reset``) are read by
``conveyor inspect``, events, metrics and the dashboard. Each call touches one key
(streams: ``<name>`` is the caller's stream name, ``control``, ``events``,
``reply:<id>``), so they need no hash tag either. Stream cursors are Redis stream
ids; a read with a timeout is an ``XREAD BLOCK`` of at most 5 s at a time.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class QueueKeys:
    """The keys of one queue."""

    ready: str
    delayed: str
    inflight: str
    dead: str
    msg: str
    wake: str
    seq: str
    ids: str
    deadids: str
    lost: str


def queue_keys(prefix: str, queue: str) -> QueueKeys:
    """The keys of ``queue`` under ``prefix``.

    Raises:
        ValueError: the name is empty or has braces (they would break the hash tag).
    """
    if not queue or "{" in queue or "}" in queue:
        raise ValueError(f"invalid queue name {queue!r}: must be non-empty, without braces")
    base = f"{prefix}:{{{queue}}}"
    return QueueKeys(
        ready=f"{base}:ready",
        delayed=f"{base}:delayed",
        inflight=f"{base}:inflight",
        dead=f"{base}:dead",
        msg=f"{base}:msg",
        wake=f"{base}:wake",
        seq=f"{base}:seq",
        ids=f"{base}:ids",
        deadids=f"{base}:deadids",
        lost=f"{base}:lost",
    )


def queues_key(prefix: str) -> str:
    return f"{prefix}:queues"


def member_of(token: str) -> str:
    """The member a delivery token belongs to."""
    return token.split(".", 1)[0]


def revoked_key(prefix: str) -> str:
    return f"{prefix}:revoked"


def rate_key(prefix: str, key: str) -> str:
    return f"{prefix}:rate:{key}"


def slots_key(prefix: str, key: str) -> str:
    return f"{prefix}:slots:{key}"


def claim_key(prefix: str, key: str) -> str:
    return f"{prefix}:claim:{key}"


def tally_key(prefix: str, key: str) -> str:
    return f"{prefix}:tally:{key}"


def stall_key(prefix: str) -> str:
    return f"{prefix}:stall"


def mark_key(prefix: str, key: str) -> str:
    return f"{prefix}:mark:{key}"


def workers_key(prefix: str) -> str:
    return f"{prefix}:workers"


def stream_key(prefix: str, stream: str) -> str:
    return f"{prefix}:stream:{stream}"


def counters_key(prefix: str) -> str:
    return f"{prefix}:counters"
