"""The Celery bridge (``machinery_compat.celery``) between a real ``celery worker`` and real
Go Machinery programs, on Redis (v2 with go-redis) and on AMQP + Redis backend (v1).

One Celery worker subprocess (``celery -A celery_bridge worker``, the app of
examples/celery_bridge.py; prefork pool on Redis, threads on AMQP) consumes the Machinery queue; a Go ``mcworker`` consumes another.
``mcproducer`` (Go) sends ``add`` (runs Celery's ``bridge.add``: Go reads an int64 42),
``fail`` (Go reads FAILURE with the Python error text) and ``relay_add`` (a Celery task calling
Go's ``add`` with ``machinery_send``: the Go worker runs it, the Celery task returns its
result to the Go producer) and ``flaky`` (fails once: Machinery's retry, then SUCCESS); a
Python producer's chain and chord send their Go callbacks from the bridge; then the
example's Celery chain ``double(5) -> go_task("add", 1)``
runs its second step on the Go worker (11)."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from interop.tests.harness import REPO, StackSpec, wait_for
from interop.tests.single_stack import SINGLE_STACK_SPECS, single_stack
from machinery_compat.canvas import chord
from tests.services import die_with_parent_prefix

pytestmark = [pytest.mark.interop, pytest.mark.redis]

_serial = itertools.count(1)
EXAMPLES = REPO / "examples"
#: the Celery pool of each cell (the bridge hands tasks to any pool the same way on any
#: broker, so each pool runs once): prefork through the worker's event loop, threads
POOLS = {"redis": "prefork", "amqp+redis": "threads"}


def _int64(v: int) -> dict[str, Any]:
    return {"type": "int64", "value": v}


class CeleryWorker:
    """``celery -A celery_bridge worker -P <pool>`` with the bridge on, its log in a file."""

    def __init__(self, env: dict[str, str], pool: str) -> None:
        self.env = env
        self.pool = pool
        self.log = Path(tempfile.mkstemp(prefix="celery-bridge-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> CeleryWorker:
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [*die_with_parent_prefix(), sys.executable, "-m", "celery", "--workdir", str(EXAMPLES), "-A",
                 "celery_bridge", "worker", "-P", self.pool, "-c", "2", "--loglevel", "INFO",
                 "--without-gossip", "--without-mingle", "--without-heartbeat",
                 "-n", f"bridge{next(_serial)}@%h"],
                cwd=REPO, env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: "Machinery bridge consuming" in self.text() or
                     self.proc is None or self.proc.poll() is not None, 60,
                     "the Celery worker's Machinery bridge to start")
        except AssertionError:
            self.kill()
            raise AssertionError(f"celery worker did not start the bridge:\n{self.text()}") from None
        assert self.proc.poll() is None, f"celery worker exited:\n{self.text()}"
        return self

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int | None:
        """Warm shutdown (SIGTERM); its exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc is not None else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def go_adds(go: Any, n: int) -> list[Any]:
    """The arguments of the Go worker's ``add`` runs, once it printed ``n`` (its event lines
    are read by a thread of their own: a result may be read before its line is)."""
    wait_for(lambda: len(go.tasks(name="add")) >= n, 10, f"{n} add runs on the Go worker")
    return [t["args"] for t in go.tasks(name="add")]


@pytest.mark.parametrize("spec", SINGLE_STACK_SPECS, ids=lambda s: s.id)
def test_go_and_celery_through_the_bridge(spec: StackSpec, go_bins: Any, interop_redis: Any,
                                          new_db: Callable[[], str],
                                          request: pytest.FixtureRequest) -> None:
    n = next(_serial)
    bridge_q, go_q = f"q_celery_bridge_{n}", f"q_celery_go_{n}"
    stack, py = single_stack(spec, bridge_q, interop_redis, new_db, request)
    celery_db = new_db()
    env = {**os.environ, "BROKER": stack.broker, "RESULT_BACKEND": stack.backend,
           "DEFAULT_QUEUE": bridge_q, "GO_QUEUE": go_q, "CELERY_BROKER_URL": celery_db,
           "CELERY_RESULT_BACKEND": celery_db, "BRIDGE_POLL_TIMEOUT": "0.1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    if stack.amqp_broker:
        env.update(AMQP_EXCHANGE="machinery_exchange", AMQP_EXCHANGE_TYPE="direct",
                   AMQP_BINDING_KEY=bridge_q, AMQP_PREFETCH_COUNT="3")
    go = stack.with_options(queue=go_q).go_worker().start()
    prefork = POOLS[spec.kind] == "prefork"
    celery = CeleryWorker(env, POOLS[spec.kind])
    try:
        celery.start()
        out = stack.produce([
            {"id": "add", "name": "add", "args": [_int64(20), _int64(22)], "timeout_ms": 20000},
            {"id": "fail", "name": "fail", "args": [{"type": "string", "value": "boom"}],
             "timeout_ms": 20000},
            {"id": "relay", "name": "relay_add", "args": [_int64(2), _int64(3)],
             "timeout_ms": 20000},
            {"id": "flaky", "name": "flaky", "args": [{"type": "string", "value": "hi"}],
             "retry_count": 2, "timeout_ms": 20000},
            *([{"id": "slow", "name": "slow", "args": [{"type": "float64", "value": 30.0}],
                "timeout_ms": 20000}] if prefork else []),
        ], parallel=5)
        got = {o["id"]: o for o in out}
        assert got["add"]["state"] == "SUCCESS", (got, celery.text()[-3000:])
        assert [(r["go_type"], r["value"]) for r in got["add"]["results"]] == [("int64", 42)]
        assert got["fail"]["state"] == "FAILURE" and got["fail"]["error"] == "boom", got["fail"]
        assert got["relay"]["state"] == "SUCCESS", (got["relay"], celery.text()[-3000:])
        assert [(r["go_type"], r["value"]) for r in got["relay"]["results"]] == [("int64", 5)]
        assert go_adds(go, 1) == [[2, 3]]  # machinery_send's add ran on Go
        # Machinery's retry: RetryCount 2, the first run failed, the second (retries=1) ran with
        # the message's task id in Celery's self.request
        flaky = got["flaky"]
        assert flaky["state"] == "SUCCESS", (flaky, celery.text()[-3000:])
        assert flaky["results"][0]["value"] == f"hi {flaky['uuid']} 1"
        if prefork:  # the Celery task's time_limit (2 s): the child is killed, Go reads why
            assert got["slow"]["state"] == "FAILURE", got["slow"]
            assert got["slow"]["error"] == "Hard time limit (2s) exceeded", got["slow"]
        # OnSuccess and chord callbacks the bridge sends to the Go worker (results appended)
        add, go_add = py.app.signature("add"), py.app.signature("add", queue=go_q)
        linked = (add.clone([40, 2]) | go_add.clone([100])).apply_async()
        joined = chord([add.clone([1]), add.clone([2])], go_add.clone([1000])).apply_async()
        assert linked.get(timeout=20) == 142 and joined.get(timeout=20) == 1003
        assert sorted(go_adds(go, 3)) == [[2, 3], [100, 42], [1000, 1, 2]]
        # a Celery chain with a Go step: double(5) on Celery, add(1, 10) on the Go worker
        chain = subprocess.run([sys.executable, str(EXAMPLES / "celery_bridge.py"), "chain", "5"],
                               cwd=REPO, env=env, capture_output=True, text=True, timeout=90,
                               check=False)
        assert chain.returncode == 0 and chain.stdout.strip() == "11", (
            chain.stdout + chain.stderr[-3000:] + celery.text()[-3000:])
        assert go_adds(go, 4)[-1] == [1, 10]
        assert stack.queue_depth() == 0  # every message the bridge took was settled
    finally:
        code = celery.stop()
        go.stop()
        py.close()
    log = celery.text()
    assert code == 0, log[-3000:]
    assert "Task add[" in log and "succeeded" in log
    assert "Machinery bridge" in log and f"worker stopped after {9 if prefork else 8} tasks" in log, log[-3000:]
