"""The chaos suite's task (tests/chaos), on the app of ``apps.tasks``, and its journal.

``chaos_work(seq, seconds)`` records its start, sleeps ``seconds``, records its
end. Each record names the task id, the worker (its ``-n`` hostname: the chaos
suite gives every worker incarnation its own), the process, and the delivery
count, so that every run can be traced to the worker that ran it.

The journal (``$CONVEYOR_CHAOS_JOURNAL``; also used by the chaos producer for its
sends) survives the processes that write it being SIGKILLed at any instant:

* each record is one ``write`` on an ``O_APPEND`` descriptor, so records of
  concurrent processes never interleave;
* a record is framed as ``RS json SP crc32 LF`` (``RS`` is ``\\x1e``, which JSON
  never contains unescaped). A write cut short by SIGKILL (the kernel may stop a
  write between two pages) leaves a fragment without its line feed, which the
  next record then follows on the same line; the reader keeps the last framed
  record of each line whose checksum matches and counts what it dropped as torn.
"""

from __future__ import annotations

import os
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from apps.tasks import app
from conveyor import Task

__all__ = ["JOURNAL_ENV", "Journal", "JournalReader", "app", "chaos_work", "journal_line"]

#: The environment variable that names the executions journal of the workers.
JOURNAL_ENV = "CONVEYOR_CHAOS_JOURNAL"

_RS = b"\x1e"


def journal_line(record: dict[str, Any]) -> bytes:
    """One framed record (see the module docstring)."""
    payload = orjson.dumps(record)
    return b"%s%s %08x\n" % (_RS, payload, zlib.crc32(payload))


class Journal:
    """Appends framed records to one file, from any process or thread.

    The descriptor is opened again in a forked child: a prefork pool child must
    not share its parent's (harmless with ``O_APPEND``, but a child that closes
    it would close the parent's too)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.fspath(path)
        self._fd = -1
        self._pid = -1
        self._lock = threading.Lock()

    def write(self, **record: Any) -> None:
        line = journal_line(record)
        pid = os.getpid()
        if self._pid != pid:
            with self._lock:
                if self._pid != pid:
                    self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                    self._pid = pid
        os.write(self._fd, line)  # one write: see the module docstring

    def close(self) -> None:
        if self._pid == os.getpid() and self._fd >= 0:
            os.close(self._fd)
        self._fd, self._pid = -1, -1


@dataclass
class JournalReader:
    """Reads a journal as it grows: ``poll()`` returns the records written since the
    last call (complete lines only); ``torn`` counts the fragments dropped so far."""

    path: Path
    torn: int = 0
    _offset: int = 0
    _carry: bytes = b""
    _records: list[dict[str, Any]] = field(default_factory=list)

    def poll(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        lines = (self._carry + data).split(b"\n")
        self._carry = lines.pop()  # no line feed yet: still being written, or torn at the end
        fresh = [record for record in map(self._parse, lines) if record is not None]
        self._records += fresh
        return fresh

    def records(self) -> list[dict[str, Any]]:
        """Every record read so far, in the order written (after a last ``poll``)."""
        self.poll()
        return self._records

    def finish(self) -> None:
        """The writers are gone: an unterminated last line is torn, not pending."""
        self.poll()
        if self._carry:
            self.torn += 1
            self._carry = b""

    def _parse(self, line: bytes) -> dict[str, Any] | None:
        if not line:
            return None
        start = line.rfind(_RS)
        if start != 0:
            # Text before the last record separator is a fragment of a torn write (or,
            # with no separator at all, the line is one).
            self.torn += 1
        if start < 0:
            return None
        payload, _, crc = line[start + 1 :].rpartition(b" ")
        try:
            if int(crc, 16) != zlib.crc32(payload):
                raise ValueError("checksum")
            record: dict[str, Any] = orjson.loads(payload)
        except ValueError:
            self.torn += 1
            return None
        return record


def read_journal(path: Path) -> Iterator[dict[str, Any]]:
    """Every intact record of a finished journal."""
    reader = JournalReader(path)
    reader.finish()
    yield from reader.records()


_journal: Journal | None = None


def _record(event: str, request: Any) -> None:
    global _journal
    path = os.environ.get(JOURNAL_ENV)
    if not path:
        return
    if _journal is None or _journal.path != path:
        _journal = Journal(path)
    _journal.write(
        ev=event,
        id=request.id,
        host=request.hostname,
        pid=os.getpid(),
        ppid=os.getppid(),
        dl=request.delivery_count,
        t=round(time.time(), 6),
    )


@app.task(bind=True)
def chaos_work(self: Task[..., Any], seq: int, seconds: float) -> int:
    """Records its start, sleeps ``seconds``, records its end; returns ``seq``."""
    _record("start", self.request)
    if seconds > 0:
        time.sleep(seconds)
    _record("end", self.request)
    return seq
