"""Go Machinery and Python share a ``memcache://a,b,c`` backend of three memcached nodes: each
key on the node Go's gomemcache picks, whichever side wrote it (issue #12).

Go (``mcproducer``, Machinery v1's URL factory or v2's ``backends/memcache.New``) writes PENDING
states; every key is on exactly one node, the one ``_memcache_nodes.pick_index`` names, with
flags 0 and Go's absolute expiry, and Python's backend reads them.  Python writes SUCCESS states
and Go's ``AsyncResult`` reads them.  The nodes are the session's, without the interop relays
(the matrix column ``redis+memcache`` runs through those).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from interop.tests.harness import run_producer
from machinery_compat.backends._memcache_nodes import pick_index
from machinery_compat.backends.memcache import MemcacheBackend
from machinery_compat.protocol import PENDING, SUCCESS, TaskResult, TaskState
from tests.services.memcached_svc import MemcachedNodes

pytestmark = [pytest.mark.interop, pytest.mark.redis, pytest.mark.memcache]

N = 24
FLAVOURS = ("v1", "v2-goredis")


@pytest.fixture
def backend(memcache_url: str) -> Iterator[MemcacheBackend]:
    b = MemcacheBackend(memcache_url)
    yield b
    b.close()


def _where(nodes: MemcachedNodes, key: str) -> list[tuple[int, bytes]]:
    """(node index, meta-get reply head) of every node holding ``key``."""
    out = []
    for i, n in enumerate(nodes.nodes):
        reply = n.command(f"mg {key} f t")
        if not reply.startswith(b"EN"):
            out.append((i, reply.split(b"\r\n", 1)[0]))
    return out


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_go_writes_where_python_reads(flavour: str, go_bins: Path, new_db: Callable[[], str],
                                      memcached_nodes: MemcachedNodes, memcache_url: str,
                                      backend: MemcacheBackend) -> None:
    uuids = [f"task_mc_go_{flavour}_{i}" for i in range(N)]
    out = run_producer(flavour, new_db(), [
        {"id": u, "uuid": u, "name": "add", "args": [{"type": "int64", "value": 1}],
         "wait": False} for u in uuids], extra=["-backend", memcache_url])
    assert [(o["sent"], o["error"]) for o in out] == [(True, "")] * N, out
    assert {pick_index(u, 3) for u in uuids} == {0, 1, 2}
    for u in uuids:
        where = _where(memcached_nodes, u)
        assert [i for i, _ in where] == [pick_index(u, 3)], (u, where)
        fields = dict((f[:1], f[1:]) for f in where[0][1].split()[1:])
        assert fields[b"f"] == b"0"
        assert 3590 <= int(fields[b"t"]) <= 3602  # now + 3600 as an absolute Unix time
        state = backend.get_state(u)
        assert state is not None and (state.state, state.task_name) == (PENDING, "add")


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_python_writes_where_go_reads(flavour: str, go_bins: Path, new_db: Callable[[], str],
                                      memcached_nodes: MemcachedNodes, memcache_url: str,
                                      backend: MemcacheBackend) -> None:
    uuids = [f"task_mc_py_{flavour}_{i}" for i in range(N)]
    for i, u in enumerate(uuids):
        backend.set_state(TaskState(u, SUCCESS, results=[TaskResult("int64", i)]), merge=True)
        assert [j for j, _ in _where(memcached_nodes, u)] == [pick_index(u, 3)]
    out = run_producer(flavour, new_db(), [{"read": u, "id": u, "timeout_ms": 5000}
                                           for u in uuids],
                       parallel=8, extra=["-backend", memcache_url])
    got = {o["uuid"]: (o["state"], o["error"], [r["value"] for r in o["results"]]) for o in out}
    assert got == {u: (SUCCESS, "", [i]) for i, u in enumerate(uuids)}
