"""Concurrent publishes of one process sent together, each still returning only once
the broker holds its message.

A web app sends from many requests at once. Sent one by one, each ``delay()`` waits
for its own round trip and the connection carries one message per trip. Here the
first caller sends at once; callers arriving while a send is in flight queue up,
and the next send (made by one of them) carries every queued message in one
``publish_many``. Each caller returns when the send that carried its message
succeeded, or raises what that send raised: nothing returns before the broker holds
it, and one thread alone pays only a lock.

``Coalescer`` serves threads; ``AsyncCoalescer`` serves the coroutines of one event
loop, with no thread hop.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conveyor.brokers.base import OutgoingMessage

#: Messages one send carries at most; the rest wait for the next.
MAX_BATCH = 1000


class _Waiter:
    __slots__ = ("batch", "error", "lock", "message")

    def __init__(self, message: OutgoingMessage):
        self.message = message
        # Held until this waiter is woken: done (``batch`` None) or made the sender.
        self.lock = threading.Lock()
        self.lock.acquire()
        self.error: BaseException | None = None
        self.batch: list[_Waiter] | None = None


class Coalescer:
    """Threads' publishes through ``send`` (a ``publish_many``), one send in flight."""

    def __init__(self, send: Callable[[Sequence[OutgoingMessage]], None]):
        self._send = send
        self._reset()
        _coalescers.add(self)

    def _reset(self) -> None:
        # also in a forked child: the parent's sends in flight and queued callers are
        # threads the child does not have
        self._lock = threading.Lock()
        self._queued: list[_Waiter] = []
        self._sending = False

    def publish(self, message: OutgoingMessage) -> None:
        """Return once the broker holds ``message``; raise what its send raised."""
        me = _Waiter(message)
        with self._lock:
            if self._sending:
                self._queued.append(me)
            else:
                self._sending = True
                me.batch = [me]
        if me.batch is None:
            me.lock.acquire()  # woken: sent (or failed), or chosen to send
            if me.batch is None:
                if me.error is not None:
                    raise me.error
                return
        self._send_batch(me.batch)
        if me.error is not None:
            raise me.error

    def _send_batch(self, batch: list[_Waiter]) -> None:
        error: BaseException | None = None
        try:
            self._send([w.message for w in batch])
        except BaseException as exc:  # each caller raises it: none was stored
            error = exc
        with self._lock:
            following = self._queued[:MAX_BATCH]
            del self._queued[:MAX_BATCH]
            self._sending = bool(following)
        if following:
            # the next send is made by one of the waiting callers, not by this one,
            # which returns now
            following[0].batch = following
            following[0].lock.release()
        for waiter in batch:
            waiter.error = error
            waiter.batch = None
            waiter.lock.release()


class AsyncCoalescer:
    """The publishes of one event loop's coroutines through ``send`` (an async
    ``publish_many``), one send in flight."""

    def __init__(self, send: Callable[[Sequence[OutgoingMessage]], Awaitable[None]]):
        self._send = send
        self._queued: list[tuple[OutgoingMessage, asyncio.Future[None]]] = []
        self._sender: asyncio.Task[None] | None = None

    async def publish(self, message: OutgoingMessage) -> None:
        """Return once the broker holds ``message``; raise what its send raised."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._queued.append((message, done))
        if self._sender is None:
            # runs once the callers ready now have queued their messages too
            self._sender = loop.create_task(self._run())
        await done

    async def _run(self) -> None:
        try:
            while self._queued:
                batch = self._queued[:MAX_BATCH]
                del self._queued[:MAX_BATCH]
                try:
                    await self._send([m for m, _ in batch])
                except BaseException as exc:
                    for _, done in batch:
                        if not done.done():
                            done.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                for _, done in batch:
                    if not done.done():  # a cancelled caller: its message is sent anyway
                        done.set_result(None)
        finally:
            self._sender = None
            for _, done in self._queued:  # cancelled before they were sent
                if not done.done():
                    done.cancel()
            self._queued.clear()


_coalescers: weakref.WeakSet[Coalescer] = weakref.WeakSet()


def _reset_after_fork() -> None:
    for coalescer in list(_coalescers):
        coalescer._reset()


os.register_at_fork(after_in_child=_reset_after_fork)
