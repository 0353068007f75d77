"""A real ``redis-server`` for the tests: a child process on a free loopback port.

Each server lives in its own directory (config, log, unix socket, AOF), binds
127.0.0.1 only and persists nothing unless started with ``appendonly=True``.
``stop()`` and ``start()`` keep the port and the directory, so a test can take
Redis away and bring it back at the same address. Options:

* ``password``: the default user's password (``requirepass``);
* ``acl_user``: an extra ACL user ``(name, password)`` with every permission;
  ``url`` then logs in as that user;
* ``tls``: a second, TLS-only port with a fresh self-signed certificate for
  127.0.0.1 (made with the ``openssl`` command); ``tls_url`` reaches it;
* ``appendfsync``: the AOF's fsync policy (``always``: every acknowledged write
  survives a SIGKILL) [Redis's default, ``everysec``];
* ``debug_command``: allow ``DEBUG`` from loopback clients (``DEBUG SLEEP`` stalls
  the server);
* ``cluster``: ``cluster-enabled yes``, with a cluster bus port of its own (``cluster_port``,
  free like the main port: the default, port + 10000, may not be) and ``nodes.conf``
  in the directory, which a restart keeps;
* ``extra_config``: more configuration lines, written after the others (``replicaof``,
  ``masterauth``, ``sentinel monitor``...); a list that may be changed before a restart;
* ``args``: more command-line arguments (``--sentinel`` runs a sentinel).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

import redis

HOST = "127.0.0.1"
READY_SECONDS = 10.0
STOP_SECONDS = 10.0
PORT_ATTEMPTS = 5


def executable() -> str | None:
    """The ``redis-server`` on PATH, if any."""
    return shutil.which("redis-server")


def free_port() -> int:
    """A loopback port nobody listens on right now (it may be taken again before we bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process; see the module docstring for the options."""

    def __init__(
        self,
        directory: Path,
        *,
        appendonly: bool = False,
        password: str | None = None,
        acl_user: tuple[str, str] | None = None,
        tls: bool = False,
        appendfsync: str | None = None,
        debug_command: bool = False,
        cluster: bool = False,
        extra_config: Sequence[str] = (),
        args: Sequence[str] = (),
    ) -> None:
        self.dir = directory
        self.default_appendonly = self.appendonly = appendonly
        self.password = password
        self.acl_user = acl_user
        self.tls = tls
        self.appendfsync = appendfsync
        self.debug_command = debug_command
        self.cluster = cluster
        self.extra_config = list(extra_config)
        self.args = list(args)
        self.port = 0
        self.tls_port: int | None = None
        self.cluster_port: int | None = None
        self.socket_path = directory / "redis.sock"
        self.log_path = directory / "redis.log"
        self.cert_path = directory / "tls.crt"
        self._proc: subprocess.Popen[bytes] | None = None

    # -- addresses ------------------------------------------------------------------

    def _credentials(self) -> str:
        if self.acl_user is not None:
            return f"{quote(self.acl_user[0], safe='')}:{quote(self.acl_user[1], safe='')}@"
        return f":{quote(self.password, safe='')}@" if self.password else ""

    @property
    def url(self) -> str:
        """``redis://[user:password@]127.0.0.1:PORT/0``, logged in as ``acl_user`` if any."""
        return f"redis://{self._credentials()}{HOST}:{self.port}/0"

    @property
    def tls_url(self) -> str:
        """``rediss://...`` to the TLS port, trusting this server's certificate."""
        assert self.tls_port is not None, "start the server with tls=True"
        return (
            f"rediss://{self._credentials()}{HOST}:{self.tls_port}/0?ssl_ca_certs={self.cert_path}"
        )

    @property
    def unix_url(self) -> str:
        """``unix:///.../redis.sock?db=0`` (with the credentials of ``url``)."""
        auth = ""
        if self.acl_user is not None:
            auth = f"&username={quote(self.acl_user[0])}&password={quote(self.acl_user[1])}"
        elif self.password:
            auth = f"&password={quote(self.password)}"
        return f"unix://{self.socket_path}?db=0{auth}"

    def client(self) -> redis.Redis:
        """A new client as the default (admin) user; close it (``with server.client() as c``)."""
        return redis.Redis(
            host=HOST, port=self.port, password=self.password, socket_connect_timeout=1.0
        )

    # -- life cycle -----------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, *, appendonly: bool | None = None) -> None:
        """Start (or restart) the server; the first start picks free ports, later ones reuse them.

        Raises:
            RuntimeError: it did not answer PING within ``READY_SECONDS`` (the log tail says why).
        """
        if self.running:
            self.stop()
        if appendonly is not None:
            self.appendonly = appendonly
        if self.tls and not self.cert_path.exists():
            self._make_certificate()
        if self.port:
            self._launch()
            return
        for attempt in range(1, PORT_ATTEMPTS + 1):
            self.port = free_port()
            self.tls_port = free_port() if self.tls else None
            self.cluster_port = free_port() if self.cluster else None
            try:
                self._launch()
                return
            except RuntimeError:
                # Someone took the port between our probe and Redis's bind: try others.
                if attempt == PORT_ATTEMPTS or "already in use" not in self._log_tail():
                    raise

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM (or SIGKILL with ``kill=True``: a crash) and wait; SIGKILL if it lingers."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def reset(self) -> None:
        """Running with the options it was built with, and empty: how every test finds it."""
        if not self.running or self.appendonly != self.default_appendonly:
            self.start(appendonly=self.default_appendonly)
        self.flush()

    def flush(self) -> None:
        """Delete every key of every database."""
        with self.client() as client:
            client.flushall()

    # -- internals ------------------------------------------------------------------

    def _config(self) -> str:
        lines = [
            f"bind {HOST}",
            f"port {self.port}",
            f"dir {self.dir}",
            f"unixsocket {self.socket_path}",
            "unixsocketperm 700",
            'save ""',
            f"appendonly {'yes' if self.appendonly else 'no'}",
            "daemonize no",
            'logfile ""',
        ]
        if self.appendfsync is not None:
            lines.append(f"appendfsync {self.appendfsync}")
        if self.debug_command:
            lines.append("enable-debug-command local")
        if self.password:
            lines.append(f"requirepass {self.password}")
        if self.acl_user is not None:
            name, password = self.acl_user
            lines.append(f"user {name} on >{password} ~* &* +@all")
        if self.tls_port is not None:
            lines += [
                f"tls-port {self.tls_port}",
                f"tls-cert-file {self.cert_path}",
                f"tls-key-file {self.dir / 'tls.key'}",
                f"tls-ca-cert-file {self.cert_path}",
                "tls-auth-clients no",
            ]
        if self.cluster_port is not None:
            lines += [
                "cluster-enabled yes",
                f"cluster-port {self.cluster_port}",
                f"cluster-config-file {self.dir / 'nodes.conf'}",
            ]
        lines += self.extra_config
        return "\n".join(lines) + "\n"

    def _launch(self) -> None:
        config = self.dir / "redis.conf"
        config.write_text(self._config())
        config.chmod(0o600)  # it may hold passwords
        with self.log_path.open("ab") as log:  # the child keeps its own copy of the handle
            self._proc = subprocess.Popen(
                [executable() or "redis-server", str(config), *self.args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + READY_SECONDS
        with self.client() as client:
            while True:
                if self._proc.poll() is not None:
                    self._proc = None
                    raise RuntimeError(f"redis-server exited at start: {self._log_tail()}")
                with contextlib.suppress(redis.ConnectionError):  # incl. LOADING an AOF
                    if client.ping():
                        return
                if time.monotonic() > deadline:
                    self.stop(kill=True)
                    raise RuntimeError(f"redis-server did not answer PING: {self._log_tail()}")
                time.sleep(0.01)

    def _log_tail(self, lines: int = 5) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return " | ".join(text.strip().splitlines()[-lines:])

    def _make_certificate(self) -> None:
        openssl = shutil.which("openssl")
        if openssl is None:
            raise RuntimeError("the TLS Redis server needs the openssl command: run `make test`")
        # A self-signed certificate for the IP address, which clients then trust as their CA.
        subprocess.run(
            [
                *(openssl, "req", "-x509", "-nodes", "-days", "7", "-subj", f"/CN={HOST}"),
                *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
                *("-addext", f"subjectAltName=IP:{HOST}"),
                *("-keyout", str(self.dir / "tls.key"), "-out", str(self.cert_path)),
            ],
            check=True,
            capture_output=True,
        )
