"""What the Redis result backend promises beyond the shared contract: key layout, TTLs,
pub/sub wake-ups, credentials and TLS, outages."""

from __future__ import annotations

import logging
import statistics
import threading
import time
import traceback
from collections.abc import Iterator

import pytest

from conveyor.backends import connect_backend
from conveyor.backends.base import ResultBackend, ResultWrite, StoredResult
from conveyor.backends.redis import RedisResultBackend
from conveyor.exceptions import BackendError
from redis_server import RedisServer, free_port


def write(task_id: str, state: str = "SUCCESS", payload: bytes = b"42", ttl: float = 60.0):
    return ResultWrite(task_id=task_id, state=state, payload=payload, ttl=ttl)


@pytest.fixture
def backend(redis_url: str) -> Iterator[RedisResultBackend]:
    built = RedisResultBackend(redis_url)
    yield built
    built.close()


def wait_in_thread(
    backend: ResultBackend, task_id: str, timeout: float | None = 10.0
) -> tuple[threading.Thread, list[tuple[StoredResult | None, float]]]:
    """Starts ``backend.wait`` in another thread; its result and return time land in the list."""
    returned: list[tuple[StoredResult | None, float]] = []

    def run() -> None:
        record = backend.wait(task_id, timeout)
        returned.append((record, time.monotonic()))

    thread = threading.Thread(target=run)
    thread.start()
    return thread, returned


def wait_until_subscribed(server: RedisServer, channel: str) -> None:
    deadline = time.monotonic() + 5
    with server.client() as raw:
        while raw.pubsub_numsub(channel)[0][1] == 0:
            assert time.monotonic() < deadline, f"nobody subscribed to {channel}"
            time.sleep(0.001)


def test_a_record_is_one_string_key_with_state_time_and_payload(
    backend: RedisResultBackend, redis_server: RedisServer
) -> None:
    before = time.time()

    backend.store(write("t1", "FAILURE", b"\x00boom\nwith a newline"))

    with redis_server.client() as raw:
        assert raw.type("conveyor:result:t1") == b"string"
        value = raw.get("conveyor:result:t1")
    assert value is not None
    header, _, payload = value.partition(b"\n")
    state, _, stored_at = header.partition(b" ")
    assert (state, payload) == (b"FAILURE", b"\x00boom\nwith a newline")
    assert before <= float(stored_at) <= time.time()


def test_the_key_prefix_comes_from_the_url_or_the_constructor(
    redis_url: str, redis_server: RedisServer
) -> None:
    from_url = RedisResultBackend(f"{redis_url}?prefix=shop")
    from_arg = RedisResultBackend(redis_url, prefix="blog")

    from_url.store(write("t1"))
    from_arg.store(write("t1"))

    with redis_server.client() as raw:
        assert sorted(raw.keys()) == [b"blog:result:t1", b"shop:result:t1"]
    assert from_url.get("t1") is not None
    from_url.close()
    from_arg.close()


def test_the_key_ttl_is_the_written_ttl(
    backend: RedisResultBackend, redis_server: RedisServer
) -> None:
    backend.store_many([write("t1", ttl=60.0), write("t2", ttl=0.25)])

    with redis_server.client() as raw:
        assert 59_000 < raw.pttl("conveyor:result:t1") <= 60_000
        assert 0 < raw.pttl("conveyor:result:t2") <= 250


def test_a_rewrite_resets_the_ttl(backend: RedisResultBackend, redis_server: RedisServer) -> None:
    # Given a STARTED record with a short TTL, most of it gone
    backend.store(write("t1", "STARTED", ttl=0.5))
    time.sleep(0.3)

    # When the task's result is written with the result TTL
    backend.store(write("t1", "SUCCESS", ttl=3600.0))

    # Then the key lives for the new TTL, counted from the rewrite
    with redis_server.client() as raw:
        assert 3_599_000 < raw.pttl("conveyor:result:t1") <= 3_600_000


def test_a_value_conveyor_did_not_write_is_a_backend_error(
    backend: RedisResultBackend, redis_server: RedisServer
) -> None:
    with redis_server.client() as raw:
        raw.set("conveyor:result:t1", b"just bytes")

    with pytest.raises(BackendError, match="not conveyor's"):
        backend.get("t1")


def test_a_waiter_in_another_thread_wakes_right_after_the_write(
    backend: RedisResultBackend, redis_server: RedisServer
) -> None:
    latencies = []
    for i in range(10):
        # Given a waiter subscribed to the task's channel
        thread, returned = wait_in_thread(backend, f"t{i}")
        wait_until_subscribed(redis_server, f"conveyor:result:t{i}")

        # When the result is written
        written = time.monotonic()
        backend.store(write(f"t{i}"))
        thread.join()

        # Then it returns the record at once
        [(record, at)] = returned
        assert record is not None
        assert record.state == "SUCCESS"
        latencies.append(at - written)
    print(
        f"wake latency: median {statistics.median(latencies) * 1000:.2f} ms,"
        f" max {max(latencies) * 1000:.2f} ms"
    )
    assert max(latencies) < 0.5


def test_wait_leaves_no_subscription_behind(
    backend: RedisResultBackend, redis_server: RedisServer
) -> None:
    thread, _ = wait_in_thread(backend, "t1")
    wait_until_subscribed(redis_server, "conveyor:result:t1")
    backend.store(write("t1"))
    thread.join()
    assert backend.wait("t2", timeout=0.05) is None

    with redis_server.client() as raw:
        assert raw.pubsub_numsub("conveyor:result:t1", "conveyor:result:t2") == [
            (b"conveyor:result:t1", 0),
            (b"conveyor:result:t2", 0),
        ]


def test_store_many_wakes_every_waiter(
    backend: RedisResultBackend, redis_server: RedisServer
) -> None:
    waiters = [wait_in_thread(backend, f"t{i}") for i in range(5)]
    for i in range(5):
        wait_until_subscribed(redis_server, f"conveyor:result:t{i}")

    backend.store_many([write(f"t{i}", payload=str(i).encode()) for i in range(5)])

    for i, (thread, returned) in enumerate(waiters):
        thread.join()
        [(record, _)] = returned
        assert record is not None
        assert record.payload == str(i).encode()


def test_connect_backend_opens_redis_for_redis_and_unix_urls(
    redis_url: str, redis_server: RedisServer
) -> None:
    for url, key in [
        (redis_url, b"conveyor:result:t1"),
        (f"{redis_server.unix_url}&prefix=app%3Aunix", b"app:unix:result:t1"),
    ]:
        backend = connect_backend(url)
        assert isinstance(backend, RedisResultBackend)
        backend.store(write("t1", payload=url.encode()))
        record = backend.wait("t1", timeout=1.0)
        assert record is not None
        assert record.payload == url.encode()
        with redis_server.client() as raw:
            assert raw.exists(key) == 1
        backend.close()


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_acl_credentials_work_over_tcp_and_tls(
    redis_acl_server: RedisServer, transport: str
) -> None:
    # Given a server with an ACL user, and a backend whose URL logs in as that user
    url = redis_acl_server.url if transport == "tcp" else redis_acl_server.tls_url
    assert url.startswith(f"{'redis' if transport == 'tcp' else 'rediss'}://conveyor:")
    backend = connect_backend(url)

    # When a waiter waits and a result is written
    thread, returned = wait_in_thread(backend, f"acl-{transport}")
    wait_until_subscribed(redis_acl_server, f"conveyor:result:acl-{transport}")
    backend.store(write(f"acl-{transport}"))
    thread.join()

    # Then both went through as that user
    [(record, _)] = returned
    assert record is not None
    with redis_acl_server.client() as raw:
        assert raw.exists(f"conveyor:result:acl-{transport}") == 1
    backend.forget(f"acl-{transport}")
    backend.close()


def test_unreachable_redis_is_a_backend_error_without_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a URL with credentials, pointing at a port nobody listens on
    password = "hunter2-very-secret"
    backend = RedisResultBackend(
        f"redis://conveyor:{password}@127.0.0.1:{free_port()}/0", retry_for=0.3
    )

    # When a call runs out of retries
    with caplog.at_level(logging.DEBUG), pytest.raises(BackendError) as raised:
        backend.get("t1")

    # Then the error names the server, never the password: not in the message, the
    # traceback, nor the logs
    assert "conveyor:***@127.0.0.1" in str(raised.value)
    shown = "".join(traceback.format_exception(raised.value)) + caplog.text + repr(raised.value)
    assert password not in shown
    backend.close()


def test_a_waiter_survives_a_redis_restart(
    backend: RedisResultBackend, redis_server: RedisServer
) -> None:
    # Given a waiter subscribed to its task's channel
    thread, returned = wait_in_thread(backend, "t1", timeout=20.0)
    wait_until_subscribed(redis_server, "conveyor:result:t1")

    # When Redis restarts under it, and the result is written afterwards
    redis_server.stop()
    time.sleep(0.5)
    redis_server.start()
    backend.store(write("t1"))
    thread.join()

    # Then the waiter returns the result (its subscription was re-made, no write missed)
    [(record, _)] = returned
    assert record is not None
    assert record.state == "SUCCESS"


def test_a_result_outlives_a_restart_of_a_persistent_redis_with_its_ttl(
    backend: RedisResultBackend, redis_server: RedisServer
) -> None:
    # Given Redis with an append-only file, and a result written to it
    redis_server.stop()
    redis_server.start(appendonly=True)
    backend.store(write("t1", ttl=60.0))

    # When Redis stops and starts again on the same port and directory
    redis_server.stop()
    redis_server.start()

    # Then the same backend reads the result, still counting down its TTL
    assert redis_server.appendonly
    record = backend.get("t1")
    assert record is not None
    assert record.state == "SUCCESS"
    with redis_server.client() as raw:
        assert 50_000 < raw.pttl("conveyor:result:t1") <= 60_000


def test_waits_in_turn_reuse_one_pubsub_connection_and_need_no_get_for_a_small_record(
    backend: RedisResultBackend, redis_server: RedisServer
) -> None:
    # Given a first wait, which opens this thread's pub/sub connection
    thread = store_later_in_thread(backend, write("t0"))
    backend.wait("t0", timeout=5.0)
    thread.join()
    with redis_server.client() as raw:
        raw.config_resetstat()

    # When ten more waits follow, each woken by a small record's notification
    for i in range(1, 11):
        thread = store_later_in_thread(backend, write(f"t{i}", payload=b"%d" % i))
        record = backend.wait(f"t{i}", timeout=5.0)
        thread.join()
        assert record is not None
        assert record.payload == b"%d" % i

    # Then no connection was opened but the one reading the stats, and no wait read
    # the record after its notification (only before subscribing, and after the
    # subscription's confirmation)
    with redis_server.client() as raw:
        connections = raw.info("stats")["total_connections_received"]
        gets = raw.info("commandstats").get("cmdstat_get", {}).get("calls", 0)
    assert connections == 1
    assert gets <= 10 * 2


def store_later_in_thread(
    backend: ResultBackend, record: ResultWrite, delay: float = 0.05
) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        backend.store(record)

    thread = threading.Thread(target=run)
    thread.start()
    return thread
