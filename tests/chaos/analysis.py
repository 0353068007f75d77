"""From what a chaos run recorded to its verdict: lost tasks, and why each task ran twice.

Sources: the producer's journal (every send attempt), the executions journal
(every run's start and end, with the worker incarnation that ran it), the
harness's events (kills, Redis outages and stalls), and the broker at the end.

Why a task may legitimately run more than once, and nothing else:

* **a killed worker**: a run on a worker the harness SIGKILLed, started before the
  kill and not yet acknowledged then (no end, or an end less than
  ``settle_slack`` before the kill, that slack extended through any Redis event
  the ack would have waited out), may run again, once, after the kill;
* **an ack cut off**: a run that ended within a Redis outage or stall (from
  ``settle_slack`` before it to ``settle_slack`` after) may run again once. (Its
  worker retries the ack once Redis answers again, and nobody should take a lease
  over until a lease has passed since then: a re-run that starts sooner is counted
  apart, as ``taken over early``, a hint that the grace after an outage or a stall
  is missing; it is not a failure.)
* **an extra copy**: a send that raised, or was cut off by the producer's kill,
  may have been stored; so may a send in flight across a Redis outage or stall
  (its reply lost, the call retried). Each is one more copy that may run.

Each run after the first must be matched to one such cause that happened before
it started; a run left over is unexplained. A redelivery of the same message has
a higher delivery count than the run it repeats, so a run counted 1 again is
matched to a copy first. A run that lasted through an outage
and ran again although it ended well after Redis was back is *not* explained: its
live lease was taken over (guarantee 2).
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .fleet import Event

INF = math.inf


@dataclass
class Run:
    """One execution: its start and (unless its process died first) its end."""

    id: str
    host: str
    pid: int
    delivery: int
    start: float
    end: float | None = None


@dataclass
class Attempt:
    """One send: ``outcome`` is ``ok``, ``error`` (raised) or ``cut`` (no answer recorded:
    the producer was killed during the call)."""

    id: str
    n: int
    pid: int
    at: float
    end: float | None = None
    outcome: str = "cut"
    error: str = ""


@dataclass
class Cause:
    """Why one more run of a task was possible."""

    kind: str  # "worker killed", "ack cut off", "extra copy", "worker exited"
    at: float
    text: str
    #: The delivery count of the interrupted run (0 for a copy): its redelivery's is higher.
    delivery: int = 0
    #: For an ack cut off: when Redis answered again.
    window_end: float | None = None
    #: Taken over less than one lease after Redis answered again, before the worker that
    #: ran it could renew its lease or retry its ack (see the module docstring).
    early: bool = False


@dataclass
class Verdict:
    """A task that started more than once, and the cause matched to each extra run."""

    id: str
    runs: list[Run]
    causes: list[Cause | None] = field(default_factory=list)  # one per run after the first

    @property
    def explained(self) -> bool:
        return all(c is not None for c in self.causes)


def runs_by_task(records: Iterable[dict[str, Any]]) -> tuple[dict[str, list[Run]], int]:
    """Runs per task id, by start time; and how many ends had no start (torn records)."""
    runs: dict[str, list[Run]] = defaultdict(list)
    running: dict[tuple[str, str, int], list[Run]] = defaultdict(list)
    orphans = 0
    for r in records:
        key = (r["id"], r["host"], r["pid"])
        if r["ev"] == "start":
            run = Run(r["id"], r["host"], r["pid"], r["dl"], r["t"])
            runs[r["id"]].append(run)
            running[key].append(run)
        elif r["ev"] == "end":
            if running[key]:
                running[key].pop(0).end = r["t"]
            else:
                orphans += 1
    for task_runs in runs.values():
        task_runs.sort(key=lambda run: run.start)
    return runs, orphans


def attempts_by_task(records: Iterable[dict[str, Any]]) -> dict[str, list[Attempt]]:
    attempts: dict[str, list[Attempt]] = defaultdict(list)
    by_key: dict[tuple[str, int], Attempt] = {}
    for r in records:
        if r["ev"] == "try":
            attempt = Attempt(r["id"], r["n"], r["pid"], r["t"])
            attempts[r["id"]].append(attempt)
            by_key[(r["id"], r["n"])] = attempt
        elif r["ev"] in ("ok", "error"):
            answered = by_key.get((r["id"], r["n"]))
            if answered is not None:
                answered.end, answered.outcome = r["t"], r["ev"]
                answered.error = r.get("err", "")
    return attempts


class Explainer:
    """Matches the runs of a task to the events that allow them (module docstring)."""

    def __init__(self, events: list[Event], slack: float, lease: float):
        self.slack = slack
        self.lease = lease
        self.windows = sorted((e for e in events if e.is_window), key=lambda e: e.at)
        self.killed = {e.host: e for e in events if e.kind == "kill worker" and e.host}
        self.exited = {e.host: e for e in events if e.kind == "worker exited" and e.host}
        #: When each producer process was killed or exited (its unanswered send ends there).
        self.producer_gone = {
            pid: e.end
            for e in events
            if e.kind in ("kill producer", "producer exited")
            for pid in e.pids
        }

    def settled_by(self, run: Run) -> float:
        """The latest time ``run``'s ack may still be pending (INF: it never ended)."""
        if run.end is None:
            return INF
        limit = run.end + self.slack
        for w in self.windows:
            if w.at <= limit and w.end >= run.end:
                limit = max(limit, w.end + self.slack)
        return limit

    def window_at(self, at: float) -> Event | None:
        """The Redis event whose window (widened by the slack) contains ``at``."""
        for w in self.windows:
            if w.at - self.slack <= at <= w.end + self.slack:
                return w
        return None

    def overlapping(self, begin: float, end: float) -> list[Event]:
        return [w for w in self.windows if w.at <= end and w.end >= begin]

    def interruption(self, run: Run) -> Cause | None:
        """What may have made ``run`` run again, if anything."""
        kill = self.killed.get(run.host)
        # ``kill.end``: a run may start while the SIGKILL is on its way (see Fleet.kill)
        if kill is not None and run.start < kill.end and kill.at <= self.settled_by(run):
            state = "running" if run.end is None else f"ended {kill.at - run.end:.2f} s before"
            text = f"{run.host} SIGKILLed ({state}, unacked)"
            return Cause("worker killed", kill.at, text, run.delivery)
        exited = self.exited.get(run.host)
        if exited is not None and run.start < exited.at and exited.at <= self.settled_by(run):
            return Cause("worker exited", exited.at, f"{run.host} exited by itself", run.delivery)
        if run.end is not None:
            w = self.window_at(run.end)
            if w is not None:
                text = f"ended during {w.kind} ({w.detail})"
                return Cause("ack cut off", w.at, text, run.delivery, w.end)
        return None

    def copies(self, attempts: list[Attempt]) -> list[Cause]:
        """The copies beyond the first that the sends may have stored."""
        extra: list[Cause] = []
        for previous, a in itertools.pairwise(attempts):
            why = "raised" if previous.outcome == "error" else "was cut off by the producer's kill"
            extra.append(Cause("extra copy", a.at, f"sent again: send #{previous.n} {why}"))
        for a in attempts:
            end = a.end if a.end is not None else self.producer_gone.get(a.pid, INF)
            for w in self.overlapping(a.at, end):
                extra.append(Cause("extra copy", a.at, f"send #{a.n} in flight across {w.kind}"))
        return extra

    def explain(self, task_id: str, runs: list[Run], attempts: list[Attempt]) -> Verdict:
        verdict = Verdict(task_id, runs)
        copies = self.copies(attempts)
        pending: list[Cause] = []  # interruptions not yet matched to a later run
        for i, run in enumerate(runs):
            if i > 0:
                # A redelivery of the same message has a higher delivery count than the
                # interrupted run; a run counted 1 again is another copy of the message.
                ready = [c for c in pending if c.at <= run.start]
                grown = [c for c in ready if c.delivery < run.delivery]
                cause: Cause | None = None
                if grown:
                    cause = min(grown, key=lambda c: c.at)
                elif copies:
                    cause = copies.pop(0)
                elif ready:
                    cause = min(ready, key=lambda c: c.at)
                    counts = f"{run.delivery}, not above {cause.delivery}"
                    cause.text += f" (yet its delivery count is {counts})"
                if cause is not None and cause in pending:
                    pending.remove(cause)
                if cause is not None and cause.window_end is not None:
                    after = run.start - cause.window_end
                    if after < self.lease:
                        cause.text += f"; taken over {after:.2f} s after Redis answered again"
                        cause.early = True
                verdict.causes.append(cause)
            interruption = self.interruption(run)
            if interruption is not None:
                pending.append(interruption)
        return verdict


@dataclass
class Redelivery:
    """A task running on a worker when it was killed, and when it ran next."""

    id: str
    host: str
    killed_at: float
    next_start: float | None
    during_redis_event: bool

    @property
    def delay(self) -> float | None:
        return None if self.next_start is None else self.next_start - self.killed_at


def redeliveries(
    runs: dict[str, list[Run]], explainer: Explainer, events: list[Event]
) -> list[Redelivery]:
    """For each kill, each task its worker had started and not acknowledged."""
    by_host: dict[str, list[Run]] = defaultdict(list)
    for task_runs in runs.values():
        for run in task_runs:
            by_host[run.host].append(run)
    out = []
    for kill in (e for e in events if e.kind == "kill worker"):
        for run in by_host.get(kill.host or "", []):
            if not (run.start < kill.end and kill.at <= explainer.settled_by(run)):
                continue
            later = [r.start for r in runs[run.id] if r.start >= kill.at]
            if run.end is not None and not later:
                continue  # it had finished, and its ack got through before the kill
            next_start = min(later) if later else None
            during = bool(explainer.overlapping(kill.at, next_start or kill.at))
            out.append(Redelivery(run.id, kill.host or "", kill.at, next_start, during))
    return out


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


class Spans:
    """Which events fall in a span of time, by binary search over their start times."""

    def __init__(self, events: list[Event]):
        self.events = sorted(events, key=lambda e: e.at)
        self.starts = [e.at for e in self.events]

    def between(self, begin: float, end: float) -> list[Event]:
        first = bisect.bisect_left(self.starts, begin)
        inside = self.events[first : bisect.bisect_right(self.starts, end)]
        before = [e for e in self.events[:first] if e.end >= begin]
        return before + inside
