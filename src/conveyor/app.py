"""The application: settings, the task registry, routing and ``send_task``."""

from __future__ import annotations

import datetime as dt
import fnmatch
import functools
import importlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, ParamSpec, TypeVar, overload

from conveyor import canvas, current, states
from conveyor import message as wire
from conveyor.backends import connect_backend
from conveyor.backends.base import ResultBackend, ResultWrite
from conveyor.brokers import connect_broker
from conveyor.brokers.base import Broker, BrokerOptions, OutgoingMessage, check_priority
from conveyor.config import Settings, import_object
from conveyor.control import Control
from conveyor.events import SentEvents
from conveyor.exceptions import ConfigurationError, NotRegistered, TaskRevokedError
from conveyor.hooks import Hooks
from conveyor.result import AsyncResult, GroupResult, encode_failure
from conveyor.schedules import as_schedule
from conveyor.signals import CelerySignals, Signal
from conveyor.signing import sign
from conveyor.task import Task, countdown_to_eta, expiry, shared
from conveyor.task.base import class_name
from conveyor.task.defining import (
    BoundTaskDecorator,
    TaskDecorator,
    app_task_class,
    check_options,
    task_from_function,
)

logger = logging.getLogger("conveyor.app")

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(slots=True)
class _Batch:
    """The messages of one ``publishing()`` block: as sent to the broker, and as built."""

    held: list[OutgoingMessage] = field(default_factory=list)
    sent: list[wire.Message] = field(default_factory=list)


class TaskRegistry(dict[str, Task[..., Any]]):
    """An app's tasks by name (``app.tasks``): the ones registered with ``@app.task``.
    The built-in tasks every app has (``conveyor.map``, ``conveyor.starmap``: see
    ``conveyor.canvas.mapping``) are found by name too, but not listed with them."""

    def __init__(self, builtins: Mapping[str, Task[..., Any]]):
        super().__init__()
        self.builtins = dict(builtins)

    def __missing__(self, name: str) -> Task[..., Any]:
        return self.builtins[name]

    def __contains__(self, name: object) -> bool:
        return super().__contains__(name) or name in self.builtins

    def get(self, name: str, default: Any = None) -> Any:
        found = super().get(name)
        return found if found is not None else self.builtins.get(name, default)


class Conveyor:
    """A conveyor application: create one per project and decorate tasks with it.

    Args:
        main: the application's name (used for tasks defined in ``__main__``).
        broker: broker URL; default ``CONVEYOR_BROKER_URL`` or the embedded
            SQLite file ``sqlite:///conveyor.sqlite3``.
        backend: result backend URL; default ``CONVEYOR_RESULT_BACKEND`` or
            the broker's URL.
        include: modules the worker imports at start (tasks defined there).
        task_cls: the base class of the app's tasks (``app.Task``): a ``Task``
            subclass, or its ``"module:Class"`` path (imported when first needed).
        **settings: any setting from the settings table, by its Celery name.
    """

    def __init__(
        self,
        main: str | None = None,
        broker: str | None = None,
        backend: str | None = None,
        *,
        include: Iterable[str] | None = None,
        task_cls: type[Task[Any, Any]] | str = Task,
        **settings: Any,
    ):
        self.main = main
        self.task_cls = task_cls
        self.conf = Settings()
        if broker is not None:
            self.conf.broker_url = broker
        if backend is not None:
            self.conf.result_backend = backend
        if include is not None:
            self.conf.include = tuple(include)
        self.conf.update(settings)
        self._tasks = TaskRegistry(
            {
                name: task_from_function(self, functools.partial(run, self), base=Task, name=name)
                for name, run in canvas.BUILTIN_TASKS.items()
            }
        )
        #: ``autodiscover_tasks`` calls left for ``import_modules``: (packages, related name).
        self._discover: list[tuple[Callable[[], Iterable[str]] | None, str]] = []
        #: What extends every process of this app: Celery's signals first (see
        #: ``conveyor.hooks``); a worker adds its own around them.
        self.hooks = Hooks([CelerySignals(), SentEvents()])
        #: Celery's app signals (sender: the app), sent once by ``finalize``.
        self.on_configure = Signal("on_configure")
        self.on_after_configure = Signal("on_after_configure", ("source",))
        self.on_after_finalize = Signal("on_after_finalize")
        self._finalized = False
        self._lock = threading.Lock()
        self._broker: Broker | None = None
        self._backend: ResultBackend | None = None
        current.app_created(self)

    def __repr__(self) -> str:
        return f"<Conveyor {self.main or '__main__'}>"

    def set_default(self) -> None:
        """Make this app the default one (as Celery's ``app.set_default()``): what a
        signature built from a task's name alone (``signature("proj.tasks.add")``)
        sends with, and where ``GroupResult.restore`` reads. Without a call, the
        app created last in the process is the default."""
        current.set_default_app(self)

    def finalize(self) -> None:
        """Send ``on_configure``, ``on_after_configure`` and ``on_after_finalize``, once:
        the app's modules are imported and its configuration is read. The worker, beat
        and the CLI call it as they start, and the first send does, so that receivers
        (``add_periodic_task`` in ``on_after_configure``, as in Celery's guide) run
        before anything reads the schedule or sends a task."""
        with self._lock:
            if self._finalized:
                return
            self._finalized = True
        self.on_configure.send(self)
        self.on_after_configure.send(self, source=self.conf)
        self.on_after_finalize.send(self)

    # -- configuration --------------------------------------------------------------

    def config_from_object(self, obj: object | str, namespace: str | None = None) -> None:
        """Read settings from an object, a module, or a ``"pkg.mod[:attr]"`` path.

        With ``namespace="CELERY"`` only ``CELERY_*`` names are read (the Django
        ``settings.py`` pattern). Unknown names are errors that suggest the
        closest valid one.
        """
        if isinstance(obj, str):
            obj = import_object(obj)
        self.conf.from_object(obj, namespace=namespace)

    def import_modules(self) -> None:
        """Import the modules named in ``include`` and ``imports``, and those
        ``autodiscover_tasks`` left for now (worker start-up)."""
        for name in (*self.conf.include, *self.conf.imports):
            importlib.import_module(name)
        while self._discover:
            packages, related_name = self._discover.pop(0)
            self._import_related(packages() if packages else _django_apps(), related_name)

    def autodiscover_tasks(
        self,
        packages: Iterable[str] | Callable[[], Iterable[str]] | None = None,
        related_name: str = "tasks",
        force: bool = False,
    ) -> None:
        """Import ``<package>.tasks`` for each package that has one (as Celery does).

        ``packages`` is a list (imported now), or a callable returning one, or None:
        the Django apps (``INSTALLED_APPS``) when Django is configured, else nothing.
        Those two are imported when the worker imports its modules (``import_modules``),
        as Celery does, so that a Django project's ``celery.py`` may call this before
        Django is set up; ``force=True`` imports them now.
        """
        if packages is not None and not callable(packages):
            self._import_related(packages, related_name)
            return
        self._discover.append((packages, related_name))
        if force:
            self.import_modules()

    @staticmethod
    def _import_related(packages: Iterable[str], related_name: str) -> None:
        for package in packages:
            try:
                importlib.import_module(f"{package}.{related_name}")
            except ModuleNotFoundError as exc:
                if exc.name != f"{package}.{related_name}":
                    raise

    # -- storage --------------------------------------------------------------------

    @property
    def broker(self) -> Broker:
        """The broker, connected on first use."""
        if self._broker is None:
            with self._lock:
                if self._broker is None:
                    options = BrokerOptions(
                        lease_seconds=self.conf.broker_lease_timeout,
                        max_deliveries=self.conf.broker_max_deliveries,
                        connection_timeout=self.conf.broker_connection_timeout,
                        dead_letter_max=self.conf.broker_dead_letter_max,
                        dead_letter_expires=self.conf.broker_dead_letter_expires,
                        allow_eviction=self.conf.redis_allow_eviction,
                        transport_options=self.conf.broker_transport_options,
                        replica_acks=self.conf.broker_replica_acks,
                    )
                    self._broker = connect_broker(self.broker_url, options)
        return self._broker

    @property
    def backend(self) -> ResultBackend:
        """The result backend, connected on first use."""
        if self._backend is None:
            with self._lock:
                if self._backend is None:
                    conf = self.conf
                    options = conf.result_backend_transport_options
                    if not options and self.backend_url == self.broker_url:
                        # results beside the messages: the broker's way to the server
                        options = conf.broker_transport_options
                    self._backend = connect_backend(
                        self.backend_url,
                        transport_options=options,
                        replica_acks=conf.broker_replica_acks,
                    )
        return self._backend

    @property
    def broker_url(self) -> str:
        return self.conf.broker_url_resolved()

    @property
    def backend_url(self) -> str:
        return self.conf.result_backend_resolved()

    def close(self) -> None:
        """Close the broker and backend connections of this process."""
        with self._lock:
            if self._broker is not None:
                self._broker.close()
                self._broker = None
            if self._backend is not None:
                self._backend.close()
                self._backend = None

    # -- tasks ----------------------------------------------------------------------

    @property
    def tasks(self) -> TaskRegistry:
        """The registered tasks by name (with every ``shared_task`` defined so far)."""
        shared.sync(self)
        return self._tasks

    @overload
    def task(self, fun: Callable[P, Coroutine[Any, Any, R]]) -> Task[P, R]: ...

    @overload
    def task(self, fun: Callable[P, R]) -> Task[P, R]: ...

    @overload
    def task(
        self, fun: None = None, *, bind: Literal[True], **options: Any
    ) -> BoundTaskDecorator: ...

    @overload
    def task(self, fun: None = None, **options: Any) -> TaskDecorator: ...

    def task(self, fun: Callable[..., Any] | None = None, **options: Any) -> Any:
        """Register a function as a task: ``@app.task`` or ``@app.task(**options)``.

        The task is an instance of a new subclass of ``base`` (default: ``app.Task``)
        whose options are class attributes and whose ``run`` is the function. Options:
        name, bind, base, and the ``Task`` attributes (ignore_result, acks_late,
        queue, priority, max_retries, rate_limit, time_limit...: docs/tasks.md), or
        attributes a ``base`` of yours defines. An unknown option is an error.
        """
        options = dict(options)
        name = options.pop("name", None)
        bind = bool(options.pop("bind", False))
        base = options.pop("base", None) or self.Task
        check_options(base, options)

        def register(f: Callable[..., Any]) -> Task[Any, Any]:
            task_name = name or self.gen_task_name(
                str(getattr(f, "__name__", f)), str(getattr(f, "__module__", ""))
            )
            task = task_from_function(self, f, base=base, name=task_name, bind=bind, **options)
            self._tasks[task_name] = task
            return task

        if fun is not None:
            return register(fun)
        return register

    def register_task(self, task: Task[Any, Any] | type[Task[Any, Any]]) -> Task[Any, Any]:
        """Register a task written as a class (a ``Task`` subclass, or an instance of
        one, with ``run``), as Celery's: named by its ``name``, else by its module and
        class name. Returns the registered instance."""
        if isinstance(task, type):
            task = task()
        if not task.name:
            task.name = self.gen_task_name(class_name(type(task)), type(task).__module__)
        task.app = self
        self._tasks[task.name] = task
        return task

    def gen_task_name(self, name: str, module: str) -> str:
        """``module.name``, as Celery names tasks (``main.name`` in ``__main__``).
        Override it (as Celery's) to name tasks another way."""
        if module == "__main__" and self.main:
            module = self.main
        return f"{module}.{name}"

    def get_task(self, name: str) -> Task[..., Any]:
        try:
            return self.tasks[name]
        except KeyError:
            raise NotRegistered(f"task {name!r} is not registered in {self!r}") from None

    # -- periodic tasks (sent by ``conveyor beat``) -------------------------------

    def add_periodic_task(
        self,
        schedule: Any,
        sig: canvas.Signature | Task[..., Any] | str,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        name: str | None = None,
        **options: Any,
    ) -> str:
        """Add an entry to ``beat_schedule``, as Celery's: send ``sig`` (``task.s(...)``,
        a task, or a task name) at every slot of ``schedule`` (seconds, a timedelta,
        ``crontab(...)`` or a cron string).

        ``args``/``kwargs`` are added to the signature's; ``options`` are the entry's
        send options (``queue``, ``priority``, ``expires``...) and ``misfire``
        (``once``, ``skip`` or ``all``: see docs/beat.md). Returns the entry's name:
        ``name``, or the signature's repr. The whole entry is checked when beat starts.

        Raises:
            ConfigurationError: the schedule is not one.
        """
        if isinstance(sig, str):
            sig = self.signature(sig)
        elif not isinstance(sig, canvas.Signature):
            sig = sig.s()
        if sig.subtask_type is not None:
            raise ConfigurationError(
                f"a periodic task is one task's signature, not a {sig.subtask_type}"
            )
        if args or kwargs:
            sig = sig.clone(args, kwargs)
        key = name or repr(sig)
        try:
            as_schedule(schedule)
        except ValueError as exc:
            raise ConfigurationError(f"beat_schedule entry {key!r}: {exc}") from None
        entry: dict[str, Any] = {
            "task": sig.task,
            "schedule": schedule,
            "args": tuple(sig.args),
            "kwargs": dict(sig.kwargs),
            "options": {**sig.options, **options},
        }
        if "misfire" in options:
            entry["misfire"] = entry["options"].pop("misfire")
        self.conf.beat_schedule[key] = entry
        return key

    def periodic_task(
        self,
        schedule: Any,
        *,
        name: str | None = None,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        misfire: str | None = None,
        **task_options: Any,
    ) -> Callable[[Callable[..., Any]], Task[..., Any]]:
        """Register a task and send it at every slot of ``schedule``:
        ``@app.periodic_task(crontab(minute=0), misfire="skip")``.

        ``name`` names the task and its ``beat_schedule`` entry (default: the task's
        generated name); ``args``/``kwargs`` are what it is sent with; ``misfire`` as in
        ``add_periodic_task``; every other option is the task's (``@app.task``).
        """

        try:
            as_schedule(schedule)
        except ValueError as exc:
            raise ConfigurationError(f"periodic task {name or '(unnamed)'}: {exc}") from None

        def register(fun: Callable[..., Any]) -> Task[..., Any]:
            options = dict(task_options)
            if name is not None:
                options["name"] = name
            task: Task[..., Any] = self.task(**options)(fun)
            extra = {} if misfire is None else {"misfire": misfire}
            self.add_periodic_task(schedule, task.s(), args, kwargs, name=task.name, **extra)
            return task

        return register

    # -- routing and sending ------------------------------------------------------

    def route(self, name: str, args: list[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Routing options for a task from ``task_routes``: dicts or ``(pattern, route)``
        pairs (names, globs, ``re.compile`` patterns), and callables; the first match wins."""
        routes = self.conf.task_routes
        if routes is None:
            return {}
        for router in routes if isinstance(routes, list | tuple) else [routes]:
            if callable(router):
                found = router(name, args, kwargs, {})
                if found:
                    return dict(found) if isinstance(found, Mapping) else {"queue": found}
                continue
            for pattern, target in router.items() if isinstance(router, Mapping) else router:
                if isinstance(pattern, re.Pattern):
                    matched = pattern.match(name) is not None
                else:
                    matched = pattern == name or fnmatch.fnmatchcase(name, pattern)
                if matched:
                    return dict(target) if isinstance(target, Mapping) else {"queue": target}
        return {}

    def send_task(
        self,
        name: str,
        args: list[Any] | tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        *,
        countdown: float | dt.timedelta | None = None,
        eta: Any = None,
        expires: Any = None,
        queue: str | None = None,
        priority: int | None = None,
        task_id: str | None = None,
        ignore_result: bool | None = None,
        parent_id: str | None = None,
        root_id: str | None = None,
        headers: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult:
        """Send a task by name (it need not be registered in this process).

        Raises:
            conveyor.exceptions.EncodeError: an argument cannot be sent as JSON;
                nothing is published.
            ValueError: priority outside 0-9, or a ``countdown``, ``eta`` or ``expires``
                that gives no time a datetime can hold (the message names the option).
            ConfigurationError: the queue is not in ``task_queues`` while
                ``task_create_missing_queues`` is False, or a ``routing_key`` reaches
                no declared queue, or several.
        """
        message, msg = self._compose(
            name,
            args,
            kwargs,
            countdown=countdown,
            eta=eta,
            expires=expires,
            queue=queue,
            priority=priority,
            task_id=task_id,
            ignore_result=ignore_result,
            parent_id=parent_id,
            root_id=root_id,
            headers=headers,
            **options,
        )
        self._publish(message, msg)
        return self._handle(msg)

    async def asend_task(
        self,
        name: str,
        args: list[Any] | tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult:
        """``send_task`` for async code: the message is published on the event loop
        itself where the broker has an asyncio client (Redis), the concurrent sends of
        the loop's coroutines together; it returns once the broker holds it."""
        message, msg = self._compose(name, args, kwargs, **options)
        if getattr(self._batches, "stacks", {}).get(id(self)):
            self._publish(message, msg)  # held by this thread's publishing() block
        else:
            await self.broker.apublish(message)
            self.hooks.after_publish(self, msg)
        return self._handle(msg)

    def _compose(
        self,
        name: str,
        args: list[Any] | tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        *,
        countdown: float | dt.timedelta | None = None,
        eta: Any = None,
        expires: Any = None,
        queue: str | None = None,
        priority: int | None = None,
        task_id: str | None = None,
        ignore_result: bool | None = None,
        parent_id: str | None = None,
        root_id: str | None = None,
        headers: dict[str, Any] | None = None,
        **options: Any,
    ) -> tuple[OutgoingMessage, wire.Message]:
        """The message ``send_task`` publishes, and its envelope."""
        if not self._finalized:
            self.finalize()
        # Celery's routing_key and exchange find a queue of task_queues (conveyor.queues)
        explicit = {k: options.pop(k, None) for k in ("routing_key", "exchange")}
        headers = canvas.headers_from_options(headers, options, self)  # link, link_error...
        if options:
            raise TypeError(f"unexpected option(s) for {name}: {sorted(options)}")
        args = list(args or ())
        kwargs = dict(kwargs or {})
        route = self.route(name, args, kwargs)
        queue = self.conf.declared_queues().destination({**explicit, "queue": queue}, route)
        if priority is None:
            priority = route.get("priority", self.conf.task_default_priority)
        check_priority(priority)
        if ignore_result is None:
            ignore_result = self.conf.task_ignore_result
        task_id = task_id or wire.new_id()
        msg = wire.Message(
            id=task_id,
            task=name,
            args=args,
            kwargs=kwargs,
            queue=queue,
            priority=priority,
            eta=countdown_to_eta(countdown, eta),
            expires=expiry(expires),
            parent_id=parent_id,
            root_id=root_id or task_id,
            ignore_result=bool(ignore_result),
            headers=dict(headers or {}),
        )
        self.hooks.before_publish(self, msg)  # may add headers: encoded after
        body = sign(wire.encode(msg), self.conf.message_signing_keys)
        return OutgoingMessage(task_id, queue, body, priority, msg.eta), msg

    def _handle(self, msg: wire.Message) -> AsyncResult:
        """The caller's handle on a message just sent (made after the send, so that a
        broker that cannot be reached is the error a caller sees first)."""
        result: AsyncResult[Any] = AsyncResult(msg.id, self)
        result.sent_at = time.monotonic()
        result.ignored = msg.ignore_result
        if canvas.LINK in msg.headers or canvas.CHAIN in msg.headers:
            # their ids were chosen above: the children are known before the task runs
            result.expected_children = functools.partial(canvas.sent_children, msg.headers, self)
        return result

    def AsyncResult(self, task_id: str) -> AsyncResult:
        """A handle on a task's result by id."""
        return AsyncResult(task_id, self)

    @functools.cached_property
    def GroupResult(self) -> type[GroupResult]:
        """Celery's ``app.GroupResult``: the class on this app, so that
        ``app.GroupResult.restore(group_id)`` reads this app's backend."""

        class BoundGroupResult(GroupResult):
            __doc__ = GroupResult.__doc__

        BoundGroupResult.app = self
        BoundGroupResult.__name__ = BoundGroupResult.__qualname__ = "GroupResult"
        return BoundGroupResult

    # -- canvas: signatures and batched publishing --------------------------------

    #: Per thread: ``id(app)`` -> the messages of each open ``publishing()`` block.
    _batches = threading.local()

    def signature(
        self,
        name: str,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> canvas.Signature:
        """A signature of the task ``name`` (it need not be registered here) on this app."""
        return canvas.signature(name, args, kwargs, app=self, **options)

    @contextmanager
    def publishing(self) -> Iterator[list[OutgoingMessage]]:
        """Hold the messages this thread sends through this app inside the block, and
        publish them together when it ends (one ``publish_many``: all or none).

        A block inside another adds its messages to the outer one; a block left by
        an exception drops its own. Groups and chords send their tasks so; the list
        yielded is what the block holds (to publish again if publishing failed).
        """
        stacks: dict[int, list[_Batch]] = self._batches.__dict__.setdefault("stacks", {})
        stack = stacks.setdefault(id(self), [])
        batch = _Batch()
        stack.append(batch)
        try:
            yield batch.held
        finally:
            stack.pop()
            if not stack:
                del stacks[id(self)]
        if stack:
            stack[-1].held.extend(batch.held)
            stack[-1].sent.extend(batch.sent)
        elif batch.held:
            self.broker.publish_many(batch.held)
            for sent in batch.sent:
                self.hooks.after_publish(self, sent)

    def _publish(self, message: OutgoingMessage, sent: wire.Message) -> None:
        stack = getattr(self._batches, "stacks", {}).get(id(self))
        if stack:
            stack[-1].held.append(message)
            stack[-1].sent.append(sent)
        else:
            self.broker.publish(message)
            self.hooks.after_publish(self, sent)

    def revoke(self, task_ids: str | list[str], *, terminate: bool = False) -> None:
        """Never run these tasks, on any worker, also after workers restart: the revoke
        is kept in the broker for ``task_revoke_expires`` seconds (a worker that
        fetches one acknowledges it unrun and stores REVOKED). With ``terminate``, a
        copy already running is stopped too (see docs/worker.md for how, per pool).

        A task not finished yet is marked REVOKED at once.
        """
        ids = [task_ids] if isinstance(task_ids, str) else list(task_ids)
        self.broker.revoke(ids, self.conf.task_revoke_expires, terminate=terminate)
        for task_id in ids:
            current = self.backend.get(task_id)
            if current is None or current.state not in states.READY_STATES:
                payload = encode_failure("", TaskRevokedError("revoked"), state=states.REVOKED)
                self.backend.store(
                    ResultWrite(task_id, states.REVOKED, payload, self.conf.result_expires)
                )

    @property
    def control(self) -> Control:
        """Celery's ``app.control``: ``inspect()``, ``ping()``, ``rate_limit()``,
        ``revoke()``... (see ``conveyor.control``)."""
        return Control(self)

    # (last in the class: below it, ``Task`` in an annotation would name this property)
    @functools.cached_property
    def Task(self) -> type[Task[Any, Any]]:
        """The base class of this app's tasks (Celery's ``app.Task``): ``task_cls``,
        bound to this app; subclass it for a base of your own (``class
        MyTask(app.Task)``, then ``@app.task(base=MyTask)``)."""
        return app_task_class(self, self.task_cls)


def _django_apps() -> list[str]:
    """The packages of the installed Django apps when Django is configured (Django is
    then set up, as the worker needs it to import them), else none."""
    try:
        import django  # type: ignore[import-untyped]
        from django.apps import apps  # type: ignore[import-untyped]
        from django.conf import settings  # type: ignore[import-untyped]
    except ImportError:
        return []
    if not (os.environ.get("DJANGO_SETTINGS_MODULE") or settings.configured):
        return []
    if not apps.ready:
        django.setup()
    return [config.name for config in apps.get_app_configs()]


#: Celery's name for the same class: ``from conveyor import Celery`` migrates an app.
Celery = Conveyor
