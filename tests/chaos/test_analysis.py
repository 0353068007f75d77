"""The chaos report's own logic, on made-up records: what it may call explained, and what
not; and the journal that survives torn writes. (Fast: no processes.)"""

from __future__ import annotations

from pathlib import Path

from apps.chaos_tasks import JournalReader, journal_line

from .analysis import Attempt, Explainer, Run, Verdict, runs_by_task
from .fleet import Event

LEASE = 2.0
SLACK = 1.0


def explain(events: list[Event], runs: list[Run], attempts: list[Attempt] | None = None) -> Verdict:
    sends = attempts if attempts is not None else [Attempt("t", 1, 99, 0.0, 0.01, "ok")]
    return Explainer(events, SLACK, LEASE).explain("t", runs, sends)


def kinds(verdict: Verdict) -> list[str | None]:
    return [c.kind if c else None for c in verdict.causes]


def kill(host: str, at: float, end: float | None = None) -> Event:
    return Event("kill worker", at, at + 0.002 if end is None else end, host)


def test_a_run_on_a_killed_worker_explains_its_redelivery() -> None:
    verdict = explain([kill("w1", 10.0)], [Run("t", "w1", 1, 1, 8.0), Run("t", "w2", 2, 2, 13.0)])
    assert verdict.explained
    assert kinds(verdict) == ["worker killed"]


def test_a_run_that_started_while_the_sigkill_was_on_its_way_is_the_killed_workers() -> None:
    runs = [Run("t", "w1", 1, 1, 10.001), Run("t", "w2", 2, 2, 13.0)]
    assert explain([kill("w1", 10.0, end=10.005)], runs).explained


def test_a_second_run_while_the_first_goes_on_on_a_live_worker_is_unexplained() -> None:
    runs = [Run("t", "w1", 1, 1, 8.0, 20.0), Run("t", "w2", 2, 2, 12.0, 13.0)]
    verdict = explain([kill("w3", 10.0)], runs)
    assert not verdict.explained
    assert verdict.causes == [None]


def test_a_run_acknowledged_long_before_its_worker_was_killed_does_not_explain_a_rerun() -> None:
    runs = [Run("t", "w1", 1, 1, 1.0, 1.5), Run("t", "w2", 2, 2, 12.0, 12.5)]
    assert not explain([kill("w1", 10.0)], runs).explained


def test_an_ack_pending_through_an_outage_is_cut_off_by_a_kill_after_it() -> None:
    outage = Event("redis restart", 2.0, 6.0)
    runs = [Run("t", "w1", 1, 1, 1.0, 1.5), Run("t", "w2", 2, 2, 9.0, 9.5)]
    assert explain([outage, kill("w1", 6.5)], runs).explained


def test_a_send_that_raised_and_was_sent_again_explains_a_second_copy() -> None:
    sends = [Attempt("t", 1, 99, 0.0, 1.0, "error", "boom"), Attempt("t", 2, 99, 1.2, 1.3, "ok")]
    runs = [Run("t", "w1", 1, 1, 1.4, 1.5), Run("t", "w2", 2, 1, 1.6, 1.7)]
    verdict = explain([], runs, sends)
    assert verdict.explained
    assert kinds(verdict) == ["extra copy"]


def test_a_rerun_counted_as_a_first_delivery_is_matched_to_a_copy_not_to_a_kill() -> None:
    sends = [Attempt("t", 1, 99, 0.0, None, "cut"), Attempt("t", 2, 98, 2.0, 2.1, "ok")]
    runs = [
        Run("t", "w1", 1, 1, 2.2),  # killed below, redelivered as delivery 2
        Run("t", "w2", 2, 1, 2.3, 2.4),  # the other copy
        Run("t", "w2", 2, 2, 6.0, 6.1),
    ]
    producer_killed = Event("kill producer", 1.0, 1.01, None, [99])
    verdict = explain([producer_killed, kill("w1", 3.0)], runs, sends)
    assert kinds(verdict) == ["extra copy", "worker killed"]


def test_a_run_that_ended_in_a_stall_may_run_again_and_an_early_takeover_is_marked() -> None:
    stall = Event("redis stall", 10.0, 14.0, detail="DEBUG SLEEP 4")
    runs = [Run("t", "w1", 1, 1, 9.0, 12.0), Run("t", "w2", 2, 2, 14.01, 14.5)]
    verdict = explain([stall], runs)
    assert verdict.explained
    assert kinds(verdict) == ["ack cut off"]
    assert [c.early for c in verdict.causes if c is not None] == [True]


def test_a_run_going_on_well_past_a_stall_does_not_explain_its_takeover() -> None:
    stall = Event("redis stall", 10.0, 14.0, detail="DEBUG SLEEP 4")
    runs = [Run("t", "w1", 1, 1, 9.0, 20.0), Run("t", "w2", 2, 2, 14.01, 14.5)]
    assert not explain([stall], runs).explained


def test_runs_pair_each_end_with_the_start_of_the_same_process() -> None:
    records = [
        {"ev": "start", "id": "t", "host": "w1", "pid": 1, "dl": 1, "t": 1.0},
        {"ev": "start", "id": "t", "host": "w2", "pid": 2, "dl": 2, "t": 2.0},
        {"ev": "end", "id": "t", "host": "w2", "pid": 2, "dl": 2, "t": 3.0},
    ]
    runs, orphans = runs_by_task(records)
    assert [(r.host, r.end) for r in runs["t"]] == [("w1", None), ("w2", 3.0)]
    assert orphans == 0


def test_the_journal_keeps_every_whole_record_around_torn_writes(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    first, second, third = ({"ev": "start", "id": str(i)} for i in range(3))
    torn = journal_line({"ev": "end", "id": "torn"})[:9]  # a write cut short by SIGKILL
    bad = bytearray(journal_line({"ev": "end", "id": "bad"}))
    bad[5] ^= 1  # a flipped byte: the checksum no longer matches
    path.write_bytes(
        journal_line(first) + torn + journal_line(second) + bytes(bad) + journal_line(third)[:-3]
    )
    reader = JournalReader(path)
    assert reader.records() == [first, second]
    reader.finish()  # the unterminated last record will never be completed
    assert reader.torn == 3
