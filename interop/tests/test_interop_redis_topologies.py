"""What Go Machinery does on a Redis Cluster and through Redis Sentinel, measured (issue #14).

``interop/cmd/mctopo`` builds one Go Machinery server exactly as ``mcworker``/``mcproducer`` do
(``mc.New`` with ``-redis-cluster`` = v2 ``redis.cluster_enabled`` / v1 ``redis.cluster_mode``,
``-redis-master-name``, ``-redis-sentinel-password``), runs a worker in the same process and
prints one JSON line per probe: send (SendTask + result), state (GetState), eta (the
delayed_tasks ZSET and Go's WATCH/MULTI mover), group (SendGroup + GroupCompleted's pipelined
GETs), chord (TriggerChord's redsync lock + callback) and lock (the periodic-task lock).

These tests pin what was found (docs/scaling.md has the table): every operation works with the
go-redis constructors (several addresses, or ``cluster_enabled``; ``master_name`` with the
sentinels' addresses and ``sentinel_password``); a plain client (redigo, or go-redis on one
address without the cluster setting) fails with ``MOVED``; v1's several-address form cannot
carry a ``/db`` path; v1 has no sentinel password.  A change in Machinery shows up here.

The last test has Python (machinery_compat's Sentinel and Cluster support) and Go v2 share one
sentinel deployment, and one Redis Cluster, both ways and in one worker pool.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.services.redis_cluster_svc import (
    MASTER_NAME,
    SENTINEL_PASSWORD,
    RedisClusterNodes,
    RedisSentinelSet,
)

pytestmark = pytest.mark.interop

PROBES = ("send", "state", "eta", "group", "chord", "lock")


def _mctopo(go_bins: Path, *args: str, timeout: str = "10s", probes: str = ",".join(PROBES),
            during: Callable[[], Any] | None = None, after: float = 3.0) -> dict[str, Any]:
    """Run mctopo; ``{op: line}``.  ``during`` (a failover) runs ``after`` seconds in."""
    cmd = [str(go_bins / "mctopo"), "-timeout", timeout, "-queue", f"topo_{uuid.uuid4().hex[:8]}",
           "-probes", probes, *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if during is not None:
        time.sleep(after)
        during()
    out, err = proc.communicate(timeout=240)
    lines = {d["op"]: d for d in map(json.loads, out.splitlines())}
    assert "worker_errors" in lines, (out, err[-3000:])
    return lines


def _assert_all_ok(lines: dict[str, Any]) -> None:
    failed = {op: d["error"] for op, d in lines.items() if not d["ok"]}
    assert not failed, failed


# -- Redis Cluster -------------------------------------------------------------------------

CLUSTER_WORKS = {
    # v2 (go-redis NewGR): the addresses as v1's factory splits them, with cluster_enabled
    "v2 all nodes + cluster_enabled": ("v2-goredis", "all", True),
    # several addresses alone: UniversalOptions picks a ClusterClient
    "v2 all nodes": ("v2-goredis", "all", False),
    # one seed node is enough with cluster_enabled (it learns the rest)
    "v2 one node + cluster_enabled": ("v2-goredis", "one", True),
    # v1: redis://a,b,c -> NewGR, a ClusterClient (UniversalOptions with several addresses)
    "v1 all nodes": ("v1", "all", False),
}


@pytest.mark.parametrize("case", list(CLUSTER_WORKS))
def test_go_on_cluster_every_operation_works(redis_cluster: RedisClusterNodes, go_bins: Path,
                                             case: str) -> None:
    flavour, nodes, cluster_flag = CLUSTER_WORKS[case]
    url = redis_cluster.url() if nodes == "all" else redis_cluster.url(1)
    # 30 s per probe: Go's chord through redsync's lock took longer than 10 s once under CI load
    lines = _mctopo(go_bins, "-flavour", flavour, "-broker", url,
                    *(["-redis-cluster"] if cluster_flag else []), timeout="30s")
    _assert_all_ok(lines)
    assert lines["eta"]["detail"].startswith("add(2,3) = 5 after ")
    assert lines["chord"]["detail"] == "chord callback add(2,4,6) = 12"


def test_go_v1_cluster_mode_on_one_node_all_but_the_periodic_lock(
        redis_cluster: RedisClusterNodes, go_bins: Path) -> None:
    """v1 ``cluster_mode`` with one seed node: broker and backend are ClusterClients, but v1's
    LockFactory ignores cluster_mode (NewUniversalClient on one address: a plain client), so
    a lock key on another master gets MOVED, which LockWithRetries reports as a failed lock:
    a v1 periodic task whose lock key is elsewhere is never sent."""
    lines = _mctopo(go_bins, "-flavour", "v1", "-broker", redis_cluster.url(1), "-redis-cluster")
    assert {op for op, d in lines.items() if not d["ok"]} == {"lock"}, lines
    assert lines["lock"]["error"] == "first lock: redis lock: failed to acquire lock"


@pytest.mark.parametrize("flavour", ["v2-goredis", "v2-redigo", "v1"])
def test_go_plain_client_on_cluster_fails_with_moved(redis_cluster: RedisClusterNodes,
                                                     go_bins: Path, flavour: str) -> None:
    """One node, no cluster setting: a plain client (go-redis Client or redigo) gets MOVED
    for every key whose slot lives on another master.  Task UUIDs spread over the slots, so
    among send/eta/group/chord (10+ keys) at least one lands elsewhere."""
    node = redis_cluster.masters()[0]
    lines = _mctopo(go_bins, "-flavour", flavour, "-broker", f"redis://{node.host}:{node.port}/0",
                    timeout="3s", probes="send,eta,group,chord")
    errors = [lines[op]["error"] for op in ("send", "eta", "group", "chord")]
    assert any("MOVED " in e for e in errors), errors
    assert all(e == "" or "MOVED " in e or "Timeout reached" in e or e == "no task sent"
               for e in errors), errors


def test_go_v1_cluster_mode_with_a_db_path_cannot_dial(redis_cluster: RedisClusterNodes,
                                                       go_bins: Path) -> None:
    """v1's factory splits what follows ``redis://`` on commas and hands the pieces to NewGR
    as addresses: ``/0`` stays part of the port."""
    node = redis_cluster.masters()[0]
    lines = _mctopo(go_bins, "-flavour", "v1", "-broker", f"redis://{node.host}:{node.port}/0",
                    "-redis-cluster", timeout="3s", probes="send")
    assert lines["send"]["error"] == (f"send: Set state pending error: dial tcp: lookup "
                                      f"tcp/{node.port}/0: unknown port")


@pytest.mark.slow
def test_go_through_a_manual_cluster_failover_loses_nothing(redis_cluster: RedisClusterNodes,
                                                            go_bins: Path) -> None:
    """300 tasks sent one every 20 ms while CLUSTER FAILOVER swaps a master and its replica:
    no send error, every result stored."""
    lines = _mctopo(go_bins, "-flavour", "v2-goredis", "-broker", redis_cluster.url(),
                    "-redis-cluster", probes="steady", timeout="20s",
                    during=lambda: redis_cluster.failover(redis_cluster.masters()[0]))
    assert lines["steady"]["ok"], lines["steady"]
    assert lines["steady"]["detail"].startswith("sent 300/300 (0 send errors")


# -- Redis Sentinel ------------------------------------------------------------------------

def _sentinel_args(s: RedisSentinelSet, *, password: bool = True, one: bool = False) -> list[str]:
    url = f"redis://{s.sentinel_addrs[0]}" if one else s.url()
    return ["-broker", url, "-redis-master-name", MASTER_NAME,
            *(["-redis-sentinel-password", SENTINEL_PASSWORD] if password else [])]


@pytest.mark.parametrize("one", [False, True], ids=["three sentinels", "one sentinel"])
def test_go_v2_through_sentinels_every_operation_works(redis_sentinel: RedisSentinelSet,
                                                       go_bins: Path, one: bool) -> None:
    lines = _mctopo(go_bins, "-flavour", "v2-goredis", *_sentinel_args(redis_sentinel, one=one))
    _assert_all_ok(lines)


@pytest.mark.parametrize("flavour", ["v2-goredis", "v1"])
def test_go_without_the_sentinel_password_is_refused(redis_sentinel: RedisSentinelSet,
                                                     go_bins: Path, flavour: str) -> None:
    """v2 without sentinel_password, and v1 always (it has no such setting)."""
    lines = _mctopo(go_bins, "-flavour", flavour, *_sentinel_args(redis_sentinel, password=False),
                    timeout="3s", probes="send")
    assert lines["send"]["error"] == (
        "send: Set state pending error: redis: all sentinels specified in configuration are "
        "unreachable: " + "\n".join(["NOAUTH Authentication required."] * 3))


@pytest.mark.slow
def test_go_v2_through_a_sentinel_master_kill(redis_sentinel: RedisSentinelSet,
                                              go_bins: Path) -> None:
    """The master is SIGKILLed 3 s into a 300-task run (one send every 20 ms; mctopo retries a
    failed send).  Go reconnects by itself to the promoted replica: every task is sent and
    most results come back, but Go loses a few tasks (a task popped whose state write failed
    is dropped, writes not yet replicated die with the master); docs/scaling.md has the
    figures."""
    killed = threading.Event()

    def kill() -> None:
        redis_sentinel.kill_master()
        killed.set()

    try:
        lines = _mctopo(go_bins, "-flavour", "v2-goredis", *_sentinel_args(redis_sentinel),
                        probes="steady", timeout="15s", during=kill)
    finally:
        redis_sentinel.restart_dead()
    assert killed.is_set()
    detail = lines["steady"]["detail"]
    print(detail, lines["worker_errors"].get("errors"))
    assert detail.startswith("sent 300/300 ")
    results = int(detail.rsplit("results ", 1)[1].split("/")[0])
    assert results >= 240, detail


# -- Python and Go v2 sharing a Sentinel deployment or a Redis Cluster ------------------------


def _sentinel_side(s: RedisSentinelSet) -> tuple[str, list[str], dict[str, Any], str,
                                               Callable[[str], bytes | None], Callable[[], None]]:
    """(URL, Go flags, Python's ``redis`` settings, a direct URL, read a key, close).  Waits
    until the set is stable: an earlier test may have killed and restarted a master."""
    master = s.wait_stable()

    def read(key: str) -> bytes | None:
        with s.master().client() as c:
            raw: bytes | None = c.get(key)
        return raw

    return (s.url(), ["-redis-master-name", MASTER_NAME, "-redis-sentinel-password",
                      SENTINEL_PASSWORD],
            {"master_name": MASTER_NAME, "sentinel_password": SENTINEL_PASSWORD},
            f"redis://{master.host}:{master.port}/0", read, lambda: None)


def _cluster_side(c: RedisClusterNodes) -> tuple[str, list[str], dict[str, Any], str,
                                                Callable[[str], bytes | None], Callable[[], None]]:
    c.wait_ok()
    client = c.client()
    node = c.masters()[0]
    return (c.url(), ["-redis-cluster"], {"cluster_enabled": True},
            f"redis://{node.host}:{node.port}/0", client.get, client.close)


@pytest.mark.parametrize("deployment", [pytest.param("sentinel", marks=pytest.mark.redis),
                                        pytest.param("cluster", marks=pytest.mark.redis)])
def test_python_and_go_v2_share_a_redis_deployment(request: pytest.FixtureRequest,
                                                   go_bins: Path, deployment: str) -> None:
    """One sentinel set (the sentinels' addresses, ``master_name``, ``sentinel_password``)
    or one Redis Cluster (every node's address, ``cluster_enabled``), the same settings on
    both sides, Go v2 with go-redis:

    * Python -> Go worker: the subset's echo types (stored Results byte for byte, Python's
      value), a countdown (Go's mover on the master);
    * Go producer -> Python worker: the same types (stored bytes, Go's read), a countdown
      (Python's mover);
    * one pool of both workers: 40 tasks, 10 chains of three steps, 5 groups of four, and
      10 chords of 5 racing to trigger: every callback runs once, every result is read by
      the other side."""
    from interop.tests.cases import ECHO_VALUES, go_read_check, same
    from interop.tests.harness import SUBSET_ECHO_TYPES, GoWorker, Num, results_bytes, run_producer
    from interop.tests.pyapp import make_app
    from machinery_compat import Arg, chain, chord, group

    side = (_sentinel_side if deployment == "sentinel" else _cluster_side)(
        request.getfixturevalue(f"redis_{deployment}"))
    url, flags, settings, direct, read, close = side  # direct: fail_n_times counters (unused)
    queue = f"{deployment}_{uuid.uuid4().hex[:8]}"
    values = [v for t in SUBSET_ECHO_TYPES for v in ECHO_VALUES[t]]
    py = make_app(url, queue, only={"add", *(v.task for v in values)}, counters=direct,
                  redis_settings=settings)

    def go_worker(tag: str) -> GoWorker:
        return GoWorker("v2-goredis", url, queue, concurrency=4,
                        delayed_poll_ms=100, extra=[*flags, "-counters", direct],
                        tag=f"{tag}-{queue}").start()

    def stored(task_id: str) -> bytes | None:
        return results_bytes(read(task_id))

    go = go_worker("go")
    worker = None
    try:
        # Python -> Go
        sent = [(v, py.app.send_task(v.task, args=[Arg(v.type, v.value)])) for v in values]
        at = time.time()
        later = py.app.send_task("add", args=[20, 22], countdown=1)
        problems = []
        for v, res in sent:
            got = res.get(timeout=30)
            if stored(res.task_id) != v.wire.encode() or not same(got, v.expected_py()):
                problems.append((v.type, v.value, stored(res.task_id), got))
            if len(go.tasks(uuid=res.task_id)) != 1:
                problems.append((v.type, "not run once by Go"))
        assert not problems, problems
        assert later.get(timeout=30) == 42
        assert len(go.tasks(uuid=later.task_id)) == 1
        assert time.time() - at >= 1.0
        # Go -> Python (the Go worker stopped: only Python consumes)
        go.stop()
        worker = py.app.worker(concurrency=4, poll_timeout=0.2,
                               delayed_poll_interval=0.05).start()
        lines = [{"id": i, "name": v.task, "args": [v.producer_arg()]}
                 for i, v in enumerate(values)]
        lines.append({"id": "eta", "name": "add", "countdown_ms": 1000,
                      "args": [{"type": "int64", "value": 40}, {"type": "int64", "value": 2}]})
        out = {o["id"]: o for o in run_producer("v2-goredis", url, lines,
                                                 queue=queue, extra=flags, parallel=4)}
        for i, v in enumerate(values):
            line = out[i]
            assert (line["state"], line["error"]) == ("SUCCESS", ""), (v.type, line)
            assert stored(line["uuid"]) == v.wire.encode(), (v.type, stored(line["uuid"]))
        go_read_check(out["eta"], [("int64", Num("42"))], dynamodb=False)
        assert out["eta"]["elapsed_ms"] >= 1000, out["eta"]
        ran = {r.uuid for r in py.executions.snapshot()}
        assert all(out[i]["uuid"] in ran for i in range(len(values))) and out["eta"]["uuid"] in ran
        # one pool: plain tasks and racing chords, each callback once
        go = go_worker("go-mixed")
        results = [py.app.send_task("add", args=[i, 1]) for i in range(40)]
        chords = [chord([py.app.signature("add", args=[c, m]) for m in range(5)],
                        py.app.signature("add", args=[1000])).apply_async() for c in range(10)]
        sig = py.app.signature
        chains = [chain(sig("add", args=[c, 1]), sig("add", args=[2]), sig("add", args=[3]))
                  .apply_async() for c in range(10)]
        groups = [group(*(sig("add", args=[g, m]) for m in range(4))).apply_async()
                  for g in range(5)]
        assert [r.get(timeout=60) for r in results] == [i + 1 for i in range(40)]
        assert [c.get(timeout=60) for c in chains] == [c + 6 for c in range(10)]
        assert [g.get(timeout=60) for g in groups] == [[g + m for m in range(4)]
                                                      for g in range(5)]
        assert [c.get(timeout=60) for c in chords] == [1000 + 5 * c + 10 for c in range(10)]
        ran_on_go = [e["uuid"] for e in go.tasks()]
        ran_on_py = [r.uuid for r in py.executions.snapshot()]
        ids = {r.task_id for r in results}
        assert ids & set(ran_on_go) and ids & set(ran_on_py), \
            (len(ids & set(ran_on_go)), len(ids & set(ran_on_py)))
        for c in chords:
            cb = c.callback.task_id
            assert ran_on_go.count(cb) + ran_on_py.count(cb) == 1, (cb, ran_on_go.count(cb))
    finally:
        go.stop()
        if worker is not None:
            worker.stop()
        py.close()
        close()
