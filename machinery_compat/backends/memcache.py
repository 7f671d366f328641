"""Memcache result backend, with Go Machinery's layout (§6.2 of the protocol notes).

URL: ``memcache://host1:port1[,host2:port2,...]`` (a unix socket path also works; an address
without a port gets 11211, but Go Machinery refuses such a URL, so a warning says so).

* a task's state lives under the bare task UUID, a group's meta under the bare group UUID, as
  Go-encoded JSON, item flags 0, expiration the **absolute** Unix time now + ``results_expire_in``
  (default 3600 s), as Go writes it;
* **no merging**: every state replaces the stored one whole, so RECEIVED, STARTED, SUCCESS… have
  ``TaskName ""`` and the zero ``CreatedAt`` (Go's Memcache backend does the same);
* with several servers each key goes to the server Go's gomemcache picks (CRC-32 of the key
  modulo the number of servers, in the URL's order: :mod:`._memcache_nodes`), so Go and Python
  share keys; list the servers in the same order on both sides;
* the chord trigger: Go reads the meta, waits while its ``Lock`` is true, writes ``Lock:true``,
  then ``ChordTriggered:true`` and ``Lock:false`` — not atomic: two Go workers may both trigger
  (a Go worker that waited on ``Lock`` triggers too, without looking at ``ChordTriggered``
  again).  Here the meta is read with ``gets`` and ``ChordTriggered:true`` written with ``cas``
  (after waiting while a Go worker holds ``Lock``): two Python workers never both trigger, and
  a Python worker loses to any write made since its read.  A Go worker that read the meta just
  before that ``cas`` still triggers (it writes without looking again): so the Python worker
  then watches the meta for :data:`CHORD_SETTLE` (50 ms) and leaves the chord to the Go
  worker if anyone wrote it in that time (only such a Go worker does).  Go workers racing each
  other can still both trigger (their own race, which no client can close);
* a Python worker's FAILURE also stores the exception record under ``<task UUID>.exc`` (same
  expiry, on that key's own server); ``purge_state`` deletes both.

Missing keys read as ``None`` (Go: ``memcache: cache miss``).  Timeouts: ``connect_timeout`` and
``timeout`` (5 s each by default; gomemcache's are 100 ms) bound every call; a read that fails
raises :class:`~machinery_compat.exceptions.BackendError`.  Needs ``machinery-compat[memcache]``
(pymemcache).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ..exceptions import BackendError, ConfigError
from ..protocol import GoTime, GroupMeta, Signature, TaskState
from ._memcache_nodes import ServerList, parse_servers
from .base import (
    Backend,
    ExceptionRecord,
    decode_exception_record,
    exception_record_key,
    pending_state,
)

if TYPE_CHECKING:
    from ..config import Config

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0
TIMEOUT = 5.0
#: how long trigger_chord waits for a Go worker's ``Lock:true`` to go (Go waits forever)
LOCK_WAIT = 30.0
LOCK_POLL = 0.005
#: how long a Python worker that set ChordTriggered watches for a Go worker that read the meta
#: before it and will trigger anyway (Go's read-to-write gap is one round trip)
CHORD_SETTLE = 0.05


class MemcacheBackend(Backend):
    schemes = ("memcache",)

    def __init__(self, url: str, results_expire_in: int = 0, *,
                 connect_timeout: float = CONNECT_TIMEOUT, timeout: float = TIMEOUT) -> None:
        super().__init__(results_expire_in)
        try:
            from pymemcache.client.base import PooledClient
        except ImportError as e:
            raise ConfigError("the Memcache result backend needs pymemcache: "
                              "pip install 'machinery-compat[memcache]'") from e
        try:
            self.servers: ServerList = parse_servers(url)
        except ValueError as e:
            raise ConfigError(f"result_backend: {e}") from e
        if self.servers.missing_ports:
            logger.warning("result_backend %s: no port in %s: using 11211, but Go Machinery "
                           "refuses an address without a port (its memcache client then has "
                           "no servers)", url, ", ".join(self.servers.missing_ports))
        self.url = url
        self.clients = [
            PooledClient(s.path if s.path else (s.host, s.port), connect_timeout=connect_timeout,
                         timeout=timeout, no_delay=True, default_noreply=False)
            for s in self.servers.servers
        ]

    @classmethod
    def from_config(cls, config: Config) -> MemcacheBackend:
        return cls(config.result_backend, config.results_expire_in)

    def _client(self, key: str) -> Any:
        return self.clients[self.servers.pick(key)]

    def _expiry(self) -> int:
        """Go's ``getExpirationTimestamp``: absolute Unix time (memcached reads any value
        above 30 days as one)."""
        return int(time.time()) + self.expire_in

    def _set(self, key: str, value: bytes) -> None:
        with _talking("writing", key):
            self._client(key).set(key, value, expire=self._expiry(), noreply=False)

    def _get(self, key: str) -> bytes | None:
        with _talking("reading", key):
            raw: bytes | None = self._client(key).get(key)
        return raw

    # -- writes -------------------------------------------------------------------------
    def set_state(self, state: TaskState, *, merge: bool) -> None:
        """Replace the stored state (Go's Memcache backend never merges: ``merge`` is
        ignored)."""
        self._set(state.task_uuid, state.to_json())

    def set_state_pending(self, sig: Signature) -> None:
        self._set(sig.uuid, pending_state(sig).to_json())

    def set_exception_record(self, task_uuid: str, record: ExceptionRecord) -> None:
        self._set(exception_record_key(task_uuid), record.to_json())

    # -- reads --------------------------------------------------------------------------
    def get_state(self, task_uuid: str) -> TaskState | None:
        raw = self._get(task_uuid)
        return None if raw is None else TaskState.from_json(raw)

    def get_states(self, task_uuids: Sequence[str]) -> list[TaskState | None]:
        """One ``get_many`` per server."""
        by_node: dict[int, list[str]] = {}
        for u in task_uuids:
            by_node.setdefault(self.servers.pick(u), []).append(u)
        found: dict[str, bytes] = {}
        for node, keys in by_node.items():
            with _talking("reading", keys[0] if len(keys) == 1 else f"{keys[0]} …"):
                found.update(self.clients[node].get_many(keys))
        return [None if (raw := found.get(u)) is None else TaskState.from_json(raw)
                for u in task_uuids]

    def get_exception_record(self, task_uuid: str) -> ExceptionRecord | None:
        return decode_exception_record(task_uuid, self._get(exception_record_key(task_uuid)))

    # -- groups -------------------------------------------------------------------------
    def init_group(self, group_uuid: str, task_uuids: Sequence[str]) -> None:
        self._set(group_uuid, GroupMeta(group_uuid, list(task_uuids),
                                        created_at=GoTime.now()).to_json())

    def get_group_meta(self, group_uuid: str) -> GroupMeta | None:
        raw = self._get(group_uuid)
        return None if raw is None else GroupMeta.from_json(raw)

    def trigger_chord(self, group_uuid: str) -> bool:
        client = self._client(group_uuid)
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            with _talking("reading", group_uuid):
                raw, cas = client.gets(group_uuid)
            if raw is None:
                raise BackendError(f"group {group_uuid}: meta not found (memcache: cache miss)")
            meta = GroupMeta.from_json(raw)
            if meta.chord_triggered:
                return False
            if meta.lock:  # a Go worker is between its Lock:true and Lock:false writes
                if time.monotonic() > deadline:
                    raise BackendError(f"group {group_uuid}: meta still locked after "
                                       f"{LOCK_WAIT:.0f} s (Lock:true)")
                time.sleep(LOCK_POLL)
                continue
            meta.chord_triggered = True
            with _talking("writing", group_uuid):
                stored = client.cas(group_uuid, meta.to_json(), cas, expire=self._expiry(),
                                    noreply=False)
            if stored:
                return self._still_ours(client, group_uuid)
            if stored is None:
                raise BackendError(f"group {group_uuid}: meta gone while triggering the chord")
            # changed since our read: read it again

    def _still_ours(self, client: Any, group_uuid: str) -> bool:
        """After our ``cas``: False when a Go worker that read the meta before it is writing
        ``Lock:true`` (it triggers whatever it finds next), else True."""
        with _talking("reading", group_uuid):
            raw, cas = client.gets(group_uuid)
        meta = None if raw is None else GroupMeta.from_json(raw)
        if meta is not None and (meta.lock or not meta.chord_triggered):
            logger.info("group %s: a Go worker is triggering the chord too: leaving it to it",
                        group_uuid)
            return False
        time.sleep(CHORD_SETTLE)
        with _talking("reading", group_uuid):
            _, cas_after = client.gets(group_uuid)
        if cas_after != cas:
            logger.info("group %s: a Go worker wrote the meta after us: leaving the chord "
                        "to it", group_uuid)
            return False
        return True

    # -- raw access (tests, tools) -------------------------------------------------------
    def raw(self, key: str) -> bytes | None:
        """The bytes stored under ``key`` (a task or group UUID), on the server Go picks."""
        return self._get(key)

    def store_raw(self, key: str, body: bytes) -> None:
        """Store ``body`` under ``key`` as Go's backend would (flags 0, absolute expiry)."""
        self._set(key, body)

    # -- housekeeping -------------------------------------------------------------------
    def purge_state(self, task_uuid: str) -> None:
        for key in (task_uuid, exception_record_key(task_uuid)):
            with _talking("deleting", key):
                self._client(key).delete(key, noreply=False)

    def purge_group_meta(self, group_uuid: str) -> None:
        with _talking("deleting", group_uuid):
            self._client(group_uuid).delete(group_uuid, noreply=False)

    def close(self) -> None:
        for c in self.clients:
            c.close()


@contextmanager
def _talking(what: str, key: str) -> Iterator[None]:
    """Translate pymemcache's errors, socket errors and timeouts into BackendError."""
    from pymemcache.exceptions import MemcacheError

    try:
        yield
    except (MemcacheError, OSError) as e:
        raise BackendError(f"memcache backend: {what} {key}: {e}") from e
