"""The code of Celery's Canvas user guide ("Canvas: Designing Work-flows"), run against
real workers on SQLite and on Redis with only the import changed: ``from celery import
chain`` is ``from conveyor import chain`` here, and ``proj.tasks`` is
``apps.canvas_tasks`` (with the guide's task names: ``add``, ``mul``, ``xsum``...).

Each test is one section of the guide, its statements in order; where the guide shows
an output (``>>> res.get()`` then ``16``), the test asserts it. Where a snippet could
not run as printed, in Celery either, the comment says what was completed (a chord
sent without its body, a ``zip`` given its ``n``). Left out, with the reason:

* ``res.collect()`` and ``res.graph``: not implemented (``children`` is);
* stamping: not implemented. (``Task.replace`` and the guide's ``log_error``, called
  with ``(request, exc, traceback)``, are in ``test_celery_guide.py``.)
"""

# The guide writes zip() without strict=; it is kept as printed.
# ruff: noqa: B905

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from apps.canvas_tasks import (
    create_user,
    import_contact,
    import_contacts,
    log_error,
    log_result,
    mul,
    notify_complete,
    on_chord_error,
    raising_task,
    reset_buffers,
    send_welcome_email,
    tsum,
    xsum,
)
from apps.executions import Executions
from apps.tasks import add, fail
from harness import StartWorker, wait_until, workers_of

from conveyor import Conveyor, GroupResult, chain, chord, current, group, signature, states
from conveyor.exceptions import ChordError

CANVAS_APP = "apps.canvas_tasks"


@pytest.fixture
def worker(app: Conveyor, start_worker: StartWorker) -> Iterator[None]:
    """One worker of the canvas app, ready; the test app is the default app (as
    Celery's ``current_app``) for the signatures made from a task's name."""
    workers_of(start_worker, CANVAS_APP)("-c", "4", "-P", "threads").wait_ready()
    app.set_default()
    yield
    current.set_default_app(None)


def test_signatures_and_partials(worker: None) -> None:
    # Signatures
    sig = signature("apps.tasks.add", args=(2, 2), countdown=10)
    assert repr(sig) == "apps.tasks.add(2, 2)"
    assert repr(add.signature((2, 2), countdown=10)) == "apps.tasks.add(2, 2)"
    assert repr(add.s(2, 2)) == "apps.tasks.add(2, 2)"
    assert repr(add.s(2, 2, debug=True)) == "apps.tasks.add(2, 2, debug=True)"
    s = add.signature((2, 2), {"debug": True}, countdown=10)
    assert s.args == (2, 2)
    assert s.kwargs == {"debug": True}
    assert s.options == {"countdown": 10}
    assert add(2, 2) == 4
    assert add.s(2, 2)() == 4
    result = add.delay(2, 2)
    assert result.get(timeout=10) == 4
    assert add.apply_async((2, 2), countdown=1).get(timeout=10) == 4
    assert add.signature((2, 2), countdown=1).apply_async().get(timeout=10) == 4
    assert add.s(2, 2).set(countdown=1).options == {"countdown": 1}
    # (the name-only signature above, sent with the partials' rule: options given win)
    assert sig.apply_async(countdown=0).get(timeout=10) == 4

    # Partials
    assert add.s(2, 2).delay().get(timeout=10) == 4
    assert add.s(2, 2).apply_async(countdown=1).get(timeout=10) == 4
    partial = add.s(2)  # incomplete signature
    assert partial.delay(4).get(timeout=10) == 6  # 4 + 2
    assert partial.apply_async((4,)).get(timeout=10) == 6  # same
    s = add.s(2)
    assert repr(s.clone(args=(4,), kwargs={"debug": True})) == "apps.tasks.add(4, 2, debug=True)"


def test_immutability_and_callbacks(worker: None) -> None:
    # Immutability
    res = add.apply_async((2, 2), link=reset_buffers.signature(immutable=True))
    assert res.get(timeout=10) == 4
    assert res.children[0].get(timeout=10) == "reset"
    res = add.apply_async((2, 2), link=reset_buffers.si())
    assert res.get(timeout=10) == 4  # (children are known once the task succeeded)
    assert res.children[0].get(timeout=10) == "reset"

    # Callbacks
    res = add.apply_async((2, 2), link=log_result.s())
    assert res.get(timeout=10) == 4
    assert res.children[0].get(timeout=10) == 4
    sig = add.s(10)
    assert sig.delay(4).get(timeout=10) == 14  # add.apply_async(args=(result, 10))
    res = add.apply_async((2, 2), link=add.s(8))
    assert res.get(timeout=10) == 4
    assert res.children[0].get(timeout=10) == 12  # 2 + 2, then 4 + 8


def test_the_primitives(worker: None) -> None:
    # Simple chain: 2 + 2 + 4 + 8
    res = chain(add.s(2, 2), add.s(4), add.s(8))()
    assert res.get(timeout=10) == 16
    assert (add.s(2, 2) | add.s(4) | add.s(8))().get(timeout=10) == 16

    # Immutable signatures
    assert add.signature((2, 2), immutable=True).immutable
    assert add.si(2, 2).immutable
    res = (add.si(2, 2) | add.si(4, 4) | add.si(8, 8))()
    assert res.get(timeout=10) == 16
    assert res.parent.get(timeout=10) == 8
    assert res.parent.parent.get(timeout=10) == 4

    # Simple group
    res = group(add.s(i, i) for i in range(10))()
    assert res.get(timeout=10) == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]

    # Simple chord
    res = chord((add.s(i, i) for i in range(10)), xsum.s())()
    assert res.get(timeout=10) == 90
    contacts, import_id = ["ann", "bob"], 7
    done = chord((import_contact.s(c) for c in contacts), notify_complete.si(import_id))
    assert done.apply_async().get(timeout=10) == 7

    # Blow your mind by combining
    c1 = add.s(4) | mul.s(8)
    res = c1(16)  # (16 + 4) * 8
    assert res.get(timeout=10) == 160
    c2 = add.s(4, 16) | mul.s(2) | (add.s(4) | mul.s(8))  # ((4 + 16) * 2 + 4) * 8
    res = c2()
    assert res.get(timeout=10) == 352
    c3 = group(add.s(i, i) for i in range(10)) | xsum.s()
    res = c3()
    assert res.get(timeout=10) == 90
    new_user_workflow = create_user.s() | group(import_contacts.s(), send_welcome_email.s())
    welcomed = new_user_workflow.delay(
        username="artv", first="Art", last="Vandelay", email="art@vandelay.com"
    )
    assert welcomed.get(timeout=10) == ["contacts of artv", "welcome artv"]
    res = (add.s(4, 4) | group(add.si(i, i) for i in range(10)))()
    assert isinstance(res, GroupResult)
    assert res.get(timeout=10) == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]
    assert res.parent.get(timeout=10) == 8


def test_chains(worker: None, executions: Executions) -> None:
    res = add.apply_async((2, 2), link=mul.s(16))
    assert res.get(timeout=10) == 4
    # The results keep track of the subtasks called by the original task
    assert len(res.children) == 1
    assert res.children[0].get(timeout=10) == 64

    s = add.s(2, 2)
    s.link(mul.s(4))
    s.link(log_result.s())
    linked = s.delay()
    assert linked.get(timeout=10) == 4
    assert [child.get(timeout=10) for child in linked.children] == [16, 4]

    ok = add.s(2, 2).on_error(log_error.s()).delay()
    assert ok.get(timeout=10) == 4
    assert add.apply_async((2, 2), link_error=log_error.s()).get(timeout=10) == 4
    add.signature((2, 2), link_error=log_error.s())

    res = chain(add.s(4, 4), mul.s(8), mul.s(10))  # (4 + 4) * 8 * 10
    assert (
        repr(res) == "apps.tasks.add(4, 4) | apps.canvas_tasks.mul(8) | apps.canvas_tasks.mul(10)"
    )
    res = chain(add.s(4, 4), mul.s(8), mul.s(10))()
    assert res.get(timeout=10) == 640
    assert res.parent.get(timeout=10) == 64
    assert res.parent.parent.get(timeout=10) == 8
    assert (add.s(2, 2) | mul.s(8) | mul.s(10)).apply_async().get(timeout=10) == 320
    time.sleep(0.3)
    assert executions.events("errback") == []  # nothing failed


def test_groups(worker: None, app: Conveyor, executions: Executions) -> None:
    assert repr(group(add.s(2, 2), add.s(4, 4))) == (
        "group([apps.tasks.add(2, 2), apps.tasks.add(4, 4)])"
    )
    g = group(add.s(2, 2), add.s(4, 4))
    res = g()
    assert res.get(timeout=10) == [4, 8]
    assert group(add.s(i, i) for i in range(100))().get(timeout=10) == [i + i for i in range(100)]

    # Group callbacks and error handling: the callback does not get the group's values
    g = group(add.s(2, 2), add.s(4, 4))
    g.link(add.s())
    res = g()
    assert res.get(timeout=10) == [4, 8]
    [callback] = res.results[0].children
    with pytest.raises(TypeError, match="missing a required argument"):
        callback.get(timeout=10)  # add() without its two arguments
    g = group(fail.s(), fail.s())
    g.link_error(log_error.s())
    res = g()
    wait_until(lambda: len(executions.events("errback")) == 2, 10, "an errback per failure")
    assert {e.task_id for e in executions.events("errback")} == {r.id for r in res.results}

    # Group results
    job = group([add.s(2, 2), add.s(4, 4), add.s(8, 8), add.s(16, 16), add.s(32, 32)])
    result = job.apply_async()
    assert result.get(timeout=10) == [4, 8, 16, 32, 64]
    assert result.ready()  # have all subtasks completed?
    assert result.successful()  # were all subtasks successful?
    assert not result.failed()
    assert not result.waiting()
    assert result.completed_count() == 5
    assert result.join(timeout=10) == [4, 8, 16, 32, 64]
    result.revoke()  # too late to stop them: their results stay
    assert [r.state for r in result.results] == [states.SUCCESS] * 5


def test_chords(worker: None, executions: Executions) -> None:
    assert chord(add.s(i, i) for i in range(100))(tsum.s()).get(timeout=20) == 9900
    callback = tsum.s()
    header = [add.s(i, i) for i in range(100)]
    result = chord(header)(callback)
    assert result.get(timeout=20) == 9900

    # Error handling (the guide's chord is sent without a body, which Celery refuses
    # too: it is given one)
    c = chord([add.s(4, 4), raising_task.s(), add.s(8, 8)], xsum.s())
    result = c()
    with pytest.raises(ChordError, match="something something"):
        result.get(timeout=10)
    c = (group(add.s(i, i) for i in range(10)) | xsum.s().on_error(on_chord_error.s())).delay()
    assert c.get(timeout=10) == 90
    time.sleep(0.3)
    assert executions.events("errback") == []  # the header did not fail


def test_map_and_starmap(worker: None) -> None:
    assert ~xsum.map([range(10), range(100)]) == [45, 4950]
    assert ~add.starmap(zip(range(10), range(10))) == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]
    later = add.starmap(zip(range(10), range(10))).apply_async(countdown=10)
    time.sleep(1.0)
    assert later.state == states.PENDING  # due in 10 seconds
    later.revoke()


def test_chunks(worker: None) -> None:
    res = add.chunks(zip(range(100), range(100)), 10)()
    assert res.get(timeout=20) == [
        [0, 2, 4, 6, 8, 10, 12, 14, 16, 18],
        [20, 22, 24, 26, 28, 30, 32, 34, 36, 38],
        [40, 42, 44, 46, 48, 50, 52, 54, 56, 58],
        [60, 62, 64, 66, 68, 70, 72, 74, 76, 78],
        [80, 82, 84, 86, 88, 90, 92, 94, 96, 98],
        [100, 102, 104, 106, 108, 110, 112, 114, 116, 118],
        [120, 122, 124, 126, 128, 130, 132, 134, 136, 138],
        [140, 142, 144, 146, 148, 150, 152, 154, 156, 158],
        [160, 162, 164, 166, 168, 170, 172, 174, 176, 178],
        [180, 182, 184, 186, 188, 190, 192, 194, 196, 198],
    ]
    # (the guide writes zip(range(100), range(100), 10): the 10 is the chunks' n)
    assert len(add.chunks(zip(range(100), range(100)), 10).apply_async().get(timeout=20)) == 10


def test_chunks_as_a_skewed_group(worker: None) -> None:
    group = add.chunks(zip(range(100), range(100)), 10).group()
    started = time.monotonic()
    res = group.skew(start=1, stop=10)()
    # the first part is due in 1 second, the last in 10
    first, last = res.results[0], res.results[-1]
    assert first.get(timeout=20) == [i + i for i in range(10)]
    assert time.monotonic() - started >= 1.0
    assert last.get(timeout=20) == [i + i for i in range(90, 100)]
    assert time.monotonic() - started >= 10.0
