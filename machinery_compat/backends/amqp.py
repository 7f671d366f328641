"""AMQP (RabbitMQ) result backend, with Go Machinery's layout (§6.4 of the protocol notes).

Machinery's own documentation warns about this backend, and so do we: **every task gets a
queue, and reading a state consumes it.**  Prefer Redis for results when many tasks or big
groups are in flight; an AMQP broker with a Redis backend is the common production setup.

Layout, shared with Go workers and Go ``AsyncResult``:

* every state write publishes the TaskState JSON (no merging: RECEIVED and later states carry
  an empty ``TaskName`` and a zero ``CreatedAt``, as Go writes them) to the exchange
  ``amqp.exchange`` with routing key = the task UUID, ``content_type=application/json``,
  persistent, publisher-confirmed;
* into a queue named **the task UUID**: not durable, auto-delete, ``x-message-ttl`` and
  ``x-expires`` = ``results_expire_in`` * 1000 ms as 32-bit ``I`` (default 3 600 000), bound
  with the UUID.  Each state is one more message (PENDING, RECEIVED, STARTED, SUCCESS…);
* a SUCCESS or FAILURE of a group member is also published into a queue named **the group
  UUID** (same arguments).  A group is complete when that queue holds ``GroupTaskCount``
  messages; the chord step consumes them with an exclusive consumer (one worker wins) and
  then deletes the group queue, as Go's worker does.  ``<group>_chord_triggered`` is looked
  for, never created (so Go's ``TriggerChord`` always says yes; exclusivity decides);
* :meth:`get_state` consumes: it takes every state waiting in the task's queue and returns
  the newest.  This process remembers it (for other ``AsyncResult`` objects of the same
  task), but another process reading the same task competes for the messages — let one
  reader follow a task.  Go's ``AsyncResult`` takes one state per poll, and so works the
  same way on tasks Python sent or ran;
* a Python worker's exception record (type, traceback) goes into the queue
  ``<task UUID>.exc`` (same arguments); it is peeked, not consumed.  Go ignores it.

Connections come from a small pool (Go opens one per state write); a write is retried on a
new connection for up to 20 s before it raises.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .._amqp import (
    PUBLISH_RETRY_BUDGET,
    Endpoint,
    Link,
    LinkPool,
    UnroutableError,
    amqp_config,
    bind_queue,
    body_bytes,
    browse,
    channel_errors,
    declare_exchange,
    declare_queue,
    require_kombu,
)
from ..exceptions import BackendError, DecodeError
from ..protocol import FAILURE, RECEIVED, STARTED, SUCCESS, GroupMeta, Signature, TaskState
from .base import Backend

if TYPE_CHECKING:
    from ..config import AMQPConfig, Config

logger = logging.getLogger(__name__)

#: How many task UUIDs this process remembers (group membership, last state read).
_MEMORY = 10_000
#: How long the chord step waits for the group's messages on its exclusive consumer.
GROUP_CONSUME_TIMEOUT = 5.0
#: Suffix of the queue where Go's ``TriggerChord`` looks for a mark (nothing creates it).
CHORD_TRIGGERED_SUFFIX = "_chord_triggered"
#: Suffix of the queue holding a Python worker's exception record.
EXCEPTION_QUEUE_SUFFIX = ".exc"


class _LRU(collections.OrderedDict[str, Any]):
    def remember(self, key: str, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > _MEMORY:
            self.popitem(last=False)


#: Newest state consumed per task, per backend URL: every AMQPBackend of this process on the
#: same URL sees what another one consumed (until the state's own expiry).
_seen: dict[str, _LRU] = {}
_seen_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _seen_lock
    _seen_lock = threading.Lock()  # another thread of the parent may have held it


os.register_at_fork(after_in_child=_after_fork_in_child)


def _seen_for(url: str) -> _LRU:
    with _seen_lock:
        return _seen.setdefault(url, _LRU())


def _int32(v: int) -> int:
    """Go's ``int32(v)``: the low 32 bits, two's complement (py-amqp then writes ``I``)."""
    return ((v + 2**31) % 2**32) - 2**31


class AMQPBackend(Backend):
    schemes = ("amqp", "amqps")

    def __init__(self, url: str, results_expire_in: int = 0, *, amqp: AMQPConfig | None = None,
                 tls: Any = None, budget: float = PUBLISH_RETRY_BUDGET) -> None:
        from ..config import AMQPConfig

        require_kombu("result backend")
        super().__init__(results_expire_in)
        self.url = url
        self.cfg = amqp if amqp is not None else AMQPConfig()
        # Go's backend dials ResultBackend as one URL (no separator)
        self.endpoint = Endpoint.from_url(url, "", tls)
        self.budget = budget
        ms = _int32(self.expire_in * 1000)
        #: the declare arguments of every task/group queue (both ``I``, signed 32-bit)
        self.queue_args: dict[str, Any] = {"x-message-ttl": ms, "x-expires": ms}
        self._pool = LinkPool(self.endpoint, "result backend")
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._groups = _LRU()  # task UUID -> (group UUID, group task count)
        # task UUID -> (newest TaskState consumed in this process, its expiry)
        self._latest = _seen_for(url)

    @classmethod
    def from_config(cls, config: Config) -> AMQPBackend:
        amqp = amqp_config(config)
        if amqp.exchange_type in ("fanout", "headers"):
            logger.warning(
                "result_backend: the AMQP result backend publishes every task state through "
                "the %s exchange %r, which delivers it to every task's result queue (as in Go "
                "Machinery): results get mixed up; use a direct or topic exchange, or a Redis "
                "result backend", amqp.exchange_type, amqp.exchange)
        return cls(config.result_backend, config.results_expire_in, amqp=amqp_config(config),
                   tls=config.tls_config)

    # -- plumbing -----------------------------------------------------------------------
    def _group_lock(self) -> threading.Lock:
        if self._pid != os.getpid():  # forked: the parent's thread may have held it
            self._lock, self._pid = threading.Lock(), os.getpid()
        return self._lock

    def _run(self, op: Any, what: str) -> Any:
        try:
            return self._pool.run(op, budget=self.budget, describe=what)
        except BackendError:
            raise
        except Exception as e:
            raise BackendError(f"AMQP result backend: {what}: {e}") from e

    def _declare(self, link: Link, name: str, *, force: bool = False) -> None:
        """Exchange + the per-task/group queue + binding, as Go's ``Connect`` does (cached
        per connection; ``force`` declares again)."""
        if "exchange" not in link.declared:
            declare_exchange(link.channel, self.cfg.exchange, self.cfg.exchange_type)
            link.declared.add("exchange")
        mark = ("result", name)
        if not force and mark in link.declared:
            return
        declare_queue(link.channel, name, durable=False, auto_delete=True,
                      arguments=self.queue_args)
        bind_queue(link.channel, name, self.cfg.exchange, name, None)
        if len(link.declared) > _MEMORY:
            link.declared.clear()
            link.declared.add("exchange")
        link.declared.add(mark)

    def _publish(self, name: str, body: bytes, what: str) -> None:
        props = {"content_type": "application/json", "delivery_mode": 2}

        def op(link: Link) -> None:
            self._declare(link, name)
            try:
                link.publish(body, self.cfg.exchange, name, props)
            except UnroutableError:  # the queue expired or was deleted: declare it again
                self._declare(link, name, force=True)
                link.publish(body, self.cfg.exchange, name, props)

        self._run(op, what)

    def _inspect(self, link: Link, name: str) -> int | None:
        """Message count of queue ``name`` (passive declare), ``None`` when it does not exist.
        Uses a throw-away channel: RabbitMQ closes the channel of a failed passive declare."""
        ch = link.conn.connection.channel()
        try:
            ok = ch.queue_declare(name, passive=True)
        except channel_errors() as e:
            if getattr(e, "code", None) == 404:
                return None
            raise
        count: int = ok.message_count
        try:
            ch.close()
        except channel_errors():
            pass
        return count

    # -- writes -------------------------------------------------------------------------
    def set_state(self, state: TaskState, *, merge: bool) -> None:
        """Publish ``state`` into the task's queue (AMQP never merges)."""
        self._publish(state.task_uuid, state.to_json(), f"state {state.state} of {state.task_uuid}")

    def _remember_group(self, sig: Signature) -> tuple[str, int]:
        info = (sig.group_uuid, sig.group_task_count)
        if sig.group_uuid:
            with self._group_lock():
                self._groups.remember(sig.uuid, info)
        return info

    def set_state_received(self, sig: Signature) -> None:
        self._remember_group(sig)
        self.set_state(TaskState(sig.uuid, RECEIVED), merge=False)

    def mark_received_started(self, sig: Signature) -> tuple[str, int]:
        """RECEIVED then STARTED; the token is the task's (group UUID, group task count),
        which the final state needs (Go's ``markTaskCompleted``)."""
        info = self._remember_group(sig)
        self.set_state(TaskState(sig.uuid, RECEIVED), merge=False)
        self.set_state(TaskState(sig.uuid, STARTED), merge=False)
        return info

    def set_final_state(self, state: TaskState, token: Any = None, exc_record: Any = None) -> None:
        if exc_record is not None:
            self.set_exception_record(state.task_uuid, exc_record)
        self.set_state(state, merge=False)
        if state.state in (SUCCESS, FAILURE):
            with self._group_lock():
                remembered = self._groups.pop(state.task_uuid, None)
            info = token if isinstance(token, tuple) else remembered
            if info is not None:
                self._mark_completed(state, info[0], info[1])

    def set_state_success(self, sig: Signature, results: Any) -> None:
        self.set_final_state(TaskState(sig.uuid, SUCCESS, results=results),
                             (sig.group_uuid, sig.group_task_count))

    def set_state_failure(self, sig: Signature, error: str) -> None:
        self.set_final_state(TaskState(sig.uuid, FAILURE, error=error),
                             (sig.group_uuid, sig.group_task_count))

    def _mark_completed(self, state: TaskState, group_uuid: str, count: int) -> None:
        """Go's ``markTaskCompleted``: the final state also goes into the group's queue."""
        if not group_uuid or count == 0:
            return
        self._publish(group_uuid, state.to_json(), f"group {group_uuid} member {state.task_uuid}")

    # -- exception records --------------------------------------------------------------
    def set_exception_record(self, task_uuid: str, record: Any) -> None:
        self._publish(task_uuid + EXCEPTION_QUEUE_SUFFIX, record.to_json(),
                      f"exception record of {task_uuid}")

    def get_exception_record(self, task_uuid: str) -> Any:
        """The newest record in ``<uuid>.exc``, peeked (the messages stay)."""
        from .base import decode_exception_record

        name = task_uuid + EXCEPTION_QUEUE_SUFFIX
        bodies = self._run(lambda link: self._peek(link, name), f"exception record of {task_uuid}")
        return decode_exception_record(task_uuid, bodies[-1]) if bodies else None

    def _peek(self, link: Link, name: str) -> list[bytes]:
        if self._inspect(link, name) is None:
            return []
        return [body_bytes(m.body) for m in browse(link.channel, name)]

    # -- reads --------------------------------------------------------------------------
    def get_state(self, task_uuid: str) -> TaskState | None:
        """Consume every state waiting in the task's queue and return the newest (or the
        newest this process consumed before, or ``None``)."""

        def op(link: Link) -> list[bytes]:
            self._declare(link, task_uuid, force=True)  # Go re-declares before basic.get
            ch = link.channel
            out: list[bytes] = []
            while len(out) < 10_000:
                msg = ch.basic_get(task_uuid, no_ack=False)
                if msg is None:
                    break
                ch.basic_ack(msg.delivery_tag, multiple=False)
                out.append(body_bytes(msg.body))
            return out

        bodies: list[bytes] = self._run(op, f"state of {task_uuid}")
        return self.newest_state(task_uuid, bodies)

    def newest_state(self, task_uuid: str, bodies: Sequence[bytes]) -> TaskState | None:
        """The newest of the state messages ``bodies`` just consumed from the task's queue
        (remembered for this process), else the newest consumed before (not expired), else
        ``None`` — no I/O (the asyncio API's consuming read shares it)."""
        newest: TaskState | None = None
        for raw in bodies:
            try:
                newest = TaskState.from_json(raw)
            except DecodeError as e:
                logger.error("undecodable state message for task %s: %s; raw=%r", task_uuid, e, raw)
        now = time.monotonic()
        with _seen_lock:
            if newest is not None:
                self._latest.remember(task_uuid, (newest, now + self.expire_in))
                return newest
            seen = self._latest.get(task_uuid)
            if seen is None:
                return None
            if seen[1] <= now:  # as old as the message's own x-message-ttl: gone
                del self._latest[task_uuid]
                return None
            cached: TaskState = seen[0]
            return cached

    def last_consumed(self, task_uuid: str) -> TaskState | None:
        """The newest state :meth:`get_state` consumed for ``task_uuid`` (not expired)."""
        with _seen_lock:
            seen = self._latest.get(task_uuid)
        return seen[0] if seen is not None and seen[1] > time.monotonic() else None

    def forget_consumed(self, task_uuid: str) -> None:
        """Drop what this process remembers of ``task_uuid``'s consumed states (no I/O)."""
        with _seen_lock:
            self._latest.pop(task_uuid, None)

    # -- groups and chords --------------------------------------------------------------
    def init_group(self, group_uuid: str, task_uuids: Sequence[str]) -> None:
        """Nothing: Go's AMQP backend keeps no group meta."""

    def get_group_meta(self, group_uuid: str) -> GroupMeta | None:
        return None

    def group_completed(self, group_uuid: str, group_task_count: int) -> bool:
        count = self._run(lambda link: self._inspect(link, group_uuid),
                          f"completion of group {group_uuid}")
        return count is not None and count == group_task_count

    def trigger_chord(self, group_uuid: str) -> bool:
        name = group_uuid + CHORD_TRIGGERED_SUFFIX
        count = self._run(lambda link: self._inspect(link, name), f"chord of group {group_uuid}")
        return count is None

    def group_task_states(self, group_uuid: str, group_task_count: int) -> list[TaskState]:
        """Consume the group's ``group_task_count`` messages with an exclusive consumer (the
        worker that gets them triggers the chord), then delete the group queue."""
        bodies: list[bytes] = self._run(
            lambda link: self._consume_group(link, group_uuid, group_task_count),
            f"states of group {group_uuid}")
        states = [TaskState.from_json(b) for b in bodies]
        self.purge_group_meta(group_uuid)
        return states

    def _consume_group(self, link: Link, group_uuid: str, n: int) -> list[bytes]:
        count = self._inspect(link, group_uuid)
        if count != n:
            raise BackendError(f"Already consumed: <nil> (group {group_uuid}: "
                               f"{count if count is not None else 'no'} message(s), expected {n})")
        ch = link.conn.connection.channel()
        got: list[Any] = []
        try:
            try:
                tag = ch.basic_consume(group_uuid, no_ack=False, exclusive=True,
                                       callback=got.append)
            except channel_errors() as e:
                raise BackendError(f"Already consumed: group {group_uuid} is being read by "
                                   f"another worker ({e})") from e
            deadline = time.monotonic() + GROUP_CONSUME_TIMEOUT
            while len(got) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BackendError(f"Already consumed: group {group_uuid} gave {len(got)} of "
                                       f"{n} message(s)")
                try:
                    link.conn.connection.drain_events(timeout=left)
                except TimeoutError:
                    continue
            for msg in got[:n]:
                ch.basic_ack(msg.delivery_tag, multiple=False)
            ch.basic_cancel(tag)
            return [body_bytes(m.body) for m in got[:n]]
        finally:
            try:
                ch.close()  # unacked messages (on failure) go back to the queue
            except Exception:
                logger.debug("closing the group channel", exc_info=True)

    # -- housekeeping -------------------------------------------------------------------
    def _delete(self, *names: str) -> None:
        def op(link: Link) -> None:
            for name in names:
                link.channel.queue_delete(name, if_unused=False, if_empty=False)
                link.declared.discard(("result", name))

        self._run(op, f"delete {', '.join(names)}")

    def purge_state(self, task_uuid: str) -> None:
        """Delete the task's queue (and its exception record's)."""
        self.forget_consumed(task_uuid)
        self._delete(task_uuid, task_uuid + EXCEPTION_QUEUE_SUFFIX)

    def purge_group_meta(self, group_uuid: str) -> None:
        """Go's ``PurgeGroupMeta``: delete ``<group>_chord_triggered`` and the group queue."""
        self._delete(group_uuid + CHORD_TRIGGERED_SUFFIX, group_uuid)

    def close(self) -> None:
        self._pool.close()


