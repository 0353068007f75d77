"""One chaos run: start the broker and three workers, send the plan's tasks while
killing workers (and, on Redis, restarting, killing and stalling the server), wait
until everything sent has run and the broker is empty, then hand what was recorded
to ``report.build``.

Files of a run, in its work directory: ``plan.jsonl`` (the tasks to send),
``sends.journal`` (each send attempt), ``executions.journal`` (each run's start and
end), ``events.jsonl`` (each disturbance), ``logs/`` (every worker incarnation's
log, JSON lines; the producer's), ``redis/`` (the server's directory and AOF),
``report.json`` and ``report.txt``.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
from apps.chaos_tasks import JournalReader

from conveyor import Conveyor
from redis_server import RedisServer

from .config import ChaosConfig, Plan, make_plan
from .fleet import Event, Fleet, Incarnation, Producer, RedisChaos, Timeline, environment
from .report import Report, build

logger = logging.getLogger("chaos")

#: Seconds the producer gets, beyond its plan, to finish sending through the chaos.
SENDING_GRACE = 120.0
#: Seconds a worker kill may wait, past its planned time, for a worker to be running a task.
KILL_WAIT = 3.0


@dataclass
class Observations:
    """Everything a run recorded, for ``report.build``."""

    config: ChaosConfig
    workdir: Path
    plan: Plan
    start: float
    sent_at: float = 0.0
    drained_at: float | None = None
    end: float = 0.0
    events: list[Event] = field(default_factory=list)
    workers: list[Incarnation] = field(default_factory=list)
    executions: list[dict[str, Any]] = field(default_factory=list)
    sends: list[dict[str, Any]] = field(default_factory=list)
    torn: dict[str, int] = field(default_factory=dict)
    final_stats: dict[str, int] = field(default_factory=dict)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    missing_results: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def run(config: ChaosConfig, workdir: Path) -> Report:
    """Run ``config`` in ``workdir`` (created if needed) and return its report, also
    written to ``workdir/report.json`` and ``report.txt``."""
    workdir.mkdir(parents=True, exist_ok=True)
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    plan = make_plan(config)
    plan_path = workdir / "plan.jsonl"
    with plan_path.open("wb") as f:
        for task in plan.tasks:
            f.write(orjson.dumps(asdict(task)) + b"\n")
    executions = JournalReader(workdir / "executions.journal")
    sends = JournalReader(workdir / "sends.journal")
    timeline = Timeline(workdir / "events.jsonl")

    server: RedisServer | None = None
    if config.broker == "redis":
        server = RedisServer(
            workdir / "redis", appendonly=True, appendfsync="always", debug_command=True
        )
        server.dir.mkdir(exist_ok=True)
        server.start()
        url = server.url
    else:
        url = f"sqlite:///{workdir / 'conveyor.sqlite3'}"
    env = environment(url, config, executions.path)
    rng = random.Random(config.seed + 1)
    fleet = Fleet(config, env, logs, timeline, rng)
    inspector = Conveyor(
        "chaos-inspector",
        broker=url,
        broker_lease_timeout=config.lease,
        broker_max_deliveries=config.max_deliveries,
    )
    queue = inspector.conf.task_default_queue
    obs = Observations(config, workdir, plan, start=0.0)
    producer: Producer | None = None
    redis_chaos: RedisChaos | None = None
    stopping = False
    try:
        fleet.start_all()
        obs.start = time.time() + 1.0  # the producer's first send, once it has started
        producer_env = {
            **env,
            "CONVEYOR_TEST_CONNECTION_TIMEOUT": str(config.producer_connection_timeout),
        }
        producer = Producer(plan_path, sends.path, obs.start, producer_env, logs / "producer.log")
        producer.start()
        if server is not None:
            redis_chaos = RedisChaos(
                server, plan.events, obs.start, timeline, lambda: stopping, config.lease + 1.0
            )
            redis_chaos.start()
        _send_through_chaos(obs, fleet, producer, redis_chaos, timeline, executions)
        obs.sent_at = time.time()
        fleet.ensure_all_running()
        if _drain(obs, fleet, inspector, queue, executions, sends):
            obs.drained_at = time.time()
            _let_stale_runs_end(config, fleet, executions)
        fleet.stop()
        obs.final_stats = _stats(inspector, queue)
        obs.dead_letters = [
            {
                "id": d.id,
                "reason": d.reason,
                "deliveries": d.deliveries,
                "died_at": d.died_at,
                "history": [[r.consumer, r.at] for r in d.history],
            }
            for d in inspector.broker.dead_letters(limit=10_000)
        ]
        ended = {r["id"] for r in executions.records() if r["ev"] == "end"}
        obs.missing_results = _missing_results(inspector, ended)
    except Exception as exc:
        logger.exception("the chaos run failed")
        obs.problems.append(f"the harness failed: {type(exc).__name__}: {exc}")
    finally:
        stopping = True
        obs.end = time.time()
        if producer is not None:
            producer.cleanup()
        fleet.cleanup()
        inspector.close()
        if redis_chaos is not None:
            redis_chaos.join(30)
            if redis_chaos.error is not None:
                obs.problems.append(f"Redis chaos failed: {redis_chaos.error!r}")
        if server is not None:
            server.stop()
    executions.finish()
    sends.finish()
    obs.events = timeline.events
    obs.workers = fleet.all
    obs.executions = executions.records()
    obs.sends = sends.records()
    obs.torn = {"executions": executions.torn, "sends": sends.torn}
    report = build(obs)
    (workdir / "report.json").write_bytes(
        orjson.dumps(report.data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
    )
    (workdir / "report.txt").write_text(report.text())
    return report


def _send_through_chaos(
    obs: Observations,
    fleet: Fleet,
    producer: Producer,
    redis_chaos: RedisChaos | None,
    timeline: Timeline,
    executions: JournalReader,
) -> None:
    """Supervise the workers and the producer, and kill them on the plan, until every
    task has been sent and every planned event has happened."""
    pending = [e for e in obs.plan.events if e.kind in ("kill worker", "kill producer")]
    running = Running(executions)
    producer_journal = obs.workdir / "sends.journal"
    deadline = obs.start + obs.config.send_seconds * 3 + SENDING_GRACE
    while True:
        now = time.time()
        fleet.supervise()
        producer.supervise(timeline)
        while pending and obs.start + pending[0].at <= now:
            event = pending[0]
            if event.kind == "kill worker":
                busy = running.busy() & fleet.alive_hosts()
                # A kill that catches no task tests nothing: wait a little for one to run.
                if not busy and now < obs.start + event.at + KILL_WAIT:
                    break
                fleet.kill(busy)
            else:
                producer.kill(timeline, producer_journal)
            pending.pop(0)
        chaos_over = redis_chaos is None or not redis_chaos.is_alive()
        if producer.done and not pending and chaos_over:
            return
        if now > deadline:
            obs.problems.append(f"sending did not finish within {deadline - obs.start:.0f} s")
            return
        time.sleep(0.05)


class Running:
    """Which workers are running a task right now, from the executions journal."""

    def __init__(self, executions: JournalReader):
        self.executions = executions
        self.open: dict[str, int] = {}
        for record in executions.records():
            self._count(record)

    def _count(self, record: dict[str, Any]) -> None:
        change = 1 if record["ev"] == "start" else -1
        self.open[record["host"]] = self.open.get(record["host"], 0) + change

    def busy(self) -> set[str]:
        for record in self.executions.poll():
            self._count(record)
        return {host for host, count in self.open.items() if count > 0}


def _stats(inspector: Conveyor, queue: str) -> dict[str, int]:
    [stats] = inspector.broker.stats([queue])
    return {
        "ready": stats.ready,
        "delayed": stats.delayed,
        "in_flight": stats.in_flight,
        "dead": stats.dead,
    }


def drain_timeout(config: ChaosConfig) -> float:
    """How long everything sent may take to run once sending is over: the backlog at a
    pessimistic 50 tasks a second, plus leases, countdowns and the longest task."""
    return 60.0 + config.tasks / 50.0 + config.lease * 6 + config.max_countdown


def _drain(
    obs: Observations,
    fleet: Fleet,
    inspector: Conveyor,
    queue: str,
    executions: JournalReader,
    sends: JournalReader,
) -> bool:
    """Wait until every task sent has run to its end and the broker holds nothing
    (ready, delayed or in flight); False on timeout."""
    sent = {r["id"] for r in sends.records() if r["ev"] == "ok"}
    ended = {r["id"] for r in executions.records() if r["ev"] == "end"}
    deadline = time.time() + drain_timeout(obs.config)
    while True:
        fleet.supervise()  # a worker that exits by itself is replaced, as in production
        sent.update(r["id"] for r in sends.poll() if r["ev"] == "ok")
        ended.update(r["id"] for r in executions.poll() if r["ev"] == "end")
        if sent <= ended:
            try:
                stats = _stats(inspector, queue)
            except Exception as exc:
                logger.warning("stats failed: %s", exc)
            else:
                if stats["ready"] == stats["delayed"] == stats["in_flight"] == 0:
                    return True
        if time.time() > deadline:
            obs.problems.append(
                f"not drained after {drain_timeout(obs.config):.0f} s: "
                f"{len(sent - ended)} sent tasks never ended"
            )
            return False
        time.sleep(0.5)


def _let_stale_runs_end(config: ChaosConfig, fleet: Fleet, executions: JournalReader) -> None:
    """The broker is empty, but a run whose lease was taken over may still be going on a
    live worker: give it time to end, so that the report sees it whole."""
    deadline = time.time() + config.lease * 3 + 2.0
    while time.time() < deadline:
        live = {w.host for w in fleet.current if w is not None}
        open_runs: dict[tuple[str, str, int], int] = {}
        for r in executions.records():
            if r["host"] in live:
                key = (r["id"], r["host"], r["pid"])
                open_runs[key] = open_runs.get(key, 0) + (1 if r["ev"] == "start" else -1)
        if not any(count > 0 for count in open_runs.values()):
            return
        time.sleep(0.2)


def _missing_results(inspector: Conveyor, ended: set[str]) -> dict[str, str]:
    """Task ids that ran to their end without a SUCCESS result stored (state or 'none')."""
    missing: dict[str, str] = {}
    for task_id in ended:
        try:
            stored = inspector.backend.get(task_id)
        except Exception as exc:
            missing[task_id] = f"unreadable: {type(exc).__name__}: {exc}"
            continue
        if stored is None or stored.state != "SUCCESS":
            missing[task_id] = "none" if stored is None else stored.state
    return missing
