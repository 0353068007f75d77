"""The heartbeat file: the worker writes its liveness there, ``conveyor worker-health`` reads it.

The worker's main (supervision) thread rewrites the file about once a second with
the time its fetch loop last made progress; it never waits on the network, so a
file that stops changing means the process is frozen or gone, and a file whose
``fetch_alive`` stops advancing means the fetch loop is stuck (a solo worker's loop
that is running a task is busy, not stuck: it counts as progress). The file is a tiny
JSON object::

    {"pid": 4242, "fetch_alive": 1717000000.5, "written": 1717000001.0, "hostname": "web-1"}

Times are UNIX times; ``hostname`` is the machine's, so the reader knows whether
it can check the pid. Reading needs neither the app nor the broker: a liveness
probe answers in milliseconds.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from conveyor.exceptions import ConfigurationError

logger = logging.getLogger("conveyor.worker")

#: Seconds between two writes of the file by a running worker.
WRITE_EVERY = 1.0
#: ``worker-health --max-age`` by default: above the worker's fetch-loop watchdog (60 s),
#: so the watchdog gets its chance to restart a stuck loop before a probe fails.
DEFAULT_MAX_AGE = 90.0


@dataclass(frozen=True, slots=True)
class HeartbeatRecord:
    """The content of the heartbeat file."""

    pid: int
    #: When the fetch loop last fetched, waited for a free slot, or was running a task
    #: itself (solo) (UNIX time).
    fetch_alive: float
    #: When the worker wrote this (UNIX time).
    written: float
    hostname: str


@dataclass(frozen=True, slots=True)
class Health:
    """``worker-health``'s verdict: alive or not, and one line saying why."""

    ok: bool
    reason: str


class HeartbeatFile:
    """The worker's side: rewrites ``path`` atomically, at most every ``every`` seconds."""

    def __init__(self, path: str | os.PathLike[str], *, every: float = WRITE_EVERY):
        """Write the file once at once, so a path that cannot be written fails at start.

        Raises:
            ConfigurationError: the file cannot be written (no such directory, no permission).
        """
        self.path = Path(path)
        self.every = every
        self.pid = os.getpid()
        self.hostname = socket.gethostname()
        self._next = 0.0
        self._failing = False
        try:
            self._write(time.time())
        except OSError as exc:
            raise ConfigurationError(f"cannot write the heartbeat file {self.path}: {exc}") from exc

    def update(self, fetch_age: float) -> None:
        """Record that the fetch loop last made progress ``fetch_age`` seconds ago.

        Called on every tick of the worker's supervision loop; writes only when
        ``every`` seconds have passed. A failed write is logged once, not raised:
        the probe then sees a stale file and says so.
        """
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.every
        try:
            self._write(time.time() - fetch_age)
        except OSError as exc:
            if not self._failing:
                logger.error("cannot write the heartbeat file %s: %s", self.path, exc)
            self._failing = True
        else:
            if self._failing:
                logger.warning("the heartbeat file %s is written again", self.path)
            self._failing = False

    def remove(self) -> None:
        """Delete the file, if it is still this process's (another worker may have taken it)."""
        beat = _read(self.path)
        if isinstance(beat, HeartbeatRecord) and beat.pid == self.pid:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def _write(self, fetch_alive: float) -> None:
        now = round(time.time(), 3)
        beat = HeartbeatRecord(self.pid, round(fetch_alive, 3), now, self.hostname)
        # Write beside it, then rename over it: a reader sees the old file or the new
        # one, never half of one. No fsync: after a host crash there is no worker to
        # vouch for anyway, and a sync every second would cost on slow disks.
        temporary = self.path.with_name(f".{self.path.name}.{self.pid}.tmp")
        try:
            temporary.write_text(json.dumps(asdict(beat)))
            os.replace(temporary, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise


def check(path: str | os.PathLike[str], max_age: float, *, now: float | None = None) -> Health:
    """Whether the worker that writes ``path`` is alive: the file exists, was written on
    this host by a live process, and its fetch loop made progress within ``max_age`` s.

    ``now`` (a UNIX time) defaults to the current time.
    """
    now = time.time() if now is None else now
    beat = _read(Path(path))
    if isinstance(beat, str):
        return Health(False, beat)
    if beat.hostname != socket.gethostname():
        return Health(
            False, f"{path} was written on host {beat.hostname!r}: its pid cannot be checked here"
        )
    if not _pid_alive(beat.pid):
        return Health(False, f"pid {beat.pid} is gone (the worker stopped without removing {path})")
    unwritten = now - beat.written
    if unwritten > max_age:
        return Health(
            False,
            f"stale: {path} not rewritten for {unwritten:.0f} s "
            f"(max {max_age:g} s; is the worker frozen or stopped?)",
        )
    stalled = now - beat.fetch_alive
    if stalled > max_age:
        return Health(
            False,
            f"stale: the fetch loop of pid {beat.pid} made no progress for {stalled:.0f} s "
            f"(max {max_age:g} s)",
        )
    return Health(True, f"ok: pid {beat.pid}, fetch loop alive {max(stalled, 0.0):.1f} s ago")


def _read(path: Path) -> HeartbeatRecord | str:
    """The file's content, or why there is none."""
    try:
        data = json.loads(path.read_bytes())
        return HeartbeatRecord(
            pid=int(data["pid"]),
            fetch_alive=float(data["fetch_alive"]),
            written=float(data["written"]),
            hostname=str(data["hostname"]),
        )
    except FileNotFoundError:
        return f"{path} is missing (no worker running, or it was not started with this file)"
    except (OSError, ValueError, TypeError, KeyError) as exc:
        return f"{path} is unreadable: {type(exc).__name__}: {exc}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    # A zombie has exited (its parent has not reaped it yet): it fetches nothing.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (not Linux): the signal check is all there is
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")
