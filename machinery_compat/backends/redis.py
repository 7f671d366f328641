"""Redis result backend, with Machinery's exact layout (§6.1 of the protocol notes).

* a task's state lives under the bare task UUID (``task_…``), a group's meta under the
  bare group UUID, as Go-encoded JSON, with ``EX results_expire_in`` (default 3600 s);
* every state but PENDING keeps ``TaskName`` and ``CreatedAt`` of the stored state and
  replaces everything else (Go's GET + SET merge).  Here the merge runs server-side in a
  Lua script, so RECEIVED and STARTED cost one round trip together and the final state
  another (Go needs six);
* the chord trigger takes the same redsync-style lock Go uses (key ``TriggerChordMutex``,
  random token, ``PX 8000``, compare-and-delete release);
* a Python worker's FAILURE also stores the exception's type, module and traceback as JSON
  under ``<task UUID>.exc`` (same ``EX``), sent in the same write as the state and before it
  (:mod:`machinery_compat.backends.base`); Go ignores that key.  ``purge_state`` (what
  ``AsyncResult.forget()`` calls) deletes both keys.

Timeouts: ``redis.connect_timeout``, ``read_timeout`` and ``write_timeout`` of the config
(15 s each by default) bound every command (see :mod:`machinery_compat._redis`); a read that
fails or times out raises :class:`~machinery_compat.exceptions.BackendError`, so
``AsyncResult.get(timeout=t)`` on a stalled Redis returns within about ``t`` + the read
timeout.
"""

from __future__ import annotations

import base64
import os
import random
import ssl
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .._redis import MERGE_SET, UNLOCK, Timeouts, client_for, fast_path, mget_all
from ..exceptions import BackendError, DecodeError
from ..protocol import GoTime, GroupMeta, Signature, TaskState
from .base import (
    Backend,
    ExceptionRecord,
    decode_exception_record,
    exception_record_key,
    pending_state,
)

if TYPE_CHECKING:
    from ..config import Config, RedisConfig

CHORD_MUTEX_KEY = "TriggerChordMutex"
CHORD_MUTEX_EXPIRY_MS = 8000
CHORD_MUTEX_TRIES = 32

#: (TaskName JSON token, CreatedAt JSON token) of the stored state, as returned by the merge.
MergeInfo = tuple[str, str]
#: The token of a task whose states are not written (the sublime fork's ``NoBackend``).
NO_WRITES: MergeInfo = ("", "no-backend")


class RedisBackend(Backend):
    schemes = ("redis", "rediss", "redis+socket")
    #: ``wire_dialect="sublime"`` (from the config): a task whose signature has ``NoBackend``
    #: gets no state writes at all, as the fork's Redis backends skip all six state setters
    honour_no_backend = False

    def __init__(self, url: str, results_expire_in: int = 0, *, client: Any = None,
                 timeouts: Timeouts | None = None,
                 ssl_context: ssl.SSLContext | None = None,
                 redis: RedisConfig | None = None) -> None:
        """``timeouts``: of the connections (default: Machinery's, 15 s each); ``ssl_context``:
        of ``rediss://`` connections (Go's ``TLSConfig``); both ignored when a ``client`` is
        given."""
        super().__init__(results_expire_in)
        self.url = url
        self.client = client if client is not None else client_for(
            url, timeouts, ssl_context=ssl_context, redis=redis)
        self.fast = fast_path(self.client, wait_replicas=redis.wait_replicas if redis else 0,
                              wait_timeout_ms=redis.wait_timeout if redis else 0)
        self._merge = self.client.register_script(MERGE_SET)
        self._unlock = self.client.register_script(UNLOCK)

    @classmethod
    def from_config(cls, config: Config) -> RedisBackend:
        """The backend for ``config.result_backend``, with ``config.redis``'s timeouts and
        ``config.tls_config``."""
        backend = cls(config.result_backend, config.results_expire_in,
                      timeouts=Timeouts.from_config(config), ssl_context=config.tls_config,
                      redis=config.effective_redis)
        backend.honour_no_backend = config.wire_dialect == "sublime"
        return backend

    def _skips(self, sig: Signature) -> bool:
        """Whether ``sig``'s states are not written (``NoBackend`` in a sublime app)."""
        return sig.no_backend and self.honour_no_backend

    # -- writes -------------------------------------------------------------------------
    def pending_command(self, sig: Signature) -> tuple[Any, ...]:
        """The command that writes PENDING for ``sig`` (a no-op ``PING`` for a ``NoBackend``
        task, so that the message still goes in the same write)."""
        if self._skips(sig):
            return ("PING",)
        return ("SET", sig.uuid, pending_state(sig).to_json(), "EX", self.expire_in)

    def set_state_pending(self, sig: Signature) -> None:
        """PENDING through the fast path (a producer with another broker, e.g. AMQP, writes
        it on every send; redis-py's generic client cost ~40 us more a call)."""
        if self._skips(sig):
            return
        self.fast.execute(self.pending_command(sig))

    def set_state(self, state: TaskState, *, merge: bool) -> None:
        if merge:
            self._merge(keys=[state.task_uuid],
                        args=[self.expire_in, state.head(), state.tail(), state.middle()])
        else:
            self.client.set(state.task_uuid, state.to_json(), ex=self.expire_in)

    def _received_started_args(self, sig: Signature) -> list[Any]:
        from ..protocol import RECEIVED, STARTED

        received = TaskState(sig.uuid, RECEIVED)
        started = TaskState(sig.uuid, STARTED)
        return [self.expire_in, received.head(), received.tail(), received.middle(),
                started.middle()]

    def set_state_received(self, sig: Signature) -> None:
        """RECEIVED (before a FAILURE written without running the task); for a ``NoBackend``
        task nothing, remembered so that its FAILURE is skipped too."""
        if not self._skips(sig):
            super().set_state_received(sig)
            return
        skipped = self.__dict__.setdefault("_skipped", {})
        skipped[sig.uuid] = None
        while len(skipped) > 1024:
            skipped.pop(next(iter(skipped)), None)

    def mark_received_started(self, sig: Signature) -> MergeInfo:
        if self._skips(sig):
            return NO_WRITES
        name, created = self.fast.evalsha(self._merge, [sig.uuid],
                                          self._received_started_args(sig))
        return _text(name), _text(created)

    def set_final_state_then_start(self, state: TaskState, token: MergeInfo,
                                   sig: Signature) -> MergeInfo | None:
        """:meth:`set_final_state` (no exception record, ``token`` given) of one task, then
        :meth:`mark_received_started` of the next, ``sig``, behind it in the same write: one
        round trip for both, each task's states in Go's order (the first task's SUCCESS after
        it ran, the next one's RECEIVED and STARTED before it runs; the same bytes as the two
        calls).  Raises as :meth:`set_final_state` when the final state may not be stored;
        returns the next task's token, or None when its write failed (the caller then makes
        it again with :meth:`mark_received_started`)."""
        if token is NO_WRITES:  # the first task's states are not written
            return self.mark_received_started(sig)
        if self._skips(sig):
            self.set_final_state(state, token)
            return NO_WRITES
        name, created = token
        body = (state.head() + name + state.middle() + created + state.tail()).encode(
            "utf-8", "machinery_compat.gojson"
        )
        merge = ("EVALSHA", self._merge.sha, 1, sig.uuid, *self._received_started_args(sig))
        _, after = self.fast.execute_then([("SET", state.task_uuid, body, "EX", self.expire_in)],
                                          [merge])
        reply = after[0]
        if isinstance(reply, Exception):  # e.g. NOSCRIPT after a Redis restart
            return None
        name2, created2 = reply
        return _text(name2), _text(created2)

    def set_final_state(self, state: TaskState, token: Any = None,
                        exc_record: ExceptionRecord | None = None) -> None:
        """SUCCESS/FAILURE/RETRY: a plain SET when the merged fields are already known.

        ``token`` is the :data:`MergeInfo` :meth:`mark_received_started` returned.  An
        ``exc_record`` is SET first, in the same write.
        """
        if token is NO_WRITES:
            return
        if token is None and self.honour_no_backend and \
                self.__dict__.get("_skipped", {}).pop(state.task_uuid, 1) is None:
            return  # a NoBackend task's FAILURE after set_state_received
        if token is None:
            super().set_final_state(state, None, exc_record)
            return
        name, created = token
        body = (state.head() + name + state.middle() + created + state.tail()).encode(
            "utf-8", "machinery_compat.gojson"
        )
        commands = [("SET", state.task_uuid, body, "EX", self.expire_in)]
        if exc_record is not None:
            commands.insert(0, self.exception_record_command(state.task_uuid, exc_record))
        self.fast.execute(*commands)

    def exception_record_command(self, task_uuid: str, record: ExceptionRecord) -> tuple[Any, ...]:
        return ("SET", exception_record_key(task_uuid), record.to_json(), "EX", self.expire_in)

    def set_exception_record(self, task_uuid: str, record: ExceptionRecord) -> None:
        self.client.set(exception_record_key(task_uuid), record.to_json(), ex=self.expire_in)

    # -- reads --------------------------------------------------------------------------
    def get_state(self, task_uuid: str) -> TaskState | None:
        with _reading(task_uuid):
            raw = self.client.get(task_uuid)
        return None if raw is None else TaskState.from_json(raw)

    def get_states(self, task_uuids: Sequence[str]) -> list[TaskState | None]:
        if not task_uuids:
            return []
        with _reading(f"{task_uuids[0]} …" if len(task_uuids) > 1 else task_uuids[0]):
            raws = mget_all(self.client, task_uuids)
        return [None if r is None else TaskState.from_json(r) for r in raws]

    def get_exception_record(self, task_uuid: str) -> ExceptionRecord | None:
        return decode_exception_record(task_uuid, self.client.get(exception_record_key(task_uuid)))

    # -- groups -------------------------------------------------------------------------
    def init_group(self, group_uuid: str, task_uuids: Sequence[str]) -> None:
        meta = GroupMeta(group_uuid, list(task_uuids), created_at=GoTime.now())
        self.client.set(group_uuid, meta.to_json(), ex=self.expire_in)

    def init_group_command(self, group_uuid: str, task_uuids: Sequence[str]) -> tuple[Any, ...]:
        meta = GroupMeta(group_uuid, list(task_uuids), created_at=GoTime.now())
        return ("SET", group_uuid, meta.to_json(), "EX", self.expire_in)

    def get_group_meta(self, group_uuid: str) -> GroupMeta | None:
        with _reading(group_uuid):
            raw = self.client.get(group_uuid)
        return None if raw is None else GroupMeta.from_json(raw)

    def trigger_chord(self, group_uuid: str) -> bool:
        token = base64.b64encode(os.urandom(16))
        for attempt in range(CHORD_MUTEX_TRIES):
            if self.client.set(CHORD_MUTEX_KEY, token, nx=True, px=CHORD_MUTEX_EXPIRY_MS):
                break
            if attempt + 1 < CHORD_MUTEX_TRIES:
                time.sleep(random.uniform(0.05, 0.25))
        else:
            raise BackendError("redsync: failed to acquire lock")
        try:
            meta = self.get_group_meta(group_uuid)
            if meta is None:
                raise BackendError(f"group {group_uuid}: meta not found (redis: nil)")
            if meta.chord_triggered:
                return False
            meta.chord_triggered = True
            self.client.set(group_uuid, meta.to_json(), ex=self.expire_in)
            return True
        finally:
            self._unlock(keys=[CHORD_MUTEX_KEY], args=[token])

    def purge_state(self, task_uuid: str) -> None:
        self.client.delete(task_uuid, exception_record_key(task_uuid))

    def purge_group_meta(self, group_uuid: str) -> None:
        self.client.delete(group_uuid)


@contextmanager
def _reading(key: str) -> Iterator[None]:
    """Translate redis-py's connection errors and timeouts of a read into BackendError."""
    import redis

    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
        raise BackendError(f"redis backend: reading {key}: {e}") from e


def _text(v: Any) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, str):
        return v
    raise DecodeError(f"unexpected reply from the merge script: {v!r}")
