"""The result-backend contract: a keyed store of task states with a TTL.

A backend stores, per task id, a state name and an opaque payload (the result
layer encodes it). Every record expires; nothing is kept forever. Waiting for
a record is the backend's job, so each backend can wake waiters the fastest way
its storage allows.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from conveyor.states import READY_STATES

__all__ = ["READY_STATES", "ResultBackend", "ResultWrite", "StoredResult"]


@dataclass(frozen=True, slots=True)
class StoredResult:
    """One task's record: its state, encoded payload and when it was written."""

    task_id: str
    state: str
    payload: bytes
    stored_at: float


@dataclass(frozen=True, slots=True)
class ResultWrite:
    """A record to store: ``ttl`` seconds after the write it is gone."""

    task_id: str
    state: str
    payload: bytes
    ttl: float


class ResultBackend(ABC):
    """The contract every result backend implements. Each method states its
    guarantee; the shared contract suite (tests/contract/test_backend.py) tests
    that text."""

    url: str

    @abstractmethod
    def store_many(self, writes: Sequence[ResultWrite]) -> None:
        """Store each record, replacing any earlier one for the task id.

        Every write sets the record's expiry to ``ttl`` seconds from now; an
        expired record is never returned again. Waiters on the id are woken.
        """

    def store(self, write: ResultWrite) -> None:
        """Store one record; see ``store_many``."""
        self.store_many((write,))

    @abstractmethod
    def get(self, task_id: str) -> StoredResult | None:
        """The current, unexpired record for ``task_id``, or None."""

    @abstractmethod
    def wait(
        self, task_id: str, timeout: float | None, *, just_sent: bool = False
    ) -> StoredResult | None:
        """Block until the record is in a READY state, or ``timeout`` passes.

        ``just_sent``: the task was sent a moment ago, so its record is most likely
        not there yet (a backend may start waiting before its first read).

        Returns the record (which may be unready on timeout) or None if there
        is none. ``timeout=None`` waits without limit. Returns within a few
        milliseconds of the write: by notification where the storage has one
        (Redis), else by watching a cheap change counter (SQLite's
        ``data_version``), never by re-reading the record on a timer.
        """

    def writes_for(self, broker: object, writes: Sequence[ResultWrite]) -> list[object] | None:
        """The writes prepared for ``broker`` to apply with its ack (``Broker.ack_storing``)
        when both keep their data in one place, so that acknowledging and storing are
        one step; None if they do not (the worker then acks, then calls ``store_many``)."""
        return None

    @abstractmethod
    def forget(self, task_id: str) -> None:
        """Delete the record for ``task_id``; a no-op if there is none."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections. The backend must not be used afterwards."""
