"""The coordination contract suite: every sentence of the coordination section of
``conveyor.brokers.base`` (revoke to advance), for every broker.

Time to live tests use short ttls and sleep just past them. The concurrency tests
run in forked processes sharing the broker's store (SQLite, Redis); the memory
broker lives in one process, so there they run in threads.
"""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import redis

from conveyor.brokers import sqlite as sqlite_broker
from conveyor.brokers.base import Broker, OutgoingMessage
from conveyor.brokers.memory import MemoryBroker
from conveyor.brokers.redis import RedisBroker
from conveyor.brokers.sqlite import SqliteBroker

TTL = 0.3
PAST_TTL = TTL + 0.05
# Keys are any string: dots, colons, braces, spaces and non-ASCII included.
KEY = "app.tasks.send_mail:{user} é/1"

pytestmark = pytest.mark.timeout(60)


# -- running in parallel -------------------------------------------------------

Worker = Callable[[Broker, int, Any], Any]  # (broker, index, start barrier) -> result


def _report(target: Worker, broker: Broker, index: int, start: Any, results: Any) -> None:
    results.put((index, target(broker, index, start)))


def in_parallel(broker: Broker, n: int, target: Worker) -> list[Any]:
    """``target``'s results from ``n`` forked processes (threads for the in-process
    memory broker), in index order; they all wait at the barrier they are given, so
    that they start together."""
    ctx = multiprocessing.get_context("fork")
    if isinstance(broker, MemoryBroker):
        thread_start = threading.Barrier(n)
        out: dict[int, Any] = {}

        def run(i: int) -> None:
            out[i] = target(broker, i, thread_start)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert sorted(out) == list(range(n))
        return [out[i] for i in range(n)]
    start, results = ctx.Barrier(n), ctx.Queue()
    processes = [
        ctx.Process(target=_report, args=(target, broker, i, start, results)) for i in range(n)
    ]
    for p in processes:
        p.start()
    reports = dict(results.get(timeout=30) for _ in processes)
    for p in processes:
        p.join(timeout=10)
    assert [p.exitcode for p in processes] == [0] * n
    return [reports[i] for i in range(n)]


# -- revoke / revoked ----------------------------------------------------------


def test_revoked_answers_a_batch_with_each_ids_terminate_flag(broker: Broker) -> None:
    # Given ids revoked with and without terminate
    broker.revoke(["t1", "t2"], 10)
    broker.revoke(["t3"], 10, terminate=True)

    # When a batch holding them and others is looked up
    found = broker.revoked(["t1", "t2", "t3", "t4", "t1.x"])

    # Then exactly the revoked ones come back, each with its flag
    assert found == {"t1": False, "t2": False, "t3": True}
    assert broker.revoked([]) == {}


def test_revoked_answers_a_large_batch(broker: Broker) -> None:
    # Given many revoked ids
    ids = [f"task-{i}" for i in range(2000)]
    broker.revoke(ids, 10, terminate=True)
    broker.revoke(ids[:1000], 10)

    # When more ids than that are looked up at once
    found = broker.revoked([*ids, *(f"other-{i}" for i in range(1000))])

    # Then every revoked one is found, terminate kept
    assert found == dict.fromkeys(ids, True)


def test_revocation_expires_after_its_ttl_and_a_later_revoke_extends_it(broker: Broker) -> None:
    # Given two ids revoked for a short ttl
    broker.revoke(["a", "b"], TTL)
    time.sleep(TTL - 0.1)

    # When one of them is revoked again before it expires
    broker.revoke(["b"], TTL)
    time.sleep(0.15)

    # Then the other expires at its ttl, and that one lives on (ttl from the later call)
    assert broker.revoked(["a", "b"]) == {"b": False}


def test_terminate_once_recorded_stays_until_the_revocation_expires(broker: Broker) -> None:
    # Given an id revoked with terminate, and one revoked without
    broker.revoke(["a"], TTL, terminate=True)
    broker.revoke(["b"], 10)

    # When each is revoked again the other way
    broker.revoke(["a"], TTL)
    broker.revoke(["b"], 10, terminate=True)

    # Then both keep terminate
    assert broker.revoked(["a", "b"]) == {"a": True, "b": True}

    # And once a revocation has expired, a new one starts without it
    time.sleep(PAST_TTL)
    broker.revoke(["a"], 10)
    assert broker.revoked(["a"]) == {"a": False}


# -- rate_acquire --------------------------------------------------------------


def test_a_fetched_delivery_that_reports_revoked_agrees_with_revoked(broker: Broker) -> None:
    # Given two messages, one of them revoked (shortly), one revoked long ago
    for message_id in ("kept", "gone", "lapsed"):
        broker.publish(OutgoingMessage(message_id, "default", message_id.encode(), 0, None))
    broker.revoke(["gone"], 60)
    broker.revoke(["lapsed"], 0.1)
    time.sleep(0.15)

    # When they are fetched
    got = {d.id: d.revoked for d in broker.fetch(["default"], 10, consumer="c", timeout=0)}

    # Then a broker that looks revokes up in the fetch says the same as ``revoked``
    assert set(got) == {"kept", "gone", "lapsed"}
    if any(flag is not None for flag in got.values()):
        assert got == {"kept": False, "gone": True, "lapsed": False}
    assert broker.revoked(list(got)) == {"gone": False}


def test_rate_allows_a_burst_of_limit_then_one_permit_per_interval(broker: Broker) -> None:
    # Given a limit of 5 per second: a burst of 5 is granted at once
    assert [broker.rate_acquire(KEY, 5, 1.0) for _ in range(5)] == [0.0] * 5

    # When a 6th is asked for at once
    wait = broker.rate_acquire(KEY, 5, 1.0)

    # Then it must wait about one interval (period / limit), and asking again takes nothing
    assert 0.1 < wait <= 0.2
    again = broker.rate_acquire(KEY, 5, 1.0)
    assert 0 < again <= wait

    # And after that wait one permit is given, then the next must wait a whole interval
    time.sleep(again)
    assert broker.rate_acquire(KEY, 5, 1.0) == 0.0
    assert 0.15 < broker.rate_acquire(KEY, 5, 1.0) <= 0.2


def test_a_rate_request_asked_again_takes_no_second_permit(broker: Broker) -> None:
    # Given a limit of 2 per 10 s, and a request that was granted
    assert broker.rate_acquire(KEY, 2, 10.0, request="delivery-1") == 0.0

    # When the same request asks again (a call retried after a lost reply)
    again = broker.rate_acquire(KEY, 2, 10.0, request="delivery-1")

    # Then it is granted without taking a permit: one is still free for another
    assert again == 0.0
    assert broker.rate_acquire(KEY, 2, 10.0, request="delivery-2") == 0.0
    assert broker.rate_acquire(KEY, 2, 10.0, request="delivery-3") > 0.0


def test_rate_keys_are_independent(broker: Broker) -> None:
    # Given a key whose permits are used up
    assert broker.rate_acquire("tasks.a", 1, 10.0) == 0.0
    assert broker.rate_acquire("tasks.a", 1, 10.0) > 9.0

    # Then another key still has its own
    assert broker.rate_acquire("tasks.b", 1, 10.0) == 0.0
    assert broker.rate_acquire("tasks.a.b", 1, 10.0) == 0.0


def test_rate_gives_at_most_limit_plus_limit_times_window_over_period(broker: Broker) -> None:
    # Given a limit of 20 per second, asked for as fast as it allows during 0.3 s
    window = 0.3
    granted = 0
    deadline = time.monotonic() + window
    while (left := deadline - time.monotonic()) > 0:
        wait = broker.rate_acquire(KEY, 20, 1.0)
        if wait:
            time.sleep(min(wait, left))
        else:
            granted += 1

    # Then it gave the burst and one per interval, never more than limit + limit * T / period
    assert 20 + 5 <= granted <= 20 + 20 * window / 1.0


def test_rate_permits_are_shared_by_every_process(broker: Broker) -> None:
    # Given several processes asking for 5 permits each at once, of a limit of 5 per 10 s
    def ask(b: Broker, index: int, start: Any) -> list[float]:
        start.wait()
        return [b.rate_acquire(KEY, 5, 10.0) for _ in range(5)]

    waits = [w for got in in_parallel(broker, 4, ask) for w in got]

    # Then exactly 5 were granted among them all, and every other one was told to wait
    assert waits.count(0.0) == 5
    assert all(0 < w <= 10.0 for w in waits if w)


# -- slots -----------------------------------------------------------------------


def test_slots_hold_at_most_limit_holders(broker: Broker) -> None:
    # Given a key with 2 slots, held by two holders
    assert broker.slot_acquire(KEY, 2, "w1", 10)
    assert broker.slot_acquire(KEY, 2, "w2", 10)

    # Then a third is refused, and a holder asking again is told it holds one
    assert not broker.slot_acquire(KEY, 2, "w3", 10)
    assert broker.slot_acquire(KEY, 2, "w1", 10)
    # And another key's slots are its own
    assert broker.slot_acquire(KEY + ".other", 2, "w3", 10)


def test_a_holder_acquiring_again_extends_its_slot(broker: Broker) -> None:
    # Given the only slot held for a short ttl
    assert broker.slot_acquire(KEY, 1, "w1", TTL)
    time.sleep(TTL - 0.1)

    # When its holder acquires it again
    assert broker.slot_acquire(KEY, 1, "w1", TTL)
    time.sleep(0.15)

    # Then it still holds it past the first ttl
    assert not broker.slot_acquire(KEY, 1, "w2", TTL)


def test_expired_holders_are_dropped_first(broker: Broker) -> None:
    # Given both slots held by holders that then crash (their ttl runs out)
    assert broker.slot_acquire(KEY, 2, "crashed1", TTL)
    assert broker.slot_acquire(KEY, 2, "crashed2", TTL)
    assert not broker.slot_acquire(KEY, 2, "w1", TTL)
    time.sleep(PAST_TTL)

    # Then new holders get both slots, and no more
    assert broker.slot_acquire(KEY, 2, "w1", 10)
    assert broker.slot_acquire(KEY, 2, "w2", 10)
    assert not broker.slot_acquire(KEY, 2, "w3", 10)


def test_slot_renew_extends_current_holders_and_ignores_others(broker: Broker) -> None:
    # Given two holders of 2 slots, both for a short ttl
    assert broker.slot_acquire(KEY, 2, "w1", TTL)
    assert broker.slot_acquire(KEY, 2, "w2", TTL)
    time.sleep(TTL - 0.1)

    # When one of them is renewed, together with a holder that holds none
    broker.slot_renew(KEY, ["w1", "ghost"], TTL)
    time.sleep(0.15)

    # Then past the first ttl the renewed one still holds its slot, the other's is free,
    # and renewing a holder whose slot expired gives it nothing back
    broker.slot_renew(KEY, ["w2"], 10)
    assert broker.slot_acquire(KEY, 2, "w3", 10)
    assert not broker.slot_acquire(KEY, 2, "w4", 10)
    broker.slot_renew(KEY, [], 10)


def test_slot_release_gives_the_slot_back(broker: Broker) -> None:
    # Given the only slot held
    assert broker.slot_acquire(KEY, 1, "w1", 10)

    # When someone that holds none releases, nothing changes
    broker.slot_release(KEY, "w2")
    assert not broker.slot_acquire(KEY, 1, "w2", 10)

    # When its holder releases it, another may take it
    broker.slot_release(KEY, "w1")
    broker.slot_release(KEY, "w1")
    assert broker.slot_acquire(KEY, 1, "w2", 10)


def test_slots_never_exceed_the_limit_across_processes(broker: Broker) -> None:
    # Given 4 processes competing for 2 slots, each holding one a little when it gets it
    limit = 2
    ctx = multiprocessing.get_context("fork")
    inside, most = ctx.Value("i", 0), ctx.Value("i", 0)

    def compete(b: Broker, index: int, start: Any) -> tuple[int, int]:
        held = refused = 0
        start.wait()
        for attempt in range(20):
            holder = f"p{index}-{attempt}"
            if not b.slot_acquire(KEY, limit, holder, 10):
                refused += 1
                time.sleep(0.001)
                continue
            held += 1
            with inside.get_lock():
                inside.value += 1
                most.value = max(most.value, inside.value)
            time.sleep(0.005)
            with inside.get_lock():
                inside.value -= 1
            b.slot_release(KEY, holder)
        return held, refused

    outcomes = in_parallel(broker, 4, compete)

    # Then no more than 2 ever held a slot at once, though they did contend
    assert most.value <= limit
    assert sum(held for held, _ in outcomes) > 0
    assert sum(refused for _, refused in outcomes) > 0


# -- claims --------------------------------------------------------------------


def test_claim_is_taken_by_the_first_owner_only(broker: Broker) -> None:
    # Given a key claimed by one owner
    assert broker.claim(KEY, "task-1", 10) is None

    # Then another owner is told who holds it, and the owner itself is answered None
    assert broker.claim(KEY, "task-2", 10) == "task-1"
    assert broker.claim(KEY, "task-1", 10) is None
    # And another key is free
    assert broker.claim(KEY + "x", "task-2", 10) is None


def test_claim_expires_after_its_ttl_which_claiming_again_does_not_change(
    broker: Broker,
) -> None:
    # Given a claim for a short ttl, claimed again by its owner before it expires
    assert broker.claim(KEY, "task-1", TTL) is None
    time.sleep(TTL - 0.1)
    assert broker.claim(KEY, "task-1", 10) is None
    time.sleep(0.15)

    # Then it expires at its first ttl: another owner may claim it, and the old owner
    # cannot release it
    assert broker.claim(KEY, "task-2", 10) is None
    assert not broker.release_claim(KEY, "task-1")
    assert broker.claim(KEY, "task-1", 10) == "task-2"


def test_release_claim_deletes_only_the_owners_claim(broker: Broker) -> None:
    # Given a claimed key
    assert broker.claim(KEY, "task-1", 10) is None

    # When someone else releases it, nothing changes
    assert broker.release_claim(KEY, "task-2") is False
    assert broker.claim(KEY, "task-2", 10) == "task-1"

    # When its owner releases it, it is deleted (once) and free to claim
    assert broker.release_claim(KEY, "task-1") is True
    assert broker.release_claim(KEY, "task-1") is False
    assert broker.claim(KEY, "task-2", 10) is None
    assert broker.release_claim("never claimed", "task-2") is False


def test_a_claim_race_across_processes_has_exactly_one_winner(broker: Broker) -> None:
    # Given 6 processes claiming the same keys at the same moment
    rounds = 10

    def race(b: Broker, index: int, start: Any) -> list[str | None]:
        start.wait()
        return [b.claim(f"race-{r}", f"p{index}", 10) for r in range(rounds)]

    answers = in_parallel(broker, 6, race)

    # Then for each key exactly one got None, and every other was told it is the owner
    for r in range(rounds):
        got = [a[r] for a in answers]
        (winner,) = [f"p{i}" for i, owner in enumerate(got) if owner is None]
        assert Counter(got) == {None: 1, winner: 5}


# -- tallies -------------------------------------------------------------------


def test_tally_counts_each_member_once(broker: Broker) -> None:
    # Given a new tally, with members added, one of them twice (a retried call)
    assert [broker.tally(KEY, m, 10) for m in ("a", "b", "a", "c")] == [1, 2, 2, 3]

    # Then another key counts on its own
    assert broker.tally(KEY + ".2", "a", 10) == 1
    assert broker.tally(KEY, "d", 10) == 4


def test_a_tally_expires_ttl_after_its_last_call(broker: Broker) -> None:
    # Given two tallies with a short ttl, one of them added to again before it expires
    assert broker.tally("kept", "a", TTL) == 1
    assert broker.tally("left", "a", TTL) == 1
    time.sleep(TTL - 0.1)
    assert broker.tally("kept", "b", TTL) == 2
    time.sleep(0.15)

    # Then past the first ttl that one counts on, and the other starts again empty
    assert broker.tally("kept", "c", TTL) == 3
    assert broker.tally("left", "b", TTL) == 1


def test_tally_across_processes_answers_the_full_count_exactly_once(broker: Broker) -> None:
    # Given 4 processes adding 50 distinct members each, every member twice
    def count(b: Broker, index: int, start: Any) -> list[int]:
        start.wait()
        return [b.tally(KEY, f"{index}-{i // 2}", 10) for i in range(100)]

    values = [v for got in in_parallel(broker, 4, count) for v in got]

    # Then the count grew one member at a time to 200: no member counted twice
    assert max(values) == 200
    assert sorted(set(values)) == list(range(1, 201))


# -- marks -----------------------------------------------------------------------


def test_advance_raises_a_mark_and_returns_the_value_before(broker: Broker) -> None:
    # Given a new mark, advanced
    assert broker.advance(KEY, 100.5, 10) is None

    # Then each advance answers the value before it, and only a higher value raises it
    assert broker.advance(KEY, 200.25, 10) == 100.5
    assert broker.advance(KEY, 150.0, 10) == 200.25
    assert broker.advance(KEY, 200.25, 10) == 200.25
    assert broker.advance(KEY, None, 10) == 200.25
    # And another key is a mark of its own
    assert broker.advance(KEY + ".2", None, 10) is None
    assert broker.advance(KEY + ".2", -5.0, 10) is None
    assert broker.advance(KEY + ".2", None, 10) == -5.0


def test_advance_keeps_a_unix_time_exactly(broker: Broker) -> None:
    # Given a mark advanced to a UNIX time with a fraction
    slot = 1_767_225_605.123456
    broker.advance(KEY, slot, 10)

    # Then it is read back exactly, and an advance by the smallest step is a raise
    assert broker.advance(KEY, None, 10) == slot
    assert broker.advance(KEY, slot + 1e-6, 10) == slot
    assert broker.advance(KEY, None, 10) == slot + 1e-6


def test_a_mark_expires_ttl_after_it_was_raised_and_reading_does_not_extend_it(
    broker: Broker,
) -> None:
    # Given two marks with a short ttl; one raised again before it expires, the other
    # advanced to a lower value and read (neither raises it)
    broker.advance("kept", 1.0, TTL)
    broker.advance("left", 5.0, TTL)
    time.sleep(TTL - 0.1)
    assert broker.advance("kept", 2.0, TTL) == 1.0
    assert broker.advance("left", 4.0, 10) == 5.0
    assert broker.advance("left", None, 10) == 5.0
    time.sleep(0.15)

    # Then past the first ttl the raised one is kept, and the other is gone
    assert broker.advance("kept", None, TTL) == 2.0
    assert broker.advance("left", 3.0, 10) is None
    assert broker.advance("left", None, 10) == 3.0


def test_concurrent_advances_each_see_the_value_left_before_them(broker: Broker) -> None:
    # Given 4 processes advancing one mark to interleaved values at the same moment
    def climb(b: Broker, index: int, start: Any) -> list[tuple[float, float | None]]:
        start.wait()
        return [(v, b.advance(KEY, v, 10)) for v in (float(4 * i + index) for i in range(25))]

    answers = [a for got in in_parallel(broker, 4, climb) for a in got]

    # Then the advances form one history: the mark ends at the highest value; each
    # advance that raised it was answered the value of the raise before (None: the
    # first), and every other one a value that some raise left, at least its own
    assert broker.advance(KEY, None, 10) == 99.0
    raises = sorted((v, p) for v, p in answers if p is None or v > p)
    raised = [v for v, _ in raises]
    assert raised[-1] == 99.0
    assert [p for _, p in raises] == [None, *raised[:-1]]
    assert all(p in raised and p >= v for v, p in answers if not (p is None or v > p))


# -- arguments -----------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda b: b.revoke(["a"], 0),
        lambda b: b.rate_acquire(KEY, 0, 1.0),
        lambda b: b.rate_acquire(KEY, 1, 0),
        lambda b: b.slot_acquire(KEY, 0, "w1", 1),
        lambda b: b.slot_acquire(KEY, 1, "w1", -1),
        lambda b: b.claim(KEY, "task-1", 0),
        lambda b: b.tally(KEY, "m", 0),
        lambda b: b.advance(KEY, 1.0, 0),
    ],
    ids=[
        "revoke ttl",
        "rate limit",
        "rate period",
        "slot limit",
        "slot ttl",
        "claim",
        "tally",
        "advance",
    ],
)
def test_non_positive_limits_periods_and_ttls_are_refused(
    broker: Broker, call: Callable[[Broker], object]
) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        call(broker)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_mark_is_a_finite_number(broker: Broker, value: float) -> None:
    with pytest.raises(ValueError, match="must be a finite number"):
        broker.advance(KEY, value, 10)
    assert broker.advance(KEY, None, 10) is None


# -- what the stores keep ----------------------------------------------------------


def use_everything(broker: Broker, ttl: float, key: str = KEY) -> None:
    """One record of each kind, all expiring within ``ttl``."""
    broker.revoke(["t1", "t2"], ttl, terminate=True)
    assert broker.revoked(["t1"]) == {"t1": True}
    assert broker.rate_acquire(key, 5, ttl, request="r1") == 0.0
    assert broker.slot_acquire(key, 2, "w1", ttl)
    assert broker.slot_acquire(key, 2, "w2", ttl)
    broker.slot_renew(key, ["w1"], ttl)
    broker.slot_release(key, "w2")
    assert broker.claim(key, "task-1", ttl) is None
    assert broker.claim("released", "task-1", ttl) is None
    assert broker.release_claim("released", "task-1")
    assert broker.tally(key, "m", ttl) == 1
    assert broker.advance(key, 1.5, ttl) is None


def test_redis_keys_are_under_the_prefix_and_expire_with_their_records(redis_url: str) -> None:
    # Given a broker with its own prefix that used every kind of record
    broker = RedisBroker(redis_url, prefix="app1")
    client = redis.Redis.from_url(redis_url)
    try:
        use_everything(broker, TTL)

        # Then each kind is one key under the prefix, and each key has a ttl
        ttls = {key.decode(): client.pttl(key) for key in client.scan_iter()}
        kinds = [
            "revoked",
            f"rate:{KEY}",
            f"slots:{KEY}",
            f"claim:{KEY}",
            f"tally:{KEY}",
            f"mark:{KEY}",
        ]
        assert set(ttls) == {f"app1:{kind}" for kind in kinds}
        assert all(0 < ttl <= TTL * 1000 for ttl in ttls.values()), ttls

        # And once the records have expired, no key is left
        time.sleep(PAST_TTL)
        assert list(client.scan_iter()) == []
    finally:
        client.close()
        broker.close()


def test_sqlite_deletes_expired_records_when_it_writes(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a broker that sweeps on every write, and records of every kind, expired
    monkeypatch.setattr(sqlite_broker, "SWEEP_SECONDS", 0.0)
    path = tmp_path / "broker.sqlite3"
    broker = SqliteBroker(f"sqlite:///{path}")
    use_everything(broker, TTL)
    time.sleep(PAST_TTL)

    # When each kind is written again, for other keys
    use_everything(broker, 10, key="other")

    # Then only the new records are left
    tables = ["revoked", "rates", "rate_grants", "slots", "claims", "tallies", "marks"]
    with sqlite3.connect(path) as conn:
        left = {t: conn.execute(f"SELECT count(*) FROM conveyor_{t}").fetchone()[0] for t in tables}
    conn.close()
    assert left == {
        "revoked": 2,
        "rates": 1,
        "rate_grants": 1,
        "slots": 1,
        "claims": 1,
        "tallies": 1,
        "marks": 1,
    }
    broker.close()
