"""Finding and re-sending tasks whose message is gone (Redis or DynamoDB results).

A task can be left RECEIVED or STARTED for ever (until its state expires) when the worker
running it died and its message died with it: any Go worker (Go's Redis worker pops the
message before running it), and a Python worker with crash-safe consumption turned off
(``redis.crash_safe: false``) or of a version without it.  A Python worker in the default
crash-safe mode never leaves one: its messages stay in its processing list and are re-queued
once its heartbeat expires (see :mod:`machinery_compat.brokers.redis`).

What this module can do::

    from machinery_compat import recovery

    recovery.recover_dead_workers(app)            # re-queue dead Python workers' lists now
    for stuck in recovery.find_stuck_tasks(app, older_than=600):
        print(stuck.task_uuid, stuck.task_name, stuck.state, stuck.idle_for)
        sig = my_records.get(stuck.task_uuid)      # the original Signature, if you kept it
        if sig is not None:
            recovery.resend(app, sig)              # same UUID: waiting callers get the result

* :func:`recover_dead_workers` does at once what every live Python worker does every second:
  the processing lists of workers whose heartbeat expired go back to the head of their queues.
* :func:`find_stuck_tasks` reports tasks whose state is RECEIVED or STARTED (``states=`` to
  choose, e.g. PENDING too), not written for ``older_than`` seconds, and whose message is
  nowhere: in no list of the broker's database (work queues, ``<queue>.dead``, the processing
  lists of Python workers) and not in the delayed-tasks sorted set.
* :func:`resend` publishes a task again, with its original UUID, after checking that it is
  still stuck: PENDING first, then the message, as Go's ``SendTask``.

What it cannot do:

* **Re-send by itself.**  A TaskState holds the task's UUID, name and state, never its
  arguments, headers or callbacks; only the caller (who sent the task) can rebuild the
  message.  Keep the signatures you may need to re-send (or their JSON,
  ``Signature.to_json()``/``from_json()``), e.g. in your own database, keyed by UUID.
* **Tell a task stuck from one still running on a Go worker**: Go holds the message in memory
  while the task runs, so a long task on a Go worker looks like a stuck one.  Choose
  ``older_than`` longer than your longest task; re-sending a task that is in fact still
  running makes it run twice.
* **Know exactly when a state was written**: the idle time comes from the state key's
  remaining TTL and this app's ``results_expire_in`` (Go writers with a different expiry
  skew it; a key without a TTL falls back to the state's ``CreatedAt``, the time it was sent).
* **Be cheap on a big database**: it SCANs every key of the backend's database (states) and
  reads every list of the broker's (messages).  It is an operator's tool, not for a hot path.

Other stacks:

* **DynamoDB result backend**: the states come from a ``Scan`` of ``task_states`` (filtered
  on ``State``; every item is read, so it costs read capacity on a big table).  DynamoDB keeps
  no time of the last write (Go sets ``TTL`` on final states only), so ``older_than`` applies
  to the time since the task was *sent* (``CreatedAt``); ``idle_for`` is ``None``.
* **AMQP or SQS broker**: their messages cannot be searched by UUID, so a candidate's message
  is not looked for (``StuckTask.message_checked`` is false).  Both brokers give a dead
  worker's messages back by themselves (unacked AMQP deliveries, SQS visibility timeouts), so
  a task there is rarely stuck for good; :func:`resend` refuses such a task unless ``force``.
* **AMQP result backend**: states are messages in per-task queues that cannot be listed:
  :func:`find_stuck_tasks` raises :class:`~machinery_compat.ops.Unsupported`.

With ``Machinery(..., store_signatures=True)`` the producer keeps each Signature it sends
(:mod:`machinery_compat.ops.signatures`); :func:`stored_signature` reads it back, so that
``machinery-compat stuck --resend`` can re-send what Python producers sent.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from .exceptions import ConfigError, DecodeError, MachineryCompatError
from .ops.base import Unsupported
from .protocol import PENDING, RECEIVED, STARTED, Signature, TaskState

if TYPE_CHECKING:
    from .app import Machinery
    from .backends.redis import RedisBackend
    from .brokers.redis import RedisBroker
    from .result import AsyncResult

logger = logging.getLogger(__name__)

__all__ = ["NotStuck", "StuckTask", "find_stuck_tasks", "recover_dead_workers", "resend",
           "stored_signature"]

#: UUIDs inside a message (any nesting: callbacks count as "somewhere" too)
_UUID = re.compile(rb'"uuid"\s*:\s*"((?:[^"\\]|\\.)*)"', re.IGNORECASE)
_BATCH = 500


class NotStuck(MachineryCompatError):
    """:func:`resend` refused: the task finished, or its message still exists."""


@dataclass(frozen=True, slots=True)
class StuckTask:
    """A task left RECEIVED/STARTED (or another state asked for) with no message anywhere."""

    task_uuid: str
    task_name: str
    state: str
    #: seconds since its state was last written (from the key's TTL); ``None``: unknown
    idle_for: float | None
    #: seconds since it was sent (its ``CreatedAt``); ``None``: zero time (no PENDING seen)
    age: float | None
    #: the stored state as read
    task_state: TaskState
    #: whether the broker was searched for its message (not possible on AMQP and SQS)
    message_checked: bool = True


def _kinds(obj: object) -> set[str]:
    return {c.__name__ for c in type(obj).__mro__}


def _backend_kind(app: Machinery) -> str:
    kinds = _kinds(app.backend)
    if "RedisBackend" in kinds:
        return "redis"
    if "DynamoDBBackend" in kinds:
        return "dynamodb"
    raise Unsupported(f"finding stuck tasks needs a Redis or DynamoDB result backend: the "
                      f"{type(app.backend).__name__} cannot list task states")


def _redis_broker(app: Machinery) -> RedisBroker | None:
    from .brokers.redis import RedisBroker

    broker = app.broker
    return broker if isinstance(broker, RedisBroker) else None


def recover_dead_workers(app: Machinery) -> int:
    """Re-queue, now, the processing lists of every Python worker whose heartbeat expired
    (to the head of the queues they came from); returns how many messages moved.  Live
    workers are left alone."""
    from .brokers.redis import recover_workers

    broker = _redis_broker(app)
    if broker is None:
        raise ConfigError("recovering dead workers' messages needs a Redis broker (got "
                          f"{type(app.broker).__name__})")
    return recover_workers(broker)


def _scan(client: Any, type_: str) -> Iterator[bytes]:
    cursor = 0
    while True:
        cursor, keys = client.scan(cursor, count=1000, _type=type_)
        yield from keys
        if cursor == 0:
            return


def _messages(broker: RedisBroker) -> Iterator[bytes]:
    """Every list element of the broker's database, and every delayed task."""
    client = broker.client
    for key in _scan(client, "list"):
        start = 0
        while True:
            chunk = client.lrange(key, start, start + _BATCH - 1)
            yield from chunk
            if len(chunk) < _BATCH:
                break
            start += _BATCH
    start = 0
    while True:
        chunk = client.zrange(broker.delayed_tasks_key, start, start + _BATCH - 1)
        yield from chunk
        if len(chunk) < _BATCH:
            break
        start += _BATCH


def _uuids_with_messages(broker: RedisBroker, wanted: set[str]) -> set[str]:
    found: set[str] = set()
    for body in _messages(broker):
        for m in _UUID.finditer(body):
            raw = m.group(1)
            try:
                uuid = json.loads(b'"' + raw + b'"') if b"\\" in raw else raw.decode()
            except (ValueError, UnicodeDecodeError):
                continue
            if uuid in wanted:
                found.add(uuid)
    return found


def _candidates(backend: RedisBackend, states: Sequence[str], older_than: float,
                now: float) -> list[StuckTask]:
    client = backend.client
    out: list[StuckTask] = []
    keys: list[bytes] = []

    def flush() -> None:
        if not keys:
            return
        pipe = client.pipeline(transaction=False)
        for k in keys:
            pipe.get(k)
            pipe.pttl(k)
        replies = pipe.execute()
        for i, key in enumerate(keys):
            raw, pttl = replies[2 * i], replies[2 * i + 1]
            if not isinstance(raw, bytes) or b'"TaskUUID"' not in raw[:64]:
                continue
            try:
                st = TaskState.from_json(raw)
            except (DecodeError, ValueError):
                continue
            if st.state not in states or st.task_uuid != key.decode("utf-8", "replace"):
                continue
            idle = backend.expire_in - pttl / 1000 if isinstance(pttl, int) and pttl > 0 else None
            created = st.created_at
            age = None
            if created is not None and created.unix_ns > 0:
                age = now - created.unix_ns / 1e9
            waited = idle if idle is not None else age
            if waited is None or waited < older_than:
                continue
            out.append(StuckTask(st.task_uuid, st.task_name, st.state, idle, age, st))
        keys.clear()

    for key in _scan(client, "string"):
        keys.append(key)
        if len(keys) >= _BATCH:
            flush()
    flush()
    return out


def find_stuck_tasks(app: Machinery, older_than: float = 300.0, *,
                     states: Iterable[str] = (RECEIVED, STARTED),
                     recover_workers: bool = True) -> list[StuckTask]:
    """Tasks in one of ``states`` whose state was not written for ``older_than`` seconds and
    whose message is nowhere in the broker's database; longest idle first.

    ``recover_workers``: first re-queue the lists of dead Python workers
    (:func:`recover_dead_workers`), so that their tasks are not reported.  See the module
    documentation for what "stuck" can and cannot mean.
    """
    kind = _backend_kind(app)
    broker = _redis_broker(app)
    if recover_workers and broker is not None:
        recover_dead_workers(app)
    wanted_states = tuple(states)
    now = time.time()
    if kind == "redis":
        stuck = _candidates(app.backend, wanted_states, older_than, now)  # type: ignore[arg-type]
    else:
        stuck = _dynamodb_candidates(app.backend, wanted_states, older_than, now)
    if broker is None:
        stuck = [replace(s, message_checked=False) for s in stuck]
    elif stuck:
        alive = _uuids_with_messages(broker, {s.task_uuid for s in stuck})
        stuck = [s for s in stuck if s.task_uuid not in alive]
    stuck.sort(key=lambda s: -(s.idle_for if s.idle_for is not None else s.age or 0.0))
    return stuck


def _dynamodb_candidates(backend: Any, states: Sequence[str], older_than: float,
                         now: float) -> list[StuckTask]:
    """The task states in ``states`` (a ``Scan`` of the task table) sent ``older_than`` ago."""
    out: list[StuckTask] = []
    for st in backend.scan_states(states):
        created = st.created_at
        age = None
        if created is not None and created.unix_ns > 0:
            age = now - created.unix_ns / 1e9
        if age is None or age < older_than:
            continue
        out.append(StuckTask(st.task_uuid, st.task_name, st.state, None, age, st))
    return out


def stored_signature(app: Machinery, task_uuid: str) -> Signature | None:
    """The Signature a ``store_signatures`` producer kept for ``task_uuid`` (``None``: none)."""
    from .ops.signatures import load

    return load(app.backend, task_uuid)


def resend(app: Machinery, sig: Signature, *, force: bool = False) -> AsyncResult:
    """Publish ``sig`` again (PENDING, then the message) with its own UUID, the stuck task's.

    Refused with :class:`NotStuck` when its state is SUCCESS/FAILURE, or when a message with
    its UUID is still queued, delayed or held by a Python worker, unless ``force``.  Re-sending
    a task that is in fact still running (on a Go worker) makes it run twice.
    """
    if not sig.uuid:
        raise ValueError("resend needs the stuck task's UUID in the signature")
    if not force:
        kind = _backend_kind(app)  # (reading an AMQP backend's state would consume it)
        broker = _redis_broker(app)
        st = app.backend.get_state(sig.uuid) if kind else None
        if st is not None and st.state not in (PENDING, RECEIVED, STARTED):
            raise NotStuck(f"task {sig.uuid} is {st.state}: not re-sent")
        if broker is None:
            raise NotStuck(f"task {sig.uuid}: the {type(app.broker).__name__} cannot be "
                           "searched for its message (and gives a dead worker's messages back "
                           "by itself): not re-sent without force")
        if _uuids_with_messages(broker, {sig.uuid}):
            raise NotStuck(f"a message of task {sig.uuid} is still in the broker: not re-sent")
    logger.warning("re-sending task %s[%s]", sig.name, sig.uuid)
    return app.send_signature(sig)
