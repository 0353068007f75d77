"""The one way to extend conveyor: hooks, called at each moment of a task's life.

A ``Hook`` overrides the moments it needs; ``Hooks`` holds them in order and calls
them. The worker's own features are hooks (admission of a fetched message, the
canvas callbacks sent once a task is settled), and so are Celery's signals
(``conveyor.signals``), which sit on the same moments::

    producer      before_publish -> (broker) -> after_publish
    worker        worker_init -> worker_ready ... worker_shutting_down -> worker_shutdown
                  admit (may refuse or hold back) -> received -> started -> finished -> settled
                  revoked (refused for good), rejected (undecodable), unknown (no such task)
    task process  process_init (a prefork child; the worker itself for other pools)
                  before_run -> (the task) -> after_run ... process_shutdown

Each moment is called in the process Celery documents for its signal: ``before_run``
and ``after_run`` where the task runs (a prefork child), the rest in the worker or
producer. A hook that raises is logged and skipped, never the end of the task or
the worker, except ``admit``: a message a hook cannot admit is not run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.brokers.base import Delivery
    from conveyor.message import Message
    from conveyor.task import Request, Task
    from conveyor.worker.job import Job, Outcome

logger = logging.getLogger("conveyor.hooks")


@dataclass(frozen=True, slots=True)
class Verdict:
    """An ``admit`` hook's objection: run nothing now; ``retry_at`` (UNIX time) to hold
    the message back until then (a rate limit, a busy concurrency slot), None to
    refuse it for good as ``state`` (REVOKED) with ``why``."""

    why: str
    retry_at: float | None = None
    state: str = "REVOKED"
    expired: bool = False


class Hook:
    """One extension; every moment is a no-op here (see the module docstring)."""

    # -- the process that sends ---------------------------------------------------------

    def before_publish(self, app: Conveyor, message: Message) -> None:
        """A task message is about to be published (its body is encoded after)."""

    def after_publish(self, app: Conveyor, message: Message) -> None:
        """The broker holds the message."""

    # -- the worker process -------------------------------------------------------------

    def worker_init(self, worker: Any) -> None:
        """The worker is set up; its pool is not started yet."""

    def worker_ready(self, worker: Any) -> None:
        """The worker consumes its queues."""

    def worker_shutting_down(self, worker: Any, signal_name: str, how: str, exitcode: int) -> None:
        """A shutdown began (``how``: ``Warm`` or ``Cold``)."""

    def worker_shutdown(self, worker: Any) -> None:
        """The worker has stopped; the process exits next."""

    def admit(self, job: Job, task: Task[..., Any]) -> Verdict | None:
        """May the fetched job run now? None: no objection."""
        return None

    def received(self, job: Job, task: Task[..., Any]) -> None:
        """The job was admitted and is handed to the pool."""

    def started(self, job: Job) -> None:
        """The pool starts the job (hands it to a process or thread that runs it now);
        called from the pool's own thread: keep it short, it must not block."""

    def revoked(self, job: Job, task: Task[..., Any], *, expired: bool, terminated: bool) -> None:
        """The job will not run (or was stopped): revoked, or expired."""

    def rejected(self, delivery: Delivery, error: BaseException) -> None:
        """A message that is not a valid conveyor message went to the dead letters."""

    def unknown(self, delivery: Delivery, message: Message, error: BaseException) -> None:
        """A message naming a task this worker does not have went to the dead letters."""

    def finished(self, job: Job, task: Task[..., Any] | None, outcome: Outcome | None) -> None:
        """The pool reported the job (any outcome: a retry, a lost process too; None:
        it could not be accepted); it is about to be settled. What was taken for it at
        ``admit`` is given back here."""

    def settled(self, batch: Sequence[tuple[Job, Outcome]]) -> None:
        """These jobs ended (SUCCESS, FAILURE, REVOKED...): acked, results stored."""

    # -- the process that runs tasks ----------------------------------------------------

    def process_init(self) -> None:
        """A process that will run tasks starts (each prefork child)."""

    def process_shutdown(self, exitcode: int) -> None:
        """A process that ran tasks is about to exit."""

    def before_run(self, job: Job, task: Task[..., Any], request: Request) -> None:
        """The task is about to run (its request is current)."""

    def after_run(
        self,
        job: Job,
        task: Task[..., Any],
        request: Request,
        outcome: Outcome,
        value: Any,
        error: BaseException | None,
    ) -> None:
        """The task returned ``value`` or raised ``error``: ``outcome`` says what
        becomes of it (SUCCESS, FAILURE, RETRY...)."""


# The moments ``Hooks`` calls by name (``admit`` has its own method).
_MOMENTS = frozenset(
    name
    for name in vars(Hook)
    if not name.startswith("_") and callable(getattr(Hook, name)) and name != "admit"
)


def _nothing(*args: Any, **kwargs: Any) -> None:
    pass


class Hooks:
    """Hooks in order; ``hooks.<moment>(...)`` calls each that overrides it."""

    def __init__(self, hooks: Iterable[Hook] = ()) -> None:
        self._hooks: list[Hook] = list(hooks)
        self._callers: dict[str, Any] = {}

    def __iter__(self) -> Iterator[Hook]:
        return iter(list(self._hooks))

    def __len__(self) -> int:
        return len(self._hooks)

    def add(self, hook: Hook, *, first: bool = False) -> Hook:
        """Call ``hook`` from now on, after the others (or before them)."""
        if first:
            self._hooks.insert(0, hook)
        else:
            self._hooks.append(hook)
        self._callers.clear()
        return hook

    def remove(self, hook: Hook) -> None:
        self._hooks.remove(hook)
        self._callers.clear()

    def __getattr__(self, name: str) -> Any:
        if name not in _MOMENTS:
            raise AttributeError(name)
        caller = self._callers.get(name)
        if caller is None:
            caller = self._callers[name] = self._caller(name)
        return caller

    def _caller(self, name: str) -> Any:
        # Only the hooks that override the moment: a moment nobody uses costs one call.
        default = getattr(Hook, name)
        chosen = [
            getattr(h, name) for h in self._hooks if getattr(type(h), name, default) is not default
        ]
        if not chosen:
            return _nothing

        def call(*args: Any, **kwargs: Any) -> None:
            for method in chosen:
                try:
                    method(*args, **kwargs)
                except Exception:
                    logger.exception("hook %s.%s raised", type(method.__self__).__name__, name)

        return call

    def admit(self, job: Job, task: Task[..., Any]) -> Verdict | None:
        """The first objection of any hook, or None. Raises what a hook raises: a
        message that cannot be checked must not run."""
        for hook in self._hooks:
            verdict = hook.admit(job, task)
            if verdict is not None:
                return verdict
        return None
