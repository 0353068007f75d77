"""``app.control`` and ``app.control.inspect()``: Celery's remote control API.

A command is appended to the broker's control stream; every worker reads it there
(``conveyor.worker.remote``) and, when a reply is wanted, adds its answer to the
command's reply stream. The caller reads replies until its timeout, or until every
worker it expects has answered: the named destination, else the workers alive in
the registry when the command was sent. Replies are Celery's shapes, so code (and
tools) written for Celery's ``inspect`` read them unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

from conveyor.brokers.base import Broker
from conveyor.control.protocol import (
    CONTROL_MAXLEN,
    CONTROL_STREAM,
    Command,
    decode_reply,
    destination_list,
    reply_stream,
)
from conveyor.message import new_id

if TYPE_CHECKING:
    from conveyor.app import Conveyor

Destination = str | Sequence[str] | None
#: A command no worker has run this many seconds after it was sent is dropped
#: (a worker that was cut off from the broker does not replay old commands).
COMMAND_TTL = 10.0


class Control:
    """Celery's ``app.control``: broadcast commands to workers, read their replies."""

    def __init__(self, app: Conveyor):
        self.app = app

    @property
    def broker(self) -> Broker:
        return self.app.broker

    def inspect(
        self, destination: Destination = None, timeout: float = 1.0, limit: int | None = None
    ) -> Inspect:
        """Questions to workers (all, or ``destination``), answered within ``timeout``."""
        return Inspect(self, destination, timeout, limit)

    def workers(self) -> dict[str, dict[str, Any]]:
        """The workers alive in the registry, by name: what each published in its last
        heartbeat (pid, host, pool, concurrency, queues, active, processed, ...)."""
        found: dict[str, dict[str, Any]] = {}
        for name, body in sorted(self.broker.workers().items()):
            try:
                info = orjson.loads(body)
            except orjson.JSONDecodeError:
                continue
            if isinstance(info, dict):
                found[name] = info
        return found

    def broadcast(
        self,
        command: str,
        arguments: dict[str, Any] | None = None,
        destination: Destination = None,
        reply: bool = False,
        timeout: float = 1.0,
        limit: int | None = None,
    ) -> list[dict[str, Any]] | None:
        """Send ``command`` to every worker (or ``destination``); with ``reply``, the
        replies ``[{worker: reply}, ...]`` received within ``timeout`` seconds (fewer
        when every expected worker answered, or ``limit`` did), else None."""
        names = destination_list(destination)
        # Who should answer, read before sending: a worker in the registry listens.
        expected = set(names) if names is not None else set(self.broker.workers())
        sent = Command(
            id=new_id(),
            command=command,
            arguments=dict(arguments or {}),
            destination=names,
            reply=reply,
            expires=time.time() + max(timeout, COMMAND_TTL),
        )
        self.broker.stream_add(CONTROL_STREAM, [sent.encode()], maxlen=CONTROL_MAXLEN)
        if not reply:
            return None
        return self._gather(sent.id, expected, timeout, limit)

    def _gather(
        self, reply_id: str, expected: set[str], timeout: float, limit: int | None
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        stream = reply_stream(reply_id)
        cursor = "0"
        replies: list[dict[str, Any]] = []
        answered: set[str] = set()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for entry in self.broker.stream_read(stream, cursor, timeout=remaining):
                cursor = entry.id
                for name, answer in decode_reply(entry.body).items():
                    replies.append({name: answer})
                    answered.add(name)
            if limit is not None and len(replies) >= limit:
                return replies[:limit]
            # Nobody expected (an empty registry): a worker just starting may still
            # answer, so wait the whole timeout, as Celery does.
            if expected and expected <= answered:
                break
        return replies

    # -- commands ---------------------------------------------------------------------

    def ping(self, destination: Destination = None, timeout: float = 1.0) -> list[dict[str, Any]]:
        """``[{worker: {"ok": "pong"}}, ...]`` of the workers that answered in time."""
        return self.broadcast("ping", destination=destination, reply=True, timeout=timeout) or []

    def rate_limit(
        self,
        task_name: str,
        rate_limit: str | float | None,
        destination: Destination = None,
        reply: bool = False,
        timeout: float = 1.0,
    ) -> list[dict[str, Any]] | None:
        """Set task ``task_name``'s rate limit in the workers (``None`` or ``0``: none).
        Workers apply it from their next fetch; it lasts until they restart."""
        arguments = {"task_name": task_name, "rate_limit": rate_limit}
        return self.broadcast("rate_limit", arguments, destination, reply, timeout)

    def time_limit(
        self,
        task_name: str,
        soft: float | None = None,
        hard: float | None = None,
        destination: Destination = None,
        reply: bool = False,
        timeout: float = 1.0,
    ) -> list[dict[str, Any]] | None:
        """Set task ``task_name``'s soft and hard time limits (seconds; None: none) for
        the tasks the workers start from now on."""
        arguments = {"task_name": task_name, "soft": soft, "hard": hard}
        return self.broadcast("time_limit", arguments, destination, reply, timeout)

    def add_consumer(
        self,
        queue: str,
        exchange: str | None = None,
        exchange_type: str = "direct",
        routing_key: str | None = None,
        options: dict[str, Any] | None = None,
        destination: Destination = None,
        reply: bool = False,
        timeout: float = 1.0,
        **kwargs: Any,
    ) -> list[dict[str, Any]] | None:
        """Make the workers consume ``queue`` too (the exchange arguments are Celery's,
        without effect: conveyor's queues are found by name)."""
        return self.broadcast("add_consumer", {"queue": queue}, destination, reply, timeout)

    def cancel_consumer(
        self,
        queue: str,
        destination: Destination = None,
        reply: bool = False,
        timeout: float = 1.0,
        **kwargs: Any,
    ) -> list[dict[str, Any]] | None:
        """Make the workers stop consuming ``queue`` (what they hold still runs)."""
        return self.broadcast("cancel_consumer", {"queue": queue}, destination, reply, timeout)

    def pool_grow(
        self, n: int = 1, destination: Destination = None, reply: bool = False, timeout: float = 1.0
    ) -> list[dict[str, Any]] | None:
        """Grow the workers' pools by ``n`` (with ``--autoscale``: its maximum too)."""
        return self.broadcast("pool_grow", {"n": n}, destination, reply, timeout)

    def pool_shrink(
        self, n: int = 1, destination: Destination = None, reply: bool = False, timeout: float = 1.0
    ) -> list[dict[str, Any]] | None:
        """Shrink the workers' pools by ``n`` (with ``--autoscale``: its minimum too);
        running tasks are never interrupted."""
        return self.broadcast("pool_shrink", {"n": n}, destination, reply, timeout)

    def shutdown(
        self, destination: Destination = None, reply: bool = False, timeout: float = 1.0
    ) -> list[dict[str, Any]] | None:
        """Warm shutdown of the workers, as SIGTERM (they exit 0)."""
        return self.broadcast("shutdown", None, destination, reply, timeout)

    def revoke(
        self,
        task_id: str | list[str],
        destination: Destination = None,
        terminate: bool = False,
        signal: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Never run these tasks, on any worker (see ``Conveyor.revoke``: the revoke is
        kept in the broker, so ``destination`` and ``signal`` do not apply)."""
        self.app.revoke(task_id, terminate=terminate)

    def terminate(
        self, task_id: str | list[str], destination: Destination = None, **kwargs: Any
    ) -> None:
        """``revoke(task_id, terminate=True)``."""
        self.app.revoke(task_id, terminate=True)


class Inspect:
    """Celery's ``app.control.inspect()``: each method returns ``{worker: reply}``, or
    None when no worker answered within the timeout."""

    def __init__(
        self,
        control: Control,
        destination: Destination = None,
        timeout: float = 1.0,
        limit: int | None = None,
    ):
        self.control = control
        self.destination = destination
        self.timeout = timeout
        self.limit = limit

    def _request(self, command: str, **arguments: Any) -> dict[str, Any] | None:
        replies = self.control.broadcast(
            command,
            arguments,
            destination=self.destination,
            reply=True,
            timeout=self.timeout,
            limit=self.limit,
        )
        merged: dict[str, Any] = {}
        for one in replies or ():
            merged.update(one)
        return merged or None

    def ping(self) -> dict[str, Any] | None:
        """``{worker: {"ok": "pong"}}``."""
        return self._request("ping")

    def active(self, safe: bool | None = None) -> dict[str, Any] | None:
        """The tasks each worker is running: ``{worker: [task, ...]}``."""
        return self._request("active")

    def reserved(self, safe: bool | None = None) -> dict[str, Any] | None:
        """The tasks each worker holds, fetched and not started yet."""
        return self._request("reserved")

    def scheduled(self, safe: bool | None = None) -> dict[str, Any] | None:
        """Always ``[]`` per worker: tasks due later (countdown, eta, retries) wait in the
        broker's delayed store, not in a worker (``conveyor queues`` counts them)."""
        return self._request("scheduled")

    def registered(self, *taskinfoitems: str) -> dict[str, Any] | None:
        """The task names each worker knows; with ``taskinfoitems`` (``"rate_limit"``...)
        each name is followed by those attributes, as Celery shows them."""
        return self._request("registered", taskinfoitems=list(taskinfoitems))

    registered_tasks = registered

    def stats(self) -> dict[str, Any] | None:
        """Each worker's statistics: ``total`` (tasks ended, by name), ``pid``, ``pool``,
        ``prefetch_count``, ``uptime``, ``broker``, ``rusage``."""
        return self._request("stats")

    def revoked(self) -> dict[str, Any] | None:
        """The ids each worker refused to run (or stopped) as revoked, lately."""
        return self._request("revoked")

    def active_queues(self) -> dict[str, Any] | None:
        """The queues each worker consumes."""
        return self._request("active_queues")

    def conf(self, with_defaults: bool = False) -> dict[str, Any] | None:
        """Each worker's settings (set ones; ``with_defaults``: all), secrets masked."""
        return self._request("conf", with_defaults=with_defaults)

    def query_task(self, *ids: str | Sequence[str]) -> dict[str, Any] | None:
        """Where these tasks are: ``{worker: {id: [state, task]}}`` with state ``active``
        or ``reserved``, for the ones a worker holds."""
        flat: list[str] = []
        for one in ids:
            flat.extend([one] if isinstance(one, str) else one)
        return self._request("query_task", ids=flat)
