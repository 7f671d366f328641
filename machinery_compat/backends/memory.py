"""In-memory result backend: task states inside this Python process, for tests and local
development.

URL forms: ``memory://`` (the process's default store) or ``memory://<name>``; the eager
broker's ``eager://[<name>]`` result backend is this same backend, on the store of that name
(so ``eager://t1`` and ``memory://t1`` read the same results).  Every backend built with the
same name in one process shares one store, so a producer app and a worker app created
separately see the same results.  Go processes cannot read it; nothing survives the process.

It stores exactly what the Redis backend stores, and reads it back through the same decoder:

* each task state and group meta is kept as Go-encoded JSON bytes under the bare task or group
  UUID, and decoded on every read, as if it had come off the wire;
* every state but PENDING keeps ``TaskName`` and ``CreatedAt`` of the stored state and replaces
  everything else (Machinery's merge); a state written with nothing stored before gets an empty
  name and the zero time, as on Redis;
* entries expire ``results_expire_in`` seconds (default 3600) after their last write;
* the chord trigger is decided under a lock, so exactly one caller per group gets ``True``;
* a Python worker's FAILURE comes with its exception record (type, module, traceback) as JSON
  under ``<task UUID>.exc``, as on Redis (see :mod:`machinery_compat.backends.base`);
* :meth:`~MemoryBackend.purge_state` (state and exception record) /
  :meth:`~MemoryBackend.purge_group_meta` delete entries,
  :meth:`~MemoryBackend.raw` returns the stored bytes, :meth:`~MemoryBackend.store_raw` stores
  bytes as a Go worker would have written them, :func:`reset` throws a store away.

Thread-safe; no optional dependency.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from .._named_stores import NamedStores
from ..brokers.memory import store_name
from ..exceptions import BackendError, DecodeError
from ..protocol import GoTime, GroupMeta, TaskState
from .base import Backend, ExceptionRecord, decode_exception_record, exception_record_key

SCHEMES = ("memory", "eager")


@dataclass
class _Store:
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: key -> (Go JSON bytes, monotonic expiry time)
    data: dict[str, tuple[bytes, float]] = field(default_factory=dict)
    writes: int = 0


def _renew_lock(store: _Store) -> None:
    store.lock = threading.Lock()


_stores = NamedStores(_Store, _renew_lock)
_store = _stores.get


def reset(name: str | None = None) -> None:
    """Forget the result store ``name`` (every store when ``None``)."""
    _stores.reset(name)


class MemoryBackend(Backend):
    """Results in this process, shared by every backend with the same store name."""

    schemes = SCHEMES

    def __init__(self, url: str = "memory://", results_expire_in: int = 0) -> None:
        super().__init__(results_expire_in)
        self.url = url
        self.name = store_name(url)
        self._s = _store(self.name)

    # -- raw store ----------------------------------------------------------------------
    def _get(self, key: str) -> bytes | None:
        """The stored bytes (caller holds the lock); expired entries are dropped."""
        entry = self._s.data.get(key)
        if entry is None:
            return None
        if entry[1] <= time.monotonic():
            del self._s.data[key]
            return None
        return entry[0]

    def _put(self, key: str, value: bytes) -> None:
        s = self._s
        now = time.monotonic()
        s.data[key] = (value, now + self.expire_in)
        s.writes += 1
        if s.writes % 1024 == 0:  # sweep now and then so expired entries do not pile up
            for k in [k for k, (_, exp) in s.data.items() if exp <= now]:
                del s.data[k]

    def raw(self, key: str) -> bytes | None:
        """The Go JSON bytes stored under a task or group UUID (``None``: none or expired)."""
        with self._s.lock:
            return self._get(key)

    def store_raw(self, key: str, body: bytes) -> None:
        """Store bytes as they are under ``key`` (as a Go worker's ``SET`` would), expiring
        like any other entry; they are decoded only when read."""
        with self._s.lock:
            self._put(key, bytes(body))

    # -- writes -------------------------------------------------------------------------
    def set_state(self, state: TaskState, *, merge: bool) -> None:
        with self._s.lock:
            if merge:
                name, created = "", GoTime.zero()
                old = self._get(state.task_uuid)
                if old is not None:
                    try:
                        stored = TaskState.from_json(old)
                        name, created = stored.task_name, stored.created_at
                    except DecodeError:
                        pass  # as the Redis script: an unreadable old state keeps nothing
                state = TaskState(state.task_uuid, state.state, task_name=name,
                                  results=state.results, error=state.error,
                                  created_at=created, ttl=state.ttl)
            self._put(state.task_uuid, state.to_json())

    def set_exception_record(self, task_uuid: str, record: ExceptionRecord) -> None:
        with self._s.lock:
            self._put(exception_record_key(task_uuid), record.to_json())

    # -- reads --------------------------------------------------------------------------
    def get_state(self, task_uuid: str) -> TaskState | None:
        raw = self.raw(task_uuid)
        return None if raw is None else TaskState.from_json(raw)

    def get_exception_record(self, task_uuid: str) -> ExceptionRecord | None:
        return decode_exception_record(task_uuid, self.raw(exception_record_key(task_uuid)))

    def get_states(self, task_uuids: Sequence[str]) -> list[TaskState | None]:
        with self._s.lock:
            raws = [self._get(u) for u in task_uuids]
        return [None if r is None else TaskState.from_json(r) for r in raws]

    # -- groups -------------------------------------------------------------------------
    def init_group(self, group_uuid: str, task_uuids: Sequence[str]) -> None:
        meta = GroupMeta(group_uuid, list(task_uuids), created_at=GoTime.now())
        with self._s.lock:
            self._put(group_uuid, meta.to_json())

    def get_group_meta(self, group_uuid: str) -> GroupMeta | None:
        raw = self.raw(group_uuid)
        return None if raw is None else GroupMeta.from_json(raw)

    def trigger_chord(self, group_uuid: str) -> bool:
        with self._s.lock:
            raw = self._get(group_uuid)
            if raw is None:
                raise BackendError(f"group {group_uuid}: meta not found")
            meta = GroupMeta.from_json(raw)
            if meta.chord_triggered:
                return False
            meta.chord_triggered = True
            self._put(group_uuid, meta.to_json())
            return True

    # -- housekeeping -------------------------------------------------------------------
    def purge_state(self, task_uuid: str) -> None:
        with self._s.lock:
            self._s.data.pop(task_uuid, None)
            self._s.data.pop(exception_record_key(task_uuid), None)

    def purge_group_meta(self, group_uuid: str) -> None:
        with self._s.lock:
            self._s.data.pop(group_uuid, None)


__all__ = ["MemoryBackend", "reset"]
