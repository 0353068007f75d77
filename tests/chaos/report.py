"""A chaos run's report: the figures, every failure with its timeline, as JSON and text.

Failures: a task sent and never run to its end (lost), a task run twice without a
cause (see ``analysis``), a dead letter, a task that ran without a result stored,
a run of a task that was never sent, and anything that kept the harness from
telling (not drained, a harness error). A worker that exited without being
killed is shown as a warning with its last log lines.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .analysis import (
    Attempt,
    Explainer,
    Run,
    Spans,
    Verdict,
    attempts_by_task,
    percentile,
    redeliveries,
    runs_by_task,
)
from .worker_logs import WorkerLogs

if TYPE_CHECKING:
    from .engine import Observations

#: Failures of one kind shown with a full timeline (the others by id only).
TIMELINES_PER_KIND = 25


@dataclass
class Report:
    data: dict[str, Any]

    @property
    def passed(self) -> bool:
        return bool(self.data["passed"])

    @property
    def summary(self) -> dict[str, Any]:
        return dict(self.data["summary"])

    def text(self) -> str:
        s = self.summary
        lines = [f"chaos on {s['broker']}: {'PASSED' if self.passed else 'FAILED'}", ""]
        lines += table([self])
        lines += ["", "events: " + ", ".join(f"{k} {v}" for k, v in s["events"].items())]
        sends = s["sends"]
        lines.append(
            f"sends: {sends['attempts']} attempts for {s['sent']} tasks; "
            f"{sends['raised']} raised, {sends['cut_by_producer_kill']} cut off by a "
            f"producer kill, {sends['tasks_retried']} tasks sent again"
        )
        if s["run_twice_by_cause"]:
            causes = ", ".join(f"{k} {v}" for k, v in s["run_twice_by_cause"].items())
            lines.append(f"extra runs, by cause: {causes}")
        if s["taken_over_early"]:
            lines.append(
                f"of which {s['taken_over_early']} taken over less than a lease after Redis "
                "answered again (its worker could not yet renew or ack)"
            )
        r = s["redelivery"]
        if r["count"]:
            quiet = r["longest_undisturbed_s"]
            lines.append(
                f"redelivery after a kill: {r['count']} tasks, median {r['median_s']} s, "
                f"longest {r['longest_s']} s ({r['longest_task']}); longest without a Redis "
                f"event in between: {'-' if quiet is None else f'{quiet} s'}"
            )
        lines.append(f"duration {s['duration_s']} s; torn journal records {s['torn_records']}")
        for warning in self.data["warnings"]:
            lines += ["", f"WARNING {warning['kind']}: {warning['summary']}"]
            lines += [f"    {line}" for line in warning.get("detail", [])]
        for failure in self.data["failures"]:
            lines += ["", f"FAILURE {failure['kind']}: {failure['summary']}"]
            lines += [f"    {line}" for line in failure.get("timeline", [])]
        return "\n".join(lines) + "\n"


HEADERS = (
    "broker",
    "sent",
    "run",
    "lost",
    "run twice",
    "explained",
    "dead",
    "no result",
    "longest redelivery",
)


def table(reports: list[Report]) -> list[str]:
    rows = [HEADERS]
    for report in reports:
        s = report.summary
        longest = s["redelivery"]["longest_s"]
        rows.append(
            (
                s["broker"],
                f"{s['sent']:,}",
                f"{s['run']:,}",
                f"{s['lost']:,}",
                f"{s['run_twice']:,}",
                f"{s['explained']:,}",
                f"{s['dead_letters']:,}",
                f"{s['missing_results']:,}",
                "-" if longest is None else f"{longest:.1f} s",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADERS))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]


def build(obs: Observations) -> Report:
    cfg = obs.config
    plan = {t.id: t for t in obs.plan.tasks}
    runs, orphan_ends = runs_by_task(obs.executions)
    attempts = attempts_by_task(obs.sends)
    explainer = Explainer(obs.events, cfg.settle_slack, cfg.lease)
    sent = {i for i, tries in attempts.items() if any(a.outcome == "ok" for a in tries)}
    ended = {i for i, task_runs in runs.items() if any(r.end is not None for r in task_runs)}
    dead_ids = {d["id"] for d in obs.dead_letters}  # failures of their own, not "lost"
    lost = sorted(sent - ended - dead_ids, key=lambda i: plan[i].seq if i in plan else -1)
    strangers = sorted(set(runs) - set(plan))
    verdicts = [
        explainer.explain(i, task_runs, attempts.get(i, []))
        for i, task_runs in runs.items()
        if len(task_runs) > 1
    ]
    unexplained = [v for v in verdicts if not v.explained]
    by_cause = Counter(c.kind for v in verdicts for c in v.causes if c is not None)
    moved = redeliveries(runs, explainer, obs.events)
    delays = [m.delay for m in moved if m.delay is not None]
    undisturbed = [m.delay for m in moved if m.delay is not None and not m.during_redis_event]
    longest = max(
        (m for m in moved if m.delay is not None), key=lambda m: m.delay or 0, default=None
    )
    all_attempts = [a for tries in attempts.values() for a in tries]

    def rel(at: float | None) -> float | None:
        return None if at is None else round(at - obs.start, 3)

    summary: dict[str, Any] = {
        "broker": cfg.broker,
        "planned": cfg.tasks,
        "sent": len(sent),
        "run": len(ended & set(plan)),
        "lost": len(lost),
        "run_twice": len(verdicts),
        "explained": len(verdicts) - len(unexplained),
        "unexplained": len(unexplained),
        "extra_runs": sum(len(v.runs) - 1 for v in verdicts),
        "run_twice_by_cause": dict(by_cause.most_common()),
        "taken_over_early": sum(c.early for v in verdicts for c in v.causes if c is not None),
        "dead_letters": len(obs.dead_letters),
        "missing_results": len(obs.missing_results),
        "redelivery": {
            "count": len(moved),
            "median_s": _round(percentile(delays, 0.5)),
            "longest_s": _round(max(delays, default=None)),
            "longest_task": longest.id if longest else None,
            "longest_undisturbed_s": _round(max(undisturbed, default=None)),
        },
        "sends": {
            "attempts": len(all_attempts),
            "raised": sum(a.outcome == "error" for a in all_attempts),
            "cut_by_producer_kill": sum(a.outcome == "cut" for a in all_attempts),
            "tasks_retried": sum(len(tries) > 1 for tries in attempts.values()),
        },
        "events": dict(Counter(e.kind for e in obs.events)),
        "drained": obs.drained_at is not None,
        "duration_s": round(obs.end - obs.start, 1),
        "sending_s": round(obs.sent_at - obs.start, 1) if obs.sent_at else None,
        "torn_records": obs.torn,
        "final_broker_state": obs.final_stats,
    }

    interesting = set(lost[:TIMELINES_PER_KIND])
    interesting |= {v.id for v in unexplained[:TIMELINES_PER_KIND]}
    interesting |= {d["id"] for d in obs.dead_letters[:TIMELINES_PER_KIND]}
    interesting |= set(list(obs.missing_results)[:TIMELINES_PER_KIND])
    logs = WorkerLogs(((w.host, w.log_path) for w in obs.workers), interesting)
    spans = Spans(obs.events)

    def story(task_id: str, verdict: Verdict | None = None) -> list[str]:
        return _timeline(task_id, obs, plan, runs, attempts, logs, spans, verdict)

    failures: list[dict[str, Any]] = []

    def fail(
        kind: str,
        task_id: str | None,
        text: str,
        index: int,
        verdict: Verdict | None = None,
        **extra: Any,
    ) -> None:
        entry: dict[str, Any] = {"kind": kind, "id": task_id, "summary": text, **extra}
        if task_id is not None and index < TIMELINES_PER_KIND:
            entry["timeline"] = story(task_id, verdict)
        failures.append(entry)

    for n, task_id in enumerate(lost):
        task_runs = runs.get(task_id, [])
        how = f"started {len(task_runs)} time(s), never ended" if task_runs else "never started"
        fail("lost", task_id, f"{task_id} sent, {how}", n)
    for n, v in enumerate(unexplained):
        hosts = ", ".join(r.host for r in v.runs)
        fail(
            "unexplained duplicate",
            v.id,
            f"{v.id} ran {len(v.runs)} times (on {hosts}); "
            f"{sum(c is None for c in v.causes)} run(s) without a cause",
            n,
            verdict=v,
        )
    for n, dead in enumerate(obs.dead_letters):
        fail(
            "dead letter", dead["id"], f"{dead['id']}: {dead['reason']}", n, history=dead["history"]
        )
    for n, (task_id, state) in enumerate(obs.missing_results.items()):
        count = len(runs.get(task_id, []))
        text = (
            f"{task_id} ran to its end ({count} run(s)) and is gone from the broker "
            f"(acknowledged), but its stored result is: {state}"
        )
        fail("missing result", task_id, text, n)
    for n, task_id in enumerate(strangers):
        fail("never sent", task_id, f"{task_id} ran but is not in the plan", n)
    for problem in obs.problems:
        fail("harness", None, problem, 0)
    if orphan_ends:
        fail("harness", None, f"{orphan_ends} run ends without a start in the journal", 0)
    if obs.final_stats and any(obs.final_stats[k] for k in ("ready", "delayed", "in_flight")):
        fail("harness", None, f"the broker was not empty at the end: {obs.final_stats}", 0)

    warnings = [
        {
            "kind": "worker exited by itself",
            "summary": f"{e.host} at +{e.at - obs.start:.1f} s",
            "detail": e.detail.splitlines(),
        }
        for e in obs.events
        if e.kind == "worker exited"
    ]
    warnings += [
        {"kind": "worker stop", "summary": f"{w.host}: {w.ended}"}
        for w in obs.workers
        if w.ended.startswith("stopped") and w.ended != "stopped (code 0)"
    ]
    explained = [
        {
            "id": v.id,
            "runs": [_run_dict(r, rel) for r in v.runs],
            "causes": [c.kind + ": " + c.text if c else None for c in v.causes],
        }
        for v in verdicts
        if v.explained
    ]
    data = {
        "passed": not failures and obs.drained_at is not None,
        "summary": summary,
        "config": cfg.as_dict(),
        "workdir": str(obs.workdir),
        "start_unix": obs.start,
        "failures": failures,
        "warnings": warnings,
        "events": [
            {
                "kind": e.kind,
                "at": rel(e.at),
                "end": rel(e.end),
                "host": e.host,
                "pids": e.pids,
                "detail": e.detail.splitlines()[-1] if e.detail else "",
            }
            for e in obs.events
        ],
        "explained_duplicates": explained,
        # every task sent more than once: which attempts raised (and why) or were cut off
        "sent_again": {
            task_id: [
                {"n": a.n, "at": rel(a.at), "outcome": a.outcome, "error": a.error} for a in tries
            ]
            for task_id, tries in attempts.items()
            if len(tries) > 1
        },
        "redeliveries": [
            {
                "id": m.id,
                "host": m.host,
                "killed_at": rel(m.killed_at),
                "delay_s": _round(m.delay),
                "during_redis_event": m.during_redis_event,
            }
            for m in moved
        ],
        "workers": [
            {
                "host": w.host,
                "pool": w.spec.pool,
                "concurrency": w.spec.concurrency,
                "pid": w.process.pid,
                "started": rel(w.started_at),
                "ready": rel(w.ready_at),
                "ended": rel(w.ended_at),
                "how": w.ended,
                "log": str(w.log_path),
            }
            for w in obs.workers
        ],
    }
    return Report(data)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _run_dict(run: Run, rel: Any) -> dict[str, Any]:
    return {
        "host": run.host,
        "pid": run.pid,
        "delivery": run.delivery,
        "start": rel(run.start),
        "end": rel(run.end),
    }


def _timeline(
    task_id: str,
    obs: Observations,
    plan: dict[str, Any],
    runs: dict[str, list[Run]],
    attempts: dict[str, list[Attempt]],
    logs: WorkerLogs,
    spans: Spans,
    verdict: Verdict | None,
) -> list[str]:
    """Everything known about one task, and the disturbances around it, in time order."""
    entries: list[tuple[float, str]] = []
    task = plan.get(task_id)
    if task is not None:
        entries.append(
            (
                obs.start + task.at,
                f"plan     send #{task.seq}, runs {task.seconds} s, countdown {task.countdown}",
            )
        )
    for a in attempts.get(task_id, []):
        entries.append((a.at, f"send     #{a.n} by producer pid {a.pid}"))
        if a.end is not None:
            what = "stored (returned)" if a.outcome == "ok" else f"RAISED {a.error}"
            entries.append((a.end, f"send     #{a.n} {what}"))
        else:
            entries.append((a.at, f"send     #{a.n} no answer recorded (producer killed)"))
    task_runs = runs.get(task_id, [])
    killed = {e.host: e for e in obs.events if e.kind == "kill worker"}
    for i, run in enumerate(task_runs):
        cause = ""
        if verdict is not None and i > 0:
            c = verdict.causes[i - 1]
            cause = f"  <- {c.kind}: {c.text}" if c else "  <- NO CAUSE"
        entries.append(
            (
                run.start,
                f"run      start on {run.host} pid {run.pid}, delivery {run.delivery}{cause}",
            )
        )
        if run.end is not None:
            later = ""
            kill = killed.get(run.host)
            if kill is not None and kill.at > run.end:
                # how long its ack had to get through: judged against the settle slack
                later = f" (its worker SIGKILLed {kill.at - run.end:.3f} s later)"
            entries.append((run.end, f"run      end on {run.host} pid {run.pid}{later}"))
    for line in logs.by_id.get(task_id, []):
        entries.append((line.at, f"log      {line.host} {line.level}: {line.text}"))
    times = [at for at, _ in entries]
    if times:
        begin, end = min(times) - 2.0, max(times) + obs.config.lease * 2 + 2.0
        hosts = {r.host for r in task_runs}
        for event in spans.between(begin, end):
            mark = " (ran this task)" if event.host in hosts else ""
            window = f" until +{event.end - obs.start:.3f}" if event.end > event.at else ""
            who = f" {event.host} pids {event.pids}" if event.host else ""
            entries.append((event.at, f"EVENT    {event.kind}{who}{window}{mark}"))
        for line in logs.around(hosts, begin, end, limit=15):
            if task_id not in line.text:
                entries.append((line.at, f"context  {line.host} {line.level}: {line.text}"))
    entries.sort(key=lambda entry: entry[0])
    return [f"+{at - obs.start:9.3f}  {text}" for at, text in entries]
