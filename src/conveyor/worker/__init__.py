"""The worker process: consumer loop, pools, lease renewal, shutdown."""

from __future__ import annotations

from conveyor.worker.consumer import Worker, WorkerOptions, default_hostname

__all__ = ["Worker", "WorkerOptions", "default_hostname"]
