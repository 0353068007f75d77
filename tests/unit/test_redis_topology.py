"""The Sentinel and Cluster topologies of ``tests/redis_topology.py``, seen by plain redis-py."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry
from redis.sentinel import Sentinel

from redis_server import HOST, RedisServer
from redis_topology import ClusterTopology, SentinelTopology

SOCKET_TIMEOUT, CONNECT_TIMEOUT = 2.0, 1.0


@contextlib.contextmanager
def sentinel_master(topology: SentinelTopology, **sentinel_kwargs: str) -> Iterator[redis.Redis]:
    """redis-py's client of the master the sentinels name, closed afterwards."""
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        topology.sentinel_addresses,
        sentinel_kwargs={"socket_timeout": SOCKET_TIMEOUT, **sentinel_kwargs},
        password=topology.password,
        socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=CONNECT_TIMEOUT,
    )
    master: redis.Redis = sentinel.master_for(topology.master_name)  # type: ignore[no-untyped-call]
    try:
        yield master
    finally:
        master.close()
        for client in sentinel.sentinels:
            client.close()


@contextlib.contextmanager
def cluster_client(topology: ClusterTopology) -> Iterator[RedisCluster]:
    nodes = [ClusterNode(h, p) for h, p in topology.startup_nodes]  # type: ignore[no-untyped-call]
    client = RedisCluster(
        startup_nodes=nodes,
        password=topology.password,
        socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=CONNECT_TIMEOUT,
    )
    try:
        yield client
    finally:
        client.close()


def assert_refused_without_password(address: tuple[str, int]) -> None:
    host, port = address
    # No retries: redis-py's default retries a refused login with back-off (seconds).
    with (
        redis.Redis(
            host=host,
            port=port,
            retry=Retry(NoBackoff(), 0),
            socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=CONNECT_TIMEOUT,
        ) as client,
        pytest.raises(redis.AuthenticationError),
    ):
        client.ping()


def _address(server: RedisServer) -> tuple[str, int]:
    return (HOST, server.port)


def served_by(client: redis.Redis) -> tuple[str, int]:
    """Where a sentinel-managed client's next connection goes."""
    pool = client.connection_pool
    assert isinstance(pool, redis.sentinel.SentinelConnectionPool)
    host, port = pool.get_master_address()  # type: ignore[no-untyped-call]
    return (host, int(port))


def owner(client: RedisCluster, key: str) -> ClusterNode:
    """The node serving ``key``'s slot, as the client last learnt."""
    node: ClusterNode = client.get_node_from_key(key)  # type: ignore[no-untyped-call]
    return node


# -- Sentinel ---------------------------------------------------------------------------


def test_sentinel_url_names_every_sentinel(redis_sentinel: SentinelTopology) -> None:
    ports = [port for _, port in redis_sentinel.sentinel_addresses]

    assert len(set(ports)) == 3
    assert redis_sentinel.url(2) == ";".join(f"sentinel://{HOST}:{p}/2" for p in ports)


def test_a_sentinel_client_reaches_the_master(
    redis_sentinel: SentinelTopology, sentinel_url: str
) -> None:
    with sentinel_master(redis_sentinel) as master:
        master.set("key", "value")

        assert master.get("key") == b"value"
        assert served_by(master) == (HOST, redis_sentinel.master().port)
    replicas = redis_sentinel.replicas()
    assert len(replicas) == 2
    redis_sentinel.wait_replicas_in_sync()
    for replica in replicas:
        with replica.client() as client:
            assert client.get("key") == b"value"


def test_after_a_failover_the_client_follows_and_the_data_is_there(
    redis_sentinel: SentinelTopology, sentinel_url: str
) -> None:
    with sentinel_master(redis_sentinel) as master:
        master.set("before", "1")
        assert master.wait(2, 2000) == 2
        old = served_by(master)

        new = redis_sentinel.failover()

        assert new != old
        # The pooled connection still leads to the old master, a replica now: redis-py turns
        # its READONLY into a connection error and asks the sentinels on the next connection.
        with pytest.raises(redis.ConnectionError, match="now a slave"):
            master.set("after", "2")
        master.set("after", "2")
        assert served_by(master) == new
        assert master.mget("before", "after") == [b"1", b"2"]
    with redis_sentinel.node(old).client() as client:
        assert client.execute_command("ROLE")[:3] == [b"slave", HOST.encode(), new[1]]


def test_a_killed_master_is_replaced_and_comes_back_as_a_replica(
    redis_sentinel: SentinelTopology, sentinel_url: str
) -> None:
    with sentinel_master(redis_sentinel) as master:
        master.set("before", "1")
        assert master.wait(2, 2000) == 2
        old = served_by(master)

        new = redis_sentinel.kill_master()

        assert new != old
        assert not redis_sentinel.node(old).running
        assert master.get("before") == b"1"
        assert served_by(master) == new

    redis_sentinel.restart_node(old)

    with redis_sentinel.node(old).client() as client:
        assert client.execute_command("ROLE")[:4] == [b"slave", HOST.encode(), new[1], b"connected"]
        assert client.get("before") == b"1"


def test_reset_brings_every_node_back_and_empties_them(redis_sentinel: SentinelTopology) -> None:
    redis_sentinel.reset()
    with redis_sentinel.master().client() as client:
        client.set("left-over", "1")
    stopped = redis_sentinel.replicas()[0]
    stopped.stop()
    redis_sentinel.sentinels[0].stop()

    redis_sentinel.reset()

    assert all(server.running for server in (*redis_sentinel.nodes, *redis_sentinel.sentinels))
    for node in redis_sentinel.nodes:
        with node.client() as client:
            assert client.dbsize() == 0


def test_passwords_on_the_nodes_and_on_the_sentinels(tmp_path: Path) -> None:
    password, sentinel_password = secrets.token_hex(8), secrets.token_hex(8)
    with SentinelTopology(
        tmp_path, password=password, sentinel_password=sentinel_password
    ) as topology:
        assert topology.url().startswith(f"sentinel://:{password}@{HOST}:")
        assert topology.transport_options == {
            "master_name": "mymaster",
            "sentinel_kwargs": {"password": sentinel_password},
        }
        with sentinel_master(topology, password=sentinel_password) as master:
            master.set("key", "value")
            assert master.get("key") == b"value"
        for address in (*topology.sentinel_addresses, _address(topology.master())):
            assert_refused_without_password(address)


# -- Cluster ----------------------------------------------------------------------------


def test_cluster_url_names_three_seed_nodes(redis_cluster: ClusterTopology) -> None:
    seeds = ",".join(f"{host}:{port}" for host, port in redis_cluster.startup_nodes)

    assert redis_cluster.url() == f"redis+cluster://{seeds}/0"
    assert len(redis_cluster.masters()) == 3


def test_a_cluster_client_reaches_every_master(
    redis_cluster: ClusterTopology, cluster_url: str
) -> None:
    keys = [f"key-{i}" for i in range(20)]
    with cluster_client(redis_cluster) as client:
        for key in keys:
            client.set(key, key)

        assert [client.get(key) for key in keys] == [key.encode() for key in keys]
        owners = {owner(client, key).port for key in keys}
        assert owners == {port for _, port in redis_cluster.masters()}


def test_after_a_cluster_failover_the_client_still_works(
    redis_cluster: ClusterTopology, cluster_url: str
) -> None:
    with cluster_client(redis_cluster) as client:
        client.set("key", "before")
        old = owner(client, "key")
        assert client.get_redis_connection(old).wait(1, 2000) == 1

        new = redis_cluster.failover((old.host, old.port))

        assert new != (old.host, old.port)
        assert client.get("key") == b"before"  # MOVED: the client learns the new owner
        client.set("key", "after")
        assert owner(client, "key").port == new[1]
        assert client.get("key") == b"after"


def test_a_killed_cluster_master_is_replaced_and_comes_back_as_a_replica(
    redis_cluster: ClusterTopology, cluster_url: str
) -> None:
    with cluster_client(redis_cluster) as client:
        client.set("key", "before")
        old_node = owner(client, "key")
        assert client.get_redis_connection(old_node).wait(1, 2000) == 1
        old = (old_node.host, old_node.port)

        new = redis_cluster.kill_master(old)

        assert new != old
        assert new in redis_cluster.masters()
        assert client.get("key") == b"before"

    redis_cluster.restart_node(old)

    assert old not in redis_cluster.masters()
    assert redis_cluster.replicas_of(new) == [old]


def test_a_cluster_with_a_password(tmp_path: Path) -> None:
    password = secrets.token_hex(8)
    with ClusterTopology(tmp_path, password=password) as topology:
        assert topology.url().startswith(f"redis+cluster://:{password}@{HOST}:")
        with cluster_client(topology) as client:
            client.set("key", "value")
            assert client.get("key") == b"value"
        for address in topology.startup_nodes:
            assert_refused_without_password(address)
