"""Beat: periodic tasks, sent once per slot however many schedulers run."""

from __future__ import annotations

from conveyor.beat.entries import MISFIRE_POLICIES, Entry, entries_of, parse_entry
from conveyor.beat.scheduler import Beat, describe_time

__all__ = ["MISFIRE_POLICIES", "Beat", "Entry", "describe_time", "entries_of", "parse_entry"]
