"""The worker (consume loop, state transitions, callbacks, retries)."""

from .worker import RunningTask, Worker, error_text, task_results

__all__ = ["RunningTask", "Worker", "error_text", "task_results"]

# Python workers publish a heartbeat (machinery_compat.ops.heartbeat) and task events
# (machinery_compat.events.emitter): their signal receivers are connected on import.
from ..events import emitter as _events  # noqa: F401
from ..ops import heartbeat as _heartbeat  # noqa: F401
