"""Several worker processes under one supervisor (``machinery-compat worker --processes N``,
``app.worker(processes=N)``).

The supervisor forks ``N`` children; each runs an ordinary :class:`~.worker.Worker` (its thread
pool, its own connections, on Redis in crash-safe mode its own worker id, heartbeat and
processing lists) with its share of the concurrency: ``concurrency`` is the number of tasks
at once in all, split across the processes (8 over 3 processes: 3, 3, 2), as Go's
``concurrency`` is for one worker.

* The first SIGINT/SIGTERM to the supervisor is passed to every child as SIGTERM: each stops
  gracefully (running tasks finish, prefetched messages go back), and the supervisor exits once
  all have.  A second one is passed on too: the children quit at once (what they held goes back
  as after a crash: AMQP redelivers unacked messages, Redis re-queues the processing lists once
  the heartbeat expires).
* Children are in a process group of their own (a Ctrl-C in the terminal reaches only the
  supervisor, which passes it on once) and get SIGTERM if the supervisor dies
  (``PR_SET_PDEATHSIG``, Linux).
* A child that exits while the supervisor is not stopping is logged and started again, after a
  back-off that doubles (0.5 s up to 30 s) while children keep dying within a minute of their
  start.  A child that stopped past ``max_memory`` is started again at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..app import Machinery
    from .worker import Worker

logger = logging.getLogger("machinery_compat.worker.processes")

#: a child's exit status after it stopped past ``max_memory`` (restarted at once)
EXIT_MEMORY = 75
#: a child's exit status when its worker raised
EXIT_ERROR = 70
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
#: a child that ran this long before dying resets the back-off
STABLE_AFTER = 60.0
_PR_SET_PDEATHSIG = 1

#: what a child runs: (index, its concurrency) -> exit status; the default builds a Worker
ChildMain = Callable[[int, int], int]


def split(concurrency: int, processes: int) -> list[int]:
    """``concurrency`` tasks at once split across ``processes`` (the first ones get the
    remainder): ``split(8, 3) == [3, 3, 2]``."""
    if processes < 1:
        raise ValueError(f"processes must be at least 1, not {processes}")
    if concurrency < processes:
        raise ValueError(f"concurrency {concurrency} is less than processes {processes}: "
                         "each process runs at least one task at a time (concurrency is the "
                         "total, split across the processes)")
    q, r = divmod(concurrency, processes)
    return [q + (1 if i < r else 0) for i in range(processes)]


@dataclass
class _Child:
    index: int
    concurrency: int
    pid: int = 0
    started: float = 0.0
    #: deaths in a row, each within STABLE_AFTER of its start
    failures: int = 0
    #: when to start it again (monotonic), while it is not running
    due: float = 0.0
    restarts: int = 0


class WorkerProcesses:
    """``processes`` worker processes, each a :class:`~.worker.Worker` with its share of
    ``concurrency`` (the total; default ``2 x CPUs``), supervised by the calling process.
    Build it with ``app.worker(processes=N, ...)``; the other keywords go to every
    :class:`~.worker.Worker`.  :meth:`run` blocks until SIGINT/SIGTERM (or :meth:`stop`)."""

    def __init__(self, app: Machinery, processes: int, *, concurrency: int = 0,
                 queue: str | None = None, queues: Sequence[str] | str | None = None,
                 child_main: ChildMain | None = None, **options: Any) -> None:
        from .worker import _queue_list

        self.app = app
        self.processes = processes
        self.concurrency = concurrency if concurrency >= 1 else 2 * (os.cpu_count() or 1)
        self.shares = split(self.concurrency, processes)
        self.queues = _queue_list(queue, queues, app.config.default_queue)
        self.queue = self.queues[0]
        self.options = options
        #: each process's CPU: the i-th of these (round-robin), see :mod:`.affinity`
        self.cpus: list[int] | None = None
        if options.get("cpu_affinity") is not None:
            from .affinity import parse_cpus

            self.cpus = parse_cpus(options["cpu_affinity"])
        self.max_memory: int | None = options.get("max_memory")
        #: never set: a child past max_memory is restarted by the supervisor (for the CLI)
        self.memory_exceeded = False
        self._child_main = child_main or self._default_main
        self._children = [_Child(i, c) for i, c in enumerate(self.shares)]
        self._signals = 0
        self._forwarded = 0
        #: children started again after they exited (crash, kill, max_memory)
        self.restarts = 0

    # -- the child side -------------------------------------------------------------------
    def worker(self, concurrency: int, index: int = 0) -> Worker:
        """The worker child ``index`` runs (pinned to its one CPU with ``cpu_affinity``)."""
        from .worker import Worker

        return Worker(self.app, concurrency=concurrency, queues=self.queues,
                      **self.options_for(index))

    def options_for(self, index: int) -> dict[str, Any]:
        """The Worker keywords of child ``index``: the shared ones, with its one CPU."""
        options = dict(self.options)
        if self.cpus is not None:
            from .affinity import for_process

            options["cpu_affinity"] = for_process(self.cpus, index)
        return options

    def _default_main(self, index: int, concurrency: int) -> int:
        w = self.worker(concurrency, index)
        w.run()
        return EXIT_MEMORY if w.memory_exceeded else 0

    def _in_child(self, child: _Child, parent: int) -> None:
        """The forked child: its own process group, SIGTERM when the supervisor dies, default
        signal handlers (the worker installs its own), then the worker; never returns."""
        status = EXIT_ERROR
        try:
            os.setpgid(0, 0)
            _die_with_parent()
            for s in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
                signal.signal(s, signal.SIG_DFL)
            if os.getppid() != parent:  # the supervisor died before PDEATHSIG was set
                os._exit(0)
            status = self._child_main(child.index, child.concurrency)
        except BaseException:
            logger.exception("worker process %d (pid %d) failed", child.index, os.getpid())
            status = EXIT_ERROR
        finally:
            for handler in logging.getLogger().handlers:
                with contextlib.suppress(Exception):  # exiting anyway
                    handler.flush()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)

    # -- the supervisor -------------------------------------------------------------------
    def _fork(self, child: _Child) -> None:
        parent = os.getpid()
        for handler in logging.getLogger().handlers:
            handler.flush()
        pid = os.fork()
        if pid == 0:
            self._in_child(child, parent)
        child.pid = pid
        child.started = time.monotonic()
        logger.info("worker process %d started: pid %d, concurrency %d", child.index, pid,
                    child.concurrency)

    def stop(self) -> None:
        """Stop every child gracefully (as the first SIGTERM does); :meth:`run` returns once
        they have exited.  Safe to call from a signal handler or another thread."""
        self._signals = max(self._signals, 1)

    def run(self) -> None:
        """Fork the children and supervise them until SIGINT/SIGTERM (first: graceful in
        every child; second: at once) and every child has exited."""
        def on_signal(signum: int, frame: Any) -> None:
            self._signals += 1
            logger.warning("%s received: %s", signal.Signals(signum).name,
                           "stopping every worker process gracefully (again to quit at once)"
                           if self._signals == 1 else "worker processes quit at once")

        in_main = threading.current_thread() is threading.main_thread()
        previous = {}
        if in_main:
            for s in (signal.SIGINT, signal.SIGTERM):
                previous[s] = signal.signal(s, on_signal)
        try:
            logger.info("supervisor pid %d: %d worker processes, concurrency %d in all (%s)",
                        os.getpid(), self.processes, self.concurrency,
                        " + ".join(map(str, self.shares)))
            for child in self._children:
                if self._signals:
                    break
                self._fork(child)
            self._supervise()
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def _supervise(self) -> None:
        while True:
            self._forward()
            self._reap()
            running = [c for c in self._children if c.pid]
            if self._signals and not running:
                return
            if not self._signals:
                now = time.monotonic()
                for c in self._children:
                    if not c.pid and c.due <= now:
                        c.restarts += 1
                        self.restarts += 1
                        self._fork(c)
            time.sleep(0.05)

    def _forward(self) -> None:
        """Pass each new SIGINT/SIGTERM (or stop()) on to the children as SIGTERM."""
        while self._forwarded < min(self._signals, 2):
            self._forwarded += 1
            for c in self._children:
                if c.pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(c.pid, signal.SIGTERM)

    def _reap(self) -> None:
        for c in self._children:
            if not c.pid:
                continue
            try:
                pid, status = os.waitpid(c.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = c.pid, 0
            if pid == 0:
                continue
            self._exited(c, status)

    def _exited(self, c: _Child, status: int) -> None:
        lived = time.monotonic() - c.started
        how = _describe(status)
        pid, c.pid = c.pid, 0
        if self._signals:
            level = logging.INFO if os.waitstatus_to_exitcode(status) == 0 else logging.WARNING
            logger.log(level, "worker process %d (pid %d) stopped: %s", c.index, pid, how)
            return
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == EXIT_MEMORY:
            c.failures = 0
            c.due = time.monotonic()
            logger.warning("worker process %d (pid %d) stopped past max_memory (%s KiB): "
                           "starting it afresh", c.index, pid, self.max_memory)
            return
        c.failures = 1 if lived >= STABLE_AFTER else c.failures + 1
        delay = min(BACKOFF_FIRST * 2 ** (c.failures - 1), BACKOFF_MAX)
        c.due = time.monotonic() + delay
        logger.error("worker process %d (pid %d) %s after %.1fs: starting it again in %gs "
                     "(its unfinished messages go back: AMQP redelivers them, Redis "
                     "crash-safe mode re-queues its processing lists once its heartbeat "
                     "expires)", c.index, pid, how, lived, delay)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"was killed by {name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def _die_with_parent() -> None:
    """``PR_SET_PDEATHSIG(SIGTERM)`` on Linux: a graceful stop if the supervisor dies."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        logger.debug("PR_SET_PDEATHSIG unavailable")
