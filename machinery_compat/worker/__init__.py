"""The worker (consume loop, state transitions, callbacks, retries)."""

from .worker import RunningTask, Worker, error_text, task_results

__all__ = ["RunningTask", "Worker", "error_text", "task_results"]
