"""The canvas with real ``conveyor worker`` processes: chains, groups, chords, link and
link_error, on SQLite and on Redis.

The workers load ``apps.canvas_tasks`` (the integration app, plus the canvas tasks).
Chords count their header tasks with the broker's atomic ``incr``: nothing polls.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from apps import canvas_tasks, tasks
from apps.executions import Executions
from apps.tasks import Boom
from harness import StartWorker, wait_until, workers_of

from conveyor import AsyncResult, Conveyor, GroupResult, chain, chord, group, states
from conveyor.exceptions import ChordError

CANVAS_APP = "apps.canvas_tasks"


@pytest.fixture
def start_canvas_worker(start_worker: StartWorker) -> StartWorker:
    """``start_worker`` for the workers of this module's app."""
    return workers_of(start_worker, CANVAS_APP)


def test_a_chain_passes_each_result_on_and_links_its_results_to_their_parents(
    app: Conveyor, start_canvas_worker: StartWorker, executions: Executions
) -> None:
    # Given a worker
    start_canvas_worker("-c", "2", "-P", "threads").wait_ready()

    # When a chain of three additions is sent
    result = chain(tasks.add.s(1, 1), tasks.add.s(2), tasks.add.s(3))()

    # Then its result is the last one's: (1 + 1) + 2 + 3
    assert result.get(timeout=15) == 7
    # And each result's parent is the step before it, back to the first
    second = result.parent
    assert isinstance(second, AsyncResult)
    assert second.get(timeout=1) == 4
    first = second.parent
    assert isinstance(first, AsyncResult)
    assert first.get(timeout=1) == 2
    assert first.parent is None
    # And each step ran once, in order
    starts = [e.task_id for e in executions.events("start")]
    assert starts == [first.id, second.id, result.id]
    # And the pipe syntax means the same
    assert (tasks.add.s(1, 1) | tasks.add.s(2) | tasks.add.s(3))().get(timeout=15) == 7


def test_a_group_of_100_returns_every_value_in_order(
    app: Conveyor,
    start_canvas_worker: StartWorker,
    executions: Executions,
    record_property: Callable[[str, object], None],
) -> None:
    # Given two workers
    for _ in range(2):
        start_canvas_worker("-c", "4", "-P", "threads").wait_ready()

    # When a group of 100 additions is sent
    started = time.monotonic()
    result = group(tasks.add.s(i, i) for i in range(100))()

    # Then get() returns the 100 sums in the group's order
    assert isinstance(result, GroupResult)
    assert result.get(timeout=30) == [i + i for i in range(100)]
    record_property("measured: group of 100, 2 workers (s)", round(time.monotonic() - started, 2))
    assert result.ready()
    assert result.successful()
    assert result.completed_count() == 100
    # And each task ran exactly once
    assert executions.starts() == {r.id: 1 for r in result.results}


def test_a_chord_of_500_over_3_workers_calls_its_body_once_with_500_results(
    app: Conveyor,
    start_canvas_worker: StartWorker,
    executions: Executions,
    broker_url: str,
    record_property: Callable[[str, object], None],
) -> None:
    # Given three workers
    workers = [start_canvas_worker("-c", "4", "-P", "threads").wait_ready() for _ in range(3)]

    # When a chord of 500 header tasks is sent
    started = time.monotonic()
    result = chord((tasks.add.s(i, i) for i in range(500)), canvas_tasks.collect.s())()

    # Then the body gets the 500 values, in the header's order
    assert result.get(timeout=60) == [i + i for i in range(500)]
    elapsed = time.monotonic() - started
    kind = broker_url.partition(":")[0]
    record_property(f"measured: chord of 500 over 3 workers on {kind} (s)", round(elapsed, 2))
    # And the body ran exactly once
    time.sleep(0.5)  # a second body, if any, would be running by now
    starts = executions.starts()
    assert starts[result.id] == 1
    # And every header task ran exactly once, spread over the three workers
    pids = {worker.pid for worker in workers}
    header = result.parent
    assert isinstance(header, GroupResult)
    assert len(header.results) == 500
    assert all(starts[r.id] == 1 for r in header.results)
    assert len(starts) == 501
    ran_in = {e.pid if e.ppid not in pids else e.ppid for e in executions.events("start")}
    assert ran_in == pids


def test_a_chord_with_failing_header_tasks_calls_the_error_callback_once_and_never_the_body(
    app: Conveyor, start_canvas_worker: StartWorker, executions: Executions
) -> None:
    # Given two workers
    for _ in range(2):
        start_canvas_worker("-c", "4", "-P", "threads").wait_ready()

    # When a chord of 30 is sent whose header has three failing tasks
    header = [
        canvas_tasks.fail_with.s(i) if i in (5, 17, 25) else tasks.add.s(i, i) for i in range(30)
    ]
    body = canvas_tasks.total.s().on_error(canvas_tasks.on_error.s())
    result = chord(header, body)()

    # Then the chord's result is a ChordError naming a failed header task
    with pytest.raises(ChordError, match=r"raised apps\.tasks\.Boom: boom"):
        result.get(timeout=30)
    parts = result.parent
    assert isinstance(parts, GroupResult)
    failed_ids = {parts.results[i].id for i in (5, 17, 25)}
    # And once every header task is finished, the error callback ran exactly once,
    # with the id of one of the failed tasks
    wait_until(parts.ready, 30, "every header task to finish")
    wait_until(lambda: executions.events("errback"), 15, "the error callback")
    time.sleep(1.0)  # a second call, if any, would have been recorded by now
    [errback] = executions.events("errback")
    assert errback.task_id in failed_ids
    assert parts.completed_count() == 27
    # And the body never ran
    assert executions.count(result.id) == 0
    assert result.state == states.FAILURE


def test_link_sends_the_value_and_link_error_the_failure(
    app: Conveyor, start_canvas_worker: StartWorker, executions: Executions
) -> None:
    # Given a worker
    start_canvas_worker("-c", "2", "-P", "threads").wait_ready()

    # When a task is sent with a callback, and a failing one with an error callback
    callback = tasks.record.s()
    called = callback.freeze()
    ok = tasks.add.apply_async((2, 3), link=callback, link_error=canvas_tasks.on_error.s())
    errback = canvas_tasks.on_error.s()
    warned = errback.freeze()
    bad = tasks.fail.apply_async(("broken",), link=tasks.record.s(), link_error=errback)

    # Then the callback got the value as its argument
    assert ok.get(timeout=15) == 5
    assert called.get(timeout=15) == 5
    # And the error callback got (task id, exception type, message)
    with pytest.raises(Boom):
        bad.get(timeout=15)
    assert warned.get(timeout=15) == [bad.id, "apps.tasks.Boom", "broken"]
    # And neither task's other callback ran
    time.sleep(0.5)
    assert [e.task_id for e in executions.events("errback")] == [bad.id]
    assert len(executions.events("start")) == 4  # add, record, fail, on_error


def test_a_failure_in_a_chain_stops_it_and_fails_the_steps_ahead(
    app: Conveyor, start_canvas_worker: StartWorker, executions: Executions
) -> None:
    # Given a worker
    start_canvas_worker("-c", "2", "-P", "threads").wait_ready()

    # When the second of three steps fails
    result = chain(tasks.add.s(1, 1), canvas_tasks.fail_with.s(), tasks.add.s(3))()

    # Then the chain's result raises the failure (not a timeout), and the third never ran
    with pytest.raises(Boom, match="boom 2"):
        result.get(timeout=15)
    assert result.parent is not None
    assert result.parent.failed()
    assert executions.count(result.id) == 0


def test_nested_canvases_on_real_workers(app: Conveyor, start_canvas_worker: StartWorker) -> None:
    # Given two workers
    for _ in range(2):
        start_canvas_worker("-c", "4", "-P", "threads").wait_ready()

    # Then a group in a chain, a chord in a chain and chains in a group all compute
    in_chain = chain(
        tasks.add.s(1, 1), group(tasks.add.s(1), tasks.add.s(2)), canvas_tasks.total.s()
    )
    assert in_chain().get(timeout=30) == 3 + 4
    with_chord = chain(
        tasks.add.s(1, 1),
        chord([tasks.add.s(10), tasks.add.s(20)], canvas_tasks.total.s()),
        tasks.add.s(100),
    )
    assert with_chord().get(timeout=30) == 12 + 22 + 100
    of_chains = group(chain(tasks.add.s(i, i), tasks.add.s(1)) for i in range(5))
    assert of_chains().get(timeout=30) == [i + i + 1 for i in range(5)]
