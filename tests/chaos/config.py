"""What a chaos run does: its settings, the presets, and the plan drawn from a seed.

Everything random (task lengths, countdowns, when workers die, when Redis goes
away) is drawn up front from ``seed``, so a run can be repeated; only the
order in which the system reacts differs.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

Broker = Literal["redis", "sqlite"]
RedisEventKind = Literal["restart", "kill", "stall"]


@dataclass(frozen=True)
class WorkerSpec:
    """One worker slot: the pool and concurrency every incarnation of it runs with."""

    pool: Literal["prefork", "threads"]
    concurrency: int


#: Three workers, the two pools mixed. Threads are cheap when tasks sleep, so that
#: slot carries the most; the prefork slots exercise killed pool children.
DEFAULT_WORKERS = (
    WorkerSpec("prefork", 6),
    WorkerSpec("threads", 16),
    WorkerSpec("prefork", 6),
)


@dataclass(frozen=True)
class ChaosConfig:
    """One chaos run on one broker.

    Task mix: ``long_share`` of the tasks run 1.5-3 leases, ``medium_share`` run
    0.1-2 s, the rest 1-10 ms; ``countdown_share`` are sent with a countdown of
    0.5 s to ``max_countdown``. Worker kills: ``worker_kills`` of them spread over
    the sending, or (``None``) one every ``kill_every`` seconds. Redis (ignored on
    SQLite): clean restarts, SIGKILLs and ``DEBUG SLEEP`` stalls, spread over the
    sending, each down for ``outage_seconds`` (stalls: ``stall_seconds``, default
    the lease plus 2 s).
    """

    broker: Broker
    tasks: int
    rate: float
    workers: tuple[WorkerSpec, ...] = DEFAULT_WORKERS
    lease: float = 3.0
    #: High enough that no run of kills can push a healthy task into the dead letters.
    max_deliveries: int = 100
    medium_share: float = 0.02
    long_share: float = 0.002
    countdown_share: float = 0.1
    max_countdown: float = 5.0
    worker_kills: int | None = None
    kill_every: tuple[float, float] = (3.0, 8.0)
    restart_after: tuple[float, float] = (0.2, 2.0)
    redis_restarts: int = 0
    redis_kills: int = 0
    stalls: int = 0
    stall_seconds: float | None = None
    outage_seconds: tuple[float, float] = (0.5, 3.0)
    producer_kills: int = 0
    #: The producer's ``broker_connection_timeout``: shorter than most outages, so
    #: sends do raise and are retried.
    producer_connection_timeout: float = 2.0
    #: How long after a run ends its ack may still be pending (batched by the settler).
    settle_slack: float = 2.0
    seed: int = 20261203
    log_level: str = "info"

    @property
    def send_seconds(self) -> float:
        """How long the producer takes to send everything, at ``rate``."""
        return self.tasks / self.rate

    @property
    def stall(self) -> float:
        return self.stall_seconds if self.stall_seconds is not None else self.lease + 2.0

    def with_(self, **changes: Any) -> ChaosConfig:
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def short(broker: Broker) -> ChaosConfig:
    """The version inside ``make test``: about half a minute per broker."""
    if broker == "redis":
        return ChaosConfig(
            broker="redis",
            tasks=1_200,
            rate=50.0,
            lease=2.0,
            medium_share=0.03,
            long_share=0.006,
            worker_kills=2,
            redis_restarts=1,
            redis_kills=1,
            stalls=1,
            outage_seconds=(1.5, 2.5),
            producer_connection_timeout=1.0,
        )
    return ChaosConfig(
        broker="sqlite",
        tasks=600,
        rate=50.0,
        lease=2.0,
        medium_share=0.03,
        long_share=0.006,
        worker_kills=2,
        producer_kills=1,
    )


def full(broker: Broker) -> ChaosConfig:
    """``make chaos``: 100,000 tasks on Redis, 20,000 on SQLite."""
    if broker == "redis":
        return ChaosConfig(
            broker="redis",
            tasks=100_000,
            rate=400.0,
            redis_restarts=3,
            redis_kills=3,
            stalls=2,
            producer_kills=2,
        )
    return ChaosConfig(broker="sqlite", tasks=20_000, rate=150.0, producer_kills=3)


# -- the plan --------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedTask:
    """One task to send: its id, when (seconds after the start), how long it runs."""

    id: str
    seq: int
    at: float
    seconds: float
    countdown: float | None


@dataclass(frozen=True)
class PlannedEvent:
    """One disturbance: ``at`` seconds after the start; ``seconds`` down (Redis events)."""

    at: float
    kind: Literal["kill worker", "kill producer"] | RedisEventKind
    seconds: float = 0.0


@dataclass
class Plan:
    tasks: list[PlannedTask] = field(default_factory=list)
    events: list[PlannedEvent] = field(default_factory=list)


def _spread(rng: random.Random, count: int, begin: float, end: float) -> list[float]:
    """``count`` instants over ``[begin, end]``, evenly spaced, each jittered a little."""
    if count <= 0:
        return []
    step = (end - begin) / count
    return [begin + step * (i + 0.5) + rng.uniform(-step / 4, step / 4) for i in range(count)]


def make_plan(config: ChaosConfig) -> Plan:
    rng = random.Random(config.seed)
    plan = Plan()
    for seq in range(config.tasks):
        kind = rng.random()
        if kind < config.long_share:
            seconds = rng.uniform(1.5, 3.0) * config.lease
        elif kind < config.long_share + config.medium_share:
            seconds = rng.uniform(0.1, 2.0)
        else:
            seconds = rng.uniform(0.001, 0.010)
        countdown = None
        if rng.random() < config.countdown_share:
            countdown = round(rng.uniform(0.5, config.max_countdown), 3)
        task_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        plan.tasks.append(
            PlannedTask(task_id, seq, seq / config.rate, round(seconds, 4), countdown)
        )

    span = config.send_seconds
    redis = _redis_kinds(config) if config.broker == "redis" else []
    if config.worker_kills is not None:
        plan.events += _sequence(config, rng, redis, config.worker_kills)
    else:
        plan.events += _sequence(config, rng, redis, 0)
        at = rng.uniform(*config.kill_every)
        while at < span:
            plan.events.append(PlannedEvent(at, "kill worker"))
            at += rng.uniform(*config.kill_every)
    plan.events += [
        PlannedEvent(at, "kill producer")
        for at in _spread(rng, config.producer_kills, span * 0.1, span * 0.9)
    ]
    plan.events.sort(key=lambda e: e.at)
    return plan


def _redis_kinds(config: ChaosConfig) -> list[RedisEventKind]:
    """Restarts, stalls and kills, interleaved."""
    kinds: list[RedisEventKind] = []
    counts: dict[RedisEventKind, int] = {
        "restart": config.redis_restarts,
        "stall": config.stalls,
        "kill": config.redis_kills,
    }
    order: tuple[RedisEventKind, ...] = ("restart", "stall", "kill")
    while any(counts.values()):
        for name in order:
            if counts[name]:
                kinds.append(name)
                counts[name] -= 1
    return kinds


def _sequence(
    config: ChaosConfig, rng: random.Random, redis: list[RedisEventKind], kills: int
) -> list[PlannedEvent]:
    """The Redis events and ``kills`` worker kills interleaved, spread over the sending,
    and each one a lease and more after the one before has ended: every window, and
    every kill's redelivery, is then told apart from the others in the report."""
    items: list[tuple[float, str]] = [((i + 0.5) / kills, "kill worker") for i in range(kills)]
    items += [((i + 0.5) / len(redis), kind) for i, kind in enumerate(redis)]
    items.sort()
    span = config.send_seconds
    events: list[PlannedEvent] = []
    free_at = 0.0
    for (_, kind), at in zip(items, _spread(rng, len(items), span * 0.1, span * 0.9), strict=True):
        at = max(at, free_at)
        if kind == "kill worker":
            events.append(PlannedEvent(at, "kill worker"))
            free_at = at + config.lease + 1.5
        else:
            seconds = config.stall if kind == "stall" else rng.uniform(*config.outage_seconds)
            events.append(PlannedEvent(at, kind, round(seconds, 3)))  # type: ignore[arg-type]
            free_at = at + seconds + config.lease + 1.0
    return events
