"""Real Redis high-availability topologies for the tests: Sentinel and Cluster.

Both are made of ``RedisServer`` processes (``redis_server.py``) on free loopback ports,
each in its own directory under the one given, and are torn down by ``stop()``:

* ``SentinelTopology``: a master, two replicas and three sentinels watching
  ``mymaster`` (quorum 2, down after 1 s);
* ``ClusterTopology``: six cluster nodes, three masters with a replica each, built
  with ``redis-cli --cluster create``.

Every method that changes the topology (``start``, ``failover``, ``kill_master``,
``restart_node``, ``reset``) returns only once it is healthy again as every node
and sentinel sees it, so a test never races the topology's own convergence; each
wait has a deadline and raises ``TopologyError`` with what it last saw and the tail
of every node's log.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Self, TypeVar
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from redis_server import HOST, RedisServer, executable

Address = tuple[str, int]
T = TypeVar("T")

#: Default deadline of the waits that follow a change of topology.
WAIT_SECONDS = 30.0
POLL_SECONDS = 0.05
CLI_SECONDS = 60.0


class TopologyError(RuntimeError):
    """A topology did not get where it should within its deadline."""


class _NotYet(Exception):
    """Raised by a condition to say why it does not hold yet."""


def cli_executable() -> str | None:
    """The ``redis-cli`` on PATH, if any."""
    return shutil.which("redis-cli")


def _address(server: RedisServer) -> Address:
    return (HOST, server.port)


def _log_tails(servers: Iterable[RedisServer], lines: int = 3) -> str:
    return "\n".join(f"  :{s.port} {s._log_tail(lines)}" for s in servers)


class _Clients:
    """One client per port, kept across polls and closed by ``close()``.

    No retries and short timeouts: a poll of a dead or stalled node must fail at once
    (redis-py's default retries a refused connection three times with back-off).
    """

    def __init__(self) -> None:
        self._clients: dict[int, redis.Redis] = {}

    def get(self, port: int, password: str | None) -> redis.Redis:
        client = self._clients.get(port)
        if client is None:
            client = self._clients[port] = redis.Redis(
                host=HOST,
                port=port,
                password=password,
                decode_responses=True,
                protocol=2,
                socket_connect_timeout=1.0,
                socket_timeout=2.0,
                retry=Retry(NoBackoff(), 0),
            )
            # Replies as Redis sends them: redis-py's parsed forms of SENTINEL and CLUSTER
            # replies differ between its versions and protocols.
            client.response_callbacks.clear()
        return client

    def close(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            client.close()


def _wait(what: str, condition: Callable[[], T], timeout: float, logs: Callable[[], str]) -> T:
    """``condition()``'s value once it stops raising ``_NotYet`` (or a Redis error)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return condition()
        except (_NotYet, redis.RedisError, OSError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() > deadline:
            raise TopologyError(f"{what}: not within {timeout:g} s; last: {last}\n{logs()}")
        time.sleep(POLL_SECONDS)


def _require_executables(*, cli: bool) -> None:
    if executable() is None:
        raise TopologyError("redis-server is not on PATH: run `make test` (it installs it)")
    if cli and cli_executable() is None:
        raise TopologyError("redis-cli is not on PATH: run `make test` (it installs it)")


def _call(client: redis.Redis, *args: str) -> Any:
    """A command as redis-py sends it, its reply unparsed (redis-py leaves it untyped)."""
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def _info(client: redis.Redis, section: str) -> dict[str, str]:
    """``INFO section`` (or ``CLUSTER INFO``: ``section="cluster"``) as a dict of strings."""
    text = (
        _call(client, "CLUSTER", "INFO") if section == "cluster" else _call(client, "INFO", section)
    )
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def _pairs(flat: list[str]) -> dict[str, str]:
    """``[k1, v1, k2, v2...]`` (a sentinel's reply) as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _role(client: redis.Redis) -> list[Any]:
    return list(_call(client, "ROLE"))


def _replica_of(client: redis.Redis, master_port: int) -> None:
    """Raise ``_NotYet`` unless the node is a replica of ``master_port`` with its link up."""
    role = _role(client)
    if role[0] != "slave" or int(role[2]) != master_port or role[3] != "connected":
        raise _NotYet(f"ROLE {role}, not a connected replica of :{master_port}")


def _wait_in_sync(clients: _Clients, master: RedisServer, replicas: list[RedisServer]) -> None:
    """Raise ``_NotYet`` until every replica has applied all the master had when asked."""
    target = int(
        _info(clients.get(master.port, master.password), "replication")["master_repl_offset"]
    )
    for replica in replicas:
        info = _info(clients.get(replica.port, replica.password), "replication")
        if info.get("master_link_status") != "up" or int(info["slave_repl_offset"]) < target:
            raise _NotYet(f":{replica.port} at offset {info.get('slave_repl_offset')} < {target}")


# -- Sentinel ---------------------------------------------------------------------------


#: A sentinel's flags for an instance it cannot use.
_DOWN_FLAGS = frozenset({"s_down", "o_down", "disconnected"})


class _Sentinel(RedisServer):
    """A sentinel: ``redis-server <conf> --sentinel``.

    The sentinel rewrites its config file with what it learns (its id, epochs, the
    current master, the other sentinels), so a restart keeps that file rather than
    writing the first one again: other sentinels then know it by the same id.
    """

    def _config(self) -> str:
        config = self.dir / "redis.conf"
        return config.read_text() if config.exists() else super()._config()


class _Topology:
    """What both topologies share: their processes' life cycle."""

    _clients: _Clients

    def _processes(self) -> list[RedisServer]:
        """Every process, in the order to stop them."""
        raise NotImplementedError

    def start(self, timeout: float = WAIT_SECONDS) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """Stop every process, even after a failure."""
        self._clients.close()
        for server in self._processes():
            with contextlib.suppress(Exception):
                server.stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class SentinelTopology(_Topology):
    """A master, replicas (``replicaof``) and sentinels monitoring ``master_name``.

    ``password``: every data node's ``requirepass`` and ``masterauth``, and the sentinels'
    ``auth-pass``; ``sentinel_password``: the sentinels' own ``requirepass`` (and
    ``sentinel-pass``, with which they talk to each other).
    """

    master_name = "mymaster"

    def __init__(
        self,
        directory: Path,
        *,
        password: str | None = None,
        sentinel_password: str | None = None,
        replicas: int = 2,
        sentinels: int = 3,
        quorum: int = 2,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
    ) -> None:
        self.dir = directory
        self.password = password
        self.sentinel_password = sentinel_password
        self.quorum = quorum
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.nodes = [
            RedisServer(directory / f"node{i}", password=password) for i in range(1 + replicas)
        ]
        self.sentinels: list[RedisServer] = [
            _Sentinel(directory / f"sentinel{i}", password=sentinel_password, args=["--sentinel"])
            for i in range(sentinels)
        ]
        self._clients = _Clients()
        self._next_sentinel = 0

    # -- addresses ------------------------------------------------------------------

    @property
    def sentinel_addresses(self) -> list[Address]:
        return [_address(s) for s in self.sentinels]

    def url(self, db: int = 0) -> str:
        """Celery's ``sentinel://[:password@]127.0.0.1:PORT/db;sentinel://...``, one part per
        sentinel; the password is the master's (the sentinels' own: ``transport_options``)."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return ";".join(f"sentinel://{auth}{HOST}:{s.port}/{db}" for s in self.sentinels)

    @property
    def transport_options(self) -> dict[str, Any]:
        """``{"master_name": ..., "sentinel_kwargs": {"password": ...}}`` as Celery takes them."""
        options: dict[str, Any] = {"master_name": self.master_name}
        if self.sentinel_password:
            options["sentinel_kwargs"] = {"password": self.sentinel_password}
        return options

    def node(self, address: Address) -> RedisServer:
        """The data node or sentinel at ``address``."""
        for server in (*self.nodes, *self.sentinels):
            if _address(server) == tuple(address):
                return server
        raise KeyError(f"no node of this topology at {address}")

    # -- life cycle -----------------------------------------------------------------

    def start(self, timeout: float = WAIT_SECONDS) -> None:
        """Start every process and wait until it is healthy (see ``wait_healthy``)."""
        _require_executables(cli=False)
        try:
            master, *replicas = self.nodes
            for server in (*self.nodes, *self.sentinels):
                server.dir.mkdir(parents=True, exist_ok=True)
            for sentinel in self.sentinels:
                # A start is a new topology: not the state a sentinel saved at a former stop.
                (sentinel.dir / "redis.conf").unlink(missing_ok=True)
            self._start_node(master, None)
            for replica in replicas:
                self._start_node(replica, master.port)
            for sentinel in self.sentinels:
                self._start_sentinel(sentinel, master.port)
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise

    def _processes(self) -> list[RedisServer]:
        # sentinels first, so that they start no failover while the nodes stop
        return [*self.sentinels, *self.nodes]

    def reset(self, timeout: float = WAIT_SECONDS) -> None:
        """Every process running, the topology healthy and every database empty."""
        for sentinel in self.sentinels:
            if not sentinel.running:
                sentinel.start()
        if not any(node.running for node in self.nodes):
            # Nothing to promote: bring back the master the sentinels still name.
            named = _wait(
                "a master named by the sentinels", self._sentinels_master, timeout, self._logs
            )
            self._start_node(named, None)
        for node in self.nodes:
            if not node.running:
                self.restart_node(_address(node), timeout)
        master = self.node(self.wait_healthy(timeout))
        self._data_client(master).flushall()
        self.wait_replicas_in_sync(timeout)

    # -- queries --------------------------------------------------------------------

    def master(self, timeout: float = WAIT_SECONDS) -> RedisServer:
        """The node a quorum of sentinels name as master, once it is running."""
        return _wait(
            "a running master named by the sentinels",
            self._sentinels_master_up,
            timeout,
            self._logs,
        )

    def replicas(self) -> list[RedisServer]:
        """The running data nodes other than the master."""
        master = self.master()
        return [node for node in self.nodes if node is not master and node.running]

    def wait_healthy(
        self, timeout: float = WAIT_SECONDS, *, not_master: Address | None = None
    ) -> Address:
        """Wait until every sentinel names the same running master (other than ``not_master``),
        it answers ``ROLE`` as master, every other running node is its replica with the link
        up, and every sentinel knows those replicas and the other sentinels, none down.

        Returns:
            The master's address.
        """
        return _wait(
            "a healthy sentinel topology", lambda: self._healthy(not_master), timeout, self._logs
        )

    def wait_replicas_in_sync(self, timeout: float = WAIT_SECONDS) -> None:
        """Wait until every running replica has applied what the master had when called."""
        master = self.master(timeout)
        replicas = [node for node in self.nodes if node is not master and node.running]
        _wait(
            "replicas in sync",
            lambda: _wait_in_sync(self._clients, master, replicas),
            timeout,
            self._logs,
        )

    # -- changes --------------------------------------------------------------------

    def failover(self, timeout: float = WAIT_SECONDS, *, demote: bool = True) -> Address:
        """``SENTINEL FAILOVER``, then wait until the topology is healthy around a new master
        (the old master is then its replica).

        The sentinels themselves turn the old master into a replica only some 10 s after
        the switch (Redis 7.0: a replica that still says it is master is converted once
        it has said so for 8 s, and they ask it every 10 s); meanwhile it takes writes
        from the clients still connected to it. ``demote`` (the default) sends it
        ``REPLICAOF`` as soon as every sentinel names the new master; ``demote=False``
        waits for the sentinels (about 20 s in all).

        Returns:
            The new master's address.
        """
        old = self.wait_healthy(timeout)
        sentinel = self.sentinels[self._next_sentinel % len(self.sentinels)]
        self._next_sentinel += 1

        def ask() -> None:
            try:
                self._sentinel_call(sentinel, "FAILOVER", self.master_name)
            except redis.ResponseError as exc:
                # NOGOODSLAVE: the sentinel's view of a replica is not fresh enough yet.
                raise _NotYet(str(exc)) from exc

        _wait("SENTINEL FAILOVER accepted", ask, timeout, self._logs)
        if demote:
            new = _wait(
                "a new master named by every sentinel",
                lambda: self._named_master(old),
                timeout,
                self._logs,
            )
            old_client = self._data_client(self.node(old))
            if _role(old_client)[0] == "master":
                _call(old_client, "REPLICAOF", HOST, str(new.port))
        return self.wait_healthy(timeout, not_master=old)

    def kill_master(self, timeout: float = WAIT_SECONDS) -> Address:
        """SIGKILL the master and wait until the sentinels have promoted a replica and the
        rest is healthy around it; ``restart_node`` brings the killed node back.

        Returns:
            The new master's address.
        """
        old = self.wait_healthy(timeout)
        self.node(old).stop(kill=True)
        return self.wait_healthy(timeout, not_master=old)

    def restart_node(self, address: Address, timeout: float = WAIT_SECONDS) -> None:
        """Start a stopped data node as a replica of the current master (or a stopped
        sentinel, with the configuration it had), and wait until healthy."""
        server = self.node(address)
        if server.running:
            raise TopologyError(f"{address} is running")
        if server in self.sentinels:
            server.start()
        else:
            # Its configuration is written anew at each start: name the master the
            # sentinels would otherwise make it follow a few seconds later.
            self._start_node(server, self.master(timeout).port)
        self.wait_healthy(timeout)

    # -- internals ------------------------------------------------------------------

    def _start_node(self, node: RedisServer, master_port: int | None) -> None:
        node.extra_config = [
            # The default waits 5 s for more replicas before a diskless full sync.
            "repl-diskless-sync-delay 0",
        ]
        if self.password:
            node.extra_config.append(f"masterauth {self.password}")
        if master_port is not None:
            node.extra_config.append(f"replicaof {HOST} {master_port}")
        node.start()

    def _start_sentinel(self, sentinel: RedisServer, master_port: int) -> None:
        name = self.master_name
        sentinel.extra_config = [
            "sentinel resolve-hostnames no",
            f"sentinel announce-ip {HOST}",
            f"sentinel monitor {name} {HOST} {master_port} {self.quorum}",
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
            # Both replicas follow a new master at once: a failover is over sooner.
            f"sentinel parallel-syncs {name} {len(self.nodes)}",
        ]
        if self.password:
            sentinel.extra_config.append(f"sentinel auth-pass {name} {self.password}")
        if self.sentinel_password:
            # What the sentinels give each other (they check it as their requirepass).
            sentinel.extra_config.append(f"sentinel sentinel-pass {self.sentinel_password}")
        sentinel.start()

    def _data_client(self, node: RedisServer) -> redis.Redis:
        return self._clients.get(node.port, self.password)

    def _sentinel_client(self, sentinel: RedisServer) -> redis.Redis:
        return self._clients.get(sentinel.port, self.sentinel_password)

    def _sentinel_call(self, sentinel: RedisServer, *args: str) -> Any:
        return _call(self._sentinel_client(sentinel), "SENTINEL", *args)

    def _sentinels_master(self) -> RedisServer:
        votes: Counter[int] = Counter()
        for sentinel in self.sentinels:
            if sentinel.running:
                with contextlib.suppress(redis.RedisError):
                    _, port = self._sentinel_call(
                        sentinel, "GET-MASTER-ADDR-BY-NAME", self.master_name
                    )
                    votes[int(port)] += 1
        if not votes or votes.most_common(1)[0][1] < self.quorum:
            raise _NotYet(f"no quorum of sentinels names one master: {dict(votes)}")
        return self.node((HOST, votes.most_common(1)[0][0]))

    def _sentinels_master_up(self) -> RedisServer:
        master = self._sentinels_master()
        if not master.running:
            raise _NotYet(f"the sentinels name :{master.port}, which is down")
        return master

    def _named_master(self, not_master: Address | None) -> RedisServer:
        """The master every running sentinel names, once it runs and answers ROLE as master."""
        named = {
            s.port: tuple(self._sentinel_call(s, "GET-MASTER-ADDR-BY-NAME", self.master_name))
            for s in self.sentinels
            if s.running
        }
        ports = {int(port) for _, port in named.values()}
        if len(ports) != 1:
            raise _NotYet(f"the sentinels name different masters: {named}")
        master = self.node((HOST, ports.pop()))
        if not_master is not None and _address(master) == tuple(not_master):
            raise _NotYet(f"the sentinels still name :{master.port}")
        if not master.running:
            raise _NotYet(f"the sentinels name :{master.port}, which is down")
        role = _role(self._data_client(master))
        if role[0] != "master":
            raise _NotYet(f":{master.port} named master answers ROLE {role}")
        return master

    def _healthy(self, not_master: Address | None) -> Address:
        master = self._named_master(not_master)
        replicas = [n for n in self.nodes if n is not master and n.running]
        for replica in replicas:
            try:
                _replica_of(self._data_client(replica), master.port)
            except _NotYet as exc:
                raise _NotYet(f"replica :{replica.port}: {exc}") from exc
        for sentinel in self.sentinels:
            if sentinel.running:
                self._sentinel_knows(sentinel, master, replicas, len(self.sentinels) - 1)
        return _address(master)

    def _sentinel_knows(
        self, sentinel: RedisServer, master: RedisServer, replicas: list[RedisServer], peers: int
    ) -> None:
        def table(*args: str) -> list[dict[str, str]]:
            return [_pairs(row) for row in self._sentinel_call(sentinel, *args)]

        where = f"sentinel :{sentinel.port}"
        flags = _pairs(self._sentinel_call(sentinel, "MASTER", self.master_name))
        if flags["flags"] != "master":
            raise _NotYet(f"{where}: master flags {flags['flags']}")
        # Known and reachable is enough: a sentinel refreshes what a replica reports (its
        # role, its link) only every 10 s, so after a failover its view lags; the replicas'
        # own ROLE is checked instead. A sentinel elects a replica on what it last heard.
        seen = {int(row["port"]): row for row in table("REPLICAS", self.master_name)}
        for replica in replicas:
            row = seen.get(replica.port)
            if row is None:
                raise _NotYet(f"{where} does not know replica :{replica.port}")
            if set(row["flags"].split(",")) & _DOWN_FLAGS:
                raise _NotYet(f"{where}: replica :{replica.port} {row['flags']}")
        others = table("SENTINELS", self.master_name)
        # (Not the flag master_down: a peer's last opinion of a master, kept 5 s.)
        up = [row for row in others if not set(row["flags"].split(",")) & _DOWN_FLAGS]
        if len(up) < peers:
            raise _NotYet(
                f"{where} knows {len(up)} of {peers} other sentinels up: "
                f"{[(row['port'], row['flags']) for row in others]}"
            )

    def _logs(self) -> str:
        return _log_tails((*self.nodes, *self.sentinels))


# -- Cluster ----------------------------------------------------------------------------

SLOTS = 16384


class _ClusterNode:
    """One line of ``CLUSTER NODES``."""

    def __init__(self, line: str) -> None:
        fields = line.split()
        self.id = fields[0]
        self.port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
        self.flags = set(fields[2].split(","))
        self.master_id = fields[3]
        self.slots = fields[8:]

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def failing(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "handshake", "noaddr"})


class ClusterTopology(_Topology):
    """``masters`` cluster masters with ``replicas_per_master`` replicas each.

    ``password``: every node's ``requirepass`` and ``masterauth``.
    """

    def __init__(
        self,
        directory: Path,
        *,
        password: str | None = None,
        masters: int = 3,
        replicas_per_master: int = 1,
        node_timeout_ms: int = 1000,
    ) -> None:
        self.dir = directory
        self.password = password
        self.master_count = masters
        self.replicas_per_master = replicas_per_master
        self.node_timeout_ms = node_timeout_ms
        self.nodes = [
            RedisServer(directory / f"node{i}", password=password, cluster=True)
            for i in range(masters * (1 + replicas_per_master))
        ]
        self._clients = _Clients()
        self._created = False

    # -- addresses ------------------------------------------------------------------

    @property
    def startup_nodes(self) -> list[Address]:
        """A few seed nodes (the first masters): enough for a client to find the rest."""
        return [_address(node) for node in self.nodes[:3]]

    def url(self, db: int = 0) -> str:
        """``redis+cluster://[:password@]127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3/db``."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        hosts = ",".join(f"{host}:{port}" for host, port in self.startup_nodes)
        return f"redis+cluster://{auth}{hosts}/{db}"

    def node(self, address: Address) -> RedisServer:
        for node in self.nodes:
            if _address(node) == tuple(address):
                return node
        raise KeyError(f"no node of this cluster at {address}")

    # -- life cycle -----------------------------------------------------------------

    def start(self, timeout: float = WAIT_SECONDS) -> None:
        """Start every node, create the cluster (the first time) and wait until healthy."""
        _require_executables(cli=True)
        try:
            for node in self.nodes:
                node.dir.mkdir(parents=True, exist_ok=True)
                self._start_node(node)
            if not self._created:
                self._create()
            self.wait_healthy(timeout, all_up=True)
        except BaseException:
            self.stop()
            raise

    def _processes(self) -> list[RedisServer]:
        return list(self.nodes)

    def reset(self, timeout: float = WAIT_SECONDS) -> None:
        """Every node running, the cluster healthy and every master (so every replica) empty."""
        for node in self.nodes:
            if not node.running:
                self._start_node(node)
        masters = self.wait_healthy(timeout, all_up=True)
        for address in masters:
            self._client(self.node(address)).flushall()
        self.wait_replicas_in_sync(timeout)

    # -- queries --------------------------------------------------------------------

    def masters(self) -> list[Address]:
        """The masters serving slots as the first running node sees them, by port."""
        view = self._view(next(node for node in self.nodes if node.running))
        return sorted((HOST, n.port) for n in view if n.is_master and n.slots and not n.failing)

    def replicas_of(self, master: Address) -> list[Address]:
        """The running replicas of ``master``, as they see themselves."""
        found = []
        master_id = self._myself(self.node(master)).id
        for node in self.nodes:
            if node.running:
                with contextlib.suppress(redis.RedisError):
                    me = self._myself(node)
                    if not me.is_master and me.master_id == master_id:
                        found.append(_address(node))
        return found

    def wait_healthy(self, timeout: float = WAIT_SECONDS, *, all_up: bool = False) -> list[Address]:
        """Wait until every running node says ``cluster_state:ok`` with all slots served,
        every node's view of the masters agrees, no running node is seen failing, and
        every running replica's link is up (with ``all_up``: and every node runs, and
        every master has its replicas).

        Returns:
            The masters.
        """
        return _wait("a healthy cluster", lambda: self._healthy(all_up), timeout, self._logs)

    def wait_replicas_in_sync(self, timeout: float = WAIT_SECONDS) -> None:
        """Wait until every running replica has applied what its master had when called."""

        def in_sync() -> None:
            for address in self.masters():
                master = self.node(address)
                replicas = [self.node(a) for a in self.replicas_of(address)]
                _wait_in_sync(self._clients, master, replicas)

        _wait("replicas in sync", in_sync, timeout, self._logs)

    # -- changes --------------------------------------------------------------------

    def failover(self, master: Address | None = None, timeout: float = WAIT_SECONDS) -> Address:
        """``CLUSTER FAILOVER`` on a replica of ``master`` (default: the first master); wait
        until that replica is master, the old master its replica, and the cluster healthy.

        Returns:
            The new master's address.
        """
        masters = self.wait_healthy(timeout)
        old = self.node(master or masters[0])
        replicas = self.replicas_of(_address(old))
        if not replicas:
            raise TopologyError(f"{_address(old)} has no running replica")
        new = self.node(replicas[0])
        _call(self._client(new), "CLUSTER", "FAILOVER")

        def promoted() -> list[Address]:
            if not self._myself(new).is_master:
                raise _NotYet(f":{new.port} is not master yet")
            _replica_of(self._client(old), new.port)
            masters = self._healthy(all_up=False)
            if _address(new) not in masters:
                raise _NotYet(f"not every node sees :{new.port} as a master")
            return masters

        _wait(f"replica :{new.port} promoted", promoted, timeout, self._logs)
        return _address(new)

    def kill_master(self, master: Address | None = None, timeout: float = WAIT_SECONDS) -> Address:
        """SIGKILL ``master`` (default: the first) and wait until its replica has taken its
        slots and the cluster is healthy; ``restart_node`` brings it back as a replica.

        Returns:
            The new master's address.
        """
        masters = self.wait_healthy(timeout)
        old = self.node(master or masters[0])
        replicas = self.replicas_of(_address(old))
        if not replicas:
            raise TopologyError(f"{_address(old)} has no running replica")
        old.stop(kill=True)

        def promoted() -> Address:
            masters = self._healthy(all_up=False)
            new = [address for address in masters if address in replicas]
            if not new:
                raise _NotYet(f"no replica of :{old.port} serves its slots: masters {masters}")
            return new[0]

        return _wait(f"a replica of :{old.port} promoted", promoted, timeout, self._logs)

    def restart_node(self, address: Address, timeout: float = WAIT_SECONDS) -> None:
        """Start a stopped node (it keeps its ``nodes.conf``: a killed master learns that its
        slots moved and follows their new master) and wait until healthy."""
        node = self.node(address)
        if node.running:
            raise TopologyError(f"{address} is running")
        self._start_node(node)
        self.wait_healthy(timeout)

    # -- internals ------------------------------------------------------------------

    def _start_node(self, node: RedisServer) -> None:
        node.extra_config = [
            f"cluster-node-timeout {self.node_timeout_ms}",
            "repl-diskless-sync-delay 0",
        ]
        if self.password:
            node.extra_config.append(f"masterauth {self.password}")
        node.start()

    def _create(self) -> None:
        env = dict(os.environ)
        if self.password:
            env["REDISCLI_AUTH"] = self.password  # `-a` would warn on stderr
        command = [
            cli_executable() or "redis-cli",
            "--cluster",
            "create",
            *(f"{HOST}:{node.port}" for node in self.nodes),
            "--cluster-replicas",
            str(self.replicas_per_master),
            "--cluster-yes",
        ]
        try:
            done = subprocess.run(
                command, env=env, capture_output=True, text=True, timeout=CLI_SECONDS, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise TopologyError(
                f"redis-cli --cluster create: no end within {CLI_SECONDS:g} s: "
                f"{exc.stdout!r}\n{self._logs()}"
            ) from exc
        if done.returncode != 0:
            raise TopologyError(
                f"redis-cli --cluster create failed ({done.returncode}): "
                f"{done.stdout[-2000:]}{done.stderr[-2000:]}\n{self._logs()}"
            )
        self._created = True

    def _client(self, node: RedisServer) -> redis.Redis:
        return self._clients.get(node.port, self.password)

    def _view(self, node: RedisServer) -> list[_ClusterNode]:
        text = _call(self._client(node), "CLUSTER", "NODES")
        return [_ClusterNode(line) for line in text.splitlines() if line.strip()]

    def _myself(self, node: RedisServer) -> _ClusterNode:
        return next(n for n in self._view(node) if "myself" in n.flags)

    def _healthy(self, all_up: bool) -> list[Address]:
        running = [node for node in self.nodes if node.running]
        if all_up and len(running) != len(self.nodes):
            raise _NotYet("not every node runs")
        running_ports = {node.port for node in running}
        masters_seen: dict[int, list[int]] = {}
        for node in running:
            fields = _info(self._client(node), "cluster")
            if fields.get("cluster_state") != "ok" or fields.get("cluster_slots_ok") != str(SLOTS):
                raise _NotYet(
                    f":{node.port}: cluster_state {fields.get('cluster_state')}, "
                    f"{fields.get('cluster_slots_ok')} slots ok"
                )
            if int(fields["cluster_known_nodes"]) != len(self.nodes):
                raise _NotYet(f":{node.port} knows {fields['cluster_known_nodes']} nodes")
            view = self._view(node)
            for other in view:
                if other.port in running_ports and other.failing:
                    raise _NotYet(f":{node.port} sees running :{other.port} as {other.flags}")
            masters_seen[node.port] = sorted(
                n.port for n in view if n.is_master and n.slots and not n.failing
            )
            me = next(n for n in view if "myself" in n.flags)
            if me.is_master and not me.slots:
                # A restarted master whose slots moved, before it learns it: not a replica yet.
                raise _NotYet(f":{node.port} is a master without slots")
            if not me.is_master:
                master = next(n for n in view if n.id == me.master_id)
                _replica_of(self._client(node), master.port)
        views = {tuple(ports) for ports in masters_seen.values()}
        if len(views) != 1:
            raise _NotYet(f"the nodes see different masters: {masters_seen}")
        masters = list(views.pop())
        if len(masters) != self.master_count or not set(masters) <= running_ports:
            raise _NotYet(f"masters serving slots: {masters}")
        if all_up:
            followers = Counter(self._myself(n).master_id for n in running)
            for port in masters:
                count = followers[self._myself(self.node((HOST, port))).id]
                if count < self.replicas_per_master:
                    raise _NotYet(f"master :{port} has {count} replicas")
        return [(HOST, port) for port in masters]

    def _logs(self) -> str:
        return _log_tails(self.nodes)
