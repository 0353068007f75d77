"""The processes a chaos run starts, kills and restarts: workers, the producer, Redis.

Every disturbance is written down as an ``Event`` (what, when, to whom) the moment
it happens: the report explains each task run twice by these, and by nothing else.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

import redis
from apps.chaos_tasks import JOURNAL_ENV
from harness import BANNER_END, WorkerProcess

from redis_server import RedisServer

from . import TESTS
from .config import ChaosConfig, PlannedEvent, WorkerSpec

#: The app module every chaos worker runs (tests/integration/apps/chaos_tasks.py).
APP = "apps.chaos_tasks"


@dataclass
class Event:
    """Something the harness did (or saw happen) to the system under test.

    ``at``/``end``: UNIX times; for Redis events the window in which it was away or
    stalled (``end``: it answers again); for a kill, from the signal until every
    process of the group is gone. ``host``: the worker incarnation killed, or that
    exited by itself.
    """

    kind: str
    at: float
    end: float
    host: str | None = None
    pids: list[int] = field(default_factory=list)
    detail: str = ""

    @property
    def is_window(self) -> bool:
        """A Redis outage or stall: calls in it may have been cut off."""
        return self.kind.startswith("redis ")


class Timeline:
    """The events of a run, kept in memory and appended to ``events.jsonl`` as they occur."""

    def __init__(self, path: Path):
        self.path = path
        self.events: list[Event] = []
        self._lock = threading.Lock()

    def add(self, event: Event) -> Event:
        with self._lock:
            self.events.append(event)
            with self.path.open("a") as f:
                f.write(json.dumps(asdict(event)) + "\n")
        return event


@dataclass
class Incarnation:
    """One ``conveyor worker`` process of a slot: a fresh ``-n`` hostname each time."""

    slot: int
    number: int
    spec: WorkerSpec
    host: str
    process: WorkerProcess
    started_at: float
    ready_at: float | None = None
    ended_at: float | None = None
    ended: str = ""  # "killed", "exited (code N)", "stopped (code N)"

    @property
    def log_path(self) -> Path:
        return self.process.log_path


class Fleet:
    """The worker slots: each runs one incarnation at a time; a killed or exited one is
    replaced after ``restart_after`` seconds, as a supervisor would."""

    def __init__(
        self,
        config: ChaosConfig,
        env: Mapping[str, str],
        logs: Path,
        timeline: Timeline,
        rng: random.Random,
    ):
        self.config = config
        self.env = dict(env)
        self.logs = logs
        self.timeline = timeline
        self.rng = rng
        self.all: list[Incarnation] = []
        self.current: list[Incarnation | None] = [None] * len(config.workers)
        self._restart_at: list[float] = [0.0] * len(config.workers)
        self._counts = [0] * len(config.workers)

    def start(self, slot: int) -> Incarnation:
        spec = self.config.workers[slot]
        self._counts[slot] += 1
        number = self._counts[slot]
        host = f"chaos-w{slot + 1}.{number}@%h"
        args = ["-P", spec.pool, "-c", str(spec.concurrency), "-n", host]
        args += ["-l", self.config.log_level, "--log-format", "json"]
        log = self.logs / f"w{slot + 1}.{number}.log"
        process = WorkerProcess(args, self.env, log, app=APP)
        hostname = host.replace("%h", socket.gethostname())
        incarnation = Incarnation(slot, number, spec, hostname, process, time.time())
        self.all.append(incarnation)
        self.current[slot] = incarnation
        return incarnation

    def start_all(self, timeout: float = 60.0) -> None:
        for slot in range(len(self.config.workers)):
            self.start(slot)
        deadline = time.monotonic() + timeout
        while not all(w is not None and w.ready_at for w in self.current):
            self.supervise()
            if time.monotonic() > deadline:
                raise RuntimeError("the chaos workers did not start:\n" + self.tail_logs())
            time.sleep(0.05)

    def supervise(self) -> None:
        """Note workers that became ready or exited by themselves; restart what is due."""
        now = time.time()
        for slot, worker in enumerate(self.current):
            if worker is None:
                if now >= self._restart_at[slot]:
                    self.start(slot)
                continue
            code = worker.process.proc.poll()
            if worker.ready_at is None and code is None and _ready(worker):
                worker.ready_at = time.time()
            if code is not None:
                # Not killed by us (that path clears the slot): a crash, or it gave up.
                worker.ended_at, worker.ended = now, f"exited (code {code})"
                worker.process.cleanup()
                self.timeline.add(
                    Event(
                        "worker exited", now, now, worker.host, [worker.process.pid], _tail(worker)
                    )
                )
                self.current[slot] = None
                self._restart_at[slot] = now + 1.0

    def alive_hosts(self) -> set[str]:
        return {w.host for w in self.current if w is not None and w.process.proc.poll() is None}

    def kill(self, busy: set[str]) -> Incarnation | None:
        """SIGKILL the whole process group of a random worker (its host dying), one
        running a task if any is (``busy``: their hosts): that is the case to test."""
        alive = [w for w in self.current if w is not None and w.process.proc.poll() is None]
        if not alive:
            return None
        worker = self.rng.choice([w for w in alive if w.host in busy] or alive)
        pids = [worker.process.pid, *worker.process.pool_pids()]
        at = time.time()
        worker.process.kill_group()
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.process.proc.wait(10)
        # SIGKILL is not instantaneous: a process finishes the system call it is in (a
        # journal write, say) before it dies. The kill spans [at, end]: until all are gone.
        _wait_gone(pids)
        end = time.time()
        worker.process.cleanup()
        worker.ended_at, worker.ended = at, "killed"
        self.timeline.add(Event("kill worker", at, end, worker.host, pids, worker.spec.pool))
        self.current[worker.slot] = None
        self._restart_at[worker.slot] = time.time() + self.rng.uniform(*self.config.restart_after)
        return worker

    def ensure_all_running(self) -> None:
        for slot, worker in enumerate(self.current):
            if worker is None:
                self._restart_at[slot] = 0.0
        self.supervise()

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (warm shutdown) to every worker, SIGKILL what is left after ``timeout``."""
        running = [w for w in self.current if w is not None]
        for worker in running:
            with contextlib.suppress(ProcessLookupError):
                worker.process.terminate()
        deadline = time.monotonic() + timeout
        for worker in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.process.proc.wait(max(0.1, deadline - time.monotonic()))
            code = worker.process.proc.poll()
            worker.process.cleanup()
            worker.ended_at = time.time()
            worker.ended = f"stopped (code {code})" if code is not None else "stopped (killed)"
        self.current = [None] * len(self.current)

    def cleanup(self) -> None:
        """Kill anything still running (an aborted run)."""
        for worker in self.all:
            worker.process.cleanup()

    def tail_logs(self) -> str:
        """The last lines of each slot's latest worker."""
        latest = {w.slot: w for w in self.all}
        return "\n".join(f"--- {w.host}:\n{_tail(w)}" for w in latest.values())


def _wait_gone(pids: list[int], timeout: float = 5.0) -> None:
    """Until none of ``pids`` runs any more (gone, or a zombie)."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except (FileNotFoundError, ProcessLookupError):
                break
            if stat.rpartition(")")[2].split()[0] in ("Z", "X"):
                break
            time.sleep(0.001)


def _ready(worker: Incarnation) -> bool:
    with contextlib.suppress(FileNotFoundError):
        return BANNER_END in worker.log_path.read_text(errors="replace")
    return False


def _tail(worker: Incarnation, lines: int = 8) -> str:
    try:
        text = worker.log_path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


class Producer:
    """The producer process (``chaos.producer``); killed and restarted on the plan."""

    def __init__(self, plan: Path, journal: Path, start: float, env: Mapping[str, str], log: Path):
        self.args = [str(plan), str(journal), repr(start)]
        self.env = dict(env)
        self.log_path = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.done = False
        self.exits: list[int] = []
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "chaos.producer", *self.args],
            cwd=TESTS,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self, timeline: Timeline, journal: Path) -> None:
        """SIGKILL the producer, mid-send if we can catch it there: right after it
        journaled a ``try`` (a send takes a millisecond or more; this check, microseconds)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and not _sending(journal):
            time.sleep(0.0002)
        at = time.time()
        self.proc.kill()
        self.proc.wait()
        self._closed()
        timeline.add(Event("kill producer", at, time.time(), None, [self.proc.pid]))
        self.proc = None

    def supervise(self, timeline: Timeline) -> None:
        """Restart a killed producer; note one that ended by itself (done, or crashed)."""
        if self.done:
            return
        if self.proc is None:
            self.start()
            return
        code = self.proc.poll()
        if code is None:
            return
        self._closed()
        if code == 0:
            self.done = True
            return
        self.exits.append(code)
        now = time.time()
        timeline.add(Event("producer exited", now, now, None, [self.proc.pid], f"code {code}"))
        if len(self.exits) > 5:
            raise RuntimeError(f"the chaos producer keeps failing: see {self.log_path}")
        self.proc = None

    def _closed(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._closed()


def _sending(journal: Path) -> bool:
    """Whether the last record of the producer's journal is a ``try`` (a send under way)."""
    try:
        with journal.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 200))
            tail = f.read()
    except FileNotFoundError:
        return False
    return tail.endswith(b"\n") and b'"ev":"try"' in tail[tail.rfind(b"\x1e") :]


class RedisChaos(threading.Thread):
    """Takes Redis away on the plan, one event at a time, in its own thread (the main
    loop keeps killing workers meanwhile)."""

    def __init__(
        self,
        server: RedisServer,
        events: list[PlannedEvent],
        start: float,
        timeline: Timeline,
        stopping: Callable[[], bool],
        gap: float,
    ):
        super().__init__(name="redis-chaos", daemon=True)
        self.gap = gap
        self.server = server
        self.planned = [e for e in events if e.kind in ("restart", "kill", "stall")]
        self.start_at = start
        self.timeline = timeline
        self.stopping = stopping
        self.error: BaseException | None = None

    def run(self) -> None:
        free_at = 0.0
        try:
            for planned in self.planned:
                # Never two windows close together: each must be told apart in the report.
                while time.time() < max(self.start_at + planned.at, free_at):
                    if self.stopping():
                        return
                    time.sleep(0.05)
                self._disturb(planned)
                free_at = time.time() + self.gap
        except BaseException as exc:  # reported by the engine
            self.error = exc

    def _disturb(self, planned: PlannedEvent) -> None:
        if planned.kind == "stall":
            self._stall(planned.seconds)
            return
        kill = planned.kind == "kill"
        at = time.time()
        self.server.stop(kill=kill)  # SIGTERM: a clean SHUTDOWN (the AOF is written)
        time.sleep(planned.seconds)
        self.server.start(appendonly=True)
        detail = "SIGKILL" if kill else "SIGTERM (shutdown)"
        self.timeline.add(Event(f"redis {planned.kind}", at, time.time(), detail=detail))

    def _stall(self, seconds: float) -> None:
        # DEBUG SLEEP blocks the whole server; our own connection waits for it, the
        # system under test sees a server that accepts writes and answers nothing.
        client = redis.Redis(host="127.0.0.1", port=self.server.port, socket_timeout=seconds + 30)
        try:
            at = time.time()
            client.execute_command("DEBUG", "SLEEP", f"{seconds:.3f}")  # type: ignore[no-untyped-call]
            end = time.time()
        finally:
            client.close()
        self.timeline.add(Event("redis stall", at, end, detail=f"DEBUG SLEEP {seconds:.1f}"))


def environment(broker_url: str, config: ChaosConfig, journal: Path) -> dict[str, str]:
    """The environment of the workers: ours without any CONVEYOR_* of the caller's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.update(
        CONVEYOR_BROKER_URL=broker_url,
        CONVEYOR_TEST_LEASE_TIMEOUT=str(config.lease),
        CONVEYOR_TEST_MAX_DELIVERIES=str(config.max_deliveries),
        CONVEYOR_TEST_ACKS_LATE="1",
    )
    env[JOURNAL_ENV] = str(journal)
    return env
