"""Publishes sent together: ``Coalescer`` (threads) and ``AsyncCoalescer`` (coroutines).

The ``send`` functions here are real: they record each batch and, to make callers
queue up behind a send in flight, the first one blocks on an event the test sets.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence

import pytest

from conveyor.brokers import coalescing
from conveyor.brokers.base import OutgoingMessage
from conveyor.brokers.coalescing import MAX_BATCH, AsyncCoalescer, Coalescer
from conveyor.brokers.memory import MemoryBroker

#: A hang guard for every wait below, never a speed claim.
WAIT = 10.0


def msg(i: int | str) -> OutgoingMessage:
    return OutgoingMessage(id=f"m{i}", queue="default", body=f"{i}".encode())


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.001)


class Failed(Exception):
    """What a failing send raises."""


class Sends:
    """A ``send`` (``publish_many``) that records its batches. Sends numbered in
    ``hold`` (1 = the first) block until ``release(n)``; those in ``fail`` raise
    ``errors[n]`` once done."""

    def __init__(self, hold: Sequence[int] = (), fail: Sequence[int] = ()) -> None:
        self.lock = threading.Lock()
        self.batches: list[list[str]] = []
        #: Ids whose send returned (or raised): a caller may return only after that.
        self.finished: set[str] = set()
        self.entered = {n: threading.Event() for n in hold}
        self.go = {n: threading.Event() for n in hold}
        self.errors = {n: Failed(f"send {n} failed") for n in fail}

    def __call__(self, messages: Sequence[OutgoingMessage]) -> None:
        with self.lock:
            self.batches.append([m.id for m in messages])
            number = len(self.batches)
        if number in self.go:
            self.entered[number].set()
            assert self.go[number].wait(WAIT), f"send {number} was never released"
        with self.lock:
            self.finished.update(m.id for m in messages)
        if number in self.errors:
            raise self.errors[number]

    def release(self, number: int) -> None:
        self.go[number].set()


class Caller(threading.Thread):
    """One thread publishing one message; records how its call ended."""

    def __init__(self, coalescer: Coalescer, sends: Sends, message: OutgoingMessage) -> None:
        super().__init__(daemon=True)
        self.coalescer = coalescer
        self.sends = sends
        self.message = message
        self.error: BaseException | None = None
        self.returned = False
        self.sent_before_return: bool | None = None

    def run(self) -> None:
        try:
            self.coalescer.publish(self.message)
        except BaseException as exc:
            self.error = exc
        else:
            self.returned = True
        with self.sends.lock:
            self.sent_before_return = self.message.id in self.sends.finished

    def finish(self) -> None:
        self.join(WAIT)
        assert not self.is_alive(), f"publish({self.message.id}) never returned"


def queued_behind(
    coalescer: Coalescer, sends: Sends, count: int, start: int = 1
) -> tuple[Caller, list[Caller]]:
    """A first caller whose send is in flight (held), and ``count`` callers queued behind it."""
    first = Caller(coalescer, sends, msg(0))
    first.start()
    assert sends.entered[1].wait(WAIT)
    callers = [Caller(coalescer, sends, msg(i)) for i in range(start, start + count)]
    for caller in callers:
        caller.start()
    wait_until(lambda: len(coalescer._queued) == count, f"{count} callers to queue up")
    return first, callers


# -- threads ---------------------------------------------------------------------------


def test_one_caller_alone_sends_its_message_at_once() -> None:
    sends = Sends()
    coalescer = Coalescer(sends)

    coalescer.publish(msg(1))

    assert sends.batches == [["m1"]]


def test_callers_arriving_during_a_send_go_out_together_in_the_next_one() -> None:
    # Given a send in flight, and 20 threads that publish meanwhile
    sends = Sends(hold=(1, 2))
    coalescer = Coalescer(sends)
    first, callers = queued_behind(coalescer, sends, 20)
    assert sends.batches == [["m0"]]

    # When the first send finishes
    sends.release(1)

    # Then the 20 queued messages go out in one second send, while whoever started
    # the first send returns without waiting for it
    assert sends.entered[2].wait(WAIT)
    first.finish()
    assert (first.returned, first.sent_before_return) == (True, True)
    assert not any(caller.returned for caller in callers)
    sends.release(2)
    for caller in callers:
        caller.finish()
    assert [len(batch) for batch in sends.batches] == [1, 20]
    assert sorted(sends.batches[1]) == sorted(c.message.id for c in callers)
    # And each message was sent once, each caller returning after its send finished
    assert Counter(i for batch in sends.batches for i in batch) == Counter(
        f"m{i}" for i in range(21)
    )
    assert all(c.returned and c.error is None and c.sent_before_return for c in callers)


def test_a_failed_send_raises_its_error_in_every_caller_it_carried_and_later_sends_work() -> None:
    # Given 5 callers queued behind a send in flight, whose send then fails
    sends = Sends(hold=(1,), fail=(2,))
    coalescer = Coalescer(sends)
    first, callers = queued_behind(coalescer, sends, 5)

    # When the first send finishes
    sends.release(1)
    first.finish()
    for caller in callers:
        caller.finish()

    # Then the first caller succeeded, and each of the 5 raised that send's very error
    assert first.returned
    assert first.error is None
    assert [len(batch) for batch in sends.batches] == [1, 5]
    assert all(caller.error is sends.errors[2] for caller in callers)
    assert not any(caller.returned for caller in callers)
    # And the next publish is sent as usual
    coalescer.publish(msg("later"))
    assert sends.batches[-1] == ["mlater"]


def test_a_failed_first_send_fails_only_its_own_caller_not_those_queued_behind_it() -> None:
    # Given callers queued behind a first send that fails
    sends = Sends(hold=(1,), fail=(1,))
    coalescer = Coalescer(sends)
    first, callers = queued_behind(coalescer, sends, 3)

    # When it finishes
    sends.release(1)
    first.finish()
    for caller in callers:
        caller.finish()

    # Then its caller raised its error; the others were sent next, successfully
    assert first.error is sends.errors[1]
    assert [len(batch) for batch in sends.batches] == [1, 3]
    assert all(caller.returned and caller.error is None for caller in callers)


def test_a_base_exception_of_a_send_reaches_its_caller_too() -> None:
    def send(messages: Sequence[OutgoingMessage]) -> None:
        raise KeyboardInterrupt

    coalescer = Coalescer(send)

    with pytest.raises(KeyboardInterrupt):
        coalescer.publish(msg(1))
    with pytest.raises(KeyboardInterrupt):  # not stuck "sending"
        coalescer.publish(msg(2))


def test_a_send_carries_at_most_max_batch_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a batch limit of 4, and 10 callers queued behind a send in flight
    monkeypatch.setattr(coalescing, "MAX_BATCH", 4)
    sends = Sends(hold=(1,))
    coalescer = Coalescer(sends)
    first, callers = queued_behind(coalescer, sends, 10)

    # When the first send finishes
    sends.release(1)
    for caller in [first, *callers]:
        caller.finish()

    # Then the queue goes out 4 at a time, each message once, every caller served
    assert [len(batch) for batch in sends.batches] == [1, 4, 4, 2]
    assert Counter(i for batch in sends.batches for i in batch) == Counter(
        f"m{i}" for i in range(11)
    )
    assert all(c.returned and c.sent_before_return for c in callers)


class HeldBroker(MemoryBroker):
    """A memory broker whose first ``publish_many`` in this process waits for ``go``."""

    def __init__(self) -> None:
        super().__init__()
        self.parent = os.getpid()
        self.entered = threading.Event()
        self.go = threading.Event()

    def publish_many(self, messages: Sequence[OutgoingMessage]) -> None:
        if os.getpid() == self.parent and not self.entered.is_set():
            self.entered.set()
            assert self.go.wait(3 * WAIT)  # (the test waits up to WAIT for its child)
        super().publish_many(messages)


def exit_status_of(pid: int) -> int | None:
    """The child's exit status, or None if it had to be killed (it hung)."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


# Python 3.12+ warns about fork() with threads running: the point of this test.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_publishes_without_waiting_for_a_send_of_its_parent() -> None:
    # Given a thread of this process with a publish in flight (a prefork pool forks a
    # child while, say, the settler publishes a retry)
    broker = HeldBroker()
    parent_send = threading.Thread(target=broker.publish, args=(msg("parent"),), daemon=True)
    parent_send.start()
    assert broker.entered.wait(WAIT)

    # When a child is forked then, and publishes
    pid = os.fork()
    if pid == 0:  # the child: no pytest from here on
        code = 1
        try:
            broker.publish(msg("child"))
            fetched = broker.fetch(["default"], 10, consumer="c", timeout=0)
            code = 0 if [d.id for d in fetched] == ["mchild"] else 2
        finally:
            os._exit(code)
    status = exit_status_of(pid)
    broker.go.set()
    parent_send.join(WAIT)

    # Then its publish went through (nothing of the parent's send is the child's to wait for)
    assert status == 0, "the child's publish hung" if status is None else f"exit {status}"
    assert [d.id for d in broker.fetch(["default"], 10, consumer="c", timeout=0)] == ["mparent"]


# -- coroutines ------------------------------------------------------------------------


class AsyncSends:
    """An async ``send`` that records its batches; the first may be held on an event."""

    def __init__(self, hold_first: bool = False, fail: Sequence[int] = ()) -> None:
        self.batches: list[list[str]] = []
        self.finished: set[str] = set()
        self.hold_first = hold_first
        self.errors = {n: Failed(f"send {n} failed") for n in fail}
        self.entered = asyncio.Event()
        self.go = asyncio.Event()

    async def __call__(self, messages: Sequence[OutgoingMessage]) -> None:
        self.batches.append([m.id for m in messages])
        number = len(self.batches)
        if number == 1 and self.hold_first:
            self.entered.set()
            await self.go.wait()
        else:
            await asyncio.sleep(0)  # a real send gives the loop back
        self.finished.update(m.id for m in messages)
        if number in self.errors:
            raise self.errors[number]


def test_concurrent_coroutines_are_sent_in_far_fewer_sends_than_messages() -> None:
    sends = AsyncSends()
    coalescer = AsyncCoalescer(sends)
    sent_before_return: list[bool] = []

    async def producer(n: int) -> None:
        for round_ in range(4):
            message = msg(f"{n}-{round_}")
            await coalescer.publish(message)
            sent_before_return.append(message.id in sends.finished)

    async def main() -> None:
        await asyncio.gather(*(producer(n) for n in range(64)))

    asyncio.run(asyncio.wait_for(main(), WAIT))

    # 256 messages, each sent once, in a handful of sends (one per round here)
    sent = [i for batch in sends.batches for i in batch]
    assert Counter(sent) == Counter(f"m{n}-{r}" for n in range(64) for r in range(4))
    assert len(sends.batches) <= 8
    assert len(sent_before_return) == 256
    assert all(sent_before_return)


def test_coroutines_queued_behind_a_send_in_flight_go_out_together_next() -> None:
    sends = AsyncSends(hold_first=True)
    coalescer = AsyncCoalescer(sends)

    async def main() -> None:
        first = asyncio.create_task(coalescer.publish(msg(0)))
        await asyncio.wait_for(sends.entered.wait(), WAIT)
        queued = [asyncio.create_task(coalescer.publish(msg(i))) for i in range(1, 11)]
        await asyncio.sleep(0)  # they run up to their await: queued
        assert not any(task.done() for task in [first, *queued])
        sends.go.set()
        await asyncio.wait_for(asyncio.gather(first, *queued), WAIT)

    asyncio.run(main())

    assert [len(batch) for batch in sends.batches] == [1, 10]
    assert sorted(sends.batches[1]) == sorted(f"m{i}" for i in range(1, 11))


def test_an_async_send_error_reaches_every_awaiter_of_its_batch_and_later_sends_work() -> None:
    sends = AsyncSends(hold_first=True, fail=(2,))
    coalescer = AsyncCoalescer(sends)

    async def main() -> tuple[list[BaseException | None], BaseException | None]:
        first = asyncio.create_task(coalescer.publish(msg(0)))
        await asyncio.wait_for(sends.entered.wait(), WAIT)
        queued = [asyncio.create_task(coalescer.publish(msg(i))) for i in range(1, 6)]
        await asyncio.sleep(0)
        sends.go.set()
        outcomes = await asyncio.wait_for(asyncio.gather(*queued, return_exceptions=True), WAIT)
        await first
        await coalescer.publish(msg("later"))
        errors = [o if isinstance(o, BaseException) else None for o in outcomes]
        return errors, first.exception()

    errors, first_error = asyncio.run(main())

    assert [len(batch) for batch in sends.batches] == [1, 5, 1]
    assert all(error is sends.errors[2] for error in errors)
    assert first_error is None
    assert sends.batches[-1] == ["mlater"]


def test_a_cancelled_awaiter_does_not_break_the_others() -> None:
    sends = AsyncSends(hold_first=True)
    coalescer = AsyncCoalescer(sends)

    async def main() -> None:
        tasks = [asyncio.create_task(coalescer.publish(msg(i))) for i in range(3)]
        await asyncio.wait_for(sends.entered.wait(), WAIT)
        # When one awaiter of the send in flight is cancelled
        tasks[1].cancel()
        await asyncio.sleep(0)
        sends.go.set()
        # Then the others return normally (their batch was sent), the cancelled one
        # is cancelled, and the coalescer keeps working
        await asyncio.wait_for(asyncio.gather(tasks[0], tasks[2]), WAIT)
        with pytest.raises(asyncio.CancelledError):
            await tasks[1]
        await asyncio.wait_for(coalescer.publish(msg("later")), WAIT)

    asyncio.run(main())

    # the cancelled caller's message was already on its way: it is sent anyway
    assert sends.batches == [["m0", "m1", "m2"], ["mlater"]]


def test_a_coroutine_send_carries_at_most_max_batch_messages() -> None:
    sends = AsyncSends()
    coalescer = AsyncCoalescer(sends)
    count = 2 * MAX_BATCH + 7

    async def main() -> None:
        await asyncio.wait_for(
            asyncio.gather(*(coalescer.publish(msg(i)) for i in range(count))), WAIT
        )

    asyncio.run(main())

    assert [len(batch) for batch in sends.batches] == [MAX_BATCH, MAX_BATCH, 7]
    assert Counter(i for batch in sends.batches for i in batch) == Counter(
        f"m{i}" for i in range(count)
    )
