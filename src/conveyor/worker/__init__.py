"""The worker process: consumer loop, pools, lease renewal, shutdown."""

from __future__ import annotations

from conveyor.worker.worker import Service, Worker, WorkerOptions, default_hostname

__all__ = ["Service", "Worker", "WorkerOptions", "default_hostname"]
