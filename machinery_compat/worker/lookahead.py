"""One round trip for two tasks: a pool thread about to write a task's SUCCESS takes the next
message waiting in the worker's queue (only one no idle thread took: every thread was busy)
and writes that task's RECEIVED and STARTED in the same write, behind the SUCCESS.

Each task's states keep Go's order and bytes: the finished task's SUCCESS after it ran (and,
on Redis, its processing-list removal with it, atomically), the next task's RECEIVED then
STARTED before it runs, by the merge script :meth:`RedisBackend.mark_received_started` runs;
the thread then runs that task.  Only where nothing else must come first for the next task:
it is registered here, decodes, has no expiry and valid arguments, no ``task_received``
listener and no tracing (whose span covers the STARTED write), and only after a SUCCESS that
is the message's last write (no callbacks, no chord), on a backend that can
(``set_final_state_then_start``: Redis).  A message taken ahead whose STARTED write did not
happen is handled by the same thread as any other (decoded again, RECEIVED/STARTED written
then); while the worker stops it goes back with the other unstarted messages.
"""

from __future__ import annotations

import queue as queue_mod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import signals
from ..exceptions import DecodeError
from ..options import parse_expires
from ..protocol import Signature, TaskState

if TYPE_CHECKING:
    from ..brokers.base import Delivery
    from ..task import Task
    from .worker import Worker


@dataclass(slots=True)
class Ahead:
    """A message taken ahead, ready to start (its token set once STARTED is written)."""

    delivery: Delivery
    sig: Signature
    task: Task[Any, Any]
    args: list[Any]
    token: Any = None


def taken_ahead(worker: Worker) -> Delivery | None:
    """The message this pool thread took ahead (cleared), if any."""
    d: Delivery | None = getattr(worker._tl, "next", None)
    if d is not None:
        worker._tl.next = None
    return d


def take_ahead(worker: Worker) -> Ahead | None:
    """Take the next waiting message for this thread (it runs it next) and return it when its
    RECEIVED/STARTED may go with the current write; None otherwise (the message, if one was
    taken, is still this thread's next, handled the ordinary way)."""
    backend = worker.app.backend
    if (worker._stopping.is_set() or getattr(backend, "set_final_state_then_start", None) is None
            or getattr(worker._tl, "next", None) is not None):
        return None
    try:
        d = worker._work.get_nowait()
    except queue_mod.Empty:
        return None
    if d is None:  # the stop sentinel: leave it for a thread to see
        worker._work.put(None)
        return None
    worker._tl.next = d
    if (len(d.body) > worker.max_message_size or worker.app.tracing is not None
            or signals.task_received.has_listeners(worker)):
        return None
    try:
        sig = Signature.from_json(d.body)
    except DecodeError:
        return None
    task = worker.app.tasks.get(sig.name) if sig.name else None
    if task is None or (sig.headers and parse_expires(sig.headers) is not None):
        return None
    try:
        args = sig.python_args()
    except Exception:  # the ordinary path writes its FAILURE
        return None
    return Ahead(d, sig, task, args)


def store_then_start(worker: Worker, state: TaskState, token: Any, nxt: Ahead) -> None:
    """The final ``state`` (as ``Worker._store``, retried through outages), with ``nxt``'s
    RECEIVED/STARTED behind it in the same write; ``nxt`` is marked started when that
    worked."""
    backend: Any = worker.app.backend
    done: list[Any] = []

    def action() -> None:
        done[:] = [backend.set_final_state_then_start(state, token, nxt.sig)]

    worker._persist(action, f"state {state.state} of task {state.task_uuid}", state.to_go_json)
    if done and done[0] is not None:
        nxt.token = done[0]
        nxt.delivery.extra["started"] = nxt
        worker.started_ahead += 1
