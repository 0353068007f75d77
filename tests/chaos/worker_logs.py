"""The chaos workers' logs (JSON lines), read back for the timelines of failed tasks."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

_ID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_NOTABLE = (b'"level": "WARNING"', b'"level": "ERROR"', b'"level": "CRITICAL"')


@dataclass(frozen=True)
class LogLine:
    at: float
    host: str
    level: str
    text: str


class WorkerLogs:
    """The lines of every worker log that name one of ``ids``, and every line at
    WARNING or above (context for the timelines), per host, in time order."""

    def __init__(self, logs: Iterable[tuple[str, Path]], ids: set[str]):
        self.by_id: dict[str, list[LogLine]] = defaultdict(list)
        self.notable: dict[str, list[LogLine]] = defaultdict(list)
        wanted = {i.encode() for i in ids}
        for host, path in logs:
            self._scan(host, path, wanted)

    def _scan(self, host: str, path: Path, wanted: set[bytes]) -> None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return
        last = 0.0
        for raw in data.splitlines():
            named = {m for m in _ID.findall(raw) if m in wanted} if wanted else set()
            notable = any(marker in raw for marker in _NOTABLE)
            if not named and not notable:
                if raw.startswith(b"{"):
                    last = _time_of(raw, last)
                continue
            line = _parse(raw, host, last)
            last = line.at
            for task_id in named:
                self.by_id[task_id.decode()].append(line)
            if notable:
                self.notable[host].append(line)

    def around(self, hosts: set[str], begin: float, end: float, limit: int) -> list[LogLine]:
        """WARNING and worse lines of ``hosts`` between ``begin`` and ``end``."""
        lines = [
            line for host in hosts for line in self.notable.get(host, []) if begin <= line.at <= end
        ]
        lines.sort(key=lambda line: line.at)
        return lines[:limit]


def _time_of(raw: bytes, fallback: float) -> float:
    start = raw.find(b'"time": "')
    if start < 0:
        return fallback
    stamp = raw[start + 9 : start + 33].decode(errors="replace")
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return fallback


def _parse(raw: bytes, host: str, fallback: float) -> LogLine:
    """One log line; not JSON (a traceback printed outside logging): kept as it is, at
    the time of the line before it."""
    try:
        fields = json.loads(raw)
    except ValueError:
        return LogLine(fallback, host, "RAW", raw.decode(errors="replace")[:300])
    at = _time_of(raw, fallback)
    text = str(fields.get("message", ""))
    if fields.get("exc_info"):
        text += " | " + str(fields["exc_info"]).strip().splitlines()[-1]
    return LogLine(at, host, str(fields.get("level", "?")), text[:400])
