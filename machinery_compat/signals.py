"""Celery-style signals, sent by the producer and the Python worker.

.. code-block:: python

    from machinery_compat import signals

    @signals.task_prerun.connect
    def started(sender, task_id, task, args, **kwargs):
        print("running", task.name, task_id, args)

    @signals.after_task_publish.connect(sender="add")      # only for task "add"
    def sent(sender, body, routing_key, **kwargs):
        print("sent", body.uuid, "to", routing_key)

The names and arguments are Celery's (``celery.signals``) where a Machinery message has the
same thing; receivers are called with keyword arguments only (``signal``, ``sender`` and the
ones listed below), so write them with ``**kwargs`` to stay compatible with arguments added
later.  What differs from Celery:

=====================  ===================  ===================================================
signal                 sender               arguments
=====================  ===================  ===================================================
before_task_publish    task name (str)      ``body``: the :class:`~machinery_compat.Signature`
                                            about to be published (Celery: the message body);
                                            ``headers``: the Signature's ``Headers`` dict —
                                            changes go on the wire (keep values strings, Go's
                                            AMQP re-publish refuses others); ``routing_key``:
                                            its queue; ``exchange``: the AMQP exchange or
                                            ``""``; ``properties``: ``{}``, ``declare``: ``[]``,
                                            ``retry_policy``: ``None`` (no such things here)
after_task_publish     task name            ``body``, ``exchange``, ``routing_key``
task_received          the worker           ``request``: a :class:`~machinery_compat.Request`
task_prerun            the Task             ``task_id``, ``task``, ``args`` (the decoded
                                            positional arguments), ``kwargs`` (always ``{}``:
                                            Machinery has positional arguments only)
task_postrun           the Task             as task_prerun, and ``retval`` (the return value or
                                            the exception), ``state`` (``SUCCESS``,
                                            ``FAILURE`` or ``RETRY``, as stored)
task_success           the Task             ``result``: the Python return value
task_failure           the Task             ``task_id``, ``exception``, ``args``, ``kwargs``,
                                            ``traceback``, ``einfo`` (always ``None``: no
                                            billiard ExceptionInfo here)
task_retry             the Task             ``request``, ``reason`` (the exception),
                                            ``einfo`` (``None``)
task_rejected          the worker           ``queue``, ``body`` (the message's bytes),
                                            ``reason``: a message dead-lettered (too large,
                                            undecodable, no task name, an unexpected worker
                                            error); Celery's has ``message``, ``exc``
worker_ready           the worker           — (before its threads take the first message)
worker_shutdown        the worker           —
=====================  ===================  ===================================================

Both publish signals are sent for every message this process publishes: ``send_task`` and
``apply_async``, each member of a group or chord, and the callbacks and retries a Python
worker sends.  ``task_failure`` is sent for every FAILURE a Python worker writes, also for
those written without running the task (bad arguments, expired), where ``exception`` is a
:class:`~machinery_compat.TaskFailed` carrying the error text.  Go workers send no signals.

As in Celery, a receiver that raises is logged (``Signal handler … raised``) and its
exception is returned by :meth:`Signal.send` instead of propagating, so a broken receiver
never breaks a publish or a task.  Unlike Celery, receivers are held by strong references
unless ``connect(..., weak=True)``: a lambda or a nested function connected in Celery's
default weak mode silently disappears.  ``sender=`` filters by identity, or by equality
for a string, which also matches a Task sender by its name (``task_prerun.connect(sender="add")``).
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Hashable
from typing import Any, TypeVar, overload

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

__all__ = [
    "Signal",
    "after_task_publish",
    "before_task_publish",
    "task_failure",
    "task_postrun",
    "task_prerun",
    "task_received",
    "task_rejected",
    "task_retry",
    "task_success",
    "worker_ready",
    "worker_shutdown",
]


class _Receiver:
    """One connection: the receiver (or a weak reference to it), its sender filter and key."""

    __slots__ = ("key", "ref", "sender", "strong")

    def __init__(self, key: Hashable, fn: Callable[..., Any], sender: Any, weak: bool) -> None:
        self.key = key
        self.sender = sender
        self.strong: Callable[..., Any] | None = None
        self.ref: Callable[[], Callable[..., Any] | None] | None = None
        if not weak:
            self.strong = fn
        elif hasattr(fn, "__self__") and hasattr(fn, "__func__"):
            self.ref = weakref.WeakMethod(fn)
        else:
            self.ref = weakref.ref(fn)

    def get(self) -> Callable[..., Any] | None:
        if self.strong is not None:
            return self.strong
        assert self.ref is not None
        return self.ref()

    def wants(self, sender: Any) -> bool:
        want = self.sender
        if want is None or want is sender:
            return True
        if isinstance(want, str):
            return want == sender or want == getattr(sender, "name", None)
        return False


def _key(fn: Callable[..., Any], sender: Any, dispatch_uid: Hashable | None) -> Hashable:
    if dispatch_uid is not None:
        target: Hashable = ("uid", dispatch_uid)
    elif hasattr(fn, "__self__") and hasattr(fn, "__func__"):
        target = (id(fn.__self__), id(fn.__func__))
    else:
        target = id(fn)
    return (target, sender if isinstance(sender, str) else id(sender))


class Signal:
    """A named hook receivers connect to; :meth:`send` calls them all, in connection order.

    Thread-safe: receivers may be connected and disconnected while signals are sent from
    worker threads (a send uses the receivers connected when it started).
    """

    def __init__(self, name: str, providing_args: frozenset[str] = frozenset()) -> None:
        self.name = name
        #: the keyword arguments this signal's senders pass (besides ``signal`` and ``sender``)
        self.providing_args = providing_args
        self._receivers: list[_Receiver] = []
        self._lock = threading.Lock()

    @overload
    def connect(self, receiver: F, /, *, sender: Any = None, weak: bool = False,
                dispatch_uid: Hashable | None = None) -> F: ...

    @overload
    def connect(self, receiver: None = None, /, *, sender: Any = None, weak: bool = False,
                dispatch_uid: Hashable | None = None) -> Callable[[F], F]: ...

    def connect(self, receiver: Callable[..., Any] | None = None, /, *, sender: Any = None,
                weak: bool = False, dispatch_uid: Hashable | None = None) -> Any:
        """Connect ``receiver`` (``@signal.connect`` or ``@signal.connect(sender=...)``).

        ``sender``: only calls from this sender (a task name matches a Task sender too);
        ``weak``: hold a weak reference (the receiver goes when nothing else holds it);
        ``dispatch_uid``: a key that makes connecting twice a no-op (else the same function
        for the same sender is connected once).  Returns the receiver, so it works as a
        decorator.
        """

        def add(fn: F) -> F:
            if not callable(fn):
                raise TypeError(f"signal {self.name}: a receiver must be callable, not {fn!r}")
            key = _key(fn, sender, dispatch_uid)
            with self._lock:
                self._prune()
                if not any(r.key == key for r in self._receivers):
                    self._receivers = [*self._receivers, _Receiver(key, fn, sender, weak)]
            return fn

        return add(receiver) if receiver is not None else add

    def disconnect(self, receiver: Callable[..., Any] | None = None, *, sender: Any = None,
                   dispatch_uid: Hashable | None = None) -> bool:
        """Disconnect a receiver connected with the same ``sender`` (or ``dispatch_uid``);
        True if one was connected."""
        if receiver is None and dispatch_uid is None:
            raise TypeError("disconnect() needs the receiver or its dispatch_uid")
        if dispatch_uid is not None:
            key: Hashable = (("uid", dispatch_uid), sender if isinstance(sender, str) else id(sender))
        else:
            assert receiver is not None
            key = _key(receiver, sender, None)
        with self._lock:
            kept = [r for r in self._receivers if r.key != key]
            found = len(kept) != len(self._receivers)
            self._receivers = kept
        return found

    def has_listeners(self, sender: Any = None) -> bool:
        """Whether any live receiver would be called for ``sender``."""
        return any(r.get() is not None and (sender is None or r.wants(sender))
                   for r in self._receivers)

    @property
    def receivers(self) -> list[Callable[..., Any]]:
        """The live receivers, in connection order."""
        return [fn for r in self._receivers if (fn := r.get()) is not None]

    def send(self, sender: Any, **named: Any) -> list[tuple[Callable[..., Any], Any]]:
        """Call every receiver for ``sender`` as ``receiver(signal=self, sender=sender,
        **named)``; returns ``[(receiver, response or the exception it raised), ...]``."""
        receivers = self._receivers  # a snapshot: the list is replaced, never changed
        if not receivers:
            return []
        responses: list[tuple[Callable[..., Any], Any]] = []
        dead = False
        for r in receivers:
            fn = r.get()
            if fn is None:
                dead = True
                continue
            if not r.wants(sender):
                continue
            try:
                responses.append((fn, fn(signal=self, sender=sender, **named)))
            except Exception as exc:
                logger.exception("Signal handler %r raised: %r", fn, exc)
                responses.append((fn, exc))
        if dead:
            with self._lock:
                self._prune()
        return responses

    def _prune(self) -> None:
        """Drop the receivers whose weak reference died (the lock is held)."""
        self._receivers = [r for r in self._receivers if r.get() is not None]

    def __repr__(self) -> str:
        return f"<Signal {self.name}>"


def _signal(name: str, *args: str) -> Signal:
    return Signal(name, frozenset(args))


before_task_publish = _signal("before_task_publish", "body", "exchange", "routing_key",
                              "headers", "properties", "declare", "retry_policy")
after_task_publish = _signal("after_task_publish", "body", "exchange", "routing_key")
task_received = _signal("task_received", "request")
task_prerun = _signal("task_prerun", "task_id", "task", "args", "kwargs")
task_postrun = _signal("task_postrun", "task_id", "task", "args", "kwargs", "retval", "state")
task_success = _signal("task_success", "result")
task_failure = _signal("task_failure", "task_id", "exception", "args", "kwargs", "traceback",
                       "einfo")
task_retry = _signal("task_retry", "request", "reason", "einfo")
task_rejected = _signal("task_rejected", "queue", "body", "reason")
worker_ready = _signal("worker_ready")
worker_shutdown = _signal("worker_shutdown")
