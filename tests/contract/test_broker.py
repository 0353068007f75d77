"""The broker contract suite: every sentence of ``conveyor.brokers.base``, for every broker."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest

from conveyor.brokers.base import (
    Broker,
    BrokerOptions,
    Delivery,
    Disposition,
    OutgoingMessage,
    QueueStats,
    now,
)

from .conftest import LEASE_SECONDS, MAX_DELIVERIES, BrokerFactory


def msg(
    id: str,
    queue: str = "default",
    priority: int = 0,
    eta: float | None = None,
    body: bytes | None = None,
) -> OutgoingMessage:
    return OutgoingMessage(id=id, queue=queue, body=body or id.encode(), priority=priority, eta=eta)


def take(
    broker: Broker,
    queues: Sequence[str] = ("default",),
    limit: int = 100,
    consumer: str = "c1",
    timeout: float = 0.0,
) -> list[Delivery]:
    return broker.fetch(queues, limit, consumer=consumer, timeout=timeout)


def take_one(broker: Broker, consumer: str = "c1", timeout: float = 0.0) -> Delivery:
    (delivery,) = take(broker, limit=1, consumer=consumer, timeout=timeout)
    return delivery


def ids(deliveries: Sequence[Delivery]) -> list[str]:
    return [d.id for d in deliveries]


def expire_leases() -> None:
    time.sleep(LEASE_SECONDS + 0.1)


# -- publish and fetch ---------------------------------------------------------


def test_published_message_is_fetched_with_its_fields(broker: Broker) -> None:
    # Given a published message
    broker.publish(msg("m1", queue="emails", priority=3, body=b"\x00payload"))

    # When a consumer fetches its queue
    (delivery,) = take(broker, ["emails"])

    # Then it gets the message, leased with a token, on its first delivery
    assert (delivery.id, delivery.queue, delivery.body, delivery.priority) == (
        "m1",
        "emails",
        b"\x00payload",
        3,
    )
    assert delivery.token
    assert delivery.deliveries == 1


def test_fetch_orders_by_priority_then_publish_order_across_queues(broker: Broker) -> None:
    # Given messages of several priorities spread over two queues (and one elsewhere)
    broker.publish_many(
        [
            msg("a1", "a", priority=1),
            msg("b5", "b", priority=5),
            msg("a5", "a", priority=5),
            msg("b1", "b", priority=1),
            msg("c9", "c", priority=9),
            msg("a0", "a", priority=0),
        ]
    )

    # When a consumer fetches from both queues
    got = take(broker, ["a", "b"])

    # Then the highest priority comes first, ties in publish order; queue c is untouched
    assert ids(got) == ["b5", "a5", "a1", "b1", "a0"]
    assert ids(take(broker, ["c"])) == ["c9"]


def test_every_delivery_of_one_fetch_has_its_own_token_across_queues(broker: Broker) -> None:
    # Given the first message of each of three queues (numbered alike within each queue)
    broker.publish_many([msg("a", queue="q1"), msg("b", queue="q2"), msg("c", queue="q3")])

    # When one fetch takes them all
    got = take(broker, ["q1", "q2", "q3"])

    # Then no two share a token, and each token settles its own message only
    assert len({d.token for d in got}) == 3
    assert broker.ack(got[:1]) == [True]
    assert [s.in_flight for s in broker.stats(["q1", "q2", "q3"])] == [0, 1, 1]


def test_fetch_returns_at_most_limit_messages(broker: Broker) -> None:
    broker.publish_many([msg(f"m{i}") for i in range(5)])

    assert ids(take(broker, limit=3)) == ["m0", "m1", "m2"]
    assert ids(take(broker, limit=3)) == ["m3", "m4"]


def test_fetch_limit_must_be_positive(broker: Broker) -> None:
    with pytest.raises(ValueError, match="limit"):
        take(broker, limit=0)


def test_leased_message_cannot_be_fetched_by_another_consumer(broker: Broker) -> None:
    # Given a message leased to consumer c1
    broker.publish(msg("m1"))
    take_one(broker, consumer="c1")

    # When consumer c2 fetches, Then it gets nothing
    assert take(broker, consumer="c2", timeout=0.05) == []


def test_fetch_on_an_empty_queue_returns_nothing_after_the_timeout(broker: Broker) -> None:
    started = time.monotonic()

    assert take(broker, timeout=0.3) == []

    assert 0.29 <= time.monotonic() - started < 0.8


def test_fetch_returns_promptly_when_another_thread_publishes(broker: Broker) -> None:
    # Given a consumer waiting on an empty queue
    published_at: list[float] = []

    def publish() -> None:
        broker.publish(msg("late"))
        published_at.append(time.monotonic())

    timer = threading.Timer(0.2, publish)
    timer.start()
    started = time.monotonic()

    # When another thread publishes mid-wait
    got = take(broker, timeout=5.0)
    returned = time.monotonic()
    timer.join()

    # Then the waiting fetch returns it within milliseconds, far before the timeout
    assert ids(got) == ["late"]
    assert returned - started < 1.0
    assert returned - published_at[0] < 0.05


@pytest.mark.parametrize("how", ["publish", "retry"])
def test_a_waiting_fetch_returns_a_delayed_message_sent_during_the_wait_when_it_is_due(
    broker: Broker, how: str
) -> None:
    # Given a consumer waiting on a queue with nothing ready or delayed
    if how == "retry":
        broker.publish(msg("again"))
        delivery = take_one(broker)
    sent_due: list[float] = []

    def send() -> None:
        due = now() + 0.3
        if how == "publish":
            broker.publish(msg("again", eta=due))
        else:
            assert broker.retry(delivery, b"again", due)
        sent_due.append(time.monotonic() + 0.3)

    timer = threading.Timer(0.1, send)
    timer.start()

    # When a message due in 0.3 s is published (or a delivery retried) mid-wait
    got = take(broker, timeout=3.0)
    returned = time.monotonic()
    timer.join()

    # Then the wait ends when it is due, not when the wait would have timed out (which
    # would be 2.6 s late). Room: Redis ends a BLPOP on its 100 ms timer tick, and the
    # suite runs two tests at once on two cores (0.30 s was seen once in a full run).
    assert ids(got) == ["again"]
    assert -0.01 <= returned - sent_due[0] < 0.5


def test_delayed_message_is_fetched_only_when_due(broker: Broker) -> None:
    # Given a message due in 0.3 s
    broker.publish(msg("later", eta=now() + 0.3))

    # Then it cannot be fetched yet
    assert take(broker) == []

    # When a consumer waits for it, Then it arrives when due (the wait wakes by itself)
    started = time.monotonic()
    assert ids(take(broker, timeout=3.0)) == ["later"]
    assert 0.2 <= time.monotonic() - started < 1.0


def test_message_with_a_past_eta_is_ready_at_once(broker: Broker) -> None:
    broker.publish(msg("m1", eta=now() - 60))

    assert ids(take(broker)) == ["m1"]


def test_delayed_message_joins_the_queue_when_due(broker: Broker) -> None:
    # Given a delayed message, then a ready one published before it is due
    broker.publish(msg("delayed", eta=now() + 0.2))
    broker.publish(msg("first"))
    time.sleep(0.3)
    # And one published after it is due
    broker.publish(msg("last"))

    # Then the delayed message takes its place when it became due
    assert ids(take(broker)) == ["first", "delayed", "last"]


# -- settling ------------------------------------------------------------------


def test_ack_removes_the_message(broker: Broker) -> None:
    broker.publish(msg("m1"))
    delivery = take_one(broker)

    assert broker.ack([delivery]) == [True]

    assert take(broker) == []
    assert broker.stats(["default"]) == [QueueStats("default")]


def test_ack_with_stale_token_is_rejected(broker: Broker) -> None:
    # Given two deliveries, the first of which lost its lease to a reclaim
    broker.publish_many([msg("m1"), msg("m2")])
    first, second = take(broker)
    expire_leases()
    broker.reclaim()
    again = take(broker)

    # When both are acked in one batch
    result = broker.ack([first, second])

    # Then the stale one is refused and nothing changed for it
    assert result == [False, False]
    assert broker.ack(again) == [True, True]


def test_ack_again_with_the_same_token_is_accepted_once_it_was_acked(broker: Broker) -> None:
    # Given a message that was acked (a call retried after a lost reply repeats it)
    broker.publish_many([msg("m1"), msg("m2")])
    first, second = take(broker)
    assert broker.ack([first]) == [True]

    # When the same token acks again, with another delivery in the batch
    result = broker.ack([first, second])

    # Then both are accepted, and nothing is left
    assert result == [True, True]
    assert broker.stats(["default"]) == [QueueStats("default")]


def test_ack_of_a_reclaimed_delivery_is_refused_even_once_the_message_is_gone(
    broker: Broker,
) -> None:
    # Given a delivery that lost its lease, and whose message another consumer then
    # ran and acknowledged (the message is gone)
    broker.publish(msg("m1"))
    frozen = take_one(broker, consumer="frozen")
    expire_leases()
    broker.reclaim()
    assert broker.ack([take_one(broker, consumer="live")]) == [True]

    # When the frozen consumer wakes and acks (or settles) with its old token
    # Then each call is refused: gone is not the same as done by this token
    assert broker.ack([frozen]) == [False]
    assert broker.release(frozen) is False
    assert broker.requeue(frozen) is Disposition.STALE
    assert broker.retry(frozen, b"again", None) is False
    assert broker.dead_letter(frozen, "late") is False
    assert broker.renew([frozen]) == {"m1"}
    assert broker.stats(["default"]) == [QueueStats("default")]


def test_every_settle_call_answers_a_repeat_as_its_first_attempt(broker: Broker) -> None:
    # Given one delivery settled in each way
    broker.publish_many([msg(f"m{i}") for i in range(4)])
    released, requeued, retried, dead = take(broker)
    assert broker.release(released) is True
    assert broker.requeue(requeued) is Disposition.REQUEUED
    assert broker.retry(retried, b"next", None) is True
    assert broker.dead_letter(dead, "bad") is True
    before = broker.stats(["default"])

    # When each call is made again with the same token (a retry after a lost reply)
    # Then it answers as before and changes nothing
    assert broker.release(released) is True
    assert broker.requeue(requeued) is Disposition.REQUEUED
    assert broker.retry(retried, b"next", None) is True
    assert broker.dead_letter(dead, "bad") is True
    assert broker.stats(["default"]) == before
    assert len(broker.dead_letters()) == 1


def test_release_returns_the_message_to_ready_with_its_count_undone(broker: Broker) -> None:
    # Given the first of two messages fetched
    broker.publish_many([msg("m1"), msg("m2")])
    delivery = take_one(broker, consumer="stopping")

    # When it is released unstarted
    assert broker.release(delivery) is True

    # Then it is ready again, at its place, and its next delivery counts as the first
    again = take_one(broker, consumer="other")
    assert (again.id, again.deliveries) == ("m1", 1)
    assert again.token != delivery.token
    # And the released delivery left no trace in its history
    broker.dead_letter(again, "inspect")
    assert [r.consumer for r in broker.dead_letters()[0].history] == ["other"]


def test_requeue_counts_and_dead_letters_past_max_deliveries(broker: Broker) -> None:
    # Given a message whose attempts are lost, one after another
    broker.publish(msg("poison"))
    dispositions = []
    for n in range(1, MAX_DELIVERIES + 1):
        delivery = take_one(broker, consumer=f"worker-{n}")
        assert delivery.deliveries == n
        dispositions.append(broker.requeue(delivery))

    # Then it came back until it had been delivered max_deliveries times, then died
    assert dispositions == [Disposition.REQUEUED] * (MAX_DELIVERIES - 1) + [Disposition.DEAD]
    assert take(broker) == []
    (dead,) = broker.dead_letters()
    assert (dead.id, dead.queue, dead.body, dead.deliveries) == (
        "poison",
        "default",
        b"poison",
        MAX_DELIVERIES,
    )
    assert dead.reason
    assert [r.consumer for r in dead.history] == [f"worker-{n}" for n in range(1, 4)]
    assert all(r.at <= dead.died_at for r in dead.history)


def test_retry_replaces_the_body_delays_and_resets_the_count(broker: Broker) -> None:
    # Given a message on its second delivery
    broker.publish(msg("m1", body=b"v1"))
    broker.requeue(take_one(broker))
    delivery = take_one(broker)
    assert delivery.deliveries == 2

    # When it is retried with a new body, due in 0.3 s
    assert broker.retry(delivery, b"v2", now() + 0.3) is True

    # Then it is held until due, and comes back with the new body, counting anew
    assert take(broker) == []
    assert broker.stats(["default"])[0].delayed == 1
    again = take_one(broker, timeout=3.0)
    assert (again.body, again.deliveries) == (b"v2", 1)


def test_retry_without_eta_is_ready_at_once(broker: Broker) -> None:
    broker.publish(msg("m1", body=b"v1"))

    assert broker.retry(take_one(broker), b"v2", None) is True

    assert take_one(broker).body == b"v2"


def test_every_settle_call_refuses_a_stale_token(broker: Broker) -> None:
    # Given a delivery whose lease expired and whose message was delivered again
    broker.publish(msg("m1"))
    stale = take_one(broker)
    expire_leases()
    broker.reclaim()
    current = take_one(broker)

    # When the stale delivery is settled in every way, Then each call is refused
    assert broker.ack([stale]) == [False]
    assert broker.release(stale) is False
    assert broker.requeue(stale) is Disposition.STALE
    assert broker.retry(stale, b"other", None) is False
    assert broker.dead_letter(stale, "nope") is False
    assert broker.renew([stale]) == {"m1"}

    # And nothing changed: the current delivery still holds the message
    assert broker.stats(["default"]) == [QueueStats("default", in_flight=1)]
    assert broker.ack([current]) == [True]


def test_message_ids_may_repeat_and_settling_is_by_token(broker: Broker) -> None:
    broker.publish_many([msg("same", body=b"one"), msg("same", body=b"two")])
    one, two = take(broker)

    assert broker.ack([one]) == [True]

    assert broker.stats(["default"]) == [QueueStats("default", in_flight=1)]
    assert broker.release(two) is True
    assert take_one(broker).body == b"two"


# -- leases --------------------------------------------------------------------


def test_renew_keeps_a_lease_alive_past_lease_seconds(broker: Broker) -> None:
    # Given a delivery renewed before its lease ran out
    broker.publish(msg("long"))
    delivery = take_one(broker)
    time.sleep(LEASE_SECONDS * 0.6)
    assert broker.renew([delivery]) == set()
    time.sleep(LEASE_SECONDS * 0.6)

    # When anyone reclaims, past the original lease
    reclaimed = broker.reclaim()

    # Then nothing was taken from the live consumer, which can still ack
    assert reclaimed == []
    assert take(broker, consumer="c2") == []
    assert broker.ack([delivery]) == [True]


def test_renew_reports_the_ids_of_lost_leases(broker: Broker) -> None:
    # Given a delivery whose lease expired and was reclaimed, one acked and one held
    broker.publish(msg("lost"))
    lost = take_one(broker)
    expire_leases()
    broker.reclaim()
    broker.publish_many([msg("kept"), msg("done")])
    relet, kept, done = take(broker)
    broker.ack([done])

    # Then renewing reports only the lost one: an acked delivery has nothing to renew
    assert broker.renew([kept, lost, done]) == {"lost"}
    assert broker.ack([kept, relet]) == [True, True]


def test_reclaim_returns_an_expired_message_with_a_new_token(broker: Broker) -> None:
    # Given a delivery whose consumer died holding it
    broker.publish(msg("m1"))
    old = take_one(broker, consumer="dead-worker")
    expire_leases()

    # When a live consumer reclaims
    reclaimed = broker.reclaim()

    # Then the message is ready again, redelivered with a new token and its count
    assert [(r.id, r.queue, r.disposition, r.deliveries) for r in reclaimed] == [
        ("m1", "default", Disposition.REQUEUED, 1)
    ]
    new = take_one(broker, consumer="live-worker")
    assert new.token != old.token
    assert new.deliveries == 2
    # And the old token can no longer ack it
    assert broker.ack([old]) == [False]
    assert broker.ack([new]) == [True]


def test_reclaim_dead_letters_past_max_deliveries(make_broker: BrokerFactory) -> None:
    # Given a message whose consumers keep dying, with a very short lease
    broker = make_broker(BrokerOptions(lease_seconds=0.05, max_deliveries=2))
    broker.publish(msg("m1"))
    outcomes = []
    for _ in range(2):
        take_one(broker)
        time.sleep(0.1)
        outcomes += broker.reclaim()

    # Then it was requeued once, then dead-lettered with the reason and history
    assert [(r.disposition, r.deliveries) for r in outcomes] == [
        (Disposition.REQUEUED, 1),
        (Disposition.DEAD, 2),
    ]
    (dead,) = broker.dead_letters()
    assert dead.deliveries == 2
    assert "lease expired" in dead.reason
    assert len(dead.history) == 2
    assert take(broker) == []


def test_concurrent_reclaim_moves_each_message_once(make_broker: BrokerFactory) -> None:
    # Given many expired leases
    broker = make_broker(BrokerOptions(lease_seconds=0.05, max_deliveries=5))
    broker.publish_many([msg(f"m{i}") for i in range(50)])
    assert len(take(broker)) == 50
    time.sleep(0.1)

    # When two consumers reclaim at the same moment
    start = threading.Barrier(2)
    results: list[list[str]] = [[], []]

    def reclaim(slot: int) -> None:
        start.wait()
        results[slot] = [r.id for r in broker.reclaim()]

    threads = [threading.Thread(target=reclaim, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    # Then each message was moved by exactly one of them
    moved = results[0] + results[1]
    assert sorted(moved) == sorted(f"m{i}" for i in range(50))
    assert len(take(broker)) == 50


# -- dead letters --------------------------------------------------------------


def test_dead_letter_stores_the_reason(broker: Broker) -> None:
    broker.publish(msg("bad", queue="q", priority=4, body=b"\xff"))
    delivery = take_one_from(broker, "q")

    assert broker.dead_letter(delivery, "cannot decode") is True

    (dead,) = broker.dead_letters()
    assert (dead.id, dead.queue, dead.priority, dead.body, dead.reason, dead.deliveries) == (
        "bad",
        "q",
        4,
        b"\xff",
        "cannot decode",
        1,
    )
    assert [r.consumer for r in dead.history] == ["c1"]
    assert take(broker, ["q"]) == []


def take_one_from(broker: Broker, queue: str) -> Delivery:
    (delivery,) = take(broker, [queue], limit=1)
    return delivery


def test_dead_letters_are_listed_oldest_first_by_queue_and_limited(broker: Broker) -> None:
    for id, queue in [("x1", "x"), ("y1", "y"), ("x2", "x"), ("x3", "x")]:
        broker.publish(msg(id, queue))
        broker.dead_letter(take_one_from(broker, queue), "reason")

    assert [d.id for d in broker.dead_letters()] == ["x1", "y1", "x2", "x3"]
    assert [d.id for d in broker.dead_letters("x")] == ["x1", "x2", "x3"]
    assert [d.id for d in broker.dead_letters("x", limit=2)] == ["x1", "x2"]
    assert broker.dead_letters("z") == []


def test_requeue_dead_puts_it_back_as_a_fresh_message(broker: Broker) -> None:
    # Given a dead letter that had been delivered several times
    broker.publish(msg("m1"))
    broker.requeue(take_one(broker))
    broker.dead_letter(take_one(broker), "gave up")

    # When it is requeued
    assert broker.requeue_dead("m1") is True

    # Then it is ready in its queue, counting from the first delivery, and not dead
    again = take_one(broker)
    assert (again.id, again.body, again.deliveries) == ("m1", b"m1", 1)
    assert broker.dead_letters() == []
    assert broker.requeue_dead("m1") is False


def test_drop_dead_deletes_it_for_good(broker: Broker) -> None:
    broker.publish(msg("m1"))
    broker.dead_letter(take_one(broker), "gave up")

    assert broker.drop_dead("m1") is True

    assert broker.dead_letters() == []
    assert broker.drop_dead("m1") is False
    assert take(broker) == []


# -- inspection ----------------------------------------------------------------


def test_stats_count_every_state(broker: Broker) -> None:
    # Given one message dead, one in flight, one delayed and two ready
    broker.publish_many(
        [msg("dead"), msg("flight"), msg("r1"), msg("r2"), msg("later", eta=now() + 60)]
    )
    broker.dead_letter(take_one(broker), "x")
    assert take_one(broker).id == "flight"

    stats = broker.stats(["default", "unused"])

    assert stats == [
        QueueStats("default", ready=2, delayed=1, in_flight=1, dead=1),
        QueueStats("unused"),
    ]


def test_stats_without_queues_lists_every_queue_that_holds_anything(broker: Broker) -> None:
    broker.publish_many([msg("a", "alpha"), msg("b", "beta", eta=now() + 60), msg("c", "gamma")])
    broker.dead_letter(take_one_from(broker, "gamma"), "x")
    broker.publish(msg("d", "delta"))
    broker.ack([take_one_from(broker, "delta")])

    stats = {s.queue: s for s in broker.stats()}

    assert stats == {
        "alpha": QueueStats("alpha", ready=1),
        "beta": QueueStats("beta", delayed=1),
        "gamma": QueueStats("gamma", dead=1),
    }


def test_purge_deletes_only_ready_and_delayed_messages(broker: Broker) -> None:
    # Given a queue with messages in every state, and another queue
    broker.publish_many([msg("flight"), msg("dead")])
    take_one(broker)
    broker.dead_letter(take_one(broker), "x")
    broker.publish_many([msg("r1"), msg("r2"), msg("later", eta=now() + 60), msg("o", "other")])

    # When the queue is purged
    purged = broker.purge("default")

    # Then its ready and delayed messages are gone; in-flight, dead and others stay
    assert purged == 3
    assert broker.stats(["default", "other"]) == [
        QueueStats("default", in_flight=1, dead=1),
        QueueStats("other", ready=1),
    ]


# -- validation ----------------------------------------------------------------


@pytest.mark.parametrize("priority", [-1, 10])
def test_invalid_priority_is_rejected(broker: Broker, priority: int) -> None:
    with pytest.raises(ValueError, match="priority"):
        broker.publish(msg("m1", priority=priority))

    assert broker.stats() == []


def test_publish_many_is_all_or_none(broker: Broker) -> None:
    # Given a batch with one invalid message at the end
    batch = [msg("ok1"), msg("ok2", eta=now() + 60), msg("bad", priority=99)]

    # When it is published, Then it fails and nothing was stored
    with pytest.raises(ValueError, match="priority"):
        broker.publish_many(batch)
    assert broker.stats() == []
