"""Fair sharing of long and short tasks, and what a rolling deploy does to a worker.

* prefetch 1 (the default): a worker holds only what it runs, so a long task does not
  hold short ones hostage while another worker is idle;
* a higher multiplier: on SIGTERM the held-but-not-started messages go back at once;
* a deploy with a short ``--shutdown-timeout``: running tasks go back to the queue when
  it expires, the worker exits 0, and the next worker runs every task to its end once.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest
from apps import tasks
from apps.executions import Executions
from harness import StartWorker, ids_in_queue, queue_stats, wait_until

from conveyor import Conveyor, states

Measure = Any  # pytest's ``record_property`` fixture: ``(name, value) -> None``

#: The fairness batch, in the order it is sent: one long task, then seven short ones.
LENGTHS = (4.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
#: The best two one-slot workers can do: 4 s + 1 s on one, 6 x 1 s on the other (or
#: 4 + 2 x 1 and 5 x 1); tasks are not divisible, so half the 11 s of work, 5.5 s, is out
#: of reach.
BEST_MAKESPAN = 6.0
#: What the batch may take from the first send to the last end, overheads included.
MAX_MAKESPAN = 6.5


def test_two_workers_with_prefetch_1_share_one_long_task_and_seven_short_ones_fairly(
    app: Conveyor, start_worker: StartWorker, executions: Executions, record_property: Measure
) -> None:
    # Given two prefork workers with one slot each and the default prefetch multiplier (1),
    # both connected and idle
    assert app.conf.worker_prefetch_multiplier == 1
    workers = [start_worker("-c", "1", "-P", "prefork") for _ in range(2)]
    for worker in workers:
        worker.wait_ready()

    # When a 4 s task and then seven 1 s tasks are sent
    sent_at = time.time()
    results = [tasks.sleep_then_record.delay(seconds) for seconds in LENGTHS]
    ids = [r.id for r in results]

    # Then at no moment does a worker hold more than the message it runs: at most two
    # messages are ever in flight, the others wait in the queue for whichever worker is free
    most_in_flight = 0

    def all_ended() -> bool:
        nonlocal most_in_flight
        most_in_flight = max(most_in_flight, queue_stats(app.broker).in_flight)
        return len(executions.events("end")) >= len(ids)

    wait_until(all_ended, MAX_MAKESPAN + 10, "all eight tasks to end", interval=0.02)
    assert most_in_flight <= len(workers), f"{most_in_flight} messages in flight at once"
    # ... all eight are done within MAX_MAKESPAN of the first send (the best is 6 s)
    ends = {e.task_id: e.at for e in executions.events("end")}
    makespan = max(ends.values()) - sent_at
    record_property(
        "measured: 4 s + 7 x 1 s on two one-slot workers, makespan (s)", round(makespan, 2)
    )
    assert BEST_MAKESPAN <= makespan < MAX_MAKESPAN, f"took {makespan:.2f} s"
    # ... each ran exactly once, with its result stored
    assert [r.get(timeout=5) for r in results] == list(LENGTHS)
    assert all(r.state == states.SUCCESS for r in results)
    assert executions.starts() == dict.fromkeys(ids, 1)
    assert executions.ends() == dict.fromkeys(ids, 1)
    # ... both workers took part, and they started the tasks in the order sent: no task
    # waited behind a long one while a task sent after it ran (0.5 s: two workers freed
    # at the same moment may each take one of the next two)
    started = {e.task_id: e for e in executions.events("start")}
    assert {e.ppid for e in started.values()} == {w.pid for w in workers}
    for earlier, later in itertools.combinations(ids, 2):
        late_by = started[earlier].at - started[later].at
        assert late_by < 0.5, (
            f"task {ids.index(earlier)} started {late_by:.2f} s after task {ids.index(later)}"
        )
    # ... and the queue ends empty
    wait_until(lambda: queue_stats(app.broker).in_flight == 0, 5, "the last acks")
    stats = queue_stats(app.broker)
    assert (stats.ready, stats.delayed, stats.in_flight, stats.dead) == (0, 0, 0, 0)


def test_sigterm_returns_prefetched_messages_at_once_while_the_running_task_finishes(
    app: Conveyor, start_worker: StartWorker, executions: Executions, record_property: Measure
) -> None:
    # Given a worker with one slot and prefetch multiplier 4, running a 3 s task and
    # holding the next three of five short ones (the last two wait in the queue)
    first = start_worker(
        "-c", "1", "--prefetch-multiplier", "4", "--shutdown-timeout", "30"
    ).wait_ready()
    long = tasks.sleep_then_record.delay(3.0)
    short = [tasks.sleep_then_record.delay(0.2) for _ in range(5)]
    short_ids = {r.id for r in short}
    wait_until(lambda: executions.count(long.id) == 1, 10, "the 3 s task to start")
    wait_until(lambda: queue_stats(app.broker).in_flight == 4, 5, "the worker to hold four")
    stats = queue_stats(app.broker)
    assert (stats.ready, stats.in_flight) == (2, 4)

    # When it receives SIGTERM
    signalled = time.monotonic()
    first.terminate()

    # Then within a second the three it held but had not started are ready again, while
    # the 3 s task still runs and stays in flight
    def held_ones_returned() -> bool:
        stats = queue_stats(app.broker)
        return (stats.ready, stats.in_flight) == (5, 1)

    wait_until(held_ones_returned, 1.0, "the prefetched messages to be back", interval=0.02)
    returned_after = time.monotonic() - signalled
    record_property(
        "measured: prefetched messages back in the queue after SIGTERM (s)",
        round(returned_after, 2),
    )
    assert not executions.ends(), "the running task ended before the held messages went back"
    assert first.proc.poll() is None
    # ... the 3 s task runs to its end, is acknowledged, and the worker exits 0
    assert first.wait(10) == 0
    assert long.get(timeout=5) == 3.0
    assert executions.ends() == {long.id: 1}
    assert first.stderr_text().count("(not started)") == 3
    # ... leaving the five short ones in the queue, none of them started
    stats = queue_stats(app.broker)
    assert (stats.ready, stats.in_flight, stats.dead) == (5, 0, 0)
    assert ids_in_queue(app.broker) == short_ids
    assert executions.starts() == {long.id: 1}

    # When a second worker starts
    start_worker("-c", "1").wait_ready()

    # Then it runs the rest, and every task started and ended exactly once
    assert [r.get(timeout=15) for r in short] == [0.2] * 5
    every = {long.id, *short_ids}
    assert executions.starts() == dict.fromkeys(every, 1)
    assert executions.ends() == dict.fromkeys(every, 1)
    wait_until(lambda: queue_stats(app.broker).in_flight == 0, 5, "the last acks")
    stats = queue_stats(app.broker)
    assert (stats.ready, stats.delayed, stats.in_flight, stats.dead) == (0, 0, 0, 0)


def test_deploy_sigterm_returns_tasks_still_running_at_the_shutdown_timeout_and_exits_0(
    app: Conveyor, start_worker: StartWorker, executions: Executions, record_property: Measure
) -> None:
    # Given a worker with two slots and a 1 s shutdown timeout, running two 4 s tasks
    shutdown_timeout = 1.0
    length = 4.0
    first = start_worker("-c", "2", "--shutdown-timeout", str(shutdown_timeout)).wait_ready()
    results = [tasks.sleep_then_record.delay(length) for _ in range(2)]
    ids = {r.id for r in results}
    wait_until(lambda: len(executions.starts()) == 2, 10, "both tasks to start")

    # When it receives SIGTERM, as a rolling update sends it
    signalled = time.monotonic()
    first.terminate()

    # Then it gives the tasks the shutdown timeout, and exits 0 at most 2 s after that
    assert first.wait(shutdown_timeout + 5) == 0
    took = time.monotonic() - signalled
    record_property("measured: exit after SIGTERM, 1 s shutdown timeout (s)", round(took, 2))
    assert shutdown_timeout <= took < shutdown_timeout + 2, f"exited {took:.2f} s after SIGTERM"
    # ... the tasks did not finish: they were stopped and returned to the queue (acks late)
    assert not executions.ends(), "a task ran to its end: nothing was interrupted"
    assert first.stderr_text().count("(still running at shutdown timeout reached)") == 2
    stats = queue_stats(app.broker)
    assert (stats.ready, stats.in_flight, stats.dead) == (2, 0, 0)
    assert ids_in_queue(app.broker) == ids
    assert all(r.state == states.PENDING for r in results)

    # When the new version's worker starts
    second = start_worker("-c", "2").wait_ready()

    # Then it runs both tasks to completion: each started twice (once per worker) and
    # ended exactly once, on the new worker
    assert [r.get(timeout=length + 10) for r in results] == [length, length]
    assert executions.starts() == dict.fromkeys(ids, 2)
    assert executions.ends() == dict.fromkeys(ids, 1)
    assert {e.ppid for e in executions.events("end")} == {second.pid}
    wait_until(lambda: queue_stats(app.broker).in_flight == 0, 5, "the last acks")
    stats = queue_stats(app.broker)
    assert (stats.ready, stats.delayed, stats.in_flight, stats.dead) == (0, 0, 0, 0)


@pytest.mark.app_env(CONVEYOR_TEST_ACKS_LATE="0")
def test_with_acks_early_a_held_message_is_acknowledged_only_when_it_starts(
    app: Conveyor, start_worker: StartWorker, executions: Executions
) -> None:
    # Given acks early, and a worker with one slot and prefetch multiplier 4 running a
    # 3 s task (longer than the 2 s lease) and holding four more (the running one is
    # acknowledged: as in Celery, it no longer counts against the prefetch)
    first = start_worker(
        "-c", "1", "--prefetch-multiplier", "4", "--shutdown-timeout", "30"
    ).wait_ready()
    long = tasks.sleep_then_record.delay(3.0)
    short = [tasks.sleep_then_record.delay(0.2) for _ in range(5)]
    wait_until(lambda: executions.count(long.id) == 1, 10, "the 3 s task to start")

    # Then the running task is acknowledged (it started) and the four held ones are not
    def running_acked_and_four_held() -> bool:
        stats = queue_stats(app.broker)
        return (stats.ready, stats.in_flight) == (1, 4)

    wait_until(running_acked_and_four_held, 5, "the running task's early ack")

    # When the worker receives SIGTERM
    first.terminate()

    # Then the four it held go back to the queue: nothing acknowledged early is lost
    assert first.wait(10) == 0
    stats = queue_stats(app.broker)
    assert (stats.ready, stats.in_flight, stats.dead) == (5, 0, 0)
    # ... and its log does not cry wolf about leases of acknowledged tasks
    assert "lease of" not in first.stderr_text()

    # When a second worker starts, every task has run exactly once
    start_worker("-c", "1").wait_ready()
    assert [r.get(timeout=15) for r in short] == [0.2] * 5
    every = {long.id, *(r.id for r in short)}
    assert executions.starts() == dict.fromkeys(every, 1)
