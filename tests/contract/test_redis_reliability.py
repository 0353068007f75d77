"""The Redis broker against what a real server, a real network and bad data do to it.

Lost replies and lost requests go through ``LossyProxy``; records are corrupted or
deleted with a raw client, as a faulty writer or an evicting Redis would; stalls
are ``DEBUG SLEEP``; volumes go past what Lua's ``unpack()`` accepts (about 8,000 values).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from conveyor.brokers.base import BrokerOptions, Disposition, OutgoingMessage
from conveyor.brokers.redis import RedisBroker
from conveyor.brokers.redis.keys import queue_keys
from conveyor.brokers.redis.lua import Scripts, source
from conveyor.exceptions import ConfigurationError
from conveyor.storage.redis import RedisConnection
from lossy_proxy import LossyProxy
from redis_server import RedisServer

BIG = 9_000  # past Lua's unpack() limit of about 8,000 values
Q = "default"


def msg(id: str, queue: str = Q, eta: float | None = None) -> OutgoingMessage:
    return OutgoingMessage(id=id, queue=queue, body=id.encode(), priority=0, eta=eta)


def sha(name: str) -> bytes:
    return hashlib.sha1(source(name).encode()).hexdigest().encode()


@pytest.fixture
def broker(redis_url: str) -> Iterator[RedisBroker]:
    built = RedisBroker(redis_url, BrokerOptions(lease_seconds=1.0, max_deliveries=3))
    yield built
    built.close()


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    with redis_server.client() as client:
        yield client


@pytest.fixture
def proxy(redis_url: str, redis_server: RedisServer) -> Iterator[LossyProxy]:
    built = LossyProxy(redis_server.port)
    yield built
    built.close()


# -- no Lua size limits ------------------------------------------------------------


def test_a_consumer_fetches_renews_and_acks_more_than_unpack_allows(broker: RedisBroker) -> None:
    # Given more ready messages than one unpack() can take
    broker.publish_many([msg(f"m{i}") for i in range(BIG)])

    # When one consumer leases them all at once, renews and acks them
    held = broker.fetch([Q], BIG, consumer="big", timeout=1.0)
    lost = broker.renew(held)
    acks = broker.ack(held)

    # Then every call handled every one of them
    assert len(held) == BIG
    assert lost == set()
    assert acks == [True] * BIG
    assert broker.stats([Q])[0].in_flight == 0


def test_dead_letters_beyond_unpack_are_listed_looked_up_and_purged(broker: RedisBroker) -> None:
    # Given more dead letters than one unpack() can take
    broker.publish_many([msg(f"d{i}") for i in range(BIG)])
    for d in broker.fetch([Q], BIG, consumer="c", timeout=1.0):
        broker.dead_letter(d, "poison")

    # Then they can be listed, one looked up by id, and all purged in bounded calls
    assert len(broker.dead_letters(Q, BIG)) == BIG
    found = broker.get_dead(f"d{BIG - 1}")
    assert found is not None
    assert (found.reason, found.body) == ("poison", f"d{BIG - 1}".encode())
    assert broker.get_dead("nope") is None
    assert broker.purge_dead(Q) == BIG
    assert broker.stats([Q])[0].dead == 0
    assert broker.get_dead(f"d{BIG - 1}") is None


def test_purge_of_a_large_queue_runs_in_short_scripts(
    broker: RedisBroker, raw: redis.Redis
) -> None:
    broker.publish_many([msg(f"p{i}") for i in range(2 * BIG)])
    raw.config_resetstat()

    assert broker.purge(Q) == 2 * BIG

    # several calls of a bounded batch each, none of them the whole queue
    calls = raw.info("commandstats")["cmdstat_evalsha"]["calls"]
    assert calls >= 2 * BIG // 1000
    assert broker.stats([Q])[0].ready == 0
    assert raw.hlen(queue_keys("conveyor", Q).ids) == 0


# -- bad records go to the dead letters, and consumption goes on --------------------


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_an_unreadable_or_missing_record_is_dead_lettered_and_fetch_goes_on(
    broker: RedisBroker, raw: redis.Redis, damage: str
) -> None:
    # Given three ready messages, the middle one's record damaged, and a delayed one too
    broker.publish_many([msg("a"), msg("b"), msg("c"), msg("later", eta=time.time() + 0.3)])
    keys = queue_keys("conveyor", Q)
    for member in (b"000000000002", b"000000000004"):
        if damage == "corrupt":
            raw.hset(keys.msg, member, b"\xc1 not msgpack")
        else:
            raw.hdel(keys.msg, member)

    # When a consumer fetches, now and once the delayed one is due
    first = broker.fetch([Q], 10, consumer="c", timeout=1.0)
    time.sleep(0.4)
    second = broker.fetch([Q], 10, consumer="c", timeout=0.5)

    # Then the good ones are delivered, and the bad ones are dead letters with the reason
    assert [d.id for d in first] == ["a", "c"]
    assert second == []
    dead = broker.dead_letters(Q)
    assert len(dead) == 2
    why = "cannot be decoded" if damage == "corrupt" else "missing"
    assert all(why in d.reason for d in dead)
    if damage == "corrupt":
        assert dead[0].body == b"\xc1 not msgpack"  # kept for the operator to look at
    assert broker.ack(first) == [True, True]


def test_a_corrupt_record_in_flight_is_dead_lettered_by_reclaim(
    broker: RedisBroker, raw: redis.Redis
) -> None:
    broker.publish(msg("x"))
    (held,) = broker.fetch([Q], 1, consumer="c", timeout=1.0)
    raw.hset(queue_keys("conveyor", Q).msg, held.token.split(".")[0], b"\xff\xff")

    # Every fenced call refuses it without failing
    assert broker.renew([held]) == set()
    assert broker.ack([held]) == [False]
    time.sleep(1.1)
    broker.reclaim()

    (dead,) = broker.dead_letters(Q)
    assert "cannot be decoded" in dead.reason
    assert broker.stats([Q])[0].in_flight == 0


# -- refuse to lose data quietly -------------------------------------------------------


@pytest.fixture
def evicting(raw: redis.Redis) -> Iterator[None]:
    raw.config_set("maxmemory-policy", "allkeys-lru")
    yield
    raw.config_set("maxmemory-policy", "noeviction")


@pytest.mark.usefixtures("evicting")
def test_an_evicting_redis_is_refused_by_producers_and_workers(redis_url: str) -> None:
    broker = RedisBroker(redis_url)
    with pytest.raises(ConfigurationError, match=r"maxmemory-policy allkeys-lru.*noeviction"):
        broker.publish(msg("m1"))
    with pytest.raises(ConfigurationError, match="redis_allow_eviction"):
        broker.check()
    with pytest.raises(ConfigurationError):
        broker.fetch([Q], 1, consumer="c", timeout=0)
    broker.close()

    allowed = RedisBroker(redis_url, BrokerOptions(allow_eviction=True))
    assert any("allkeys-lru" in w for w in allowed.check())
    allowed.publish(msg("m1"))
    allowed.close()


def test_a_redis_without_persistence_is_warned_about(broker: RedisBroker) -> None:
    # the session's server persists nothing (appendonly no, no save points)
    assert any("persists nothing" in w for w in broker.check())


def test_the_policy_is_read_from_info_where_config_is_not_allowed(
    redis_server: RedisServer, raw: redis.Redis, evicting: None
) -> None:
    # Given a user that may not run CONFIG (as on managed Redis)
    raw.acl_setuser(
        "no-config",
        enabled=True,
        passwords=["+pw"],
        keys=["*"],
        channels=["*"],
        commands=["+@all", "-config"],
    )
    try:
        url = f"redis://no-config:pw@127.0.0.1:{redis_server.port}/0"
        broker = RedisBroker(url)
        # Then the policy is read from INFO, and refused all the same
        with pytest.raises(ConfigurationError, match="allkeys-lru"):
            broker.check()
        broker.close()
    finally:
        raw.acl_deluser("no-config")


# -- effects exactly once under retries ----------------------------------------------------


def test_a_publish_whose_reply_is_lost_is_stored_once(
    proxy: LossyProxy, broker: RedisBroker
) -> None:
    producer = RedisBroker(proxy.url())
    producer.publish(msg("warm-up"))  # connected, checked, script loaded
    proxy.lose_next(sha("publish"), "reply")

    producer.publish(msg("once"))

    assert proxy.lost == 1
    held = broker.fetch([Q], 10, consumer="c", timeout=0.5)
    assert sorted(d.id for d in held) == ["once", "warm-up"]
    producer.close()


def test_a_retried_ack_recognises_its_own_earlier_ack(
    proxy: LossyProxy, broker: RedisBroker
) -> None:
    worker = RedisBroker(proxy.url(), broker.options)
    worker.publish(msg("m1"))
    (held,) = worker.fetch([Q], 1, consumer="w", timeout=1.0)
    proxy.lose_next(sha("ack"), "reply")

    assert worker.ack([held]) == [True]
    assert proxy.lost == 1
    assert broker.stats([Q])[0].in_flight == 0
    worker.close()


def test_a_retried_ack_of_a_reclaimed_delivery_is_refused_though_the_message_is_gone(
    proxy: LossyProxy, broker: RedisBroker
) -> None:
    # Given a worker frozen past its lease: its message was reclaimed, run and acked
    frozen = RedisBroker(proxy.url(), broker.options)
    frozen.publish(msg("m1"))
    (stale,) = frozen.fetch([Q], 1, consumer="frozen", timeout=1.0)
    time.sleep(1.1)
    broker.reclaim()
    (current,) = broker.fetch([Q], 1, consumer="live", timeout=1.0)
    assert broker.ack([current]) == [True]

    # When the frozen worker's first ack meets a cut connection, and is retried
    proxy.lose_next(sha("ack"), "request")
    result = frozen.ack([stale])

    # Then it is refused: gone is not the same as acked by this token
    assert proxy.lost == 1
    assert result == [False]
    frozen.close()


@pytest.mark.parametrize("action", ["release", "requeue", "retry", "dead_letter"])
def test_a_retried_settle_answers_as_its_first_attempt(
    proxy: LossyProxy, broker: RedisBroker, action: str
) -> None:
    worker = RedisBroker(proxy.url(), broker.options)
    worker.publish(msg("m1"))
    (held,) = worker.fetch([Q], 1, consumer="w", timeout=1.0)
    proxy.lose_next(sha("settle"), "reply")

    calls = {
        "release": lambda d: worker.release(d),
        "requeue": lambda d: worker.requeue(d),
        "retry": lambda d: worker.retry(d, b"again", None),
        "dead_letter": lambda d: worker.dead_letter(d, "bad"),
    }
    outcome = calls[action](held)

    assert proxy.lost == 1
    assert outcome in (True, Disposition.REQUEUED)
    stats = broker.stats([Q])[0]
    assert (stats.ready, stats.dead, stats.in_flight) == (
        (0, 1, 0) if action == "dead_letter" else (1, 0, 0)
    )
    worker.close()


def test_a_retried_rate_request_takes_one_permit(proxy: LossyProxy, broker: RedisBroker) -> None:
    worker = RedisBroker(proxy.url())
    assert worker.rate_acquire("k", 2, 10.0, request="warm-up") == 0.0
    proxy.lose_next(sha("rate"), "reply")

    assert worker.rate_acquire("k", 2, 10.0, request="d1") == 0.0

    assert proxy.lost == 1
    assert broker.rate_acquire("k", 2, 10.0, request="d2") > 0.0  # only two were taken
    worker.close()


def test_a_retried_tally_counts_once(proxy: LossyProxy, broker: RedisBroker) -> None:
    worker = RedisBroker(proxy.url())
    assert worker.tally("chord", "a", 10) == 1
    proxy.lose_next(sha("tally"), "reply")

    assert worker.tally("chord", "b", 10) == 2

    assert proxy.lost == 1
    assert broker.tally("chord", "c", 10) == 3
    worker.close()


def test_tokens_never_repeat_after_redis_loses_its_data(
    broker: RedisBroker, raw: redis.Redis
) -> None:
    # Given a delivery held across a loss of every key (restart without AOF, failover
    # to a replica that lagged): member numbers start again at 1
    broker.publish(msg("old"))
    (old,) = broker.fetch([Q], 1, consumer="c", timeout=1.0)
    raw.flushall()
    broker.publish(msg("new"))
    (new,) = broker.fetch([Q], 1, consumer="c", timeout=1.0)

    # Then the old delivery's token is not the new one's, and its ack deletes nothing
    assert new.token != old.token
    assert broker.ack([old]) == [False]
    assert broker.stats([Q])[0].in_flight == 1
    assert broker.ack([new]) == [True]


# -- stalls count like outages ------------------------------------------------------------


def stall(server: RedisServer, seconds: float) -> threading.Thread:
    """DEBUG SLEEP on a connection of its own: the server answers nobody meanwhile."""

    def sleep() -> None:
        with server.client() as client:
            client.execute_command("DEBUG", "SLEEP", seconds)

    thread = threading.Thread(target=sleep)
    thread.start()
    time.sleep(0.05)
    return thread


def test_a_stall_longer_than_the_lease_does_not_hand_live_leases_to_others(
    redis_url: str, redis_server: RedisServer
) -> None:
    options = BrokerOptions(lease_seconds=1.0)
    holder = RedisBroker(redis_url, options)
    sweeper = RedisBroker(redis_url, options)
    holder.publish(msg("long"))
    (held,) = holder.fetch([Q], 1, consumer="holder", timeout=1.0)
    sweeper.reclaim()  # connected, checked and loaded before the stall

    # When Redis stalls for twice the lease while the sweeper is reclaiming
    thread = stall(redis_server, 2.0)
    during = sweeper.reclaim()
    thread.join()

    # Then neither that sweeper, nor a process that never saw the stall, takes the
    # lease before its holder could renew it
    newcomer = RedisBroker(redis_url, options)
    assert during == []
    assert sweeper.reclaim() == []
    assert newcomer.reclaim() == []
    assert holder.renew([held]) == set()
    assert holder.ack([held]) == [True]
    for b in (holder, sweeper, newcomer):
        b.close()


def test_a_reclaim_that_ran_late_behind_a_stall_does_nothing(redis_url: str) -> None:
    conn = RedisConnection(redis_url, ConfigurationError)
    broker = RedisBroker(redis_url, BrokerOptions(lease_seconds=0.2))
    broker.publish(msg("m1"))
    broker.fetch([Q], 1, consumer="c", timeout=1.0)
    time.sleep(0.3)
    k = queue_keys("conveyor", Q)
    keys = [k.ready, k.inflight, k.msg, k.wake, k.dead, k.deadids, k.ids, k.lost]
    seconds, micros = conn.execute("TIME")
    read_long_ago = int(seconds) * 1_000_000 + int(micros) - 5_000_000

    reply = Scripts(conn).run("reclaim", keys, [3, 500, read_long_ago, 50_000, 10, 1e9, 1e9, 10])

    assert reply == [b"late"]
    assert broker.stats([Q])[0].in_flight == 1
    broker.close()
    conn.close()


def test_a_dead_letter_cap_and_expiry_are_applied_by_reclaim(redis_url: str) -> None:
    broker = RedisBroker(redis_url, BrokerOptions(dead_letter_max=5, dead_letter_expires=0.5))
    broker.publish_many([msg(f"d{i}") for i in range(8)])
    for d in broker.fetch([Q], 8, consumer="c", timeout=1.0):
        broker.dead_letter(d, "bad")

    broker.reclaim()
    assert [d.id for d in broker.dead_letters(Q)] == [f"d{i}" for i in range(3, 8)]
    assert broker.get_dead("d0") is None

    time.sleep(0.6)
    broker.reclaim()
    assert broker.dead_letters(Q) == []
    broker.close()


def test_after_a_restart_one_failed_connection_drops_every_idle_one(
    redis_url: str, redis_server: RedisServer
) -> None:
    # Given a connection with several idle sockets (threads used it at once)
    conn = RedisConnection(redis_url, ConfigurationError)
    held = [conn._checkout() for _ in range(5)]
    for c in held:
        c.connect()  # type: ignore[no-untyped-call]
        conn._idle.append(c)

    # When Redis restarts, and the next call meets a dead socket and retries
    redis_server.stop()
    redis_server.start()
    assert conn.call(lambda _: conn.execute("PING"))

    # Then no other idle socket of the dead server is left to fail a later call
    still_open = [c for c in conn._idle if c._sock is not None]  # type: ignore[attr-defined]
    assert len(still_open) <= 1
    conn.close()
