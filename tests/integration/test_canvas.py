"""The canvas with real ``conveyor worker`` processes: chains, groups, chords, link and
link_error, map, starmap and chunks, saved group results and children, on SQLite and
on Redis.

The workers load ``apps.canvas_tasks`` (the integration app, plus the canvas tasks).
Chords count their header tasks with the broker's atomic ``incr``: nothing polls.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest
from apps import canvas_tasks, tasks
from apps.executions import Executions
from apps.tasks import Boom
from harness import HERE, StartWorker, wait_until, workers_of

from conveyor import (
    AsyncResult,
    Conveyor,
    GroupResult,
    chain,
    chord,
    current,
    group,
    signature,
    states,
)
from conveyor.exceptions import ChordError

CANVAS_APP = "apps.canvas_tasks"


@pytest.fixture
def start_canvas_worker(start_worker: StartWorker) -> StartWorker:
    """``start_worker`` for the workers of this module's app."""
    return workers_of(start_worker, CANVAS_APP)


@pytest.fixture
def default_app(app: Conveyor) -> Iterator[Conveyor]:
    """The test app, set as the default app (unset after the test)."""
    app.set_default()
    yield app
    current.set_default_app(None)


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


@pytest.mark.brokers("sqlite", "redis", "sentinel")  # a core case
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


# -- map, starmap, chunks --------------------------------------------------------------


def test_chunks_run_each_part_as_one_starmap_task(
    app: Conveyor, start_canvas_worker: StartWorker, executions: Executions
) -> None:
    # Given two workers
    for _ in range(2):
        start_canvas_worker("-c", "2", "-P", "threads").wait_ready()

    # When 100 additions are sent in chunks of 10
    result = tasks.add.chunks(zip(range(100), range(100), strict=True), 10)()

    # Then the result is ten lists of ten sums, in order
    assert isinstance(result, GroupResult)
    assert result.get(timeout=30) == [[i + i for i in range(j, j + 10)] for j in range(0, 100, 10)]
    # And ten tasks ran, each calling add ten times (its calls are recorded under its id)
    starts = executions.starts()
    assert sorted(starts) == sorted(r.id for r in result.results)
    assert set(starts.values()) == {10}


def test_map_and_starmap_run_the_task_on_every_item_in_one_task(
    app: Conveyor, start_canvas_worker: StartWorker, executions: Executions
) -> None:
    # Given a worker of the default queue (prefork), and one of the queue of square
    start_canvas_worker("-c", "2", "-P", "prefork").wait_ready()
    start_canvas_worker("-c", "1", "-P", "threads", "-Q", "squares").wait_ready()

    # When a map and a starmap are sent
    mapped = canvas_tasks.xsum.map([[1, 2, 3], list(range(10))]).delay()
    starred = tasks.add.starmap(zip(range(10), range(10), strict=True)).apply_async()
    squares = canvas_tasks.square.map([1, 2, 3]).delay()

    # Then each is one task returning the list of values, in the items' order
    assert mapped.get(timeout=15) == [6, 45]
    assert starred.get(timeout=15) == [i + i for i in range(10)]
    assert squares.get(timeout=15) == [1, 4, 9]
    starts = executions.starts()
    assert (starts[mapped.id], starts[starred.id], starts[squares.id]) == (2, 10, 3)
    # And the map of square ran where square runs: the worker of its queue
    record = app.backend.get(squares.id)
    assert record is not None
    assert json.loads(record.payload)["worker"].startswith("w2@")


# -- groups inside chords and chains, and linked to ------------------------------------


def test_a_group_in_a_chord_header_counts_each_of_its_tasks(
    app: Conveyor, start_canvas_worker: StartWorker, executions: Executions
) -> None:
    # Given two workers
    for _ in range(2):
        start_canvas_worker("-c", "2", "-P", "threads").wait_ready()

    # When chords are sent whose header is or holds a group
    holding = chord(
        [group(tasks.add.s(1, 1), tasks.add.s(2, 2)), tasks.add.s(3, 3)], canvas_tasks.collect.s()
    )()
    being = chord(group(tasks.add.s(i, i) for i in range(5)), canvas_tasks.collect.s())()

    # Then each body gets every header value, flat and in order, once
    assert holding.get(timeout=15) == [2, 4, 6]
    assert being.get(timeout=15) == [0, 2, 4, 6, 8]
    time.sleep(0.3)  # a second body, if any, would have started by now
    assert executions.count(holding.id) == executions.count(being.id) == 1


def test_a_group_in_a_chain_gives_its_values_as_a_list_to_the_next_step(
    app: Conveyor, start_canvas_worker: StartWorker
) -> None:
    # Given two workers
    for _ in range(2):
        start_canvas_worker("-c", "2", "-P", "threads").wait_ready()

    # When a group stands between two steps, and at the end of a chain
    between = (
        tasks.add.s(1, 1) | group(tasks.add.s(10), tasks.add.s(20)) | canvas_tasks.collect.s()
    )()
    ending = chain(tasks.add.s(1, 1), group(tasks.add.s(1), tasks.add.s(2)))()

    # Then the step after the group gets its values as a list
    assert between.get(timeout=15) == [12, 22]
    header = between.parent
    assert isinstance(header, GroupResult)
    assert header.get(timeout=1) == [12, 22]
    # And a chain ending with a group gives the group's result
    assert isinstance(ending, GroupResult)
    assert ending.get(timeout=15) == [3, 4]
    assert ending.parent is not None
    assert ending.parent.get(timeout=1) == 2


def test_group_link_calls_the_callback_once_without_arguments_and_link_error_per_failure(
    app: Conveyor, start_canvas_worker: StartWorker, executions: Executions
) -> None:
    # Given a worker
    start_canvas_worker("-c", "2", "-P", "threads").wait_ready()

    # When a group with a callback, and one with an error callback, are sent
    linked = group(tasks.add.s(1, 1), tasks.add.s(2, 2))
    callback = tasks.record.s("done")
    linked.link(callback)
    result = linked()
    failing = group(canvas_tasks.fail_with.s(1), canvas_tasks.fail_with.s(2), tasks.add.s(1, 1))
    failing.link_error(canvas_tasks.on_error.s())
    failed = failing()

    # Then the callback runs once, immutable, as the first task's child (as in Celery)
    assert isinstance(result, GroupResult)
    assert result.get(timeout=15) == [2, 4]
    first = result.results[0]
    assert isinstance(first, AsyncResult)
    [child] = first.children
    assert child.get(timeout=15) == "done"
    # And the error callback once per failed task
    assert isinstance(failed, GroupResult)
    wait_until(lambda: len(executions.events("errback")) == 2, 15, "two error callbacks")
    errbacks = {e.task_id for e in executions.events("errback")}
    assert errbacks == {failed.results[0].id, failed.results[1].id}
    time.sleep(0.3)
    assert [e.task_id for e in executions.events("start")].count(child.id) == 1


# -- by name, saved group results, children ------------------------------------------------


def test_a_name_only_signature_is_sent_with_the_default_app(
    default_app: Conveyor, start_canvas_worker: StartWorker
) -> None:
    # Given a worker
    start_canvas_worker("-c", "1", "-P", "threads").wait_ready()

    # When a task is called by name, without an app
    result = signature("apps.tasks.add", args=(2, 2)).delay()

    # Then it ran on the default app's broker
    assert result.get(timeout=15) == 4
    sig = signature("apps.canvas_tasks.mul", args=(3,))
    assert chain(tasks.add.s(1, 1), sig)().get(timeout=15) == 6


def test_a_saved_group_result_is_restored_in_another_process(
    app: Conveyor, start_canvas_worker: StartWorker
) -> None:
    # Given a group whose result is saved, then the group is run
    result = group(tasks.add.s(i, i) for i in range(5))()
    assert isinstance(result, GroupResult)
    result.save()
    start_canvas_worker("-c", "2", "-P", "threads").wait_ready()

    # When another process (whose only app is the default) restores it by id
    code = (
        "import json, sys\n"
        "from apps import tasks\n"
        "from conveyor.result import GroupResult\n"
        "restored = GroupResult.restore(sys.argv[1])\n"
        "print(json.dumps([[r.id for r in restored.results], restored.get(timeout=15)]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, result.id],
        cwd=HERE,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    # Then it finds the same tasks and their values
    assert done.returncode == 0, done.stderr
    ids, values = json.loads(done.stdout)
    assert ids == [r.id for r in result.results]
    assert values == [0, 2, 4, 6, 8]
    # And here, through the app, too; the group id is no task's result
    restored = app.GroupResult.restore(result.id)
    assert restored is not None
    assert restored.get(timeout=5) == [0, 2, 4, 6, 8]
    assert app.AsyncResult(result.id).state == states.PENDING


def test_children_are_recorded_by_the_worker_and_read_from_any_handle(
    app: Conveyor, start_canvas_worker: StartWorker
) -> None:
    # Given a worker
    start_canvas_worker("-c", "2", "-P", "threads").wait_ready()

    # When a task with a callback, a chain and a chain into a group run
    linked = tasks.add.apply_async((2, 2), link=canvas_tasks.mul.s(16))
    last = chain(tasks.add.s(1, 1), tasks.add.s(2), tasks.add.s(3))()
    into_group = chain(tasks.add.s(1, 1), group(tasks.add.s(1), tasks.add.s(2)))()

    # Then the sender's handles know their children
    assert linked.get(timeout=15) == 4
    [child] = linked.children
    assert child.get(timeout=15) == 64
    assert last.get(timeout=15) == 7
    # And handles made from ids alone read what the worker recorded
    [recorded] = wait_until(lambda: app.AsyncResult(linked.id).children, 15, "children")
    assert recorded == child
    second = last.parent
    assert isinstance(second, AsyncResult)
    assert second.parent is not None
    assert wait_until(lambda: app.AsyncResult(second.parent.id).children, 15, "children") == [
        second
    ]
    assert isinstance(into_group, GroupResult)
    assert into_group.parent is not None
    first = app.AsyncResult(into_group.parent.id)
    [group_child] = wait_until(lambda: first.children, 15, "children")
    assert isinstance(group_child, GroupResult)
    assert group_child == into_group
    assert group_child.get(timeout=15) == [3, 4]
    # And a task with no link nor chain has none
    assert app.AsyncResult(last.id).children == []
