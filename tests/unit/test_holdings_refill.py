"""What a worker holds (``Holdings``): the room counts only unacknowledged jobs; and the
fetch made with acks (``Refill``) hands what it fetched on."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from conveyor.brokers.base import Delivery
from conveyor.message import Message
from conveyor.worker.holdings import Holdings, Refill
from conveyor.worker.job import Job


def job(n: int, acks_late: bool = True) -> Job:
    delivery = Delivery(f"t{n}", "celery", b"{}", 0, f"token-{n}", 1)
    return Job(delivery, Message(id=f"t{n}", task="proj.t"), acks_late=acks_late)


def held(capacity: int, count: int) -> tuple[Holdings, list[Job]]:
    holdings = Holdings(capacity)
    jobs = [job(n) for n in range(count)]
    for j in jobs:
        holdings.add(j)
    return holdings, jobs


# -- room ------------------------------------------------------------------------------


def test_held_jobs_use_the_room_up() -> None:
    holdings, _ = held(3, 2)

    assert holdings.room() == 1
    assert holdings.add(job(9)) == 3
    assert holdings.room() == 0
    assert holdings.add(job(10)) == 4
    assert holdings.room() == -1  # over, e.g. after a refill raced the loop


def test_an_acknowledged_job_frees_its_room_while_still_held() -> None:
    # Given a full worker (2 of 2)
    holdings, jobs = held(2, 2)
    assert holdings.room() == 0

    # When one job is acked early (it started)
    holdings.set_acked(jobs[:1], [True])

    # Then it no longer counts, though it is still held (it runs)
    assert holdings.room() == 1
    assert len(holdings) == 2
    assert holdings.get("token-0") is jobs[0]
    assert jobs[0].acked
    assert holdings.unacked() == [jobs[1].delivery]


def test_a_refused_ack_frees_no_room() -> None:
    holdings, jobs = held(2, 2)

    holdings.set_acked(jobs, [False, True])

    assert holdings.room() == 1
    assert not jobs[0].acked
    assert holdings.unacked() == [jobs[0].delivery]


def test_acking_the_same_job_twice_frees_its_room_once() -> None:
    holdings, jobs = held(2, 2)

    holdings.set_acked(jobs[:1], [True])
    holdings.set_acked(jobs[:1], [True])

    assert holdings.room() == 1


def test_releasing_an_acknowledged_job_does_not_free_its_room_twice() -> None:
    # Given 2 of 3 held, one of them acked (room 2)
    holdings, jobs = held(3, 2)
    holdings.set_acked(jobs[:1], [True])
    assert holdings.room() == 2

    # When the acked job finishes and is released
    holdings.release(jobs[:1])

    # Then the room is unchanged: it had been freed by the ack already
    assert holdings.room() == 2
    assert len(holdings) == 1
    # And releasing the unacked one frees its room
    holdings.release(jobs[1:])
    assert holdings.room() == 3
    # And releasing again changes nothing
    holdings.release(jobs)
    assert holdings.room() == 3
    assert len(holdings) == 0


def test_an_ack_of_a_job_no_longer_held_frees_nothing() -> None:
    # Given a job released (given back) before its ack's answer came
    holdings, jobs = held(2, 2)
    holdings.release(jobs[:1])
    assert holdings.room() == 1

    # When the ack is recorded
    holdings.set_acked(jobs[:1], [True])

    # Then the room is what the held jobs leave: not counted twice
    assert holdings.room() == 1
    holdings.release(jobs[1:])
    assert holdings.room() == 2


def test_take_frees_the_room_of_a_job_unless_it_is_being_settled() -> None:
    holdings, jobs = held(3, 3)
    holdings.set_acked(jobs[2:], [True])
    assert holdings.room() == 1

    # A job being settled stays, for the settler
    holdings.mark_settling(jobs[:1])
    assert holdings.take(jobs[0]) is False
    assert holdings.get("token-0") is jobs[0]
    assert holdings.room() == 1

    # An unacked job taken frees its room; taking it again does nothing
    assert holdings.take(jobs[1]) is True
    assert holdings.room() == 2
    assert holdings.take(jobs[1]) is False
    assert holdings.room() == 2

    # An acked job taken leaves the room as it was (its room was freed by the ack)
    assert holdings.take(jobs[2]) is True
    assert holdings.room() == 2
    assert holdings.jobs() == [jobs[0]]


def test_waiting_for_room_returns_at_once_when_acked_jobs_left_some() -> None:
    # Given a full worker whose one job was acked early
    holdings, jobs = held(1, 1)
    holdings.set_acked(jobs, [True])
    stop = threading.Event()
    beats: list[int] = []

    def beat() -> None:  # called only while it waits: stop then, not to hang on a bug
        beats.append(1)
        stop.set()

    # When the fetch loop waits for room
    room = holdings.wait_for_room(stop, beat)

    # Then it does not wait: the acked job leaves room for one
    assert (room, beats) == (1, [])


def test_waiting_for_room_ends_when_an_ack_frees_some() -> None:
    # Given a full worker and the fetch loop waiting for room
    holdings, jobs = held(1, 1)
    stop = threading.Event()
    waiting = threading.Event()
    rooms: list[int] = []
    loop = threading.Thread(
        target=lambda: rooms.append(holdings.wait_for_room(stop, waiting.set)), daemon=True
    )
    loop.start()
    assert waiting.wait(10)

    # When its job is acked (it started)
    holdings.set_acked(jobs, [True])

    # Then the wait ends with room for one more
    loop.join(10)
    stop.set()  # (a guard: a wait that missed the ack ends here, and fails below)
    loop.join(10)
    assert rooms == [1]


# -- refill ----------------------------------------------------------------------------


def test_refill_admits_what_was_fetched_with_its_generation() -> None:
    admitted: list[tuple[list[str], int]] = []

    def admit(deliveries: Sequence[Delivery], generation: int) -> None:
        admitted.append(([d.id for d in deliveries], generation))

    refill = Refill(2, ["celery"], "w1", admit, generation=7)
    fetched = [job(1).delivery, job(2).delivery]

    refill.admit(fetched)

    assert admitted == [(["t1", "t2"], 7)]


def test_refill_with_nothing_fetched_admits_nothing() -> None:
    admitted: list[Sequence[Delivery]] = []
    refill = Refill(2, ["celery"], "w1", lambda deliveries, _: admitted.append(deliveries), 3)

    refill.admit([])

    assert admitted == []


def test_a_refill_without_room_has_nowhere_to_admit() -> None:
    refill = Refill(0, (), "w1")

    refill.admit([job(1).delivery])  # nothing to hand them to: no error

    assert (refill.room, refill.admit_to, refill.generation) == (0, None, 0)
