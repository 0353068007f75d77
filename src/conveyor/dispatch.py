"""Signals in Celery's (and Django's) form: receivers connected to a named signal.

``signal.connect(receiver)`` (or ``@signal.connect``, or
``@signal.connect(sender=...)``) registers a function; ``signal.send(sender,
**kwargs)`` calls every receiver whose ``sender`` filter matches with
``signal=``, ``sender=`` and the keyword arguments, and returns
``[(receiver, response), ...]``. A receiver that raises does not stop the others
nor the sender: the error is logged and returned as its response, as Celery does.

Receivers are held by weak reference unless ``weak=False`` (Celery's default):
a receiver defined inside a function and not kept elsewhere disappears with it.
A ``sender`` filter matches a string sender (a task name) by equality and any
other sender (a task object, a worker) by identity.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Hashable
from typing import Any, TypeVar, overload

logger = logging.getLogger("conveyor.signals")

Receiver = Callable[..., Any]
F = TypeVar("F", bound=Receiver)

_NO_SENDER = object()


def _sender_key(sender: object) -> Hashable:
    if sender is None:
        return _NO_SENDER
    if isinstance(sender, str | bytes):
        return ("value", sender)
    return ("id", id(sender))


def _receiver_key(receiver: Receiver) -> Hashable:
    # A bound method is a new object at each access: key it by its function and object.
    if hasattr(receiver, "__self__") and hasattr(receiver, "__func__"):
        return (id(receiver.__self__), id(receiver.__func__))
    return id(receiver)


class Signal:
    """A named signal; see the module docstring."""

    def __init__(self, name: str, providing_args: tuple[str, ...] = ()) -> None:
        self.name = name
        #: The keyword arguments ``send`` passes besides ``signal`` and ``sender``.
        self.providing_args = providing_args
        self._lock = threading.Lock()
        # (lookup key, sender key, reference or receiver, weak?)
        self._receivers: list[tuple[Hashable, Hashable, Any, bool]] = []

    def __repr__(self) -> str:
        return f"<Signal: {self.name}>"

    @overload
    def connect(
        self,
        receiver: F,
        *,
        sender: Any = None,
        weak: bool = True,
        dispatch_uid: Hashable | None = None,
    ) -> F: ...

    @overload
    def connect(
        self,
        receiver: None = None,
        *,
        sender: Any = None,
        weak: bool = True,
        dispatch_uid: Hashable | None = None,
    ) -> Callable[[F], F]: ...

    def connect(
        self,
        receiver: Receiver | None = None,
        *,
        sender: Any = None,
        weak: bool = True,
        dispatch_uid: Hashable | None = None,
    ) -> Any:
        """Call ``receiver(signal=..., sender=..., **kwargs)`` on each ``send`` (only for
        ``sender`` when given). Connecting the same receiver (or ``dispatch_uid``) again
        for the same sender does nothing. Usable as a decorator, with or without
        arguments; returns the receiver."""
        if receiver is None:
            return lambda fun: self.connect(
                fun, sender=sender, weak=weak, dispatch_uid=dispatch_uid
            )
        if not callable(receiver):
            raise TypeError(f"a signal receiver must be callable, not {receiver!r}")
        key = (dispatch_uid,) if dispatch_uid is not None else _receiver_key(receiver)
        ref: Any = receiver
        if weak:
            is_method = hasattr(receiver, "__self__") and hasattr(receiver, "__func__")
            ref = weakref.WeakMethod(receiver) if is_method else weakref.ref(receiver)
        entry = (key, _sender_key(sender), ref, weak)
        with self._lock:
            self._sweep()
            if not any(k == key and s == entry[1] for k, s, _, _ in self._receivers):
                self._receivers.append(entry)
        return receiver

    def disconnect(
        self,
        receiver: Receiver | None = None,
        *,
        sender: Any = None,
        dispatch_uid: Hashable | None = None,
    ) -> bool:
        """Stop calling ``receiver`` (or what ``dispatch_uid`` names) for ``sender``;
        True if it was connected."""
        if receiver is None and dispatch_uid is None:
            raise TypeError("disconnect() needs a receiver or a dispatch_uid")
        key = (dispatch_uid,) if dispatch_uid is not None else _receiver_key(receiver)  # type: ignore[arg-type]
        skey = _sender_key(sender)
        with self._lock:
            before = len(self._receivers)
            self._receivers = [e for e in self._receivers if not (e[0] == key and e[1] == skey)]
            return len(self._receivers) < before

    def _sweep(self) -> None:
        # caller holds the lock: drop receivers whose weak reference died
        self._receivers = [e for e in self._receivers if not e[3] or e[2]() is not None]

    def _live(self, sender: Any) -> list[Receiver]:
        skey = _sender_key(sender)
        with self._lock:
            entries = list(self._receivers)
        found = []
        for _, entry_sender, ref, weak in entries:
            if entry_sender is not _NO_SENDER and entry_sender != skey:
                continue
            receiver = ref() if weak else ref
            if receiver is not None:
                found.append(receiver)
        return found

    @property
    def receivers(self) -> list[Receiver]:
        """The receivers connected now, whatever their sender filter."""
        with self._lock:
            self._sweep()
            return [ref() if weak else ref for _, _, ref, weak in self._receivers]

    def has_receivers(self, sender: Any = None) -> bool:
        """Whether ``send(sender)`` would call anyone (senders may skip building
        arguments nobody reads)."""
        return bool(self._live(sender))

    def send(self, sender: Any, **named: Any) -> list[tuple[Receiver, Any]]:
        """Call every matching receiver; a receiver's exception is logged and becomes
        its response."""
        responses: list[tuple[Receiver, Any]] = []
        for receiver in self._live(sender):
            try:
                response = receiver(signal=self, sender=sender, **named)
            except Exception as exc:
                logger.exception("signal %s: receiver %r raised", self.name, receiver)
                response = exc
            responses.append((receiver, response))
        return responses
