"""The worker (consume loop, state transitions, callbacks, retries)."""

from .worker import RunningTask, Worker, error_text, task_results

__all__ = ["RunningTask", "Worker", "error_text", "task_results"]

# Python workers publish a heartbeat (machinery_compat.ops.heartbeat): its receivers of
# worker_ready / worker_shutdown are connected on import.
from ..ops import heartbeat as _heartbeat  # noqa: F401
