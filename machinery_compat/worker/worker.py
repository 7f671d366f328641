"""The worker: consume a queue, run tasks in threads, write states like Go's worker.

For every message (Machinery's ``worker.Process``):

* undecodable JSON → kept in ``<queue>.dead`` with a log line carrying the raw bytes;
* task not registered here → the original bytes go back to this worker's queue for another
  (e.g. Go) worker, with a back-off so this worker does not spin on them, and one log line
  per task name; with ``IgnoreWhenTaskNotRegistered`` the message is dropped (logged);
* otherwise RECEIVED → STARTED → SUCCESS | FAILURE | RETRY, with Go's bytes.  A task's
  exception becomes FAILURE with ``str(exc)`` as the error text, or a retry while
  ``RetryCount > 0`` (Fibonacci delays); raising :class:`~machinery_compat.Retry` retries
  later without touching ``RetryCount`` (Go's ``ErrRetryTaskLater``).  OnSuccess callbacks get
  the results appended unless the task is Immutable; OnError callbacks get the error string
  prepended; a chord callback is sent once, by whichever worker finishes the group.

Every message taken is settled exactly once, by one broker call, after everything it
causes is written: ``ack`` once its final state is stored (with its callbacks, retry or
chord sent, when it has any), ``requeue`` (handed back, or pushed back when the backend
was unreachable before it started), ``dead_letter`` or ``drop``.  On Redis, by default, the
message waits in this worker's processing list until then, so a worker killed at any
moment loses nothing: another worker re-queues it once this one's heartbeat expires
(at-least-once; see :mod:`machinery_compat.brokers.redis`).  Through an outage of the
backend or the broker, final-state writes and these broker calls are retried with back-off
(one message per worker thread at a time, so memory stays bounded) until they work or the
worker is stopped; a message whose state could not be stored by then is pushed back, or
left in the processing list, to run again.

Shutdown: :meth:`Worker.stop` (or the first SIGINT/SIGTERM in :meth:`Worker.run`) stops
fetching, pushes back messages taken but not started, and waits for running tasks; a
second signal returns at once.
"""

from __future__ import annotations

import difflib
import hashlib
import heapq
import itertools
import logging
import os
import queue as queue_mod
import signal
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from .. import signals
from ..backends.base import ExceptionRecord
from ..brokers.base import REDELIVERIES_HEADER, Broker, Delivery, rotate
from ..exceptions import (
    ArgTypeError,
    BrokerConnectionError,
    DecodeError,
    EncodeError,
    Retry,
    TaskFailed,
)
from ..options import parse_expires
from ..protocol import (
    FAILURE,
    RETRY,
    SUCCESS,
    Arg,
    GoTime,
    Signature,
    TaskResult,
    TaskState,
)
from ..protocol.gotypes import SLICE_TYPES, SUPPORTED_TYPES, encode_typed, result_type
from ..protocol.retry import fibonacci_next
from ..task import RETRIES_HEADER, Request, RetryBackoff, Task, retries_done, retry_delay
from . import sublime as _sublime
from ._logtext import _ClipArgs, clip, excerpt, resident_kib
from .affinity import parse_cpus, pin_process
from .lookahead import Ahead, store_then_start, take_ahead, taken_ahead

if TYPE_CHECKING:
    from ..app import Machinery
    from ..tracing import TaskSpan

H = TypeVar("H", bound=Callable[..., Any])

logger = logging.getLogger("machinery_compat.worker")

_MAX_UNREGISTERED_BACKOFF = 1.0
#: how many handed-back message ids are remembered, and for how long a second sighting means
#: the worker is cycling through messages it cannot run
_HANDED_BACK_MEMORY = 10_000
_HANDED_BACK_CYCLE = 30.0
#: how long an unregistered message met again is kept aside: first, at most (per name, doubling)
_MIN_PARK = 0.05
_MAX_PARK = 2.0
#: at most this many messages aside; past it the fetching slows down instead
_MAX_PARKED = 1000
_MAX_PARKED_BYTES = 16 * 1024 * 1024
#: task names and ids this worker remembers (warned-about names, park delays), at most, and
#: how much of each it keeps (a longer one is remembered by its hash)
_MEMO_ENTRIES = 1000
_MEMO_KEY = 200
#: the consumer's pause after handing such messages back
_RELEASE_PAUSE = 0.05
#: messages larger than this (bytes) are dead-lettered without being parsed
DEFAULT_MAX_MESSAGE_SIZE = 4 * 1024 * 1024
_MAX_BROKER_BACKOFF = 5.0
#: with a prefetch above the concurrency, the consumer fetches once fewer than this many
#: (or half the concurrency) messages wait for a thread, or once every slot is free, polling
#: for freed slots this often meanwhile
_REFILL_AT = 2
_REFILL_WAIT = 0.005
#: retries of a final-state write or a broker call through an outage: first delay, longest
_FIRST_RETRY = 0.2
_MAX_RETRY = 5.0


#: Where a message a worker took can end: the keys of :attr:`Worker.outcomes`.  Each is
#: reached with exactly one broker call settling the message.
OUTCOMES: dict[str, str] = {
    "run": "a state was written (the task ran, failed, retried, expired or had bad "
           "arguments); acknowledged",
    "handed_back": "a task this worker does not have: back to its queue for another worker",
    "dead_lettered": "too large, undecodable, no task name, or an unexpected worker error: "
                     "kept in <queue>.dead",
    "dropped": "not registered here and IgnoreWhenTaskNotRegistered: discarded",
    "pushed_back": "the backend was unreachable before it started: back to the head of its "
                   "queue, untouched",
    "not_stored": "it ran, but the worker was stopped before its final state could be "
                  "stored: pushed back (or left in the processing list) to run again",
}


@dataclass(frozen=True, slots=True)
class RunningTask:
    """A task a worker is running: what :meth:`Worker.stop` returns for those still running."""

    id: str
    name: str
    #: when it was received (Unix time)
    started: float
    #: the queue it was taken from (its RoutingKey when not taken from a queue)
    queue: str = ""


class _Slots:
    """A counting semaphore on a :class:`queue.SimpleQueue` of tokens (C code, one lock):
    ``threading.Semaphore`` takes a Python-level Condition on every acquire and release,
    which the pool threads and the consumer did once per message each."""

    __slots__ = ("_tokens",)

    def __init__(self, value: int) -> None:
        self._tokens: queue_mod.SimpleQueue[None] = queue_mod.SimpleQueue()
        for _ in range(value):
            self._tokens.put(None)

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        try:
            self._tokens.get(blocking, timeout)
        except queue_mod.Empty:
            return False
        return True

    def release(self) -> None:
        self._tokens.put(None)


class _NotStarted(Exception):
    """The task could not be marked RECEIVED/STARTED: it did not run."""


class _NotStored(Exception):
    """The worker stopped while the task's final state (or its retry) could not be stored."""


def error_text(exc: BaseException) -> str:
    """The error string stored for a failed task (Go: ``err.Error()``): ``str(exc)``, or the
    class name when that is empty or ``__str__`` itself fails."""
    try:
        text = str(exc)
    except Exception:
        text = ""
    return text if text else type(exc).__name__


class Worker:
    """Consumes one queue with a pool of threads.  Build it with ``app.worker(...)``."""

    def __init__(
        self,
        app: Machinery,
        *,
        concurrency: int = 0,
        queue: str | None = None,
        queues: Sequence[str] | str | None = None,
        poll_timeout: float | None = None,
        delayed_poll_interval: float | None = None,
        move_delayed: bool = True,
        prefetch: int = 0,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        crash_safe: bool | None = None,
        heartbeat_ttl: float | None = None,
        retry_backoff: RetryBackoff | None = None,
        max_memory: int | None = None,
        cpu_affinity: str | int | Sequence[int] | None = None,
    ) -> None:
        """``crash_safe`` (default: ``redis.crash_safe`` of the config, true): on Redis, keep
        every message taken in this worker's processing list until it is settled, so that a
        crash loses nothing (``False``: LPOP/BLPOP, as Go); ``heartbeat_ttl``: seconds (default
        ``redis.heartbeat_ttl``, 5) after which a silent worker's messages are re-queued;
        ``retry_backoff``: the delays between retries of tasks that have none of their own
        (``@app.task(retry_backoff=...)``), see :data:`machinery_compat.task.RetryBackoff`
        (default: Machinery's Fibonacci steps); ``max_memory``: KiB of resident memory
        (Celery's ``--max-memory-per-child`` unit) past which the worker stops itself after
        the task that crossed it (as :meth:`stop`, so running tasks finish) and sets
        :attr:`memory_exceeded`, for the process running it to start afresh; ``prefetch``:
        messages held at most, running or waiting for a thread (default: twice
        ``concurrency`` on Redis, as Go's Redis broker holds, else ``concurrency``);
        ``cpu_affinity``: the CPUs this process runs on once started (``1``, ``"0-3"``,
        ``"all"``, a list; Linux), see :mod:`machinery_compat.worker.affinity`."""
        self.app = app
        self.concurrency = concurrency if concurrency >= 1 else 2 * (os.cpu_count() or 1)
        self.queues = _queue_list(queue, queues, app.config.default_queue)
        self.queue = self.queues[0]
        rcfg = app.config.redis
        normal_ms = rcfg.normal_tasks_poll_period if rcfg and rcfg.normal_tasks_poll_period > 0 else 1000
        delayed_ms = rcfg.delayed_tasks_poll_period if rcfg and rcfg.delayed_tasks_poll_period > 0 else 500
        self.poll_timeout = poll_timeout if poll_timeout is not None else normal_ms / 1000
        self.delayed_poll_interval = (
            delayed_poll_interval if delayed_poll_interval is not None else delayed_ms / 1000
        )
        self.move_delayed = move_delayed
        self.prefetch = prefetch if prefetch > 0 else _default_prefetch(app, self.concurrency)
        self.crash_safe = crash_safe if crash_safe is not None else (
            rcfg.crash_safe if rcfg is not None else True)
        self.heartbeat_ttl = heartbeat_ttl if heartbeat_ttl is not None else float(
            (rcfg or app.config.effective_redis).effective_heartbeat_ttl)
        self._consumer: Broker | None = None
        # SimpleQueue: C, one lock; Queue's Condition allocates a lock per wait in Python
        self._work: queue_mod.SimpleQueue[Delivery | None] = queue_mod.SimpleQueue()
        self._slots = _Slots(self.prefetch)
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        self.max_message_size = max_message_size
        self._warned_unregistered: OrderedDict[str, None] = OrderedDict()
        #: unregistered messages handed back, by id, with when (to notice a queue holding only them)
        self._handed_back: OrderedDict[str, float] = OrderedDict()
        self._unregistered_backoff = 0.0
        #: unregistered messages kept aside (due time, sequence, delivery) and each name's delay
        self._parked: list[tuple[float, int, Delivery]] = []
        self._park_seq = itertools.count()
        self._park_delay: OrderedDict[str, float] = OrderedDict()
        self._parked_bytes = 0
        #: where the messages this worker took went (see :data:`OUTCOMES`)
        self.outcomes: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._active = 0
        self.processed = 0
        #: the default back-off of Python-side retries (a task's own comes first)
        self.retry_backoff = retry_backoff
        self.max_memory = max_memory
        #: the CPUs :meth:`start` pins this process to (None: left to the OS)
        self.cpu_affinity: list[int] | None = (
            None if cpu_affinity is None else parse_cpus(cpu_affinity))
        #: set when the worker stopped itself because its memory went past ``max_memory``
        self.memory_exceeded = False
        #: the tasks running now, by the pool thread running them
        self._running: dict[int, RunningTask] = {}
        #: task-started / task-succeeded events, called by the pool threads directly (set
        #: by :mod:`machinery_compat.events.emitter` while this worker emits events)
        self.task_events: Any = None
        self._error_handler: Callable[[BaseException], object] | None = None
        self._pre_task_handler: Callable[[Signature], object] | None = None
        self._post_task_handler: Callable[[Signature], object] | None = None
        self._pre_consume_handler: Callable[[Worker], bool] | None = None
        #: per pool thread: the message it took ahead (see :mod:`.lookahead`)
        self._tl = threading.local()
        #: tasks whose RECEIVED/STARTED went with the previous task's SUCCESS (:mod:`.lookahead`)
        self.started_ahead = 0

    @property
    def broker(self) -> Broker:
        """What this worker fetches messages through: the app's broker's
        :meth:`~machinery_compat.brokers.base.Broker.consumer` once started (on Redis in
        crash-safe mode, with this worker's processing lists and heartbeat), else the app's
        broker itself.  Messages are settled through the app's broker."""
        return self._consumer if self._consumer is not None else self.app.broker

    # -- handlers (Go's worker.Set*Handler) ------------------------------------------------
    def set_error_handler(self, handler: H | None) -> H | None:
        """Go's ``SetErrorHandler``: ``handler(exc)`` is called with the error of every task
        this worker fails (after its FAILURE state is stored, before its OnError callbacks
        are sent: the task's exception, or a :class:`~machinery_compat.TaskFailed` carrying
        the error text when the task did not run — bad arguments, expired) and with the
        error each time the broker cannot be reached (the worker keeps retrying).  Unlike Go,
        the failure is still logged.  Returns ``handler`` (works as a decorator); ``None``
        removes it."""
        self._error_handler = handler
        return handler

    def set_pre_task_handler(self, handler: H | None) -> H | None:
        """Go's ``SetPreTaskHandler``: ``handler(signature)`` runs once the task is marked
        STARTED, just before the task function is called (not for a task whose arguments
        could not be decoded, nor an expired one)."""
        self._pre_task_handler = handler
        return handler

    def set_post_task_handler(self, handler: H | None) -> H | None:
        """Go's ``SetPostTaskHandler``: ``handler(signature)`` runs after every task the
        pre-task handler ran for, last: after its state, its callbacks, its chord callback or
        its retry were written and sent (Go defers it), also when that failed."""
        self._post_task_handler = handler
        return handler

    def set_pre_consume_handler(self, handler: H | None) -> H | None:
        """Go's ``SetPreConsumeHandler``: ``handler(worker) -> bool`` is asked before each
        fetch from the broker; while it returns False the worker fetches nothing (it asks
        again every ``poll_timeout``, at most 1 s, where Go's redigo broker asks in a busy
        loop).  Go calls it on its redigo Redis broker only; here every broker does.  An
        exception it raises counts as True, logged."""
        self._pre_consume_handler = handler
        return handler

    def _hook(self, what: str, handler: Callable[..., object] | None, *args: Any) -> None:
        """Call a handler; what it raises is logged, never propagated into the worker."""
        if handler is None:
            return
        try:
            handler(*args)
        except Exception:
            logger.exception("%s handler %r raised", what, handler)

    def _may_consume(self) -> bool:
        handler = self._pre_consume_handler
        if handler is None:
            return True
        try:
            return bool(handler(self))
        except Exception:
            logger.exception("pre-consume handler %r raised; consuming anyway", handler)
            return True

    def running(self) -> list[RunningTask]:
        """The tasks this worker is running now, oldest first."""
        with self._lock:
            return sorted(self._running.values(), key=lambda r: r.started)

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> Worker:
        """Start consuming in background threads; returns immediately."""
        if self._threads:
            raise RuntimeError("worker already started")
        if self.cpu_affinity is not None:
            pin_process(self.cpu_affinity)
        _ = self.app.backend
        broker = self._consumer = self.app.broker.consumer(
            self.queues, crash_safe=self.crash_safe, heartbeat_ttl=self.heartbeat_ttl)
        wid = getattr(broker, "worker_id", None)
        logger.info(
            "worker ready: queues=%s concurrency=%d broker=%s%s tasks=[%s]",
            ",".join(self.queues), self.concurrency, type(self.app.broker).__name__,
            f" (crash-safe: processing lists of worker {wid}, heartbeat {self.heartbeat_ttl:g}s)"
            if wid else "", ", ".join(sorted(self.app.tasks)),
        )
        if not self.app.tasks:
            logger.warning("this worker has no tasks registered: every message it takes goes "
                           "back to its queue for another worker (register tasks with "
                           "@app.task before starting it, or check -A)")
        # before any thread runs: its receivers (task events, the heartbeat) then see the
        # worker's first task, which a queue with waiting messages gives at once
        signals.worker_ready.send(self)
        if self._stopping.is_set():  # stopped by a receiver: no thread to start
            return self
        for i in range(self.concurrency):
            self._spawn(self._run_pool, f"mc-worker-{i}")
        self._spawn(self._consume_loop, "mc-consumer")
        if self.move_delayed:
            self._spawn(self._delayed_loop, "mc-delayed")
        return self

    def _spawn(self, target: Any, name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self, timeout: float | None = None) -> list[RunningTask]:
        """Stop fetching, push back what was taken but not started, wait for running tasks.

        ``timeout``: the most seconds to wait in all (None: until every running task is
        done).  Returns the tasks still running when it gave up (``[]`` when all finished):
        they go on in their daemon threads, and their messages stay unacknowledged (on
        Redis in crash-safe mode, in this worker's processing list, re-queued once its
        heartbeat expires) unless they finish before the process exits.  Sends
        :data:`~machinery_compat.signals.worker_shutdown` first.
        """
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)

        def left() -> float | None:
            return None if deadline is None else max(deadline - time.monotonic(), 0.0)

        if not self._stopping.is_set():
            signals.worker_shutdown.send(self)
        self._stopping.set()
        for t in self._threads:
            if t.name == "mc-consumer":
                t.join(left())
        # nothing more will be queued: return what no thread has picked up yet
        leftovers: list[Delivery] = []
        while True:
            try:
                d = self._work.get_nowait()
            except queue_mod.Empty:
                break
            if d is not None:
                leftovers.append(d)
        if leftovers:
            self._give_back(leftovers)
        self._release_parked(everything=True)
        for _ in range(self.concurrency):
            self._work.put(None)
        for t in self._threads:
            t.join(left())
        idle = not any(t.is_alive() for t in self._threads)
        try:
            self.broker.stop_consuming(idle=idle)
        except Exception:
            logger.exception("stopping the consumer failed")
        self._stopped.set()
        still = self.running() if not idle else []
        if still:
            logger.warning("worker stopped after %d tasks; %d still running after %gs: %s",
                           self.processed, len(still), timeout or 0.0,
                           ", ".join(f"{r.name}[{r.id}]" for r in still[:20]))
        else:
            logger.info("worker stopped after %d tasks", self.processed)
        return still

    def run(self) -> None:
        """Start and block until SIGINT/SIGTERM (first: graceful, second: at once).  The
        handlers are in place before the worker starts (and says it is ready), so a signal
        then already stops it gracefully."""
        signals = 0
        started = threading.Event()

        def on_signal(signum: int, frame: Any) -> None:
            nonlocal signals
            signals += 1
            if signals == 1:
                logger.warning("%s received: finishing running tasks (again to quit at once)",
                               signal.Signals(signum).name)
                if started.is_set():
                    threading.Thread(target=self.stop, name="mc-stop", daemon=True).start()
            else:
                logger.warning("second signal: quitting at once")
                self._stopped.set()

        in_main = threading.current_thread() is threading.main_thread()
        previous = {}
        if in_main:
            for s in (signal.SIGINT, signal.SIGTERM):
                previous[s] = signal.signal(s, on_signal)
        try:
            self.start()
            started.set()
            if signals:  # one came while starting: stop now, gracefully
                threading.Thread(target=self.stop, name="mc-stop", daemon=True).start()
            while not self._stopped.wait(0.2):
                pass
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def __enter__(self) -> Worker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- consuming ----------------------------------------------------------------------
    def _consume_loop(self) -> None:
        broker = self.broker
        backoff = 0
        turn = 0
        while not self._stopping.is_set():
            if self._pre_consume_handler is not None and not self._may_consume():
                self._stopping.wait(min(max(self.poll_timeout, 0.05), 1.0))
                continue
            if not self._slots.acquire(blocking=False):
                # every thread busy: wait for the broker to have messages first, then for a
                # thread (one wake-up per message instead of two when a thread frees up
                # just before the next message arrives, as with AMQP's prefetch)
                wait = getattr(broker, "wait_for_messages", None)
                if wait is not None:
                    try:
                        wait(0.1)
                    except Exception:
                        logger.debug("waiting for messages failed", exc_info=True)
                if not self._slots.acquire(timeout=0.2):
                    continue
            n = 1
            while n < self.prefetch and self._slots.acquire(blocking=False):
                n += 1
            if self.prefetch > self.concurrency:
                n += self._more_slots(n)
            try:
                order = rotate(self.queues, turn) if len(self.queues) > 1 else self.queues
                turn += 1
                deliveries = broker.fetch(order, n, self.poll_timeout)
                backoff = 0
            except BrokerConnectionError as e:
                for _ in range(n):
                    self._slots.release()
                backoff = fibonacci_next(backoff)
                delay = min(backoff, _MAX_BROKER_BACKOFF)
                logger.error("broker unreachable: %s; retrying in %gs", e, delay)
                self._hook("error", self._error_handler, e)
                self._stopping.wait(delay)
                continue
            except Exception:
                for _ in range(n):
                    self._slots.release()
                logger.exception("unexpected error while fetching from %s", ",".join(self.queues))
                self._stopping.wait(1.0)
                continue
            for _ in range(n - len(deliveries)):
                self._slots.release()
            if self._stopping.is_set():
                self._give_back(deliveries)
                for _ in deliveries:
                    self._slots.release()
                break
            for d in deliveries:
                self._work.put(d)
            if self._release_parked():
                # give other consumers (which may have the task) the first chance at them
                self._stopping.wait(_RELEASE_PAUSE)
            if self._unregistered_backoff:
                self._stopping.wait(self._unregistered_backoff)

    def _more_slots(self, n: int) -> int:
        """With a prefetch above the concurrency: while messages still wait for a thread,
        wait for more free slots (each finished task frees one), so that one fetch takes
        several messages instead of one round trip per freed slot; returns how many more."""
        more = 0
        work = self._work
        refill_at = max(_REFILL_AT, self.concurrency // 2)
        while (n + more < self.prefetch and work.qsize() >= refill_at
               and not self._stopping.is_set()):
            if self._slots.acquire(timeout=_REFILL_WAIT):
                more += 1
        return more

    def _give_back(self, deliveries: list[Delivery]) -> None:
        """Push messages taken but not started back to the head of their queue (one try: the
        worker is stopping)."""
        if not deliveries:
            return
        try:
            self.app.broker.requeue(deliveries, front=True)
            for d in deliveries:
                d.settled = True
            logger.info("pushed %d unstarted message(s) back to %s", len(deliveries),
                        ",".join(sorted({d.queue for d in deliveries})))
        except Exception as e:  # the broker is gone: say exactly what is left where
            for d in deliveries:
                logger.error("could not push message back to %s (%s); %s; raw=%s", d.queue, e,
                             self._left_where(), excerpt(d.body))

    def _left_where(self) -> str:
        if self.broker is not self.app.broker:
            return ("it stays in this worker's processing list: any worker re-queues it once "
                    "this one's heartbeat is gone")
        return "it is lost unless the broker redelivers it"

    def _settle(self, delivery: Delivery, action: Callable[[], object], what: str) -> bool:
        """Run the broker call that settles ``delivery``, retrying with back-off while the
        broker is unreachable, until it works (True) or the worker stops (False: the message
        stays wherever the broker keeps it).  A worker that was never started (eager mode,
        ``handle()`` called directly) tries once and lets the error through."""
        attempt = 0
        while True:
            try:
                action()
            except BrokerConnectionError as e:
                if not self._threads:
                    raise
                attempt += 1
                if self._stopping.is_set():
                    logger.error("could not %s (%s) before stopping; %s; raw=%s", what, e,
                                 self._left_where(), excerpt(delivery.body))
                    return False
                delay = min(_FIRST_RETRY * 2 ** min(attempt - 1, 10), _MAX_RETRY)
                if attempt <= 3 or attempt % 10 == 0:
                    logger.warning("could not %s (%s); retrying in %gs (attempt %d)", what, e,
                                   delay, attempt)
                self._stopping.wait(delay)
                continue
            delivery.settled = True
            return True

    def _run_pool(self) -> None:
        while True:
            d = taken_ahead(self)
            if d is None:
                d = self._work.get()
            elif self._stopping.is_set() and "started" not in d.extra:
                self._give_back([d])  # taken ahead, not started: back as the others
                self._slots.release()
                continue
            if d is None:
                return
            try:
                self.handle(d)
            except Exception as e:
                logger.exception("unexpected worker error; message raw=%s", excerpt(d.body))
                if not d.settled:  # never leave it taken and unaccounted for
                    try:
                        self._dead_letter(d, f"unexpected worker error: {error_text(e)}")
                    except Exception:
                        logger.exception("could not dead-letter it either; %s",
                                         self._left_where())
            finally:
                self._slots.release()
            if self.max_memory is not None:
                self._check_memory()

    def _check_memory(self) -> None:
        """Stop this worker (in the background) once its resident memory is past
        ``max_memory`` KiB."""
        assert self.max_memory is not None
        if self._stopping.is_set():
            return
        rss = resident_kib()
        if rss is None or rss <= self.max_memory:
            return
        with self._lock:
            if self.memory_exceeded:
                return
            self.memory_exceeded = True
        logger.warning("worker memory %d KiB is past max_memory (%d KiB): stopping after the "
                       "running tasks, to be started afresh", rss, self.max_memory)
        threading.Thread(target=self.stop, name="mc-stop", daemon=True).start()

    def _delayed_loop(self) -> None:
        broker = self.app.broker
        backoff = 0
        while not self._stopping.wait(self.delayed_poll_interval):
            try:
                while broker.move_due_delayed(1000) >= 1000 and not self._stopping.is_set():
                    pass
                backoff = 0
            except Exception as e:
                backoff = fibonacci_next(backoff)
                logger.error("moving delayed tasks failed: %s; retrying in %gs", e,
                             min(backoff, _MAX_BROKER_BACKOFF))
                self._stopping.wait(min(backoff, _MAX_BROKER_BACKOFF))

    # -- one message --------------------------------------------------------------------
    def handle(self, delivery: Delivery) -> None:
        """Decode, route and process one delivery.

        It ends in exactly one place, counted in :attr:`outcomes`: run (a state is written),
        ``handed_back`` (a task this worker lacks), ``dead_lettered`` (too large, undecodable,
        no task name), ``dropped`` (``IgnoreWhenTaskNotRegistered``), ``pushed_back`` (the
        backend was unreachable before it started) or ``not_stored`` (it ran, but the worker
        was stopped before its final state could be stored: pushed back, or left in the
        processing list, to run again).  Each ends with exactly one broker call settling the
        message (``ack``, ``requeue``, ``dead_letter`` or ``drop``).
        """
        broker = self.app.broker
        ahead = delivery.extra.pop("started", None) if delivery.extra else None
        if ahead is not None:  # RECEIVED and STARTED already written (see .lookahead)
            sig, task = ahead.sig, ahead.task
            if _sublime.active(self.app):
                _sublime.fill_received(self.app, sig, delivery)
        else:
            pair = self._decode(delivery)
            if pair is None:
                return
            sig, task = pair
        self._unregistered_backoff = 0.0
        if sig.headers and REDELIVERIES_HEADER in sig.headers:
            logger.warning("Task %s[%s] redelivered (%s time(s)): a worker holding it died; "
                           "it runs again", sig.name, sig.uuid,
                           str(sig.headers[REDELIVERIES_HEADER])[:20])
        try:
            self.process(sig, task, delivery=delivery, ahead=ahead)
        except _NotStarted as e:
            # the backend is unreachable before the task ran: give the message back untouched
            logger.error("Task %s[%s] not started: result backend error: %s; pushing the "
                         "message back to %s", sig.name, sig.uuid, e.__cause__, delivery.queue)
            self.outcomes["pushed_back"] += 1
            self._settle(delivery, lambda: broker.requeue([delivery], front=True),
                         f"push task {sig.uuid} back to {delivery.queue}")
            self._stopping.wait(1.0)
            return
        except _NotStored:
            self.outcomes["not_stored"] += 1
            if not delivery.settled:
                self._give_back([delivery])
            return
        self.outcomes["run"] += 1
        if not delivery.settled:
            self._settle(delivery, lambda: broker.ack(delivery),
                         f"acknowledge task {sig.uuid} from {delivery.queue}")

    def _decode(self, delivery: Delivery) -> tuple[Signature, Task[Any, Any]] | None:
        """The message's Signature and task; None when it ended elsewhere (dead-lettered:
        too large, undecodable, no name; handed back or dropped: not registered here)."""
        size = len(delivery.body)
        if size > self.max_message_size:
            self._dead_letter(delivery, f"message of {size} bytes is larger than "
                              f"max_message_size ({self.max_message_size}); not parsed")
            return None
        try:
            sig = Signature.from_json(delivery.body)
        except DecodeError as e:
            self._dead_letter(delivery, str(e))
            return None
        if not sig.name:
            self._dead_letter(delivery, "the message names no task (empty or null Name)")
            return None
        if _sublime.active(self.app):  # the fork's SQS receive fields, before the task
            _sublime.fill_received(self.app, sig, delivery)
        task = self.app.tasks.get(sig.name)
        if task is None:
            self._not_registered(delivery, sig)
            return None
        return sig, task

    def _dead_letter(self, delivery: Delivery, reason: str) -> None:
        self.outcomes["dead_lettered"] += 1
        broker = self.app.broker
        logger.error("unusable message on %s moved to %s: %s; raw=%s", delivery.queue,
                     broker.dead_letter_place(delivery.queue), reason, excerpt(delivery.body))
        self._settle(delivery, lambda: broker.dead_letter(delivery, reason),
                     f"dead-letter a message from {delivery.queue}")
        if signals.task_rejected.has_listeners(self):
            signals.task_rejected.send(self, queue=delivery.queue, body=delivery.body,
                                       reason=reason)

    def _not_registered(self, delivery: Delivery, sig: Signature) -> None:
        if _sublime.unknown_task(self, delivery, sig):  # the fork's hook decided
            return
        broker = self.app.broker
        if sig.ignore_when_task_not_registered:
            self._settle(delivery, lambda: broker.drop(delivery), f"drop task {sig.uuid}")
            self.outcomes["dropped"] += 1
            logger.warning("Task %s[%s] is not registered here and IgnoreWhenTaskNotRegistered "
                           "is set: dropped", sig.name, sig.uuid)
            return
        name = _memo_key(sig.name)
        if name not in self._warned_unregistered:
            _remember(self._warned_unregistered, name, None)
            logger.warning("Task %s is not registered here: message %s pushed back to %s for "
                           "another worker (logged once per name); this worker has: %s",
                           sig.name, sig.uuid, delivery.queue, _known_names(sig.name, self.app.tasks))
        key = _memo_key(sig.uuid) if sig.uuid else str(hash(delivery.body))
        now = time.monotonic()
        with self._lock:
            seen = self._handed_back.pop(key, None)
            self._handed_back[key] = now
            while len(self._handed_back) > _HANDED_BACK_MEMORY:
                self._handed_back.popitem(last=False)
            park = 0.0
            if seen is not None and now - seen < _HANDED_BACK_CYCLE and not self._stopping.is_set():
                # met again: the queue holds little else this worker can run.  Hand it back
                # through a delay (per name, growing) instead of spinning on it, so that
                # tasks queued behind it still run at once
                park = min(max(self._park_delay.get(name, 0.0) * 2, _MIN_PARK), _MAX_PARK)
                _remember(self._park_delay, name, park)
        if park and self._hand_back_later(delivery, sig, park):
            return
        if park:
            # the broker cannot delay it: keep it aside here meanwhile (a broker that counts
            # unacked messages, AMQP's prefetch, counts it as held)
            with self._lock:
                size = len(delivery.body)
                if (len(self._parked) < _MAX_PARKED
                        and self._parked_bytes + size <= _MAX_PARKED_BYTES):
                    heapq.heappush(self._parked, (now + park, next(self._park_seq), delivery))
                    self._parked_bytes += size
                    return
                self._unregistered_backoff = park  # too many aside: slow the fetching instead
        # first sighting: straight back (Go pushes it back to the queue it came from), for
        # another worker that has the task
        self._settle(delivery, lambda: self.app.broker.requeue([delivery]),
                     f"hand task {sig.uuid} back to {delivery.queue}")
        self.outcomes["handed_back"] += 1

    def _hand_back_later(self, delivery: Delivery, sig: Signature, delay: float) -> bool:
        """Have the broker hand ``delivery`` back in ``delay`` s (True), if it can."""
        try:
            done = self.app.broker.requeue_later([delivery], delay)
        except Exception as e:
            logger.warning("could not hand task %s back to %s through a %.2f s delay (%s); "
                           "keeping it aside here instead", sig.uuid, delivery.queue, delay, e)
            return False
        if done:
            delivery.settled = True
            self.outcomes["handed_back"] += 1
        return done

    def _requeue_unregistered(self, deliveries: list[Delivery]) -> None:
        self.app.broker.requeue(deliveries)
        for d in deliveries:
            d.settled = True
        self.outcomes["handed_back"] += len(deliveries)

    def _release_parked(self, everything: bool = False) -> int:
        """Hand back the unregistered messages kept aside whose time has come (or all);
        returns how many."""
        if not self._parked:
            return 0
        now = time.monotonic()
        due: list[Delivery] = []
        with self._lock:
            while self._parked and (everything or self._parked[0][0] <= now):
                due.append(heapq.heappop(self._parked)[2])
                self._parked_bytes -= len(due[-1].body)
            if not self._parked:
                self._unregistered_backoff = 0.0
        if due:
            try:
                self._requeue_unregistered(due)
            except Exception as e:
                logger.error("could not hand %d message(s) back (%s); keeping them aside",
                             len(due), e)
                with self._lock:
                    for d in due:
                        heapq.heappush(self._parked, (now + _MAX_PARK, next(self._park_seq), d))
                        self._parked_bytes += len(d.body)
                return 0
        return len(due)

    def process(self, sig: Signature, task: Task[Any, Any], *,
                delivery: Delivery | None = None, ahead: Ahead | None = None) -> None:
        """Run one task and record its outcome (Go's ``worker.Process``).  With ``delivery``
        (the message it came in), the broker may acknowledge it in the same write as the
        final state when nothing else follows (no callbacks, no chord).

        Around the run: ``task_received``; then, once it is STARTED, the pre-task handler
        and ``task_prerun``; after its state, callbacks and retry were written and sent,
        ``task_postrun`` and the post-task handler; inside a CONSUMER span when the app is
        traced (:mod:`machinery_compat.tracing`).  ``ahead``: RECEIVED and STARTED were
        written already, with the previous task's final state (:mod:`.lookahead`)."""
        started = time.perf_counter()
        logger.info("Task %s[%s] received", sig.name, sig.uuid)
        me = threading.get_ident()
        with self._lock:
            self._active += 1
            self._running[me] = RunningTask(sig.uuid, sig.name, time.time(),
                                            delivery.queue if delivery is not None
                                            else sig.routing_key)
        try:
            if ahead is not None:  # no listeners, no expiry, no tracing: checked ahead
                self._run(sig, task, ahead.args, started, delivery, None, ahead.token)
                return
            if signals.task_received.has_listeners(self):
                signals.task_received.send(self, request=_request(sig, task, []))
            expires = parse_expires(sig.headers)
            if expires is not None and datetime.now(UTC) > expires:
                # Celery's expires: not run; FAILURE so that waiting callers learn it
                self._received(sig)
                self._fail(sig, f"task expired at {expires.isoformat()}, not run", None, started,
                           delivery=delivery, task=task)
                return
            try:
                args = sig.python_args()
            except Exception as e:  # Go's reflect error, or a value too deep to even describe
                self._received(sig)
                text = str(e) if isinstance(e, ArgTypeError) else (
                    f"{type(e).__name__}: {clip(str(e))}")
                self._fail(sig, f"Reflect task args error: {text}", None, started,
                           delivery=delivery, task=task)
                return
            with self._task_span(sig) as span:
                self._run(sig, task, args, started, delivery, span)
        finally:
            with self._lock:
                self._active -= 1
                self._running.pop(me, None)
                self.processed += 1

    def _task_span(self, sig: Signature) -> AbstractContextManager[TaskSpan | None]:
        tracing = self.app.tracing
        if tracing is None:
            return nullcontext()
        return tracing.consumer(sig)

    def _run(self, sig: Signature, task: Task[Any, Any], args: list[Any], started: float,
             delivery: Delivery | None, span: TaskSpan | None, token: Any = None) -> None:
        """STARTED (unless ``token`` says it was written), the handlers and signals around
        the call, the call, its outcome."""
        if token is None:
            try:
                token = self.app.backend.mark_received_started(sig)
            except Exception as e:
                raise _NotStarted(str(e)) from e
        self._hook("pre-task", self._pre_task_handler, sig)
        signals.task_prerun.send(task, task_id=sig.uuid, task=task, args=args, kwargs={})
        events = self.task_events
        if events is not None:
            events.started(sig.uuid, task.name,
                           delivery.queue if delivery is not None else sig.routing_key)
        state: str | None = None
        retval: Any = None
        try:
            try:
                retval = value = task.run(sig, args)
            except Retry as r:
                retval = r
                state = self._retry_later(sig, r, token, delivery, task=task, args=args)
                return
            except BaseException as e:
                # Like Go's recover() around a task: SystemExit (sys.exit()) and other
                # BaseExceptions become the task's failure instead of killing this pool
                # thread and leaving the task STARTED forever.
                retval = e
                if sig.retry_count > 0 and task._should_autoretry(e):
                    state = self._retry(sig, e, token, delivery, task=task, args=args)
                else:
                    state = self._fail(sig, error_text(e), token, started, e, delivery=delivery,
                                       task=task, args=args)
                return
            try:
                results = task_results(task, value)
            except EncodeError as e:
                retval = e
                state = self._fail(sig, f"result cannot be written for Go readers: {e}", token,
                                   started, delivery=delivery, task=task, args=args, cause=e)
                return
            state = self._succeed(sig, results, token, started, delivery, task=task,
                                  value=value)
        finally:
            if span is not None and state is not None:
                span.outcome(state, retval if isinstance(retval, BaseException) else None)
            signals.task_postrun.send(task, task_id=sig.uuid, task=task, args=args, kwargs={},
                                      retval=retval, state=state)
            if events is not None and state == "SUCCESS":
                events.succeeded(sig.uuid, task.name)
            self._hook("post-task", self._post_task_handler, sig)

    # -- outcomes -----------------------------------------------------------------------
    def _received(self, sig: Signature) -> None:
        """RECEIVED before a FAILURE written without running the task; an unreachable
        backend means not started (the message goes back)."""
        try:
            self.app.backend.set_state_received(sig)
        except Exception as e:
            raise _NotStarted(str(e)) from e

    def _acking(self, delivery: Delivery | None, last: bool) -> AbstractContextManager[Any]:
        """Around the last write a message causes (``last``): let the broker acknowledge the
        message in that same write (see ``Broker.acking_with_next_write``)."""
        if delivery is None or not last:
            return nullcontext()
        return self.app.broker.acking_with_next_write(delivery)

    def _store(self, state: TaskState, token: Any) -> None:
        """Write a final state, retrying through backend outages (the task already ran)."""
        self._persist(lambda: self.app.backend.set_final_state(state, token),
                      f"state {state.state} of task {state.task_uuid}", state.to_go_json)

    def _persist(self, action: Callable[[], object], what: str, payload: Callable[[], str]) -> None:
        """Run ``action``, retrying with back-off (0.2 s doubling to 5 s) until it works or the
        worker stops; then :class:`_NotStored` (after logging ``payload()``).  A worker never
        started (eager mode, ``handle()`` called directly) gives up after 4 tries, logging."""
        attempt = 0
        while True:
            try:
                action()
                return
            except Exception as e:
                attempt += 1
                if self._stopping.is_set() or (not self._threads and attempt > 3):
                    logger.error("could not store %s after %d attempt(s): %s; it was %s", what,
                                 attempt, e, payload())
                    if self._threads:
                        raise _NotStored(what) from e
                    return
                delay = min(_FIRST_RETRY * 2 ** min(attempt - 1, 10), _MAX_RETRY)
                if attempt <= 3 or attempt % 10 == 0:
                    logger.warning("storing %s failed (%s); retrying in %gs (attempt %d)", what,
                                   e, delay, attempt)
                self._stopping.wait(delay)

    def _succeed(self, sig: Signature, results: list[TaskResult], token: Any, started: float,
                 delivery: Delivery | None = None, *, task: Task[Any, Any] | None = None,
                 value: Any = None) -> str:
        chord = bool(sig.group_uuid and sig.chord_callback is not None)
        last = not sig.on_success and not chord
        state = TaskState(sig.uuid, SUCCESS, results=results)
        nxt = take_ahead(self) if last and delivery is not None and token is not None else None
        with self._acking(delivery, last):
            if nxt is None:
                self._store(state, token)
            else:
                store_then_start(self, state, token, nxt)
        if task is not None:
            signals.task_success.send(task, result=value)
        if logger.isEnabledFor(logging.INFO):
            shown = [r.value for r in results]
            logger.info("Task %s[%s] succeeded in %.4fs: %r", sig.name, sig.uuid,
                        time.perf_counter() - started,
                        shown[0] if len(shown) == 1 else (tuple(shown) if shown else None))
        for cb in sig.on_success or ():
            cb = cb.copy()
            if not sig.immutable:
                cb.args = (cb.args or []) + [Arg(r.type, r.wire_value) for r in results]
            self._send_callback(cb, "OnSuccess", sig)
        if sig.group_uuid and sig.chord_callback is not None:
            self._maybe_trigger_chord(sig)
        return SUCCESS

    def _fail(self, sig: Signature, error: str, token: Any, started: float,
              exc: BaseException | None = None, *, delivery: Delivery | None = None,
              task: Task[Any, Any] | None = None, args: list[Any] | None = None,
              cause: BaseException | None = None) -> str:
        """FAILURE with ``error`` as the state's Error.  ``exc``: the task's own exception, logged
        with its traceback (Celery's ``raised unexpected`` line) and recorded beside the state
        (type, module, traceback: see :mod:`machinery_compat.backends.base`).  The error
        handler and ``task_failure`` get ``exc``, else ``cause``, else a :class:`TaskFailed`
        with the error text."""
        if delivery is not None:  # a broker may keep such a message (SQS: StopTaskDeletionOnError)
            delivery.extra["failed"] = True
        state = TaskState(sig.uuid, FAILURE, error=error)
        if exc is None:
            with self._acking(delivery, not sig.on_error):
                self._store(state, token)
            logger.error("Task %s[%s] failed in %.4fs: %s", sig.name, sig.uuid,
                         time.perf_counter() - started, error)
        else:
            record = ExceptionRecord.from_exception(exc, error)
            with self._acking(delivery, not sig.on_error):
                self._persist(lambda: self.app.backend.set_final_state(state, token, record),
                              f"state FAILURE of task {sig.uuid}", state.to_go_json)
            try:
                shown = repr(exc)
            except Exception:
                shown = type(exc).__name__
            logger.error("Task %s[%s] raised unexpected: %s", sig.name, sig.uuid, shown,
                         exc_info=exc)
        reported = exc or cause or TaskFailed(sig.uuid, error, sig.name)
        self._hook("error", self._error_handler, reported)
        if task is not None and signals.task_failure.has_listeners(task):
            signals.task_failure.send(task, task_id=sig.uuid, exception=reported,
                                      args=args if args is not None else [], kwargs={},
                                      traceback=reported.__traceback__, einfo=None)
        for cb in sig.on_error or ():
            cb = cb.copy()
            cb.args = [Arg("string", error)] + (cb.args or [])
            self._send_callback(cb, "OnError", sig)
        return FAILURE

    def _backoff(self, task: Task[Any, Any] | None) -> RetryBackoff | None:
        own = task.retry_backoff if task is not None else None
        return own if own is not None else self.retry_backoff

    def _retry(self, sig: Signature, exc: BaseException, token: Any,
               delivery: Delivery | None = None, *, task: Task[Any, Any] | None = None,
               args: list[Any] | None = None) -> str:
        again = _counted_retry(sig)
        _sublime.count_attempt(self.app, again)
        again.retry_count -= 1
        delay, again.retry_timeout = retry_delay(
            self._backoff(task), sig.retry_timeout,
            retries_done(sig, task.retry_count if task is not None else 0))
        eta = _eta_in(delay)
        if eta is None:
            return self._fail(sig, f"{error_text(exc)} (no retry: a RetryTimeout of "
                              f"{again.retry_timeout} s is past the year 9999)", token,
                              time.perf_counter(), exc, delivery=delivery, task=task, args=args)
        self._store(TaskState(sig.uuid, RETRY), token)
        again.eta = eta
        logger.warning("Task %s[%s] retry: Retry in %gs: %s (%d retries left)", sig.name,
                       sig.uuid, delay, error_text(exc), again.retry_count)
        with self._acking(delivery, True):  # the retry and the ack: together or not at all
            self._resend(again)
        self._retried(sig, task, args, exc)
        return RETRY

    def _retried(self, sig: Signature, task: Task[Any, Any] | None, args: list[Any] | None,
                 reason: BaseException) -> None:
        if task is not None and signals.task_retry.has_listeners(task):
            signals.task_retry.send(task, request=_request(sig, task, args or []),
                                    reason=reason, einfo=None)

    def _retry_later(self, sig: Signature, r: Retry, token: Any,
                     delivery: Delivery | None = None, *, task: Task[Any, Any] | None = None,
                     args: list[Any] | None = None) -> str:
        again = _counted_retry(sig)
        _sublime.count_attempt(self.app, again)
        delay = r.countdown if r.countdown is not None else 1.0
        if r.consume:  # Celery's self.retry(): uses up one RetryCount
            left = sig.retry_count if r.max_retries is None else min(sig.retry_count, r.max_retries)
            if left <= 0:
                text = error_text(r.exc) if r.exc is not None else (
                    r.message or f"Task {sig.name} retried too many times")
                return self._fail(sig, text, token, time.perf_counter(), r.exc,
                                  delivery=delivery, task=task, args=args, cause=r)
            again.retry_count = left - 1
            if r.countdown is None:
                delay, again.retry_timeout = retry_delay(
                    self._backoff(task), sig.retry_timeout,
                    retries_done(sig, task.retry_count if task is not None else 0))
        eta = _eta_in(delay)
        if eta is None:
            return self._fail(sig, f"{r} (no retry: a delay of {delay:g} s is past the year 9999)",
                              token, time.perf_counter(), r.exc, delivery=delivery, task=task,
                              args=args, cause=r)
        self._store(TaskState(sig.uuid, RETRY), token)
        again.eta = eta
        logger.warning("Task %s[%s] retry: Retry in %gs: %s", sig.name, sig.uuid, delay, r)
        if not _sublime.kept(self, r, delivery, delay):  # keep-and-retry: same message
            with self._acking(delivery, True):
                self._resend(again)
        self._retried(sig, task, args, r)
        return RETRY

    def _resend(self, sig: Signature) -> None:
        """Publish a retry; if the broker stays down, log the message so it is not lost silently."""
        self._persist(lambda: self.app._publish_with_pending(sig),
                      f"retry of task {sig.name}[{sig.uuid}]", sig.to_go_json)

    def _send_callback(self, cb: Signature, kind: str, parent: Signature) -> None:
        crasher = _go_crasher(cb)
        if crasher is not None:  # a forged message must not make us crash Go workers
            logger.error("%s callback %s[%s] of %s[%s] not sent: %s", kind, cb.name, cb.uuid,
                         parent.name, parent.uuid, crasher)
            return
        try:
            self.app._forward_signature(cb)
        except Exception as e:  # Go ignores these errors; we at least say so
            logger.error("%s callback %s[%s] of %s[%s] could not be sent: %s", kind, cb.name,
                         cb.uuid, parent.name, parent.uuid, e)

    def _maybe_trigger_chord(self, sig: Signature) -> None:
        backend = self.app.backend
        try:
            if not backend.group_completed(sig.group_uuid, sig.group_task_count):
                return
            if not backend.trigger_chord(sig.group_uuid):
                return
            states = backend.group_task_states(sig.group_uuid, sig.group_task_count)
        except Exception as e:
            logger.error("chord for group %s: %s", sig.group_uuid, e)
            return
        if any(s.state != SUCCESS for s in states):
            return
        assert sig.chord_callback is not None
        cb = sig.chord_callback.copy()
        if not cb.immutable:
            cb.args = (cb.args or []) + [
                Arg(r.type, r.wire_value) for s in states for r in (s.results or ())
            ]
        self._send_callback(cb, "chord", sig)


def _default_prefetch(app: Machinery, concurrency: int) -> int:
    """How many messages a worker holds at most, running or waiting for a thread, unless
    told: on Redis twice the concurrency, as Go's Redis broker does (its fetching goroutine
    fills a channel of ``concurrency`` messages while ``concurrency`` run), so that a finishing
    thread finds its next message waiting and writes that one's RECEIVED/STARTED with its own
    SUCCESS (:mod:`.lookahead`), and one fetch takes several messages; elsewhere (AMQP, SQS,
    whose own prefetch or visibility timeout governs) the concurrency."""
    broker = getattr(app.config, "broker", "")
    scheme = broker.split(":", 1)[0].lower() if isinstance(broker, str) else ""
    return 2 * concurrency if scheme.startswith("redis") else concurrency


def _request(sig: Signature, task: Task[Any, Any], args: list[Any]) -> Request:
    """The :class:`Request` signals get (what ``self.request`` is for a bound task)."""
    return Request(sig.uuid, sig.name, sig, sig.retry_count, sig.retry_timeout,
                   dict(sig.headers or {}), sig.group_uuid, list(args),
                   retries_done(sig, task.retry_count))


logger.addFilter(_ClipArgs())


def _go_crasher(sig: Signature, depth: int = 0) -> str | None:
    """Why ``sig`` (or a callback in it) would crash a Go worker, if it would: a JSON boolean
    or object for a slice type makes Go's reflection panic outside its recover (§2.2)."""
    for arg in sig.args or ():
        if arg.type in SLICE_TYPES and isinstance(arg.value, (bool, dict)):
            return (f"argument {clip(arg.type, 40)} holds a {type(arg.value).__name__}, which "
                    "crashes a Go worker")
    if depth < 32:
        nested = [*(sig.on_success or ()), *(sig.on_error or ())]
        if sig.chord_callback is not None:
            nested.append(sig.chord_callback)
        for cb in nested:
            why = _go_crasher(cb, depth + 1)
            if why is not None:
                return why
    return None


def _memo_key(text: str) -> str:
    """``text``, or a short stand-in for it when it is long (names and ids come from messages)."""
    if len(text) <= _MEMO_KEY:
        return text
    return f"{text[:64]}…#{hashlib.blake2b(text.encode('utf-8', 'surrogatepass'), digest_size=12).hexdigest()}"


def _remember(memo: OrderedDict[str, Any], key: str, value: Any) -> None:
    """Put ``key`` last in ``memo``, dropping the oldest entries past :data:`_MEMO_ENTRIES`."""
    memo.pop(key, None)
    memo[key] = value
    while len(memo) > _MEMO_ENTRIES:
        memo.popitem(last=False)


def _eta_in(seconds: float) -> GoTime | None:
    """Now + ``seconds``, or ``None`` when that cannot be written (past the year 9999)."""
    try:
        eta = GoTime.now().add_seconds(seconds)
        eta.isoformat()
    except (OverflowError, ValueError):
        return None
    return eta


def _counted_retry(sig: Signature) -> Signature:
    """A copy of ``sig`` to send as its retry, with the retries-done header incremented (and
    no redeliveries header: the retry is a new message)."""
    again = sig.copy()
    headers = {k: v for k, v in (again.headers or {}).items() if k != REDELIVERIES_HEADER}
    again.headers = {**headers, RETRIES_HEADER: str(retries_done(sig, 0) + 1)}
    return again


def _known_names(wanted: str, tasks: Mapping[str, Any]) -> str:
    """The registered names, closest to ``wanted`` first (a typo shows up at once)."""
    if not tasks:
        return "no tasks at all"
    close = difflib.get_close_matches(wanted, list(tasks), n=3, cutoff=0.6)
    rest = sorted(n for n in tasks if n not in close)
    shown = close + rest[:20 - len(close)]
    more = len(tasks) - len(shown)
    return (f"did you mean {', '.join(close)}? " if close else "") + ", ".join(shown) + (
        f" (and {more} more)" if more > 0 else "")


def _queue_list(queue: str | None, queues: Sequence[str] | str | None, default: str) -> list[str]:
    """The queues a worker consumes: ``queues`` (a list, or a comma-separated string as
    Celery's ``-Q a,b``), else ``queue``, else the default queue; duplicates dropped."""
    if queue is not None and queues is not None:
        raise ValueError("give either queue= or queues=, not both")
    if queues is None:
        raw: list[str] = [queue] if queue is not None else [default]
    elif isinstance(queues, str):
        raw = queues.split(",")
    else:
        raw = [part for q in queues for part in str(q).split(",")]
    out: list[str] = []
    for q in raw:
        q = q.strip()
        if not q:
            raise ValueError(f"empty queue name in {queues if queues is not None else queue!r}")
        if q not in out:
            out.append(q)
    return out


def task_results(task: Task[Any, Any], value: Any) -> list[TaskResult]:
    """A Python return value as Machinery TaskResults (Go type names, Go-readable values)."""
    types = task.result_types
    if types == []:
        return []
    if types is None:
        if value is None:
            return []
        values = list(value) if isinstance(value, tuple) else [value]
        types = [None] * len(values)
    elif len(types) == 1:
        values = [value]
    else:
        if not isinstance(value, (tuple, list)) or len(value) != len(types):
            raise EncodeError(f"task {task.name} is annotated to return {len(types)} values, "
                              f"got {value!r}")
        values = list(value)
    out = []
    for t, v in zip(types, values, strict=True):
        name = t or result_type(v)
        if name == "[]byte":
            name = "[]uint8"  # Go's reflection names []byte results "[]uint8"
        if name in SUPPORTED_TYPES:
            encode_typed(name, v)
        out.append(TaskResult(name, v))
    return out
