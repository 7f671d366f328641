"""Exceptions raised by machinery_compat.

Every exception derives from :class:`MachineryCompatError` and carries the data
that explains it (the raw bytes of an undecodable message, the task name that
is not registered, the queue a message was moved to, ...).
"""

from __future__ import annotations

import sys
import threading
import types
from collections.abc import Mapping


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


class UnsupportedOption(MachineryCompatError, TypeError):
    """An option (Celery's ``time_limit``, say) that a Machinery message cannot carry.

    ``option`` is its name, ``where`` the call it was given to, ``reason`` why it is refused.
    """

    def __init__(self, option: str, where: str, reason: str) -> None:
        super().__init__(f"{where}: option {option!r} is not supported: {reason}")
        self.option = option
        self.where = where
        self.reason = reason


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
    """A task finished in state FAILURE.

    ``error`` is the error text of the stored state, byte for byte (Go's ``err.Error()``, or
    ``str(exc)`` from a Python worker); ``str()`` of the exception is that text.

    When a Python worker ran the task it also recorded the exception beside the state, and
    ``exc_type`` (class name, e.g. ``"ZeroDivisionError"``), ``exc_module`` (``"builtins"``)
    and ``traceback`` (the formatted ``Traceback (most recent call last): ...`` text) carry it.
    They are ``None`` when a Go worker ran the task or the backend keeps no such record.

    ``AsyncResult.get()`` raises, where it can, an instance of both this class and the task's
    original exception class, so ``except ZeroDivisionError:`` works (see :func:`task_failed`).
    """

    def __init__(self, task_id: str, error: str, task_name: str = "", *,
                 exc_type: str | None = None, exc_module: str | None = None,
                 traceback: str | None = None) -> None:
        # Exception's __init__, not super(): in a class combined with the task's original
        # exception class (task_failed), that class's __init__ must not run with our arguments.
        Exception.__init__(self, error)
        self.task_id = task_id
        self.error = error
        self.task_name = task_name
        self.exc_type = exc_type
        self.exc_module = exc_module
        self.traceback = traceback

    # defined here so an original class's __str__/__repr__, which may read attributes its
    # __init__ would have set, is never used on a combined instance
    def __str__(self) -> str:
        return self.error

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.error!r})"


#: original exception class -> its combination with TaskFailed (None: it cannot be combined)
_combined: dict[type[Exception], type[TaskFailed] | None] = {}
_combined_lock = threading.Lock()


def task_failed(task_id: str, error: str, task_name: str = "", *,
                exc_type: str | None = None, exc_module: str | None = None,
                exc_qualname: str | None = None, traceback: str | None = None) -> TaskFailed:
    """The :class:`TaskFailed` for a FAILURE state, built from what the worker recorded.

    When the original exception class can be found without importing or running anything --
    ``exc_module`` is already in ``sys.modules`` and ``exc_qualname`` (``exc_type`` when not
    given) names a class in it, looked up in the namespaces' ``__dict__`` -- and it is an
    :class:`Exception` subclass, the result is an instance of a class derived from both
    TaskFailed and that class, named ``TaskFailed[<qualname>]`` and created once per class.
    Only the error text travels: the original ``__init__`` does not run, so attributes it
    would set are missing (OSError's ``errno``/``strerror``/``filename`` are ``None``).

    A plain TaskFailed otherwise: no record (Go worker), module not imported in this process,
    a class defined inside a function (``<locals>``), a BaseException that is not an Exception
    (SystemExit, KeyboardInterrupt), TaskFailed itself, or a class that cannot be combined or
    built (class creation raises, e.g. a metaclass conflict or a class that refuses
    subclasses, or its ``__new__`` wants its own arguments, as ExceptionGroup's does).
    """
    kwargs = {"exc_type": exc_type, "exc_module": exc_module, "traceback": traceback}
    original = _find_exception_class(exc_module, exc_qualname or exc_type)
    combined = _combined_class(original) if original is not None else None
    if combined is not None:
        try:
            exc = combined(task_id, error, task_name, **kwargs)
        except Exception:  # the original __new__ refuses our arguments
            pass
        else:
            if isinstance(exc, combined):  # a __new__ may return something else entirely
                return exc
    return TaskFailed(task_id, error, task_name, **kwargs)


def _find_exception_class(module: str | None, qualname: str | None) -> type[Exception] | None:
    if not module or not qualname:
        return None
    obj: object = sys.modules.get(module)
    for part in qualname.split("."):
        if obj is None:
            return None
        namespace = getattr(obj, "__dict__", None)  # no module/class __getattr__ hooks run
        obj = namespace.get(part) if isinstance(namespace, Mapping) else None
    if (isinstance(obj, type) and issubclass(obj, Exception)
            and not issubclass(obj, TaskFailed)):
        return obj
    return None


def _combined_class(original: type[Exception]) -> type[TaskFailed] | None:
    with _combined_lock:
        if original in _combined:
            return _combined[original]
        name = f"TaskFailed[{original.__qualname__}]"

        def body(ns: dict[str, object]) -> None:
            ns["__module__"] = __name__
            ns["__qualname__"] = name
            ns["__doc__"] = f"A task failed with {original.__module__}.{original.__qualname__}."

        combined: type[TaskFailed] | None
        try:
            combined = types.new_class(name, (TaskFailed, original), exec_body=body)
        except Exception:  # TypeError: layout or metaclass conflict, __init_subclass__ refusing
            combined = None
        _combined[original] = combined
        return combined


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
    "UnsupportedOption",
]
