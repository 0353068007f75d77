"""The worker process: consumer loop, pools, lease renewal, shutdown."""

from __future__ import annotations

from conveyor.worker.consumer import Service, Worker, WorkerOptions, default_hostname

__all__ = ["Service", "Worker", "WorkerOptions", "default_hostname"]
