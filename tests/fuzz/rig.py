"""The fuzz rig: a real :class:`~machinery_compat.worker.Worker` on an app with the memory
broker and backend and a few registered tasks, fed one message at a time through
``Worker.handle`` (the path every fetched message takes).

For each message it records whether an exception escaped ``handle`` (in a running worker:
an "unexpected worker error" traceback, the message dead-lettered by the pool's safety net
without a state), how long it took, and every log line's length.  The stores are emptied every few thousand messages
(what the worker wrote there is not the worker's memory); the worker itself lives for the
whole run, so anything it keeps per message shows up in :meth:`Rig.rss`.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from machinery_compat import Machinery, Retry
from machinery_compat.backends import memory as memory_backend
from machinery_compat.brokers import memory as memory_broker
from machinery_compat.brokers.base import Delivery
from machinery_compat.worker.worker import DEFAULT_MAX_MESSAGE_SIZE

#: A message may take this long (seconds) before it counts as a hang.  Generous: a 4 MB
#: message is parsed in well under a second here; a worker stuck in a retry loop or a
#: sleep takes several.
PER_MESSAGE_LIMIT = float(os.environ.get("FUZZ_PER_MESSAGE_LIMIT", "2.5"))
#: Longest log line (characters) allowed: log lines show excerpts, never whole bodies.
LOG_LINE_LIMIT = 4_000
#: The queue the deliveries come from (hand-backs go back there, dead letters to
#: ``<QUEUE>.dead``); callbacks and retries the worker sends go elsewhere (the app's
#: default queue, or their routing key).
QUEUE = "fuzz_tasks"
DEFAULT_QUEUE = "fuzz_default"


def rss_bytes() -> int:
    """This process's resident set size now (Linux /proc; resource's ru_maxrss is a peak)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass
class Problem:
    kind: str
    what: str
    excerpt: bytes


class _LogWatch(logging.Handler):
    """Counts records by level, remembers the longest lines and any 'unexpected' one, and
    keeps nothing else: the rig makes ``machinery_compat`` non-propagating while it lives,
    since pytest's capture would hold 10^5 records.  (pytest also attaches its capture to
    loggers that are non-propagating when a test phase starts: build the rig inside the
    test, not in a fixture.)"""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.levels: Counter[str] = Counter()
        self.too_long: list[str] = []
        self.unexpected: list[str] = []
        self.longest = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.levels[record.levelname] += 1
        try:
            message = record.getMessage()
        except Exception as e:  # a log call whose arguments do not format is a bug too
            self.unexpected.append(f"unformattable log record {record.msg!r}: {e!r}")
            return
        self.longest = max(self.longest, len(message))
        if len(message) > LOG_LINE_LIMIT and len(self.too_long) < 20:
            self.too_long.append(f"{record.levelname} {len(message)} chars: {message[:200]!r}")
        if "unexpected worker error" in message or "unexpected error" in message:
            self.unexpected.append(message[:500])


@dataclass
class Rig:
    name: str
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    drain_every: int = 2000
    fed: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    escaped: list[Problem] = field(default_factory=list)
    slow: list[Problem] = field(default_factory=list)
    slowest: float = 0.0
    closed: bool = False

    def __post_init__(self) -> None:
        url = f"memory://{self.name}"
        memory_broker.reset(self.name)
        memory_backend.reset(self.name)
        self.app = Machinery(url, url, default_queue=DEFAULT_QUEUE)
        _register(self.app)
        self.worker = self.app.worker(concurrency=1, max_message_size=self.max_message_size)
        self.log = _LogWatch()
        self._logger = logging.getLogger("machinery_compat")
        self._saved = (self._logger.level, self._logger.propagate)
        self._logger.addHandler(self.log)
        self._logger.setLevel(logging.INFO)
        self._logger.propagate = False

    def feed(self, kind: str, body: bytes) -> None:
        started = time.perf_counter()
        try:
            self.worker.handle(Delivery(body, QUEUE))
        except BaseException as e:  # anything escaping is the finding
            if isinstance(e, KeyboardInterrupt):
                raise
            self.escaped.append(Problem(kind, f"{type(e).__name__}: {str(e)[:300]}", body[:300]))
        took = time.perf_counter() - started
        self.slowest = max(self.slowest, took)
        if took > PER_MESSAGE_LIMIT:
            self.slow.append(Problem(kind, f"{took:.2f}s", body[:300]))
        self.fed += 1
        self.by_kind[kind] += 1
        if self.fed % self.drain_every == 0:
            self.drain()

    def feed_all(self, items: Iterable[tuple[str, bytes]]) -> None:
        for kind, body in items:
            self.feed(kind, body)

    def drain(self) -> None:
        """Empty the broker's queues and the backend's states (not the worker)."""
        broker: Any = self.app.broker
        backend: Any = self.app.backend
        with broker._s.cond:
            broker._s.queues.clear()
            broker._s.delayed.clear()
        with backend._s.lock:
            backend._s.data.clear()

    def accounted(self) -> int:
        return sum(self.worker.outcomes.values())

    def close(self) -> None:
        """Stop the worker (what it kept aside is handed back and counted) and unhook."""
        if self.closed:
            return
        self.closed = True
        self.worker.stop(timeout=10)
        self.drain()
        self._logger.removeHandler(self.log)
        self._logger.setLevel(self._saved[0])
        self._logger.propagate = self._saved[1]
        self.app.close()
        memory_broker.reset(self.name)
        memory_backend.reset(self.name)

    def summary(self) -> str:
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(self.worker.outcomes.items()))
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.by_kind.items()))
        return (f"{self.fed} messages ({kinds}) -> {outcomes}; slowest {self.slowest:.3f}s; "
                f"log lines {dict(self.log.levels)}, longest {self.log.longest} chars")

    def problems(self) -> list[str]:
        out = [f"escaped handle() [{p.kind}] {p.what}; body {p.excerpt!r}" for p in self.escaped[:10]]
        out += [f"slow [{p.kind}] {p.what}; body {p.excerpt!r}" for p in self.slow[:10]]
        out += [f"log line too long: {line}" for line in self.log.too_long[:10]]
        out += [f"unexpected-error log line: {line}" for line in self.log.unexpected[:10]]
        return out


def _register(app: Machinery) -> None:
    """The tasks the seeds name; each cheap, whatever arguments arrive."""

    @app.task(name="add")
    def add(*nums: Any) -> Any:
        return sum(nums)

    @app.task(name="multiply")
    def multiply(*nums: Any) -> Any:
        out: Any = 1
        for n in nums[:50]:
            out = out * n if not isinstance(out, (str, list, bytes)) or len(out) < 10_000 else out
        return out

    @app.task(name="concat")
    def concat(*parts: Any) -> str:
        return "".join(str(p)[:100] for p in parts[:100])

    @app.task(name="every_type")
    def every_type(*args: Any) -> int:
        return len(args)

    @app.task(name="edge_values")
    def edge_values(*args: Any) -> None:
        return None

    @app.task(name="echo")
    def echo(*args: Any) -> Any:
        return args[0] if len(args) == 1 else None

    @app.task(name="boom", bind=True)
    def boom(self: Any, *args: Any) -> None:
        if args and args[0] == "later":
            raise Retry("later", 1.0)
        if args and args[0] == "self.retry":
            self.retry()
        raise ValueError("boom")
