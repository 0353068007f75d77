"""An in-process result backend for tests and ``memory://``: a dict behind one condition."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from conveyor.backends.base import READY_STATES, ResultBackend, ResultWrite, StoredResult

#: Writes between two sweeps of expired records (so memory stays bounded).
SWEEP_EVERY = 1000


class MemoryResultBackend(ResultBackend):
    """Results held in this process's memory, safe for any number of threads."""

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._cond = threading.Condition()
        self._records: dict[str, tuple[StoredResult, float]] = {}  # expiry on the monotonic clock
        self._writes = 0

    def _current(self, task_id: str) -> StoredResult | None:
        entry = self._records.get(task_id)
        if entry is None:
            return None
        if entry[1] <= time.monotonic():
            del self._records[task_id]
            return None
        return entry[0]

    def store_many(self, writes: Sequence[ResultWrite]) -> None:
        with self._cond:
            stored_at, clock = time.time(), time.monotonic()
            for w in writes:
                record = StoredResult(w.task_id, w.state, w.payload, stored_at)
                self._records[w.task_id] = (record, clock + w.ttl)
            self._writes += len(writes)
            if self._writes >= SWEEP_EVERY:
                self._writes = 0
                for task_id in [k for k, (_, expires) in self._records.items() if expires <= clock]:
                    del self._records[task_id]
            self._cond.notify_all()

    def get(self, task_id: str) -> StoredResult | None:
        with self._cond:
            return self._current(task_id)

    def wait(
        self, task_id: str, timeout: float | None, *, just_sent: bool = False
    ) -> StoredResult | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                record = self._current(task_id)
                if record is not None and record.state in READY_STATES:
                    return record
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return record
                self._cond.wait(remaining)

    def forget(self, task_id: str) -> None:
        with self._cond:
            self._records.pop(task_id, None)
