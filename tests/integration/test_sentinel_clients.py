"""Clients behind Sentinel follow a failover by themselves: a caller blocked in ``get()``,
an asyncio producer, and sentinels that have a password of their own."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from apps import tasks
from apps.executions import Executions
from harness import StartWorker, wait_until

from conveyor import Conveyor
from conveyor.backends.base import ResultWrite
from conveyor.backends.redis import RedisResultBackend
from conveyor.brokers.base import BrokerOptions, OutgoingMessage
from conveyor.brokers.redis import RedisBroker
from conveyor.exceptions import BrokerUnavailable
from redis_topology import SentinelTopology

pytestmark = pytest.mark.timeout(180)


@pytest.mark.brokers("sentinel")
def test_a_caller_waiting_in_get_gets_the_result_stored_after_a_failover(
    app: Conveyor,
    start_worker: StartWorker,
    executions: Executions,
    redis_sentinel: SentinelTopology,
) -> None:
    # Given a caller blocked in get() on a task that is still running
    start_worker("-P", "threads", "-c", "2").wait_ready()
    result = tasks.sleep_then_record.delay(4.0)
    wait_until(lambda: executions.count(result.id) == 1, 15, "the task to start")
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(result.get(timeout=60)), daemon=True)
    waiter.start()

    # When the master fails over while it runs
    redis_sentinel.kill_master()

    # Then the worker stores the result on the new master and the caller gets it
    waiter.join(timeout=60)
    assert got == [4.0]
    assert executions.count(result.id) == 1


@pytest.mark.brokers("sentinel")
def test_asyncio_producers_send_through_a_failover(
    app: Conveyor,
    start_worker: StartWorker,
    executions: Executions,
    redis_sentinel: SentinelTopology,
) -> None:
    # Given coroutines sending with adelay() (redis.asyncio, on the event loop)
    sent: list[str] = []

    async def produce(count: int) -> None:
        for i in range(count):
            sent.append((await tasks.record.adelay(i)).id)
            await asyncio.sleep(0.002)

    async def run() -> None:
        async def fail_over() -> None:
            await asyncio.sleep(0.5)
            await asyncio.to_thread(redis_sentinel.kill_master)

        await asyncio.gather(*(produce(300) for _ in range(4)), fail_over())

    # When the master dies meanwhile
    asyncio.run(run())

    # Then every send returned, and each task runs once
    start_worker("-P", "threads", "-c", "4", "-l", "warning").wait_ready()
    assert len(sent) == 1200
    wait_until(lambda: set(sent) <= set(executions.starts()), 60, "every task to run", 0.2)
    assert all(n == 1 for n in executions.starts().values())


# -- sentinels with a password of their own ---------------------------------------------


@pytest.fixture(scope="module")
def guarded_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelTopology]:
    """Master and replicas with a password, and sentinels with another."""
    topology = SentinelTopology(
        tmp_path_factory.mktemp("guarded-sentinel"),
        password=secrets.token_hex(8),
        sentinel_password=secrets.token_hex(8),
        replicas=1,
    )
    topology.start()
    yield topology
    topology.stop()


def test_sentinels_with_their_own_password_are_reached_with_sentinel_kwargs(
    guarded_sentinel: SentinelTopology, tmp_path: Path
) -> None:
    topology = guarded_sentinel
    topology.reset()
    assert topology.password
    assert topology.sentinel_password
    options = topology.transport_options
    assert options["sentinel_kwargs"] == {"password": topology.sentinel_password}
    broker = RedisBroker(
        topology.url(), BrokerOptions(transport_options=options, replica_acks=1, lease_seconds=5)
    )
    backend = RedisResultBackend(topology.url(), transport_options=options, replica_acks=1)
    try:
        broker.publish(OutgoingMessage(id="m1", queue="q", body=b"{}"))
        [delivery] = broker.fetch(["q"], 1, consumer="c", timeout=1)
        assert broker.ack([delivery]) == [True]
        backend.store(ResultWrite("t1", "SUCCESS", b"42", ttl=60))
        record = backend.wait("t1", timeout=5)
        assert record is not None
        assert (record.state, record.payload) == ("SUCCESS", b"42")
    finally:
        broker.close()
        backend.close()

    # Without the sentinels' password nothing is reached, and the error says so
    plain = RedisBroker(
        topology.url(),
        BrokerOptions(transport_options={"master_name": topology.master_name}),
        retry_for=1.0,
    )
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable) as caught:
        plain.publish(OutgoingMessage(id="m2", queue="q", body=b"{}"))
    assert time.monotonic() - started < 10
    assert topology.password not in str(caught.value)
    assert topology.sentinel_password not in str(caught.value)
    plain.close()
