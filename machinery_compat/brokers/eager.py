"""Eager broker: every task runs synchronously inside the producer's call (test mode).

Machinery's ``eager`` broker, for unit tests and local development::

    app = Machinery(broker="eager://")        # results in the in-memory backend
    @app.task(name="add")
    def add(*nums: int) -> int:
        return sum(nums)

    res = add.delay(1, 2)                     # add has already run when delay() returns
    assert res.get(timeout=0) == 3

URL forms: ``eager``, ``eager://`` or ``eager://<name>``.  The result backend defaults to the
broker URL, which means the in-memory backend (:mod:`machinery_compat.backends.memory`) on the
store ``<name>``; ``result_backend="memory://<name>"`` is the same thing.

**What runs.**  ``publish`` encodes the Signature to Go JSON and hands those bytes to the app's
real worker code (:meth:`Worker.handle <machinery_compat.worker.Worker.handle>` of a worker that
is built for the app but never started), in the calling thread.  So the message is decoded
exactly as it would be off the wire (a value Go would reject fails the same way, e.g. a
``dict`` result fed into the next step of a chain is a ``Reflect task args error``), and the
states written, callbacks, chains, groups, chords and retries are those of a real worker.
The only difference from Go's eager broker in what a task sees: an empty ``RoutingKey`` is set
to the default queue, as on every other broker.

**Workflows.**  Callbacks (chains, OnSuccess, OnError, chord callbacks) run inside the same
producer call, nested, as in Go; beyond :attr:`EagerBroker.max_depth` nested levels they are
queued and run, in order, when the outermost call unwinds (so a chain of any length works
without exhausting the stack).  Group members are published by ``send_group``'s publishing
threads (``send_concurrency``), so they run on those threads, concurrently unless
``send_concurrency=1``; the member that completes the group sends the chord callback, once.

**ETAs and retries.**  Like Go's eager broker (and Celery's ``task_always_eager``), ETAs are
not waited for: ``countdown``/``eta`` tasks run at once, and so do retries (``RetryCount``
with Fibonacci ``RetryTimeout``, ``self.retry``, ``raise Retry(...)``).  A retried task
therefore runs ``RetryCount + 1`` times within the producer's call, with the same states as on
a real worker (RETRY, then PENDING for the resend, …).  A task that keeps asking to be retried
later (``Retry`` does not use up ``RetryCount``) would loop forever: after
:attr:`EagerBroker.max_runs_per_task` runs within one producer call it is marked FAILURE with
an error saying so, and not run again.

**Errors.**  A task's failure is its FAILURE state, as on any broker (``get()`` raises
:class:`~machinery_compat.TaskFailed`); the producer's call does not raise for it.  What
cannot happen with a real queue raises from the producer's call (``send_task``, ``delay``,
``apply_async``, ``send_group``), after everything else that call started has run:

* a task this app does not have (the worker would hand it back to the queue for a worker that
  has it, but there is no queue and no other worker): it is marked FAILURE with the reason and
  :class:`~machinery_compat.TaskNotRegistered` is raised (Go's eager mode silently leaves it
  PENDING).  ``IgnoreWhenTaskNotRegistered`` tasks are dropped, left PENDING, with a log line;
* a message that does not decode (:class:`~machinery_compat.DecodeError`, raw bytes attached).

A worker started on an eager app has nothing to consume and stays idle.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..exceptions import BrokerError, DecodeError, TaskNotRegistered
from ..protocol import Signature
from .base import Broker, Delivery

if TYPE_CHECKING:
    from ..app import Machinery
    from ..worker import Worker

logger = logging.getLogger(__name__)

SCHEMES = ("eager",)

#: One message to run: (delivery, task UUID, task name).
_Item = tuple[Delivery, str, str]


@dataclass
class _Call:
    """The producer call in progress on one thread (nested publishes join it)."""

    depth: int = 0
    queued: deque[_Item] = field(default_factory=deque)
    runs: Counter[str] = field(default_factory=Counter)
    errors: list[Exception] = field(default_factory=list)


class EagerBroker(Broker):
    """Runs each published task at once, in the publishing thread, through the app's worker."""

    schemes = SCHEMES

    #: Nested callback levels run inside the call that sent them; deeper ones are queued.
    max_depth = 32
    #: Runs of one task UUID (retries included) allowed within one producer call.
    max_runs_per_task = 100

    def __init__(self, app: Machinery, url: str = "eager://",
                 default_queue: str = "machinery_tasks") -> None:
        super().__init__(default_queue)
        self.app = app
        self.url = url
        self._local = threading.local()
        self._worker: Worker | None = None
        self._lock = threading.Lock()
        self._warned_fetch = False

    @property
    def worker(self) -> Worker:
        """The app's worker (built once, never started) whose ``handle`` runs every task."""
        if self._worker is None:
            with self._lock:
                if self._worker is None:
                    self._worker = self.app.worker(concurrency=1, move_delayed=False)
        return self._worker

    # -- producer -----------------------------------------------------------------------
    def publish(self, sig: Signature) -> None:
        self.adjust_routing_key(sig)
        item = (Delivery(sig.to_json(), sig.routing_key), sig.uuid, sig.name)
        call: _Call | None = getattr(self._local, "call", None)
        if call is not None:  # sent from a task (or its callbacks) this thread is running
            if call.depth >= self.max_depth:
                call.queued.append(item)
            else:
                self._run(call, item)
            return
        call = self._local.call = _Call()
        try:
            self._run(call, item)
            while call.queued:
                self._run(call, call.queued.popleft())
        finally:
            self._local.call = None
        if call.errors:
            raise call.errors[0]

    def _run(self, call: _Call, item: _Item) -> None:
        delivery, task_uuid, name = item
        call.runs[task_uuid] += 1
        if call.runs[task_uuid] > self.max_runs_per_task:
            error = (f"eager mode: task {name}[{task_uuid}] ran {self.max_runs_per_task} times "
                     f"in one call and was not run again (eager mode runs retries at once, "
                     f"without waiting for their ETA)")
            logger.error("%s", error)
            self.app.backend.set_state_failure(Signature(uuid=task_uuid, name=name), error)
            return
        call.depth += 1
        try:
            self.worker.handle(delivery)
        except Exception as e:
            logger.error("eager mode: task %s[%s]: %s", name, task_uuid, e)
            call.errors.append(e)
        finally:
            call.depth -= 1

    # -- what the worker calls back -----------------------------------------------------
    def requeue(self, deliveries: Sequence[Delivery], *, front: bool = False) -> None:
        """There is no queue to give a message back to: an unregistered task is marked
        FAILURE and :class:`TaskNotRegistered` raised; anything else is a :class:`BrokerError`."""
        for d in deliveries:
            sig = Signature.from_json(d.body)
            if sig.name not in self.app.tasks:
                detail = ("in this process: eager mode runs every task inside the producer's "
                          "call, so no other worker can take it")
                self.app.backend.set_state_failure(sig, f"Task {sig.name} is not registered {detail}")
                raise TaskNotRegistered(sig.name, detail)
        raise BrokerError(f"eager mode: there is no queue to give {len(deliveries)} message(s) "
                          f"back to ({', '.join(sorted({d.queue for d in deliveries}))})")

    def dead_letter(self, delivery: Delivery, reason: str) -> str:
        raise DecodeError(f"eager mode: the message does not decode: {reason}", delivery.body)

    def fetch(self, queues: Sequence[str], max_messages: int, timeout: float) -> list[Delivery]:
        """Nothing ever waits in a queue: waits ``timeout`` and returns nothing."""
        if not self._warned_fetch:
            self._warned_fetch = True
            logger.warning("eager broker: a worker has nothing to consume (tasks run inside the "
                           "producer's call); it stays idle")
        time.sleep(max(timeout, 0.0))
        return []

    def pending_tasks(self, queue: str | None = None) -> list[Signature]:
        return []

    def delayed_tasks(self) -> list[Signature]:
        return []

    def __repr__(self) -> str:
        return f"<EagerBroker {self.url} app={self.app!r}>"


__all__ = ["EagerBroker"]
