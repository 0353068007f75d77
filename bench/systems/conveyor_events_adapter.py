"""conveyor with task events on (``worker -E``): what the events stream costs."""

from __future__ import annotations

from bench.adapter import WorkerSpec
from bench.systems.conveyor_adapter import ConveyorAdapter


class ConveyorEventsAdapter(ConveyorAdapter):
    name = "conveyor_events"

    def worker(self, role: str, concurrency: int) -> WorkerSpec:
        spec = super().worker(role, concurrency)
        return WorkerSpec([*spec.argv, "-E"], f"{spec.pool}, -E", spec.env)


ADAPTER = ConveyorEventsAdapter
