"""Prometheus metrics of an app, read from its broker at each scrape.

Nothing is kept between scrapes: the task counters are the broker's (workers add
theirs, ``conveyor.worker.metrics``), the queues and workers are what the broker holds
now. Any number of dashboards serve the same numbers, and a restarted one loses none::

    conveyor_tasks_total{task,state}              counter: runs that ended in each state
    conveyor_task_runtime_seconds{task}           histogram: runtime of runs that ended
    conveyor_queue_messages{queue,state}          ready, delayed, held (in flight), dead
    conveyor_queue_latency_seconds{queue}         age of the oldest ready message (0: none)
    conveyor_workers                              workers alive (their last beat not expired)
    conveyor_worker_active_tasks{worker}          tasks each worker is running

prometheus-client is an optional dependency: ``pip install 'conveyor[prometheus]'`` (or
the ``dashboard`` extra, which serves ``render(app)`` at ``/metrics``).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import orjson

from conveyor.worker import metrics as counters

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from conveyor.app import Conveyor
    from conveyor.brokers.base import Broker

_MISSING = (
    "conveyor's Prometheus metrics need prometheus-client: "
    "pip install 'conveyor[prometheus]' (or 'conveyor[dashboard]')"
)


def _prometheus() -> Any:
    """The ``prometheus_client`` module, or an ImportError naming the extra."""
    try:
        import prometheus_client
        import prometheus_client.core  # the metric families
    except ImportError as exc:  # the optional dependency is not installed
        raise ImportError(_MISSING) from exc
    return prometheus_client


def _split(name: str, prefix: str) -> tuple[str, str]:
    """``(task, last part)`` of a counter named ``<prefix><task>|<last>``."""
    task, _, last = name[len(prefix) :].rpartition("|")
    return task, last


def _le(bound: str) -> float:
    return float("inf") if bound == counters.INF else float(bound)


def task_metrics(broker: Broker) -> tuple[Any, Any]:
    """``conveyor_tasks_total`` and ``conveyor_task_runtime_seconds`` from the counters."""
    prom = _prometheus().core
    values = broker.counters()
    totals = prom.CounterMetricFamily(
        "conveyor_tasks", "Task runs that ended, by task and state.", labels=["task", "state"]
    )
    buckets: defaultdict[str, dict[float, float]] = defaultdict(dict)
    sums: dict[str, float] = {}
    for name, value in sorted(values.items()):
        if name.startswith(counters.TASKS):
            totals.add_metric(list(_split(name, counters.TASKS)), value)
        elif name.startswith(counters.RUNTIME_BUCKET):
            task, bound = _split(name, counters.RUNTIME_BUCKET)
            buckets[task][_le(bound)] = value
        elif name.startswith(counters.RUNTIME_SUM):
            sums[name[len(counters.RUNTIME_SUM) :]] = value
    runtime = prom.HistogramMetricFamily(
        "conveyor_task_runtime_seconds", "Runtime of task runs that ended.", labels=["task"]
    )
    for task in sorted(set(buckets) | set(sums)):
        # the counters hold each bucket's own runs: Prometheus' buckets are cumulative
        own = buckets.get(task, {})
        running = 0.0
        cumulative = []
        for le in (*counters.BUCKETS, float("inf")):
            running += own.get(le, 0.0)
            cumulative.append((counters.INF if le == float("inf") else repr(le), running))
        runtime.add_metric([task], cumulative, sums.get(task, 0.0))
    return totals, runtime


def queue_metrics(broker: Broker, now: float | None = None) -> tuple[Any, Any]:
    """``conveyor_queue_messages`` and ``conveyor_queue_latency_seconds``."""
    prom = _prometheus().core
    now = time.time() if now is None else now
    messages = prom.GaugeMetricFamily(
        "conveyor_queue_messages",
        "Messages a queue holds: ready, delayed, held (in flight), dead.",
        labels=["queue", "state"],
    )
    latency = prom.GaugeMetricFamily(
        "conveyor_queue_latency_seconds",
        "Seconds the oldest ready message of a queue has waited (0: none is ready).",
        labels=["queue"],
    )
    for s in broker.stats(None):
        for state, count in (
            ("ready", s.ready),
            ("delayed", s.delayed),
            ("held", s.in_flight),
            ("dead", s.dead),
        ):
            messages.add_metric([s.queue, state], count)
        oldest = s.oldest_ready_at
        latency.add_metric([s.queue], 0.0 if oldest is None else max(0.0, now - oldest))
    return messages, latency


def worker_metrics(broker: Broker) -> tuple[Any, Any]:
    """``conveyor_workers`` and ``conveyor_worker_active_tasks`` from the registry."""
    prom = _prometheus().core
    alive = broker.workers()
    workers = prom.GaugeMetricFamily(
        "conveyor_workers", "Workers alive (their last heartbeat has not expired)."
    )
    workers.add_metric([], len(alive))
    active = prom.GaugeMetricFamily(
        "conveyor_worker_active_tasks", "Tasks each worker is running.", labels=["worker"]
    )
    for name, raw in sorted(alive.items()):
        try:
            info = orjson.loads(raw)
        except orjson.JSONDecodeError:
            info = {}
        running = info.get("active", 0) if isinstance(info, dict) else 0
        active.add_metric([name], float(running) if isinstance(running, int | float) else 0.0)
    return workers, active


class ConveyorCollector:
    """A prometheus_client collector of ``app``'s metrics (see the module docstring):
    ``REGISTRY.register(ConveyorCollector(app))`` to serve them with your own."""

    def __init__(self, app: Conveyor) -> None:
        _prometheus()  # fail now, naming the extra, rather than at the first scrape
        self.app = app

    def collect(self) -> Iterator[Metric]:
        broker = self.app.broker
        yield from task_metrics(broker)
        yield from queue_metrics(broker)
        yield from worker_metrics(broker)

    def describe(self) -> list[Metric]:
        return []  # nothing to check at registration: the families vary with the broker


def render(app: Conveyor) -> tuple[bytes, str]:
    """``(body, content type)`` of the Prometheus text exposition of ``app``'s metrics."""
    prom = _prometheus()
    registry = prom.CollectorRegistry(auto_describe=False)
    registry.register(ConveyorCollector(app))
    body: bytes = prom.generate_latest(registry)
    return body, str(prom.CONTENT_TYPE_LATEST)
