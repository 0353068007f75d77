"""What the scenarios share: reading the record files, Redis command counts, the
worker's memory, stopping it, percentiles. Standard library and redis-py only, so
it runs in every system's environment."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import redis

#: Commands the harness itself sends; never charged to a system.
HARNESS_COMMANDS = {"info", "config", "flushall", "ping", "hello", "client"}


@dataclass
class Run:
    """The executions recorded so far: task number -> [(time, extra), ...]."""

    seen: dict[int, list[tuple[float, float]]] = field(default_factory=dict)
    lines: int = 0

    @property
    def executions(self) -> int:
        return self.lines

    def duplicates(self) -> int:
        return sum(len(v) - 1 for v in self.seen.values() if len(v) > 1)

    def lost(self, expected: range) -> int:
        return sum(1 for i in expected if i not in self.seen)

    def last_time(self) -> float:
        return max(t for times in self.seen.values() for t, _ in times)


class Records:
    """Follows the files ``bench.record`` writes in ``directory``."""

    def __init__(self, directory: Path):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.run = Run()
        self._offsets: dict[Path, int] = {}
        self._partial: dict[Path, bytes] = {}

    def env(self) -> dict[str, str]:
        return {"BENCH_RECORD_DIR": str(self.directory)}

    def poll(self) -> int:
        """Read what was appended since the last poll; the number of executions so far."""
        for path in self.directory.glob("*.log"):
            offset = self._offsets.get(path, 0)
            with path.open("rb") as f:
                f.seek(offset)
                chunk = f.read()
            if not chunk:
                continue
            self._offsets[path] = offset + len(chunk)
            data = self._partial.pop(path, b"") + chunk
            *complete, rest = data.split(b"\n")
            if rest:
                self._partial[path] = rest
            for line in complete:
                i, ns, extra = line.split()
                self.run.seen.setdefault(int(i), []).append((int(ns) / 1e9, float(extra)))
                self.run.lines += 1
        return self.run.lines

    def wait_for(self, count: int, timeout: float, proc: subprocess.Popen[bytes] | None) -> bool:
        """Poll until ``count`` executions are recorded; False on timeout or if ``proc`` died."""
        deadline = time.monotonic() + timeout
        while self.poll() < count:
            if time.monotonic() > deadline:
                return False
            if proc is not None and proc.poll() is not None:
                self.poll()
                return self.run.lines >= count
            time.sleep(0.005)
        return True


def start_worker(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """The worker in its own process group (so its pool children stop with it)."""
    out = log.open("ab")
    return subprocess.Popen(
        argv,
        env={**os.environ, **env},
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop_worker(proc: subprocess.Popen[bytes], grace: float = 2.0) -> None:
    """SIGTERM the worker's group, SIGKILL it after ``grace`` seconds (everything is
    measured by then; how a system shuts down is not part of the benchmark)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children...), from ``/proc``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return sorted(found)


def tree_rss_mb(pid: int) -> float:
    """Memory of ``pid`` and all its descendants, in MiB: the sum of their proportional
    set sizes (PSS), so pages a forked pool shares with its parent count once."""
    total_kb = 0
    for current in [pid, *descendants(pid)]:
        try:
            for line in Path(f"/proc/{current}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total_kb += int(line.split()[1])
        except OSError:
            continue
    return total_kb / 1024


class CommandCounter:
    """Redis commands sent by the system, from ``INFO commandstats``."""

    def __init__(self, client: redis.Redis):
        self.client = client
        self.total: Counter[str] = Counter()

    def reset(self) -> None:
        self.client.config_resetstat()

    def collect(self) -> None:
        """Add the commands since the last reset to ``total``."""
        for key, stats in self.client.info("commandstats").items():
            name = key.removeprefix("cmdstat_")
            if name.split("|")[0] not in HARNESS_COMMANDS:
                self.total[name] += int(stats["calls"])


class RawLoop:
    """The cheapest call a producer could make per task, from this process with
    redis-py: ``EVALSHA`` of a script that does one ``LPUSH`` of a 200-byte value,
    waiting for each reply. ``one_connection`` sends on one connection
    (``send_command``, ``read_response``: the floor of one round trip per call on
    this machine); ``through_client`` through ``Redis.evalsha``, whose pool checkout
    per call costs about as much again on loopback. ``close`` checks every push
    arrived and deletes the key."""

    SCRIPT = "return redis.call('LPUSH', KEYS[1], ARGV[1])"
    KEY = "bench:raw"
    VALUE = b"x" * 200

    def __init__(self, client: redis.Redis):
        self.client = client
        self.sha = client.script_load(self.SCRIPT)
        self.conn = client.connection_pool.get_connection()
        self.calls = 0

    def one_connection(self, n: int) -> float:
        """``n`` calls on one connection; the seconds they took."""
        send, read, args = self.conn.send_command, self.conn.read_response, (self.sha, 1)
        t0 = time.perf_counter()
        for _ in range(n):
            send("EVALSHA", *args, self.KEY, self.VALUE)  # type: ignore[no-untyped-call]
            read()
        self.calls += n
        return time.perf_counter() - t0

    def through_client(self, n: int) -> float:
        """``n`` calls through ``Redis.evalsha``; the seconds they took."""
        evalsha = self.client.evalsha
        t0 = time.perf_counter()
        for _ in range(n):
            evalsha(self.sha, 1, self.KEY, self.VALUE)
        self.calls += n
        return time.perf_counter() - t0

    def close(self) -> None:
        self.client.connection_pool.release(self.conn)
        pushed = self.client.llen(self.KEY)
        self.client.delete(self.KEY)
        if pushed != self.calls:
            raise RuntimeError(f"the raw loop pushed {pushed} values, not {self.calls}")


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100), nearest rank."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


class Monitor:
    """Counts the commands Redis runs while it is open (``MONITOR``): those sent by
    clients apart from the harness's own, and those run inside Lua scripts.

    ``INFO commandstats`` counts both kinds together; a script is one round trip
    but every command inside it is counted too, so the two are reported apart.
    """

    def __init__(self, url: str):
        parsed = urlsplit(url)
        self._sock = socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 6379))
        self._sock.sendall(b"MONITOR\r\n")
        self.client_commands: Counter[str] = Counter()
        self.script_commands: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        buffer = b""
        self._sock.settimeout(0.2)
        while True:
            try:
                chunk = self._sock.recv(1 << 20)
            except TimeoutError:
                if self._stop.is_set():
                    return
                continue
            except OSError:
                return
            if not chunk:
                return
            *lines, buffer = (buffer + chunk).split(b"\r\n")
            for line in lines:
                self._count(line)

    def _count(self, line: bytes) -> None:
        # +1718000000.123456 [0 127.0.0.1:5555] "evalsha" "..."  /  [0 lua] "hget" ...
        source_end = line.find(b"]")
        quote = line.find(b'"', source_end)
        if source_end < 0 or quote < 0:
            return
        name = line[quote + 1 : line.find(b'"', quote + 1)].decode().lower()
        if b" lua]" in line[: source_end + 1]:
            self.script_commands[name] += 1
        elif name not in HARNESS_COMMANDS and name != "monitor":
            self.client_commands[name] += 1

    def close(self, settle: float = 0.5) -> None:
        """Stop counting, after ``settle`` seconds for the last lines to arrive."""
        time.sleep(settle)
        self._stop.set()
        self._thread.join()
        self._sock.close()
