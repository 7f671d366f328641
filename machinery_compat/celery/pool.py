"""Running a Celery task for a Machinery message, in the Celery worker's pool.

The bridge's consuming threads (a :class:`machinery_compat.worker.Worker`) decode each
message, write RECEIVED/STARTED, then call :meth:`PoolRunner.call`, which hands the Celery
task to the worker's pool with ``pool.apply_async`` and waits for its outcome; the Worker
then writes the final state, sends the callbacks, the retry or the chord, and acknowledges
the message.

Pools:

* ``threads``: ``apply_async`` from the bridge's thread; the task runs in the pool's
  executor;
* ``solo``: the task runs in the bridge's calling thread (beside the worker's main loop);
* ``prefork``: ``apply_async`` is called from the worker's event loop (``hub.call_soon``,
  thread-safe), as Celery calls it for its own tasks; the task runs in a child process,
  which finds it in ``celery.current_app``; its return value comes back through the pool,
  its exception as a :class:`PoolTaskError` (the same text, the class's name, the child's
  traceback as a note; a Machinery :class:`~machinery_compat.Retry` as itself).  A child
  killed while running it: the task fails with Celery's ``WorkerLostError`` text.  The
  Celery task's ``soft_time_limit`` and ``time_limit`` (``task_soft_time_limit``,
  ``task_time_limit``) apply, as to Celery's own tasks: the soft one raises
  ``SoftTimeLimitExceeded`` in the task, the hard one kills the child and fails the task
  with ``Hard time limit (<n>s) exceeded``.

eventlet and gevent pools are refused (:class:`~machinery_compat.exceptions.ConfigError`).

In the pool the task runs as Celery's tracer runs it (``task.run``, or ``task.__call__``
when the task class has its own) with ``self.request`` filled from the message:
``id`` (the Machinery task UUID), ``retries``, ``headers``, ``group``, ``args``,
``delivery_info`` ({"routing_key": <queue>}).  Celery's task signals, rate limits and
result backend are not involved (time limits only on prefork, as in Celery): the result
goes to the Machinery backend.
"""

from __future__ import annotations

import logging
import os
import threading
import traceback
from collections.abc import Sequence
from typing import Any

from celery.exceptions import Retry as CeleryRetry
from celery.exceptions import TimeLimitExceeded

from machinery_compat.exceptions import ConfigError, Retry
from machinery_compat.task import Request
from machinery_compat.worker.worker import error_text

logger = logging.getLogger(__name__)

#: the Celery pools the bridge can hand tasks to, by the module of their class
SUPPORTED_POOLS = {
    "celery.concurrency.thread": "threads",
    "celery.concurrency.solo": "solo",
    "celery.concurrency.prefork": "prefork",
}

#: seconds after which a task the pool refused (shutting down) is sent again (Go's
#: ErrRetryTaskLater: its RetryCount untouched)
REFUSED_RETRY = 1.0


def pool_kind(pool: Any, hub: Any = None) -> str:
    """``"threads"``, ``"solo"`` or ``"prefork"`` (which needs the worker's event loop,
    ``hub``); :class:`ConfigError` for any other pool."""
    module = type(pool).__module__
    kind = SUPPORTED_POOLS.get(module)
    if kind is None:
        raise ConfigError(
            f"the Machinery bridge runs tasks in Celery's threads, solo or prefork pool "
            f"(celery worker -P threads | solo | prefork), not {module}.{type(pool).__name__}")
    if kind == "prefork" and hub is None:
        raise ConfigError(
            "the Machinery bridge hands tasks to the prefork pool through the worker's event "
            "loop, and this worker runs without one (its broker transport has no "
            "asynchronous support): use -P threads")
    return kind


def pool_size(pool: Any) -> int:
    """How many tasks the pool runs at once (``-c``); the solo pool: 1."""
    limit = getattr(pool, "limit", None)
    return limit if isinstance(limit, int) and limit >= 1 else 1


class PoolRunner:
    """Calls Celery tasks in a Celery worker's pool and waits for their outcome."""

    def __init__(self, celery_app: Any, pool: Any, hub: Any = None) -> None:
        self.celery_app = celery_app
        self.pool = pool
        self.hub = hub
        self.kind = pool_kind(pool, hub)

    def call(self, celery_name: str, request: Request, args: Sequence[Any], queue: str) -> Any:
        """Run Celery task ``celery_name`` with ``args`` in the pool; its return value, or
        its exception raised here (``self.retry()`` becomes a Machinery
        :class:`~machinery_compat.Retry` using up one ``RetryCount``; a pool refusing the
        task, shutting down, a Machinery retry in :data:`REFUSED_RETRY` seconds)."""
        context = request_context(request, queue)
        done = threading.Event()
        box: dict[str, Any] = {}

        def finish(ok: bool, value: Any) -> None:
            box["ok"], box["value"] = ok, value
            done.set()

        def submit() -> None:
            try:
                if self.kind == "prefork":
                    task = self.celery_app.tasks[celery_name]
                    self.pool.apply_async(
                        run_in_child, (celery_name, context, list(args)),
                        callback=lambda outcome: finish(*outcome),
                        error_callback=lambda einfo: finish(False, _lost(einfo)),
                        soft_timeout=task.soft_time_limit, timeout=task.time_limit)
                else:
                    task = self.celery_app.tasks[celery_name]
                    self.pool.apply_async(lambda: finish(*run_outcome(task, context, list(args))),
                                          callback=_ignore, accept_callback=None)
            except Exception as e:  # the pool is shutting down: the task did not run
                finish(False, Retry(f"the Celery pool refused task {celery_name} ({e}); it "
                                    "runs again later", REFUSED_RETRY))

        if self.kind == "prefork":
            self.hub.call_soon(submit)  # apply_async belongs to the event loop's thread
        else:
            submit()
        done.wait()
        if not box["ok"]:
            raise box["value"]
        return box["value"]


def _ignore(_: object) -> None:
    """``apply_target`` reports the target's return value here (always ``None``)."""


def _lost(einfo: Any) -> BaseException:
    """What the prefork pool's error callback got (a billiard ``ExceptionInfo``: the child
    died, or the outcome could not be pickled) as an exception."""
    exc = getattr(einfo, "exception", einfo)
    inner = getattr(exc, "exc", None)  # billiard's ExceptionWithTraceback wraps the error
    if isinstance(inner, BaseException):
        exc = inner
    if isinstance(exc, TimeLimitExceeded):  # its text is the limit alone
        limit = exc.args[0] if exc.args else "?"
        return PoolTaskError(f"Hard time limit ({limit}s) exceeded",
                             f"{type(exc).__module__}.{type(exc).__qualname__}",
                             f"the pool killed its process after {limit} s")
    return exc if isinstance(exc, BaseException) else RuntimeError(repr(einfo))


def request_context(request: Request, queue: str) -> dict[str, Any]:
    """``self.request`` of the Celery task for this message (plain data: it may travel to a
    prefork child)."""
    return {"id": request.id, "retries": request.retries, "headers": dict(request.headers),
            "group": request.group or None,
            "delivery_info": {"routing_key": queue, "exchange": "", "redelivered": False}}


def run_in_child(celery_name: str, context: dict[str, Any],
                 args: list[Any]) -> tuple[bool, Any]:
    """The prefork pool's target: run the task of the worker's app, ``(ok, value or
    exception)``, both picklable."""
    from celery import current_app

    ok, value = run_outcome(current_app.tasks[celery_name], context, args)
    return (True, value) if ok else (False, _portable(value))


class PoolTaskError(Exception):
    """A task's exception from a prefork child: its text (what Go reads as the error), its
    class's name and the child's traceback (the class itself may not travel)."""

    def __init__(self, text: str, kind: str, trace: str) -> None:
        super().__init__(text, kind, trace)
        self.text, self.kind = text, kind
        self.add_note(trace)

    def __str__(self) -> str:
        return self.text


def _portable(exc: BaseException) -> BaseException:
    """What goes back to the bridge for an exception: a Machinery :class:`Retry` as itself
    (its fields are plain data; its ``exc`` made portable), anything else as a
    :class:`PoolTaskError`."""
    if isinstance(exc, Retry):
        if exc.exc is not None:
            exc.exc = _portable(exc.exc)
        return exc
    trace = f"in Celery pool process {os.getpid()}:\n{''.join(traceback.format_exception(exc))}"
    return PoolTaskError(error_text(exc), f"{type(exc).__module__}.{type(exc).__qualname__}",
                         trace)


def run_outcome(task: Any, context: dict[str, Any], args: list[Any]) -> tuple[bool, Any]:
    """``(True, return value)`` or ``(False, exception)`` of :func:`run_task`."""
    try:
        return True, run_task(task, context, args)
    except BaseException as e:  # handed to the waiting bridge thread, never lost
        return False, e


#: the message of Celery's ``Retry`` when ``self.retry()`` is given no exception
_CELERY_RETRY_TEXT = "Task can be retried"

#: where Celery's own ``Task.__call__`` (and the worker's stack protection patched over it)
#: live: calling through them would push a second request without the message's id
_CELERY_CALL_MODULES = ("celery.app.task", "celery.app.trace")


def _callable(task: Any) -> Any:
    """``task.run``, or the task itself when its class has a ``__call__`` of its own (as
    Celery's tracer decides; such a ``__call__`` that calls ``super().__call__`` sees a
    request without the message's id)."""
    call = type(task).__call__
    if getattr(call, "__module__", None) in _CELERY_CALL_MODULES:
        return task.run
    return task


def run_task(task: Any, context: dict[str, Any], args: list[Any]) -> Any:
    """Call the Celery task as its tracer would, with ``self.request`` from ``context``
    (:func:`request_context`)."""
    task.push_request(task=task.name, args=args, kwargs={}, is_eager=False, hostname=None,
                      **context)
    try:
        return _callable(task)(*args)
    except CeleryRetry as r:
        # Celery's self.retry() (the request is "called directly": nothing is sent to
        # Celery's broker).  Machinery's rules: one RetryCount used, the Fibonacci delay
        # unless the retry carried a number of seconds
        when = r.when if isinstance(r.when, (int, float)) and not isinstance(r.when, bool) else None
        exc = r.exc if isinstance(r.exc, BaseException) else None
        text = str(r.message) if r.message and r.message != _CELERY_RETRY_TEXT else ""
        raise Retry(text, when, exc=exc, consume=True) from r
    finally:
        task.pop_request()
