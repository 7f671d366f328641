"""The worker (consume loop, state transitions, callbacks, retries)."""

from .worker import Worker, error_text, task_results

__all__ = ["Worker", "error_text", "task_results"]
