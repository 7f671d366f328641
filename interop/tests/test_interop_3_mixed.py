"""Direction 3: one Go worker and one Python worker on the same queue, both producers.

* 1,000 ``add`` tasks, 500 sent by Go's producer (``-parallel``, ``wait: false``) while 500
  are sent from Python: every task runs exactly once (Go's ``task`` lines + the Python
  worker's own record), both workers take a share, every stored result has Go's exact
  bytes, and every result is readable by Python's and by Go's ``AsyncResult``.
* 200 delayed tasks (100 per producer, ETAs spread over one second) with both workers
  moving ``delayed_tasks`` every 50 ms (Go: WATCH/ZRANGEBYSCORE/MULTI/ZREM; Python: one
  Lua script): each moved and run exactly once, never before its ETA, both sides moving.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from interop.tests.harness import (
    MIXED,
    GoWorker,
    Num,
    RedisMonitor,
    parse_go_time,
    results_bytes,
    run_producer,
    wait_for,
)
from interop.tests.pyapp import PyApp, make_app
from machinery_compat import Arg, AsyncResult
from machinery_compat.worker import Worker
from tests.services import RedisServer

pytestmark = [pytest.mark.interop, pytest.mark.redis, pytest.mark.slow]

N_EACH = 500
GO_BASE, PY_BASE = 1_000_000, 2_000_000


class Pool:
    def __init__(self, flavour: str, url: str, queue: str, log_dir: Path) -> None:
        self.flavour, self.url, self.queue = flavour, url, queue
        self.go = GoWorker(flavour, url, queue, concurrency=4, delayed_poll_ms=50,
                           log_dir=log_dir)
        self.py: PyApp = make_app(url, queue, only={"add"})
        self.worker: Worker | None = None

    def start(self) -> Pool:
        self.go.start()
        self.worker = self.py.app.worker(concurrency=4, poll_timeout=0.1,
                                         delayed_poll_interval=0.05).start()
        return self

    def stop(self) -> None:
        try:
            if self.worker is not None:
                self.worker.stop(timeout=10)
        finally:
            self.py.close()
            self.go.stop()

    def run_counts(self) -> tuple[Counter[str], Counter[str]]:
        go = Counter(e["uuid"] for e in self.go.tasks())
        return go, self.py.executions.counts()


@pytest.fixture
def pool(flavour: str, go_bins: Path, new_db: Callable[[], str], tmp_path: Path) -> Iterator[Pool]:
    p = Pool(flavour, new_db(), f"q_mix_{flavour}", tmp_path)
    p.start()
    try:
        yield p
    finally:
        p.stop()


def _go_lines(n: int, base: int, **extra: Any) -> list[dict[str, Any]]:
    return [{"id": i, "name": "add", "wait": False, **extra,
             "args": [{"type": "int64", "value": i}, {"type": "int64", "value": base}]}
            for i in range(n)]


def _send_from_go_in_background(pool: Pool, lines: list[dict[str, Any]]) -> Callable[[], list]:
    out: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            out.extend(run_producer(pool.flavour, pool.url, lines, queue=pool.queue, parallel=8,
                                    timeout=60))
        except subprocess.TimeoutExpired as e:
            done = len((e.stdout or b"").splitlines())
            errors.append(AssertionError(
                f"mcproducer did not finish within {e.timeout}s ({done} of {len(lines)} "
                f"lines answered); stderr tail:\n"
                f"{(e.stderr or b'').decode(errors='replace')[-3000:]}"))
        except BaseException as e:  # reported by join()
            errors.append(e)

    t = threading.Thread(target=produce, name="go-producer")
    t.start()

    def join() -> list[dict[str, Any]]:
        t.join(120)
        assert not t.is_alive(), "mcproducer did not finish"
        if errors:
            raise errors[0]
        assert all(o["sent"] is True and o["error"] == "" for o in out), out[:3]
        return out

    return join


def _check_exactly_once(pool: Pool, expected: dict[str, int]) -> tuple[Counter[str], Counter[str]]:
    def all_counted() -> bool:
        go, py = pool.run_counts()
        return sum(go.values()) + sum(py.values()) >= len(expected)

    wait_for(all_counted, timeout=10, what="every run to be reported")
    go, py = pool.run_counts()
    both = go + py
    assert set(both) == set(expected), (len(both), len(expected))
    dupes = {u: n for u, n in both.items() if n != 1}
    assert not dupes, f"tasks run more than once: {dupes}"
    assert sum(go.values()) > 0 and sum(py.values()) > 0, \
        f"one worker did nothing: go={sum(go.values())} python={sum(py.values())}"
    return go, py


def _check_results(pool: Pool, expected: dict[str, int]) -> None:
    app = pool.py.app
    client = pool.py.counters
    deadline = time.monotonic() + 60  # one budget for all: a stuck pool fails fast
    for uuid, value in expected.items():
        left = max(0.5, deadline - time.monotonic())
        assert AsyncResult(uuid, app.backend).get(timeout=left) == value
    uuids = list(expected)
    for i in range(0, len(uuids), 200):
        chunk = uuids[i:i + 200]
        for uuid, raw in zip(chunk, client.mget(chunk), strict=True):
            # the same bytes whichever worker ran it
            assert results_bytes(raw) == f'[{{"Type":"int64","Value":{expected[uuid]}}}]'.encode(), raw
    reads = run_producer(pool.flavour, pool.url, [{"read": u, "timeout_ms": 5000} for u in uuids],
                         queue=pool.queue, parallel=16)
    bad = [r for r in reads if (r["state"], r["error"]) != ("SUCCESS", "")
           or [(x["go_type"], x["exact"]) for x in r["results"]]
           != [("int64", Num(str(expected[r["uuid"]])))]]
    assert not bad, bad[:5]
    assert client.llen(pool.queue) == 0
    assert client.exists(f"{pool.queue}.dead", "delayed_tasks") == 0


@pytest.mark.matrix(MIXED, "1,000 add tasks (500 Go + 500 Python producers), Go + Python workers")
def test_mixed_pool(pool: Pool, record_property: Callable[[str, object], None]) -> None:
    join = _send_from_go_in_background(pool, _go_lines(N_EACH, GO_BASE))
    app = pool.py.app
    expected: dict[str, int] = {}
    for i in range(N_EACH):
        res = app.send_task("add", args=[Arg("int64", i), Arg("int64", PY_BASE)])
        expected[res.id] = i + PY_BASE
    for o in join():
        expected[o["uuid"]] = o["id"] + GO_BASE
    assert len(expected) == 2 * N_EACH
    _check_results(pool, expected)
    go, py = _check_exactly_once(pool, expected)
    record_property("note", f"Go worker ran {sum(go.values())}, Python worker {sum(py.values())}")


@pytest.mark.matrix(MIXED, "200 delayed tasks (ETAs from both sides) moved by both workers")
def test_mixed_delayed(pool: Pool, interop_redis: RedisServer,
                       record_property: Callable[[str, object], None]) -> None:
    db = int(pool.url.rsplit("/", 1)[1])
    mon = RedisMonitor(interop_redis.host, interop_redis.port, db).start()
    try:
        n = 100
        lines = _go_lines(n, GO_BASE)
        for line in lines:
            line["countdown_ms"] = 1000 + 10 * line["id"]
        join = _send_from_go_in_background(pool, lines)
        app = pool.py.app
        expected: dict[str, int] = {}
        for i in range(n):
            res = app.send_task("add", args=[Arg("int64", i), Arg("int64", PY_BASE)],
                                countdown=1.0 + 0.01 * i)
            expected[res.id] = i + PY_BASE
        for o in join():
            expected[o["uuid"]] = o["id"] + GO_BASE
        _check_results(pool, expected)
        _check_exactly_once(pool, expected)
    finally:
        mon.stop()
    # nothing ran before its ETA
    for ev in pool.go.tasks():
        assert ev["eta"] is not None and parse_go_time(ev["ts"]) >= parse_go_time(ev["eta"]), ev
    for run in pool.py.executions.snapshot():
        assert run.eta is not None and run.at >= run.eta, run
    # both sides moved some: Go with a plain ZREM, Python inside its Lua script
    zrems = [c for c in mon.calls("ZREM") if c.args[1:2] == [b"delayed_tasks"]]
    by_lua = sum(1 for c in zrems if c.client == "lua")
    by_go = len(zrems) - by_lua
    assert by_lua + by_go >= 2 * n, (by_lua, by_go)
    assert by_go > 0 and by_lua > 0, (by_lua, by_go)
    record_property("note", f"delayed tasks moved by the Go worker {by_go}, by Python {by_lua}")
