"""Signal handling that cannot deadlock: the work runs in a thread, not in the handler.

A Python signal handler runs in the main thread between two bytecodes, possibly
while that thread holds a lock (inside ``Event.set``, a logging call, a
``Condition``). A handler that takes the same lock waits for itself forever: two
SIGTERMs in quick succession froze a worker that way. ``SignalRelay``'s handler
only writes the signal number to a pipe; a daemon thread reads it and calls the
callback, where events, locks and logging are safe.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterable
from types import FrameType


class SignalRelay:
    """Calls ``on_signal(signum)`` in a thread of its own for each signal received."""

    def __init__(
        self,
        on_signal: Callable[[int], None],
        signums: Iterable[int] = (signal.SIGTERM, signal.SIGINT),
        name: str = "conveyor-signals",
    ):
        self.on_signal = on_signal
        self.signums = tuple(signums)
        self.name = name
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)

    def install(self) -> None:
        """Take over the signals (call from the main thread) and start the thread."""
        threading.Thread(target=self._relay, name=self.name, daemon=True).start()
        for signum in self.signums:
            signal.signal(signum, self._handler)

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        # No locks here: a write to a non-blocking pipe (a full pipe drops the
        # signal, and thousands are already waiting to be read).
        with contextlib.suppress(BlockingIOError):
            os.write(self._write, bytes((signum,)))

    def _relay(self) -> None:
        while True:
            try:
                data = os.read(self._read, 64)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                self.on_signal(signum)
