"""Nothing lost or run twice quietly, whatever Redis, the network or the data does.

Real ``conveyor worker`` processes against the session's redis-server: an evicting
or non-persistent server, bad records, more deliveries than a Lua call can take,
replies and requests lost on the way (``LossyProxy``), a stall longer than the
lease (``DEBUG SLEEP``); and the dead-letter commands on both brokers.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import threading
import time
from collections.abc import Iterator

import pytest
import redis
from apps import tasks
from apps.executions import Executions
from harness import RunCli, StartWorker, queue_stats, wait_until

from conveyor import Conveyor
from conveyor.brokers.base import OutgoingMessage
from conveyor.brokers.redis.keys import queue_keys
from conveyor.brokers.redis.lua import source
from conveyor.exceptions import ConfigurationError
from lossy_proxy import LossyProxy
from redis_server import RedisServer

redis_only = pytest.mark.brokers("redis")


def sha(script: str) -> bytes:
    return hashlib.sha1(source(script).encode()).hexdigest().encode()


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    with redis_server.client() as client:
        yield client


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[LossyProxy]:
    built = LossyProxy(redis_server.port)
    yield built
    built.close()


# -- refuse to lose data quietly ------------------------------------------------------------


@pytest.fixture
def evicting(raw: redis.Redis) -> Iterator[None]:
    raw.config_set("maxmemory-policy", "allkeys-lru")
    yield
    raw.config_set("maxmemory-policy", "noeviction")


@redis_only
@pytest.mark.usefixtures("evicting")
def test_an_evicting_redis_is_refused_by_the_worker_and_the_producer(
    app: Conveyor, start_worker: StartWorker
) -> None:
    # When a worker starts on a Redis with maxmemory-policy allkeys-lru
    worker = start_worker("-P", "threads", "-c", "1")

    # Then it exits at once, naming the setting and how to accept the risk
    assert worker.wait(20) == 1
    log = worker.stderr_text()
    assert "maxmemory-policy allkeys-lru" in log
    assert "redis_allow_eviction" in log
    # And a producer's first send is refused the same way: nothing is published
    with pytest.raises(ConfigurationError, match="maxmemory-policy"):
        tasks.add.delay(1, 2)


@redis_only
@pytest.mark.usefixtures("evicting")
@pytest.mark.app_env(CONVEYOR_TEST_ALLOW_EVICTION="1")
def test_eviction_allowed_by_the_setting_runs_and_warns(
    app: Conveyor, start_worker: StartWorker
) -> None:
    worker = start_worker("-P", "threads", "-c", "1").wait_ready()

    assert tasks.add.delay(1, 2).get(timeout=15) == 3
    wait_until(lambda: "allowed by redis_allow_eviction" in worker.stderr_text(), 5, "a warning")


@redis_only
def test_the_worker_warns_when_redis_persists_nothing(
    app: Conveyor, start_worker: StartWorker
) -> None:
    worker = start_worker("-P", "threads", "-c", "1").wait_ready()

    wait_until(lambda: "persists nothing" in worker.stderr_text(), 5, "the persistence warning")
    assert "appendonly yes" in worker.stderr_text()


@redis_only
def test_a_corrupt_and_a_missing_record_are_dead_lettered_and_every_queue_goes_on(
    app: Conveyor, start_worker: StartWorker, raw: redis.Redis, executions: Executions
) -> None:
    # Given messages on two queues, one record of queue "a" corrupt and one missing
    sent = [tasks.record.apply_async((i,), queue=q) for q in ("a", "b") for i in range(5)]
    keys = queue_keys("conveyor", "a")
    raw.hset(keys.msg, "000000000002", b"\xc1 not msgpack")
    raw.hdel(keys.msg, "000000000004")

    # When a worker consumes both queues
    start_worker("-P", "threads", "-c", "2", "-Q", "a,b").wait_ready()

    # Then every other message runs, and the two bad ones are dead letters with the reason
    good = [r for i, r in enumerate(sent) if i not in (1, 3)]
    wait_until(lambda: all(executions.count(r.id) == 1 for r in good), 20, "the good tasks")
    dead = app.broker.dead_letters("a")
    assert sorted(d.reason.split(" (")[0] for d in dead) == [
        "its record in Redis cannot be decoded",
        "its record was missing from Redis",
    ]
    assert queue_stats(app.broker, "a").ready == 0


# -- no Lua size limits -----------------------------------------------------------------------


@redis_only
def test_a_worker_holding_ten_thousand_deliveries_runs_them_all(
    app: Conveyor, start_worker: StartWorker, executions: Executions
) -> None:
    # Given more messages than one Lua unpack() can take (about 8,000)
    count = 9_000
    with app.publishing():
        sent = [tasks.record_without_result.delay(i).id for i in range(count)]

    # When a worker that may hold 10,000 deliveries at once starts
    start_worker("-P", "threads", "-c", "100", "--prefetch-multiplier", "100").wait_ready()

    # Then it fetches, renews and acks them all
    wait_until(lambda: len(executions.starts()) >= count, 120, f"{count} tasks", interval=0.5)
    assert set(executions.starts()) == set(sent)
    wait_until(lambda: queue_stats(app.broker).in_flight == 0, 30, "every ack")


def test_dead_show_finds_one_of_many_dead_letters_and_dead_purge_empties_them(
    app: Conveyor, conveyor_cli: RunCli
) -> None:
    # Given more dead letters than a Lua unpack() can take
    count = 9_000
    app.broker.publish_many(
        [OutgoingMessage(f"dead-{i}", "celery", b"{}", 0, None) for i in range(count)]
    )
    for delivery in app.broker.fetch(["celery"], count, consumer="test", timeout=1):
        app.broker.dead_letter(delivery, "poisoned on purpose")

    # Then one is shown by its id
    shown = conveyor_cli("dead", "show", f"dead-{count - 1}")
    assert shown.returncode == 0, shown.stderr
    assert "poisoned on purpose" in shown.stdout
    # And all are purged
    purged = conveyor_cli("dead", "purge", "--force")
    assert purged.returncode == 0, purged.stderr
    assert f"purged {count} dead letter(s)" in purged.stdout
    assert queue_stats(app.broker).dead == 0
    missing = conveyor_cli("dead", "show", f"dead-{count - 1}")
    assert missing.returncode == 1


# -- effects exactly once under retries and stalls ----------------------------------------------


@redis_only
def test_a_send_whose_reply_is_lost_runs_once(
    app: Conveyor,
    start_worker: StartWorker,
    executions: Executions,
    proxy: LossyProxy,
    broker_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a producer whose connection breaks after Redis stored its message
    tasks.record.delay("warm-up")  # the publish script is loaded
    monkeypatch.setenv("CONVEYOR_BROKER_URL", proxy.url())
    tasks.configure()
    proxy.lose_next(sha("publish"), "reply")

    # When it sends (and retries the send it cannot know succeeded)
    result = tasks.record.delay("once")

    # Then a worker runs it once
    start_worker("-P", "threads", "-c", "2", env={"CONVEYOR_BROKER_URL": broker_url})
    assert proxy.lost == 1
    wait_until(lambda: executions.count(result.id) == 1, 15, "the task to run")
    time.sleep(1.0)
    assert executions.count(result.id) == 1


@redis_only
def test_a_frozen_worker_whose_late_ack_is_retried_is_refused_and_its_link_runs_once(
    app: Conveyor,
    start_worker: StartWorker,
    executions: Executions,
    proxy: LossyProxy,
    redis_server: RedisServer,
) -> None:
    # Given worker A, connected through a proxy, running a task that links a callback
    a = start_worker("-P", "threads", "-c", "1", env={"CONVEYOR_BROKER_URL": proxy.url()})
    a.wait_ready()
    result = tasks.sleep_then_record.apply_async((2.0,), link=tasks.record.s())
    wait_until(lambda: executions.count(result.id) == 1, 10, "A to start the task")

    # When A is frozen past its lease, and worker B takes the task over and finishes it,
    # its callback included
    def runs() -> int:
        return len(executions.events("start"))

    os.kill(a.pid, signal.SIGSTOP)
    try:
        start_worker("-P", "threads", "-c", "1").wait_ready()
        wait_until(lambda: runs() == 3, 20, "B to run the task and its link")
    finally:
        # ... and A wakes, and its first ack meets a broken connection (and is retried)
        proxy.lose_next(sha("ack"), "request")
        os.kill(a.pid, signal.SIGCONT)

    # Then A's retried ack is refused: it drops its result, and the callback ran once
    wait_until(lambda: "result dropped" in a.stderr_text(), 15, "A to drop its result")
    assert proxy.lost == 1
    time.sleep(1.0)
    assert executions.count(result.id) == 2
    assert runs() == 3, "the link ran twice"
    assert " succeeded " not in a.stderr_text()


@redis_only
def test_a_stall_longer_than_the_lease_runs_no_task_twice(
    app: Conveyor, start_worker: StartWorker, executions: Executions, redis_server: RedisServer
) -> None:
    # Given two workers running 40 tasks of 1.5-3 s (the lease is 2 s)
    for _ in range(2):
        start_worker("-P", "threads", "-c", "10").wait_ready()
    sent = [tasks.sleep_then_record.delay(random.uniform(1.5, 3.0)).id for _ in range(40)]
    wait_until(lambda: len(executions.starts()) >= 20, 15, "20 tasks to start")

    # When Redis stalls for 3 s (longer than the lease, shorter than the socket timeout)
    def stall() -> None:
        with redis_server.client() as client:
            client.execute_command("DEBUG", "SLEEP", 3.0)

    thread = threading.Thread(target=stall)
    thread.start()
    thread.join()

    # Then every task runs to its end, each exactly once
    wait_until(lambda: len(executions.ends()) >= 40, 60, "every task to end", interval=0.2)
    time.sleep(2.0)
    starts = executions.starts()
    assert {i: n for i, n in starts.items() if n > 1} == {}
    assert set(starts) == set(sent)
