"""The scheduler: fires an app's periodic tasks as Go Machinery's server does.

Like robfig/cron's run loop, each periodic task has a next fire time (its schedule's next
activation after the scheduler started, then after each firing); when the wall clock reaches
it the task fires in a thread of its own and the next time is computed from that moment.
A firing (Go's closure in ``RegisterPeriodicTask``):

1. the lock value: the schedule's next activation after now, in Unix ns, minus one;
2. the lock (:mod:`machinery_compat.periodic.lock`): not taken → skipped silently (another
   scheduler, Python or Go, sends this period);
3. the send: fresh messages for the target; an error is logged as Go logs it
   (``periodic task failed. task name is: <name>. error is <err>``).

The scheduler never fires before the wall clock reached the fire time (a firing a little
early would take the previous period's expired lock and send twice), re-reads the app's
:class:`~machinery_compat.periodic.PeriodicRegistry` whenever it changes (tasks registered
or unregistered while it runs take effect at once; an unregistered task's lock key gets an
expiry), and stops firing when stopped.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..config import mask_url, parse_redis_lock_url
from ._go import Zone
from .lock import LocalLock, PeriodicLock, RedisLock
from .registry import PeriodicTask

if TYPE_CHECKING:
    from ..app import Machinery
    from ..config import Config

logger = logging.getLogger(__name__)

#: longest single sleep: the wall clock is looked at again at least this often (seconds)
_MAX_SLEEP = 1.0
_REDIS_SCHEMES = ("redis://", "rediss://", "redis+socket://")


@dataclass(frozen=True)
class Firing:
    """One firing of a periodic task by this scheduler: ``value`` is the lock value (the
    period's end in Unix ns, minus one), ``sent`` whether this scheduler took the lock and
    sent, ``at_ns`` when, ``error`` the send's error text if it failed."""

    name: str
    value: int
    sent: bool
    at_ns: int
    error: str | None = None


@dataclass
class _Entry:
    task: PeriodicTask
    next_ns: int | None
    key: str = field(default="")


def create_lock(config: Config, lock: str | None = None, *,
                program: str = "machinery-compat") -> PeriodicLock:
    """The lock a scheduler uses.

    ``lock``: a Redis URL (``redis://host:port/db``, ``rediss://``, ``redis+socket://``; the
    db matters: Go schedulers must use the same one) or ``local`` (in-process only).  When
    not given: the config's ``lock`` (Machinery's ``Lock``/``LOCK`` setting, read as Go v1's
    factory does: ``redis://[password@]host:port``, db 0; anything else is in-process), else
    the broker's Redis, else the result backend's Redis, else an in-process lock (with a
    warning: every scheduler process then fires).
    """
    from .._redis import Timeouts, client_for, require_redis

    timeouts = Timeouts.from_config(config)
    if lock is None and config.lock:
        parsed = parse_redis_lock_url(config.lock)
        if parsed is None:
            logger.warning("lock %s is not a redis:// URL: periodic tasks are de-duplicated "
                           "within this process only (as Go's eager lock)",
                           mask_url(config.lock))
            return LocalLock()
        redis = require_redis()
        client = redis.Redis(host=parsed.host, port=parsed.port, password=parsed.password,
                             db=0, socket_timeout=timeouts.socket,
                             socket_connect_timeout=timeouts.connect)
        return RedisLock(client, program=program)
    if lock is None:
        for url in (config.broker, config.result_backend):
            if url and url.startswith(_REDIS_SCHEMES):
                lock = url
                break
        else:
            logger.warning("no Redis among the broker, the result backend and the lock "
                           "settings: periodic tasks are de-duplicated within this process "
                           "only; every scheduler process sends them")
            return LocalLock()
    if lock in ("local", "memory://", "eager"):
        return LocalLock()
    if not lock.startswith(_REDIS_SCHEMES):
        from ..exceptions import ConfigError

        raise ConfigError(f"periodic lock {mask_url(lock)}: give a redis:// URL or 'local'")
    return RedisLock(client_for(lock, timeouts, ssl_context=config.tls_config,
                                redis=config.effective_redis), program=program)


class Scheduler:
    """Fires ``app``'s periodic tasks (``app.periodic_tasks``) until stopped.

    ``lock``: a :class:`PeriodicLock`, a Redis URL or ``"local"`` (default: see
    :func:`create_lock`); ``program``: the executable name in lock keys (default: the
    registry's ``program``, ``machinery-compat``; a Go binary's base name to de-duplicate with
    Go schedulers); ``local``: the zone specs without ``CRON_TZ=`` run in (default: Go's idea
    of the local zone); ``max_sending``: firings sending at once (Go: unbounded)."""

    def __init__(self, app: Machinery, *, lock: PeriodicLock | str | None = None,
                 program: str | None = None, local: Zone | None = None,
                 max_sending: int = 8) -> None:
        self.app = app
        self.registry = app.periodic_tasks
        self.program = program or self.registry.program
        self.lock = lock if isinstance(lock, PeriodicLock) else create_lock(
            app.config, lock, program=self.program)
        self.local = local
        self._pool = ThreadPoolExecutor(max_workers=max(1, max_sending),
                                        thread_name_prefix="mc-periodic-send")
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._entries: dict[str, _Entry] = {}
        self._mutex = threading.Lock()
        #: firings that sent, and that found the lock taken, by task name
        self.sent: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        #: the last firings (newest last)
        self.history: deque[Firing] = deque(maxlen=1000)

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> Scheduler:
        """Run in a background thread; returns at once."""
        if self._thread is not None:
            raise RuntimeError("scheduler already started")
        self._thread = threading.Thread(target=self._loop, name="mc-periodic", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop firing; wait up to ``timeout`` seconds for sends under way."""
        self._stopping.set()
        self.registry.wake()
        if self._thread is not None:
            self._thread.join(timeout)
        self._pool.shutdown(wait=True, cancel_futures=True)
        logger.info("periodic scheduler stopped (%d sent)", sum(self.sent.values()))

    def run(self) -> None:
        """Run in this thread until SIGINT/SIGTERM (or :meth:`stop` from another thread)."""
        previous: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            def on_signal(signum: int, frame: Any) -> None:
                logger.warning("%s received: stopping the periodic scheduler",
                               signal.Signals(signum).name)
                self._stopping.set()
                self.registry.wake()

            for s in (signal.SIGINT, signal.SIGTERM):
                previous[s] = signal.signal(s, on_signal)
        try:
            self._loop()
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
            self.stop()

    def __enter__(self) -> Scheduler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the scheduler loop is running."""
        return self._thread is not None and self._thread.is_alive()

    # -- state --------------------------------------------------------------------------
    def next_fire_times(self) -> dict[str, int | None]:
        """Each periodic task's next fire time in this scheduler (Unix ns; None: never)."""
        with self._mutex:
            return {name: e.next_ns for name, e in self._entries.items()}

    # -- the loop -----------------------------------------------------------------------
    def _loop(self) -> None:
        version = -1
        logger.info("periodic scheduler started: lock %s, program %r",
                    type(self.lock).__name__, self.program)
        while not self._stopping.is_set():
            current, tasks = self.registry.snapshot()
            now = time.time_ns()
            if current != version:
                self._sync(tasks, now)
                version = current
            due: list[_Entry] = []
            with self._mutex:
                for e in self._entries.values():
                    if e.next_ns is not None and e.next_ns <= now:
                        due.append(e)
                        e.next_ns = e.task.schedule.next(now, self.local)
                soonest = min((e.next_ns for e in self._entries.values()
                               if e.next_ns is not None), default=None)
            for e in sorted(due, key=lambda e: e.task.name):
                self._submit(e.task, e.key)
            if due:
                continue
            wait = _MAX_SLEEP if soonest is None else min(
                _MAX_SLEEP, max(0.0, (soonest - time.time_ns()) / 1e9))
            if wait > 0:
                self.registry.wait(version, wait)

    def _sync(self, tasks: dict[str, PeriodicTask], now: int) -> None:
        gone: list[str] = []
        with self._mutex:
            for name in list(self._entries):
                e = self._entries[name]
                if tasks.get(name) is not e.task:
                    del self._entries[name]
                    gone.append(e.key)
            for name, task in tasks.items():
                if name not in self._entries:
                    self._entries[name] = _Entry(task, task.schedule.next(now, self.local),
                                                 task.key(self.program))
                    logger.info("periodic task %s %r: %s, lock key %r", name, task.spec,
                                task.describe(), task.key(self.program))
        live = {e.key for e in self._entries.values()}
        for key in gone:
            if key not in live:
                self.lock.ensure_expiry(key)

    def _submit(self, task: PeriodicTask, key: str) -> None:
        with contextlib.suppress(RuntimeError):  # shut down meanwhile
            self._pool.submit(self.fire, task, key)

    def _record(self, firing: Firing) -> None:
        with self._mutex:
            if firing.sent:
                self.sent[firing.name] += 1
            elif firing.error is None:
                self.skipped[firing.name] += 1
            self.history.append(firing)

    def fire(self, task: PeriodicTask, key: str | None = None) -> bool:
        """One firing of ``task`` now (lock, then send); True if this scheduler sent it."""
        key = key or task.key(self.program)
        now = time.time_ns()
        nxt = task.schedule.next(now, self.local)
        if nxt is None:
            return False
        value = nxt - 1
        if not self.lock.acquire(key, value):
            self._record(Firing(task.name, value, False, now))
            logger.debug("periodic task %s: lock %r held elsewhere this period", task.name, key)
            return False
        try:
            result = task.send()
        except Exception as e:
            logger.error("periodic task failed. task name is: %s. error is %s", task.name, e)
            self._record(Firing(task.name, value, False, now, str(e)))
            return False
        self._record(Firing(task.name, value, True, now))
        logger.info("periodic task %s sent (lock value %d): %s %s", task.name, value,
                    task.describe(), getattr(result, "id", "") or "")
        return True


__all__ = ["Firing", "Scheduler", "create_lock"]
