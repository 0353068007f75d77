"""A TCP proxy in front of a real redis-server that can lose one request or one reply.

A lost reply is what a client sees when Redis applied its command and the
connection broke before the answer came back (a restart, a network cut, a
timeout): the client cannot tell whether the command ran, and retries it. A
lost request is the same failure before the command reached Redis. Tests arm
the proxy with a byte pattern (a script's SHA): the next request containing it
loses its reply (or itself), and the client connection is cut; every other
byte goes through unchanged.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Literal

Loss = Literal["request", "reply"]


class LossyProxy:
    """Listens on 127.0.0.1 (``port``) and forwards every connection to ``target``."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._armed: list[tuple[bytes, Loss]] = []
        #: How many requests (or replies) were lost so far.
        self.lost = 0
        self._closing = False
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, name="lossy-proxy", daemon=True).start()

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def lose_next(self, pattern: bytes, what: Loss = "reply") -> None:
        """The next request containing ``pattern`` loses its reply (or is dropped unsent)."""
        with self._lock:
            self._armed.append((pattern, what))

    def close(self) -> None:
        self._closing = True
        with contextlib.suppress(OSError):
            self._listener.close()
        for sock in list(self._sockets):
            with contextlib.suppress(OSError):
                sock.close()

    # -- plumbing -----------------------------------------------------------------

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            self._sockets += [client, server]
            cut = threading.Event()
            drop_reply = threading.Event()
            for args in (
                (client, server, cut, drop_reply, True),
                (server, client, cut, drop_reply, False),
            ):
                threading.Thread(target=self._pump, args=args, daemon=True).start()

    def _take(self, chunk: bytes) -> Loss | None:
        with self._lock:
            for i, (pattern, what) in enumerate(self._armed):
                if pattern in chunk:
                    del self._armed[i]
                    self.lost += 1
                    return what
        return None

    def _pump(
        self,
        src: socket.socket,
        dst: socket.socket,
        cut: threading.Event,
        drop_reply: threading.Event,
        upstream: bool,
    ) -> None:
        try:
            while not cut.is_set():
                chunk = src.recv(65536)
                if not chunk:
                    break
                if upstream:
                    loss = self._take(chunk)
                    if loss == "request":
                        break  # never sent: cut the connection
                    if loss == "reply":
                        drop_reply.set()
                elif drop_reply.is_set():
                    break  # Redis answered: the client never hears it
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            cut.set()
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()
