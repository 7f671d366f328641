"""The Memcache result backend as Go's (§6.2) on three real memcached nodes: keys on the node
gomemcache picks, item flags 0, absolute expiry, no merge, the chord trigger, exception records,
errors.  Go and Python reading each other's keys: interop/tests/test_interop_memcache.py.

Worker and workflow behaviour on this backend runs in tests/behaviour/ (kind ``redis+memcache``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from machinery_compat import BackendError
from machinery_compat.backends import create_backend
from machinery_compat.backends._memcache_nodes import pick_index
from machinery_compat.backends.base import ExceptionRecord
from machinery_compat.backends.memcache import MemcacheBackend
from machinery_compat.config import Config
from machinery_compat.exceptions import ConfigError
from machinery_compat.protocol import (
    FAILURE,
    RECEIVED,
    SUCCESS,
    GroupMeta,
    Signature,
    TaskResult,
    TaskState,
)
from tests.helpers import state_bytes
from tests.services.memcached_svc import MemcachedNodes, MemcachedServer

ZERO = "0001-01-01T00:00:00Z"


@pytest.fixture
def backend(memcache_url: str) -> Iterator[MemcacheBackend]:
    b = MemcacheBackend(memcache_url, 600)
    yield b
    b.close()


def _meta(node: MemcachedServer, key: str) -> tuple[int, int, bytes] | None:
    """(flags, seconds left, value) of ``key`` on ``node`` (meta get ``f t v``), None if absent."""
    reply = node.command(f"mg {key} f t v")
    if reply.startswith(b"EN"):
        return None
    head, _, rest = reply.partition(b"\r\n")
    fields = {f[:1]: f[1:] for f in head.split()[2:]}
    return int(fields[b"f"]), int(fields[b"t"]), rest[:-2]


def _holders(nodes: MemcachedNodes, key: str) -> list[int]:
    return [i for i, n in enumerate(nodes.nodes) if _meta(n, key) is not None]


def test_keys_live_on_the_node_gomemcache_picks(backend: MemcacheBackend,
                                                memcached_nodes: MemcachedNodes) -> None:
    uuids = [f"task_{i:04d}" for i in range(30)]
    for u in uuids:
        backend.set_state_pending(Signature(uuid=u, name="add"))
    picked = {pick_index(u, 3) for u in uuids}
    assert picked == {0, 1, 2}  # the test spreads over every node
    for u in uuids:
        assert _holders(memcached_nodes, u) == [pick_index(u, 3)]
    states = backend.get_states([*uuids, "task_missing"])
    assert [s.task_uuid if s else None for s in states] == [*uuids, None]


def test_items_are_go_json_flags_0_absolute_expiry_never_merged(
    backend: MemcacheBackend, memcached_nodes: MemcachedNodes
) -> None:
    sig = Signature(uuid="task_s", name="add")
    node = memcached_nodes.nodes[pick_index("task_s", 3)]
    backend.set_state_pending(sig)
    flags, ttl, value = _meta(node, "task_s") or (None, None, b"")
    assert flags == 0
    # now + 600 as an absolute time, counted down by memcached (its clock lags up to a second)
    assert 590 <= (ttl or 0) <= 602
    assert value.startswith(b'{"TaskUUID":"task_s","TaskName":"add","State":"PENDING"')
    token = backend.mark_received_started(sig)
    assert _meta(node, "task_s")[2] == state_bytes("task_s", "", "STARTED", ZERO)  # type: ignore[index]
    backend.set_final_state(TaskState("task_s", SUCCESS, results=[TaskResult("int64", 2)]), token)
    assert backend.raw("task_s") == state_bytes("task_s", "", "SUCCESS", ZERO,
                                                results='[{"Type":"int64","Value":2}]')
    backend.set_state(TaskState("task_s", RECEIVED), merge=True)  # merge is ignored, as in Go
    assert backend.raw("task_s") == state_bytes("task_s", "", "RECEIVED", ZERO)


def test_default_expiry_is_an_hour(memcache_url: str, memcached_nodes: MemcachedNodes) -> None:
    b = create_backend(Config(result_backend=memcache_url))
    try:
        assert isinstance(b, MemcacheBackend)
        b.init_group("group_e", ["task_a"])
        got = _meta(memcached_nodes.nodes[pick_index("group_e", 3)], "group_e")
        assert got is not None and 3590 <= got[1] <= 3602
    finally:
        b.close()


def test_group_meta_and_chord_trigger_once(backend: MemcacheBackend) -> None:
    backend.init_group("group_g", ["task_a", "task_b"])
    meta = backend.get_group_meta("group_g")
    assert meta is not None and meta.task_uuids == ["task_a", "task_b"]
    assert not backend.group_completed("group_g", 2)
    backend.set_state(TaskState("task_a", SUCCESS, results=[]), merge=True)
    backend.set_state(TaskState("task_b", FAILURE, error="x"), merge=True)
    assert backend.group_completed("group_g", 2)
    assert [s.state for s in backend.group_task_states("group_g", 2)] == [SUCCESS, FAILURE]

    wins: list[bool] = []
    start = threading.Barrier(8)

    def trigger() -> None:
        start.wait()
        wins.append(backend.trigger_chord("group_g"))

    threads = [threading.Thread(target=trigger) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False] * 7 + [True]
    stored = GroupMeta.from_json(backend.raw("group_g") or b"")
    assert stored.chord_triggered and not stored.lock
    backend.purge_group_meta("group_g")
    assert backend.get_group_meta("group_g") is None
    with pytest.raises(BackendError, match="cache miss"):
        backend.trigger_chord("group_g")


def test_chord_trigger_waits_while_a_go_worker_holds_lock(backend: MemcacheBackend) -> None:
    locked = GroupMeta("group_l", ["task_a"], lock=True)
    backend.store_raw("group_l", locked.to_json())
    got: list[bool] = []
    t = threading.Thread(target=lambda: got.append(backend.trigger_chord("group_l")))
    t.start()
    time.sleep(0.3)
    assert got == [] and t.is_alive()  # spinning on Lock:true, as Go does
    # the Go worker finishes: ChordTriggered true, Lock false -> we must not trigger again
    backend.store_raw("group_l", GroupMeta("group_l", ["task_a"], chord_triggered=True).to_json())
    t.join(5)
    assert got == [False]


def test_chord_left_to_a_go_worker_that_read_before_us(backend: MemcacheBackend,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Go's TriggerChord read the meta (not triggered) just before our cas; its Lock:true write
    (its stale copy, ChordTriggered false) comes after: it will trigger, so we must not."""
    from machinery_compat.backends import memcache

    monkeypatch.setattr(memcache, "CHORD_SETTLE", 1.0)
    backend.init_group("group_r", ["task_a"])
    got: list[bool] = []
    t = threading.Thread(target=lambda: got.append(backend.trigger_chord("group_r")))
    t.start()
    assert wait_until(lambda: b'"ChordTriggered":true' in (backend.raw("group_r") or b""))
    go_copy = GroupMeta.from_json(backend.raw("group_r") or b"")
    go_copy.chord_triggered, go_copy.lock = False, True
    backend.store_raw("group_r", go_copy.to_json())  # Go's lockGroupMeta
    t.join(5)
    assert got == [False]


def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.005)
    return False


def test_exception_record_beside_the_state_and_purge(backend: MemcacheBackend) -> None:
    sig = Signature(uuid="task_f", name="div")
    token = backend.mark_received_started(sig)
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError as e:
        record = ExceptionRecord.from_exception(e, "division by zero")
    backend.set_final_state(TaskState("task_f", FAILURE, error="division by zero"), token, record)
    assert backend.raw("task_f") == state_bytes("task_f", "", "FAILURE", ZERO,
                                                error="division by zero")
    assert backend.get_exception_record("task_f") == record
    backend.purge_state("task_f")
    assert backend.get_state("task_f") is None and backend.get_exception_record("task_f") is None


def test_missing_keys_read_as_none(backend: MemcacheBackend) -> None:
    assert backend.get_state("task_nope") is None
    assert backend.get_group_meta("group_nope") is None
    assert backend.get_states([]) == []


def test_a_node_down_is_a_backend_error() -> None:
    node = MemcachedServer().start()
    url = node.url
    node.close()
    b = MemcacheBackend(url, connect_timeout=1, timeout=1)
    try:
        with pytest.raises(BackendError, match="memcache backend: reading task_x"):
            b.get_state("task_x")
        with pytest.raises(BackendError, match="writing task_x"):
            b.set_state_pending(Signature(uuid="task_x", name="add"))
    finally:
        b.close()


@pytest.mark.parametrize("url", ["memcache://", "memcache://h:1,,h:2", "memcache://h:port"])
def test_bad_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError, match="result_backend: memcache"):
        create_backend(Config(result_backend=url))


def test_address_without_port_warns(caplog: pytest.LogCaptureFixture) -> None:
    b = MemcacheBackend("memcache://127.0.0.1")
    b.close()
    assert "Go Machinery refuses an address without a port" in caplog.text


def test_store_signatures_beside_the_states(redis_url: str, memcache_url: str) -> None:
    from machinery_compat import Machinery
    from machinery_compat.ops import signatures

    app = Machinery(broker=redis_url, result_backend=memcache_url, store_signatures=True,
                    default_queue="machinery_tasks")
    try:
        res = app.send_task("add", args=[1, 2])
        assert isinstance(app.backend, MemcacheBackend)
        sig = signatures.load(app.backend, res.id)
        assert sig is not None and (sig.uuid, sig.name) == (res.id, "add")
        assert app.backend.raw(res.id + ".sig") == sig.to_json()
        assert signatures.supported(app.backend)
    finally:
        app.close()


# -- the test service itself (tests/services/memcached_svc.py) ------------------------------
def test_memcached_restarts_on_its_port_and_flushes() -> None:
    from tests.services.memcached_svc import MemcachedServer as Server

    with Server() as node:
        port = node.port
        assert node.command("set k 0 0 1\r\nv") == b"STORED\r\n"
        node.stop()
        assert not node.running
        node.start()
        assert node.port == port and node.running
        assert node.command("get k") == b"END\r\n"  # nothing persists across a restart
        node.command("set k 0 0 1\r\nv")
        node.flush()
        assert node.command("get k") == b"END\r\n"
    assert not node.running


def test_missing_memcached_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.services import ServiceUnavailable

    monkeypatch.setenv("MEMCACHED_BIN", "no-such-memcached")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ServiceUnavailable, match="apt-get install -y memcached"):
        MemcachedServer()
