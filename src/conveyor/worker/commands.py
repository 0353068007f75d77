"""The commands a worker runs for ``app.control`` (``conveyor inspect`` / ``control``):
``HANDLERS``, by name, each ``handler(remote, **arguments) -> reply`` in Celery's shape
(``{"ok": ...}``, ``{"error": ...}``, or the data asked for).
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import time
import urllib.parse
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from conveyor.config import parse_rate, redact_url
from conveyor.control.settings import visible_settings
from conveyor.exceptions import ConfigurationError

if TYPE_CHECKING:
    from conveyor.task import Task
    from conveyor.worker.remote import Remote

logger = logging.getLogger("conveyor.worker")


def _version() -> str:
    # the package's metadata: importing ``conveyor`` itself here would import the app
    try:
        return importlib.metadata.version("conveyor")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


#: The version workers report (registry, ``stats``).
VERSION = _version()

Handler = Callable[..., Any]
#: The commands a worker runs, by name: ``handler(remote, **arguments) -> reply``.
HANDLERS: dict[str, Handler] = {}


def handler(name: str) -> Callable[[Handler], Handler]:
    def register(function: Handler) -> Handler:
        HANDLERS[name] = function
        return function

    return register


@handler("ping")
def ping(remote: Remote, **_: Any) -> Any:
    return {"ok": "pong"}


@handler("active")
def active(remote: Remote, **_: Any) -> Any:
    running, _reserved = remote.held()
    return [remote.task_info(job) for job in running]


@handler("reserved")
def reserved(remote: Remote, **_: Any) -> Any:
    _running, waiting = remote.held()
    return [remote.task_info(job) for job in waiting]


@handler("scheduled")
def scheduled(remote: Remote, **_: Any) -> Any:
    # Tasks due later (countdown, eta, retries) wait in the broker's delayed store,
    # never in a worker: there is nothing scheduled here to show.
    return []


@handler("registered")
def registered(remote: Remote, taskinfoitems: Sequence[str] = (), **_: Any) -> Any:
    shown = []
    for name, task in sorted(remote.worker.app.tasks.items()):
        items = [f"{item}={getattr(task, item)}" for item in taskinfoitems if hasattr(task, item)]
        shown.append(f"{name} [{' '.join(items)}]" if items else name)
    return shown


@handler("stats")
def stats(remote: Remote, **_: Any) -> Any:
    worker = remote.worker
    conf = worker.app.conf
    pool = worker.pool
    pids = getattr(pool, "pids", None)
    with remote._lock:
        totals = dict(remote.totals)
    return {
        "total": totals,
        "pid": os.getpid(),
        "hostname": remote.hostname,
        "uptime": int(time.time() - remote.since),
        "pool": {
            "max-concurrency": pool.concurrency,
            "implementation": f"{type(pool).__module__}:{type(pool).__name__}",
            "processes": pids() if callable(pids) else [os.getpid()],
            "max-tasks-per-child": conf.worker_max_tasks_per_child,
            "timeouts": [conf.task_soft_time_limit, conf.task_time_limit],
            "autoscale": (
                [worker.autoscaler.maximum, worker.autoscaler.minimum]
                if worker.autoscaler is not None
                else None
            ),
        },
        "prefetch_count": worker.holdings.capacity,
        "broker": _broker_info(conf.broker_url_resolved()),
        "rusage": _rusage(),
        "version": VERSION,
    }


@handler("revoked")
def revoked(remote: Remote, **_: Any) -> Any:
    return list(remote.revoked_ids)


@handler("active_queues")
def active_queues(remote: Remote, **_: Any) -> Any:
    declared = remote.worker.app.conf.declared_queues()
    shown = []
    for name in remote.worker.fetcher.queues:
        queue = next((q for q in declared if q.name == name), None)
        exchange = queue.exchange if queue is not None else name
        shown.append(
            {
                "name": name,
                "exchange": {
                    "name": exchange,
                    "type": (queue.exchange_type if queue is not None else None) or "direct",
                },
                "routing_key": (queue.routing_key if queue is not None else None) or name,
                "queue_arguments": queue.queue_arguments if queue is not None else None,
                "durable": True,
                "exclusive": False,
                "auto_delete": False,
                "no_ack": False,
                "max_priority": 9,
            }
        )
    return shown


@handler("conf")
def conf(remote: Remote, with_defaults: bool = False, **_: Any) -> Any:
    return visible_settings(remote.worker.app.conf, with_defaults=with_defaults)


@handler("query_task")
def query_task(remote: Remote, ids: Sequence[str] = (), **_: Any) -> Any:
    wanted = set(ids)
    running, waiting = remote.held()
    found: dict[str, Any] = {}
    for state, jobs in (("active", running), ("reserved", waiting)):
        for job in jobs:
            if job.message.id in wanted:
                found[job.message.id] = [state, remote.task_info(job)]
    return found


def _task(remote: Remote, name: str) -> Task[..., Any] | None:
    task: Task[..., Any] | None = remote.worker.app.tasks.get(name)
    return task


@handler("rate_limit")
def rate_limit(remote: Remote, task_name: str, rate_limit: Any = None, **_: Any) -> Any:
    disabled = rate_limit in (None, "", 0, "0")
    if not disabled:
        try:
            parse_rate(rate_limit)
        except ValueError as exc:
            return {"error": f"invalid rate limit string: {exc}"}
    task = _task(remote, task_name)
    if task is None:
        return {"error": "unknown task"}
    # Admission reads the task's attribute for each message fetched from now on.
    task.rate_limit = None if disabled else rate_limit
    if disabled:
        logger.info("rate limit of %s disabled by remote control", task_name)
        return {"ok": "rate limit disabled successfully"}
    logger.info("rate limit of %s set to %s by remote control", task_name, rate_limit)
    return {"ok": "new rate limit set successfully"}


@handler("time_limit")
def time_limit(
    remote: Remote, task_name: str, soft: float | None = None, hard: float | None = None, **_: Any
) -> Any:
    for value in (soft, hard):
        if value is not None and not (isinstance(value, int | float) and value > 0):
            return {"error": f"a time limit is a number of seconds above 0 or None, not {value!r}"}
    task = _task(remote, task_name)
    if task is None:
        return {"error": "unknown task"}
    # Each job takes its limits from the task as it is fetched (Job.for_task).
    task.soft_time_limit = soft
    task.time_limit = hard
    logger.info("time limits of %s set by remote control: soft %s, hard %s", task_name, soft, hard)
    return {"ok": "time limits set successfully"}


@handler("add_consumer")
def add_consumer(remote: Remote, queue: str, **_: Any) -> Any:
    try:
        remote.worker.app.conf.declared_queues().check(queue)
    except ConfigurationError as exc:
        return {"error": str(exc)}
    if not remote.worker.fetcher.add_queue(queue):
        return {"ok": f"already consuming from {queue!r}"}
    logger.info("consuming from queue %s too (remote control)", queue)
    return {"ok": f"add consumer {queue}"}


@handler("cancel_consumer")
def cancel_consumer(remote: Remote, queue: str, **_: Any) -> Any:
    try:
        cancelled = remote.worker.fetcher.cancel_queue(queue)
    except ValueError as exc:
        return {"error": str(exc)}
    if not cancelled:
        return {"error": f"not consuming from {queue!r}"}
    logger.info("no longer consuming from queue %s (remote control)", queue)
    return {"ok": f"no longer consuming from {queue!r}"}


@handler("pool_grow")
def pool_grow(remote: Remote, n: int = 1, **_: Any) -> Any:
    worker = remote.worker
    if worker.pool.runs_inline:
        return {"error": f"the {worker.pool.name} pool cannot grow"}
    size = worker.pool.concurrency + int(n)
    scaler = worker.autoscaler
    if scaler is not None and size > scaler.maximum:
        scaler.maximum = size  # Celery's force_scale_up: the maximum follows
    reached = remote.resize(size)
    logger.info("pool grown to %d by remote control", reached)
    return {"ok": "pool will grow"}


@handler("pool_shrink")
def pool_shrink(remote: Remote, n: int = 1, **_: Any) -> Any:
    worker = remote.worker
    if worker.pool.runs_inline:
        return {"error": f"the {worker.pool.name} pool cannot shrink"}
    size = max(worker.pool.concurrency - int(n), 1)
    scaler = worker.autoscaler
    if scaler is not None and size < scaler.minimum:
        scaler.minimum = size  # Celery's force_scale_down: the minimum follows
    reached = remote.resize(size)
    logger.info("pool shrunk to %d by remote control", reached)
    return {"ok": "pool will shrink"}


@handler("shutdown")
def shutdown(remote: Remote, **_: Any) -> Any:
    logger.warning("shutdown requested by remote control: warm shutdown")
    remote.worker.request_shutdown()
    return {"ok": "shutting down"}


# -- stats' parts ---------------------------------------------------------------------


def _broker_info(url: str) -> dict[str, Any]:
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    return {
        "transport": parts.scheme,
        "hostname": parts.hostname,
        "port": port,
        "userid": parts.username,
        "virtual_host": parts.path.lstrip("/") if parts.scheme != "sqlite" else "",
        "uri": redact_url(url),
    }


def _rusage() -> dict[str, float]:
    try:
        import resource
    except ImportError:  # not on Windows
        return {}
    usage = resource.getrusage(resource.RUSAGE_SELF)
    names = [
        "utime",
        "stime",
        "maxrss",
        "minflt",
        "majflt",
        "nvcsw",
        "nivcsw",
        "inblock",
        "oublock",
    ]
    return {name: getattr(usage, f"ru_{name}") for name in names}
