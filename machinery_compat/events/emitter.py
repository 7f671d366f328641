"""Emitting events: signal receivers feed a bounded buffer that a background thread flushes.

Python workers (unless ``worker_events`` is off, see :mod:`.settings`; it is on by
default) emit, through the receivers connected here when :mod:`machinery_compat.worker` is
imported and, for the two events of every task, :class:`WorkerEvents`, which the pool
threads call directly:

==========================  ================================================================
event                       from
==========================  ================================================================
``task-started``            the worker, after ``task_prerun`` (RECEIVED and STARTED were
                            just written together)
``task-succeeded``          the worker, after ``task_postrun`` with state SUCCESS
                            (``runtime``: seconds the task function ran)
``task-failed``             ``task_failure`` (``exception``: the error text; ``runtime`` when
                            the task ran)
``task-received``           ``task_failure`` of a task that did not run (expired, bad
                            arguments): received, then failed
``task-retried``            ``task_retry``
``task-dead-lettered``      ``task_rejected`` (too large, undecodable, no task name, an
                            unexpected worker error: kept in the dead-letter place)
``worker-online``           ``worker_ready``
``worker-heartbeat``        every :data:`HEARTBEAT_INTERVAL` seconds, from the flusher
``worker-offline``          ``worker_shutdown``, sent once the worker has stopped
==========================  ================================================================

and producers with ``send_events`` on emit ``task-sent`` for every message the app publishes
(sends, group and chord members, and the callbacks and retries its workers publish).

A task thread only appends a tuple (or, for the rarer events, a small
:class:`~.model.Event`) to a deque; the flusher thread (``mc-events``) encodes what waits as
one JSON array (:func:`~.model.encode_batch`: a tuple becomes a compact array in orjson's C
code, no Python work per event) and writes it every :data:`FLUSH_INTERVAL` seconds, or as
soon as :data:`BATCH` wait, in one round trip per batch (what comes meanwhile waits for the
next flush).  The buffer holds at
most :data:`MAX_BUFFER` events: past that, and for a batch the store refused, events are
dropped on purpose and counted (:attr:`Emitter.dropped`, and ``dropped`` in the next
worker-heartbeat), with one warning per outage.  Events never slow down or fail a task.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from .. import signals
from .model import (
    DEAD_LETTERED,
    FAILED,
    RECEIVED,
    RETRIED,
    SENT,
    STARTED,
    SUCCEEDED,
    WORKER_HEARTBEAT,
    WORKER_OFFLINE,
    WORKER_ONLINE,
    Compact,
    Event,
    clip,
    encode_batch,
)
from .settings import EventsConfig, config_for
from .stores import EventStore, describe_none, store_for

logger = logging.getLogger(__name__)

#: seconds between two flushes (at most; a full batch is flushed at once)
FLUSH_INTERVAL: Final = 0.25
#: events written in one round trip, at most
BATCH: Final = 500
#: events waiting to be written, at most (more are dropped and counted)
MAX_BUFFER: Final = 20_000
#: seconds between two worker-heartbeat events
HEARTBEAT_INTERVAL: Final = 5.0
#: seconds worker-offline waits for a stopping worker's running tasks, at most
OFFLINE_WAIT: Final = 60.0

#: a task event as the task thread leaves it: the values of its compact array
_Raw = Compact

_emitters: weakref.WeakSet[Emitter] = weakref.WeakSet()
#: what a worker without a running-task table (another pool) is read as
_NONE: Final[dict[int, Any]] = {}
_create_lock = threading.Lock()
_tl = threading.local()


def _default_hostname() -> str:
    return f"{os.getpid()}@{socket.gethostname()}"


class Emitter:
    """One app's events in this process: the buffer, the flusher thread, the workers."""

    def __init__(self, app: Any, store: EventStore | None, config: EventsConfig) -> None:
        self.app = app
        self.store = store
        self.worker_events = config.worker_events
        self.send_events = config.send_events
        self.max_buffer = MAX_BUFFER
        self.hostname = _default_hostname()
        #: events not written: buffer full, or the store refused them
        self.dropped = 0
        self.written = 0
        #: the workers of this app running in this process
        self.workers: list[Any] = []
        #: called with every event on the emitting thread (the Prometheus metrics)
        self.listeners: list[Callable[[Event], None]] = []
        self._buf: deque[Event | _Raw] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._full_warned = False
        self._failing = False
        self._dropped_beat = 0
        self._next_beat = time.monotonic() + HEARTBEAT_INTERVAL
        #: find the store on the flusher thread, at the first flush (producers: making the
        #: broker and backend is left out of the app's construction and the send path)
        self.resolve_store = False
        _emitters.add(self)

    # -- the task thread's side -----------------------------------------------------------
    def emit(self, event: Event) -> None:
        """Hand ``event`` to the listeners and the flusher (never raises, never blocks)."""
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:
                logger.exception("event listener %r raised", listener)
        if self.store is None and not self.resolve_store:
            return
        self._put(event)

    def task_event(self, kind: str, ts: float, uuid: str, name: str, queue: str, host: str,
                   runtime: float | None = None) -> None:
        """:meth:`emit` for the task threads' events: a tuple goes in the buffer (the
        flusher makes the Event); an Event is made here only for listeners."""
        if self.listeners:
            self.emit(Event(kind, ts, uuid, name, queue, host, runtime=runtime))
        elif self.store is not None or self.resolve_store:
            self._put((kind, ts, uuid, name, queue, host, runtime))

    def _put(self, item: Event | _Raw) -> None:
        buf = self._buf
        if len(buf) >= self.max_buffer:
            self.dropped += 1
            if not self._full_warned:
                self._full_warned = True
                logger.warning("event buffer full (%d events waiting to be written): events "
                               "are dropped and counted until it drains", self.max_buffer)
            return
        buf.append(item)
        if self._thread is None:
            self.start()
        elif len(buf) == BATCH:  # once per batch: Event.set() takes a lock
            self._wake.set()

    def sent(self, sig: Any, queue: str) -> None:
        """``task-sent`` for a published Signature (producers with ``send_events``)."""
        if not self.send_events:
            return
        eta = getattr(sig, "eta", None)
        self.emit(Event(SENT, time.time(), sig.uuid, sig.name, queue, self.hostname,
                        retries=sig.retry_count, eta=eta.isoformat() if eta is not None else ""))

    def running_here(self) -> tuple[Any, Any]:
        """(worker, RunningTask) of the task this thread runs, else (None, None)."""
        me = threading.get_ident()
        for w in self.workers:
            rt = getattr(w, "_running", _NONE).get(me)
            if rt is not None:
                return w, rt
        return (self.workers[0] if self.workers else None), None

    # -- the flusher ------------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            if self._thread is not None or (self.store is None and not self.resolve_store):
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="mc-events", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(FLUSH_INTERVAL)
            self._wake.clear()
            self._beat()
            self.flush()
        self.flush()

    def _beat(self) -> None:
        now = time.monotonic()
        if now < self._next_beat or not self.workers:
            return
        self._next_beat = now + HEARTBEAT_INTERVAL
        for w in list(self.workers):
            stopping = getattr(w, "_stopping", None)
            if stopping is None or not stopping.is_set():
                self.emit(worker_event(WORKER_HEARTBEAT, w, self, dropped=self._new_drops()))

    def _new_drops(self) -> int:
        dropped, self._dropped_beat = self.dropped - self._dropped_beat, self.dropped
        return dropped

    def flush(self) -> None:
        """Write what waits (from the flusher thread, or at stop)."""
        if self.store is None and self.resolve_store:
            self.resolve_store = False
            try:
                self.store = store_for(self.app)
            except Exception as e:
                logger.warning("task events not kept: %s", e)
            if self.store is None:
                logger.warning("task events not kept: %s", describe_none(self.app))
        store, buf = self.store, self._buf
        if store is None:
            buf.clear()
            return
        # what waits now, no more: events that come meanwhile wait for the next flush (a
        # flusher writing as long as the buffer is not empty would write a few events per
        # round trip while the tasks run, at a cost per event many times this one's)
        left = len(buf)
        while left > 0:
            batch: list[Event | _Raw] = []
            try:
                for _ in range(min(left, BATCH)):
                    batch.append(buf.popleft())
            except IndexError:  # taken by another flush (stop() on another thread)
                left = len(batch)
            left -= len(batch)
            if not batch:
                return
            try:
                store.write(encode_batch(batch), len(batch))
            except Exception as e:
                self.dropped += len(batch)
                if not self._failing:
                    self._failing = True
                    logger.warning("events could not be written (%s): %d dropped; dropping and "
                                   "counting events until the store answers", e, len(batch))
                return
            self.written += len(batch)
            if self._failing:
                self._failing = False
                logger.info("events written again (%d dropped meanwhile)", self.dropped)
            if self._full_warned and len(buf) < self.max_buffer // 2:
                self._full_warned = False

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the flusher after a last flush."""
        with self._lock:
            thread, self._thread = self._thread, None
        self._stop.set()
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        else:
            self.flush()

    def close(self) -> None:
        self.stop()
        if self.store is not None:
            self.store.close()

    def _after_fork(self) -> None:
        """In a forked child: the parent's thread and buffer are not ours."""
        self._buf = deque()
        self._lock = threading.Lock()
        self._thread = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.workers = []
        self.hostname = _default_hostname()


def _after_fork_in_child() -> None:
    for em in list(_emitters):
        em._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def emitter_for(app: Any, *, create: bool = True, store: bool = True) -> Emitter | None:
    """``app``'s emitter (made, with its store, when ``create``); ``store=False`` makes one
    without a store (listeners only) when the stack has none."""
    em: Emitter | None = getattr(app, "_events", None)
    if em is not None or not create:
        return em
    with _create_lock:
        em = getattr(app, "_events", None)
        if em is None:
            found = store_for(app, create=False) if store else None
            em = Emitter(app, found, config_for(app))
            app._events = em
    return em


def configure(app: Any, config: EventsConfig | None) -> None:
    """``app.events_config = config``: keep it, and start or stop task-sent events as its
    ``send_events`` (``None``: the environment's) says."""
    app._events_config = config
    if config_for(app).send_events:
        em = emitter_for(app, store=False)
        assert em is not None
        if em.store is None:
            em.resolve_store = True
        em.send_events = True
    elif getattr(app, "_events", None) is not None:
        app._events.send_events = False


def worker_event(kind: str, worker: Any, em: Emitter, **extra: Any) -> Event:
    hostname = getattr(worker, "hostname", None) or em.hostname
    data: dict[str, Any] = {"pid": os.getpid(), "queues": list(getattr(worker, "queues", ())),
                            "concurrency": getattr(worker, "concurrency", None),
                            "processed": getattr(worker, "processed", None),
                            "active": len(getattr(worker, "_running", _NONE))}
    data.update(extra)
    return Event(kind, time.time(), hostname=hostname, extra=data)


# -- receivers ------------------------------------------------------------------------------
def _task_emitter(task: Any) -> Emitter | None:
    em: Emitter | None = getattr(getattr(task, "app", None), "_events", None)
    if em is None or not em.workers:
        return None
    return em


def _on_ready(sender: Any, **_: Any) -> None:
    app = getattr(sender, "app", None)
    if app is None or not hasattr(sender, "queues"):
        return
    try:
        cfg = config_for(app)
        em = emitter_for(app, create=cfg.worker_events)
    except Exception as e:
        logger.warning("no task events from this worker: %s", e)
        return
    if em is None:
        return
    em.worker_events = cfg.worker_events
    if em.store is None and em.worker_events:
        try:
            em.store = store_for(app, create=False)
        except Exception as e:
            logger.warning("no task events from this worker: %s", e)
        if em.store is None:
            logger.info("task events not kept: %s", describe_none(app))
    if em.store is None and not em.listeners:
        return
    em.workers.append(sender)
    if hasattr(sender, "task_events"):
        sender.task_events = WorkerEvents(em, getattr(sender, "hostname", None) or em.hostname)
    em.emit(worker_event(WORKER_ONLINE, sender, em))
    em.start()


def _on_shutdown(sender: Any, **_: Any) -> None:
    """worker-offline once the worker has stopped (its running tasks' events first)."""
    em: Emitter | None = getattr(getattr(sender, "app", None), "_events", None)
    if em is None or sender not in em.workers:
        return

    def offline() -> None:
        stopped = getattr(sender, "_stopped", None)
        if stopped is not None:
            stopped.wait(OFFLINE_WAIT)
        em.emit(worker_event(WORKER_OFFLINE, sender, em, dropped=em._new_drops()))
        if sender in em.workers:
            em.workers.remove(sender)
            if getattr(sender, "task_events", None) is not None:
                sender.task_events = None
        if not em.workers:
            em.stop()  # flushes; a later emit starts it again

    threading.Thread(target=offline, name="mc-events-offline", daemon=True).start()


@atexit.register
def _flush_at_exit() -> None:
    """Write what waits when the interpreter exits (the flusher is a daemon thread)."""
    for em in list(_emitters):
        try:
            em.stop(timeout=1.0)
        except Exception:
            logger.debug("events not flushed at exit", exc_info=True)


class WorkerEvents:
    """A worker's task-started and task-succeeded events, called by its pool threads
    directly (``Worker.task_events``): no signal dispatch, no lookup of the running task."""

    __slots__ = ("em", "host")

    def __init__(self, em: Emitter, host: str) -> None:
        self.em = em
        self.host = host

    def started(self, task_id: str, name: str, queue: str) -> None:
        """The task is STARTED (written) and about to run."""
        host = self.host
        _tl.cur = (task_id, time.perf_counter(), queue, host)
        self._add((STARTED, time.time(), task_id, name, queue, host, None))

    def succeeded(self, task_id: str, name: str) -> None:
        """It ran, and SUCCESS is written."""
        cur = getattr(_tl, "cur", None)
        if cur is None or cur[0] != task_id:
            return
        _tl.cur = None
        self._add((SUCCEEDED, time.time(), task_id, name, cur[2], cur[3],
                   round(time.perf_counter() - cur[1], 6)))

    def _add(self, item: _Raw) -> None:
        """:meth:`Emitter.task_event`, with its usual case (no listeners, the flusher
        running, room in the buffer) inline: this runs twice per task."""
        em = self.em
        buf = em._buf
        if em.listeners or em._thread is None or len(buf) >= em.max_buffer:
            em.task_event(*item)
            return
        buf.append(item)
        if len(buf) == BATCH:
            em._wake.set()


def _error(exc: Any) -> str:
    text = getattr(exc, "error", None)
    if not isinstance(text, str):
        try:
            text = str(exc) or type(exc).__name__
        except Exception:
            text = type(exc).__name__
    return clip(text)


def _on_failure(sender: Any, task_id: str = "", exception: Any = None, **_: Any) -> None:
    em = _task_emitter(sender)
    if em is None:
        return
    now = time.time()
    cur = getattr(_tl, "cur", None)
    if cur is not None and cur[0] == task_id:  # it ran
        _tl.cur = None
        em.emit(Event(FAILED, now, task_id, sender.name, cur[2], cur[3],
                      runtime=round(time.perf_counter() - cur[1], 6), exception=_error(exception)))
        return
    w, rt = em.running_here()
    queue = getattr(rt, "queue", "") if rt is not None else ""
    host = (getattr(w, "hostname", None) or em.hostname) if w is not None else em.hostname
    em.emit(Event(RECEIVED, now, task_id, sender.name, queue, host))
    em.emit(Event(FAILED, now, task_id, sender.name, queue, host, exception=_error(exception)))


def _on_retry(sender: Any, request: Any = None, reason: Any = None, **_: Any) -> None:
    em = _task_emitter(sender)
    if em is None or request is None:
        return
    cur = getattr(_tl, "cur", None)
    queue, host, runtime = getattr(request.signature, "routing_key", ""), em.hostname, None
    if cur is not None and cur[0] == request.id:
        _tl.cur = None
        queue, host, runtime = cur[2], cur[3], round(time.perf_counter() - cur[1], 6)
    em.emit(Event(RETRIED, time.time(), request.id, request.name, queue, host, runtime=runtime,
                  retries=request.retries, exception=_error(reason) if reason is not None else ""))


def _on_rejected(sender: Any, queue: str = "", body: bytes = b"", reason: str = "",
                 **_: Any) -> None:
    em: Emitter | None = getattr(getattr(sender, "app", None), "_events", None)
    if em is None or sender not in em.workers:
        return
    uuid = name = ""
    try:
        data = json.loads(body)
        if isinstance(data, dict):
            u, n = data.get("UUID"), data.get("Name")
            uuid = u if isinstance(u, str) else ""
            name = n if isinstance(n, str) else ""
    except (ValueError, TypeError):
        pass
    host = getattr(sender, "hostname", None) or em.hostname
    em.emit(Event(DEAD_LETTERED, time.time(), uuid, name, queue, host,
                  reason=clip(reason)))


def connect() -> None:
    """Connect the receivers (done on import; connecting twice is a no-op)."""
    uid = "machinery_compat.events.emitter."
    signals.worker_ready.connect(_on_ready, dispatch_uid=uid + "ready")
    signals.worker_shutdown.connect(_on_shutdown, dispatch_uid=uid + "shutdown")
    signals.task_failure.connect(_on_failure, dispatch_uid=uid + "failure")
    signals.task_retry.connect(_on_retry, dispatch_uid=uid + "retry")
    rejected = getattr(signals, "task_rejected", None)
    if rejected is not None:
        rejected.connect(_on_rejected, dispatch_uid=uid + "rejected")


connect()
