"""Exceptions raised by machinery_compat.

Every exception derives from :class:`MachineryCompatError` and carries the data
that explains it (the raw bytes of an undecodable message, the task name that
is not registered, the queue a message was moved to, ...).
"""

from __future__ import annotations


class MachineryCompatError(Exception):
    """Root of every error raised by this library."""


class ConfigError(MachineryCompatError, ValueError):
    """A configuration value (URL, YAML key, environment variable) is invalid."""


class ProtocolError(MachineryCompatError):
    """Something could not be turned into, or read from, Machinery's wire format."""


class EncodeError(ProtocolError, ValueError):
    """A value cannot be encoded the way Go's ``encoding/json`` would encode it.

    Raised at send time for values Go could not carry: NaN/Inf floats,
    integers outside the range of the declared Go type, unknown type names.
    """


class DecodeError(ProtocolError, ValueError):
    """Bytes that Go Machinery would also refuse to decode.

    ``raw`` holds the undecodable bytes exactly as received.
    """

    def __init__(self, message: str, raw: bytes | str | None = None) -> None:
        super().__init__(message)
        self.raw = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw


class ArgTypeError(ProtocolError, TypeError):
    """A typed argument's value does not match its Go type (Go's reflect error)."""


class BrokerError(MachineryCompatError):
    """A broker operation failed."""


class BrokerConnectionError(BrokerError, ConnectionError):
    """The broker cannot be reached."""


class PublishError(BrokerError):
    """A message could not be published; nothing was sent for it."""


class BackendError(MachineryCompatError):
    """A result-backend operation failed."""


class ResultTimeout(BackendError, TimeoutError):
    """``AsyncResult.get(timeout=...)`` gave up waiting."""

    def __init__(self, task_id: str, timeout: float, state: str | None) -> None:
        super().__init__(
            f"task {task_id} not ready after {timeout:g}s (last state: {state or 'unknown'})"
        )
        self.task_id = task_id
        self.timeout = timeout
        self.state = state


class TaskFailed(MachineryCompatError):
    """A task finished in state FAILURE; ``error`` is the error text stored by the worker."""

    def __init__(self, task_id: str, error: str, task_name: str = "") -> None:
        super().__init__(error)
        self.task_id = task_id
        self.error = error
        self.task_name = task_name


class TaskNotRegistered(MachineryCompatError, KeyError):
    """No task of that name is registered with this app (``detail``: where, and why it matters)."""

    def __init__(self, name: str, detail: str = "") -> None:
        super().__init__(name)
        self.name = name
        self.detail = detail

    def __str__(self) -> str:
        return f"task {self.name!r} is not registered" + (f" {self.detail}" if self.detail else "")


class Retry(MachineryCompatError):
    """Raise from a task to have it retried later.

    ``Retry("why", countdown=3)`` is Go's ``ErrRetryTaskLater``: the task runs again after
    ``countdown`` seconds (1 s when not given) and its ``RetryCount`` is left untouched.

    ``Task.retry()`` (Celery's ``self.retry``) raises it with ``consume=True``: the retry uses up
    one of the message's ``RetryCount``; without a countdown the delay is Machinery's next
    Fibonacci step (``RetryTimeout``), so a Go worker picking the message up keeps the policy.
    When no retries are left the task fails with the error text of ``exc``.
    """

    def __init__(self, message: str = "", countdown: float | None = None,
                 exc: BaseException | None = None, *, consume: bool = False,
                 max_retries: int | None = None) -> None:
        super().__init__(message or (str(exc) if exc else "retry requested"))
        self.message = message
        self.countdown = countdown
        self.exc = exc
        self.consume = consume
        self.max_retries = max_retries


__all__ = [
    "ArgTypeError",
    "BackendError",
    "BrokerConnectionError",
    "BrokerError",
    "ConfigError",
    "DecodeError",
    "EncodeError",
    "MachineryCompatError",
    "ProtocolError",
    "PublishError",
    "ResultTimeout",
    "Retry",
    "TaskFailed",
    "TaskNotRegistered",
]
