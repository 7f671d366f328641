"""``machinery-compat worker --processes 2`` (issue #13): two forked worker processes under a
supervisor, on a real Redis (crash-safe consumption) and a real RabbitMQ (Redis results).

* the two processes drain the queue together (two registered consumers, two pids), results
  stored as SUCCESS;
* SIGTERM to the supervisor stops both gracefully: every task that started finished, nothing
  is left in a processing list, nothing ran twice, and a fresh worker drains the rest;
* ``kill -9`` of one child: the supervisor logs it and starts it again; the task it was running
  is recovered (Redis: its processing list re-queued once its heartbeat expired; AMQP:
  redelivered) and every task reaches SUCCESS.

Workers are ``machinery-compat worker -A tests.integration.apps.crash_app:app`` subprocesses
(fresh interpreters under ``setpriv --pdeathsig KILL``); this process never forks.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import kombu
import pytest
import redis

from .crash_harness import (
    APP,
    ROOT,
    STARTED_KEY,
    Producer,
    PyWorker,
    _count_runs,
    kill_with_parent,
    tally,
    wait_all_done,
)

pytestmark = pytest.mark.slow

TASKS = 120


class ProcWorker(PyWorker):
    """:class:`PyWorker` with ``--processes``."""

    def __init__(self, *args: object, processes: int = 2, extra: tuple[str, ...] = (),
                 **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.processes = processes
        self.extra = extra

    def start(self) -> ProcWorker:
        env = dict(os.environ, MC_CRASH_URL=self.url, MC_CRASH_QUEUE=self.queue,
                   MC_CRASH_TTL=str(self.heartbeat_ttl), MC_CRASH_CRASH_SAFE="1",
                   MC_CRASH_BROKER=self.broker or "", PYTHONPATH=str(ROOT))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*kill_with_parent(), sys.executable, "-m", "machinery_compat", "worker", "-A",
                 APP, "-c", str(self.concurrency), "--processes", str(self.processes),
                 "-l", "info", *self.extra],
                cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self.starts += 1
        return self

    def children(self) -> list[int]:
        """The pids of the supervisor's children (from /proc)."""
        assert self.proc is not None
        out = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                out.append(int(entry))
        return sorted(out)


def _until(what: str, check: Callable[[], bool], timeout: float, worker: ProcWorker) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}\n{worker.log_tail()}")
        if not worker.alive():
            raise AssertionError(f"supervisor exited while waiting for {what}:\n"
                                 f"{worker.log_tail()}")
        time.sleep(0.05)


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    c.delete("crash:runs", STARTED_KEY)
    yield c
    c.close()


def _started(client: redis.Redis) -> int:
    return int(client.llen(STARTED_KEY))


def test_redis_two_processes_drain_and_stop_gracefully(redis_url: str, client: redis.Redis,
                                                       tmp_path: Path) -> None:
    queue = f"procs_{uuid.uuid4().hex[:8]}"
    producer = Producer(redis_url, TASKS, seed=3, queue=queue, ms_range=(20, 60)).start()
    producer.join()
    worker = ProcWorker(redis_url, tmp_path, queue=queue, concurrency=4).start()
    try:
        _until("two children", lambda: len(worker.children()) == 2, 30, worker)
        # both consume: two registered crash-safe consumers, with the two children's pids
        _until("two registered consumers", lambda: client.hlen("machinery_compat:workers") == 2,
               30, worker)
        pids = {json.loads(v)["pid"] for v in client.hvals("machinery_compat:workers")}
        assert pids == set(worker.children()), (pids, worker.children())
        _until("30 tasks started", lambda: _started(client) >= 30, 60, worker)
        assert worker.stop(60) == 0, worker.log_tail()
        after = tally(client, producer.uuids, queue=queue)
        started = _count_runs(client, STARTED_KEY)
        # graceful: each task that started ran to the end, once; nothing held back
        assert set(started) == set(after.runs), worker.log_tail()
        assert max(started.values()) == 1 and after.duplicated == 0, after.line()
        assert after.left_in_processing == 0, after.line()
        assert after.left_in_queues == TASKS - len(after.runs) > 0, after.line()
        assert client.hlen("machinery_compat:workers") == 0
        # a fresh supervisor drains the rest; every task ran exactly once
        worker = ProcWorker(redis_url, tmp_path, queue=queue, concurrency=4).start()
        wait_all_done(client, producer.uuids, 90)
        assert worker.stop(60) == 0, worker.log_tail()
        final = tally(client, producer.uuids, queue=queue)
        assert final.lost == [] and final.duplicated == 0 and final.restarted == 0, final.line()
        assert len(final.runs) == TASKS
    finally:
        worker.kill()
        producer.close()


def _kill_one_child(worker: ProcWorker, client: redis.Redis, runs_before: int) -> int:
    _until("two children", lambda: len(worker.children()) == 2, 30, worker)
    _until("tasks running", lambda: _started(client) >= runs_before, 60, worker)
    victim = worker.children()[0]
    os.kill(victim, signal.SIGKILL)
    _until("the killed child replaced",
           lambda: len(worker.children()) == 2 and victim not in worker.children(), 30, worker)
    _until("restart logged", lambda: f"(pid {victim}) was killed by SIGKILL" in
           worker.log_tail(100_000), 10, worker)
    return victim


def test_redis_killed_child_is_restarted_and_its_task_recovered(
        redis_url: str, client: redis.Redis, tmp_path: Path) -> None:
    queue = f"procs_{uuid.uuid4().hex[:8]}"
    # long tasks: the killed child is surely running one (and holds prefetched ones)
    producer = Producer(redis_url, 40, seed=4, queue=queue, ms_range=(300, 500)).start()
    producer.join()
    worker = ProcWorker(redis_url, tmp_path, queue=queue, concurrency=4).start()
    try:
        _kill_one_child(worker, client, 6)
        wait_all_done(client, producer.uuids, 120, check=lambda: None)
        assert worker.stop(60) == 0, worker.log_tail()
        t = tally(client, producer.uuids, queue=queue)
        started = _count_runs(client, STARTED_KEY)
        assert t.lost == [] and t.left_in_processing == 0 and t.left_in_queues == 0, t.line()
        # what the killed child had started ran again in another process: recovered
        assert t.restarted >= 1, t.line()
        # only what it was running (2 threads) starts again; a run killed between its last
        # record and its SUCCESS write counts as duplicated (at-least-once)
        assert t.restarted <= 2 and t.duplicated <= 1, t.line()
        assert max(started.values()) <= 2
        assert "re-queued" in worker.log_tail(200_000), worker.log_tail()
    finally:
        worker.kill()
        producer.close()


@pytest.fixture
def amqp_queue(rabbitmq_url: str) -> Iterator[str]:
    name = f"procs_amqp_{uuid.uuid4().hex[:8]}"
    yield name
    with kombu.Connection(rabbitmq_url, connect_timeout=5) as conn:
        conn.default_channel.queue_delete(name)


@pytest.mark.rabbitmq
def test_amqp_two_processes_kill_and_graceful_stop(rabbitmq_url: str, redis_url: str,
                                                   client: redis.Redis, amqp_queue: str,
                                                   tmp_path: Path) -> None:
    producer = Producer(redis_url, 60, seed=5, queue=amqp_queue, broker=rabbitmq_url,
                        ms_range=(200, 300)).start()
    producer.join()
    worker = ProcWorker(redis_url, tmp_path, queue=amqp_queue, concurrency=4,
                        broker=rabbitmq_url).start()
    try:
        _kill_one_child(worker, client, 6)
        _until("30 tasks started", lambda: _started(client) >= 30, 60, worker)
        assert worker.stop(60) == 0, worker.log_tail()
        mid = tally(client, producer.uuids, queue=amqp_queue)
        started = _count_runs(client, STARTED_KEY)
        # graceful: no task left half-run by the stop (only the killed child's may have)
        unfinished = set(started) - set(mid.runs)
        assert len(unfinished) <= 2, (unfinished, mid.line())
        worker = ProcWorker(redis_url, tmp_path, queue=amqp_queue, concurrency=4,
                            broker=rabbitmq_url).start()
        wait_all_done(client, producer.uuids, 120)
        assert worker.stop(60) == 0, worker.log_tail()
        t = tally(client, producer.uuids, queue=amqp_queue)
        assert t.lost == [] and t.duplicated <= 1, t.line()
        assert 1 <= t.restarted <= 2, t.line()  # the killed child's running task, redelivered
        assert len(t.runs) == 60
    finally:
        worker.kill()
        producer.close()


def test_redis_max_memory_restarts_each_child_and_second_sigterm_quits(
        redis_url: str, client: redis.Redis, tmp_path: Path) -> None:
    """``--max-memory 1K``: each child stops after a task and is started afresh at once (every
    task still runs once); then long tasks and two SIGTERMs: the children quit at once."""
    queue = f"procs_{uuid.uuid4().hex[:8]}"
    producer = Producer(redis_url, 12, seed=6, queue=queue, task="add").start()
    producer.join()
    worker = ProcWorker(redis_url, tmp_path, queue=queue, concurrency=2,
                        extra=("--max-memory", "1K")).start()
    try:
        wait_all_done(client, producer.uuids, 90)
        _until("children back", lambda: len(worker.children()) == 2, 30, worker)
        assert worker.log_tail(200_000).count("stopped past max_memory") >= 2, worker.log_tail()
        assert worker.stop(60) == 0, worker.log_tail()
        t = tally(client, producer.uuids, queue=queue)
        assert t.lost == [] and t.duplicated == 0 and len(t.runs) == 12, t.line()

        slow = Producer(redis_url, 4, seed=7, queue=queue, ms_range=(20_000, 20_000)).start()
        slow.join()
        worker = ProcWorker(redis_url, tmp_path, queue=queue, concurrency=2).start()
        _until("both slow tasks running", lambda: _started(client) >= 2, 30, worker)
        assert worker.proc is not None
        worker.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert worker.alive()  # graceful: waiting for the 20 s tasks
        began = time.monotonic()
        worker.proc.send_signal(signal.SIGTERM)
        assert worker.proc.wait(10) == 0, worker.log_tail()
        assert time.monotonic() - began < 5, worker.log_tail()
        assert "quit at once" in worker.log_tail(), worker.log_tail()
        slow.close()
    finally:
        worker.kill()
        producer.close()


def _thread_cpus(pid: int) -> set[frozenset[int]]:
    """The CPU sets of the threads of ``pid`` (from the kernel)."""
    out = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):  # the thread exited meanwhile
            out.add(frozenset(os.sched_getaffinity(int(tid))))
    return out


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux only")
def test_cpu_affinity_pins_one_cpu_per_process(redis_url: str, client: redis.Redis,
                                               tmp_path: Path) -> None:
    """``--processes 2 --cpu-affinity all``: every thread of child i on the i-th CPU (one
    each), the supervisor left alone; then one process pinned to the last CPU; a CPU this
    machine lacks is a usage error."""
    cpus = sorted(os.sched_getaffinity(0))
    queue = f"procs_{uuid.uuid4().hex[:8]}"
    producer = Producer(redis_url, 40, seed=8, queue=queue, task="add").start()
    producer.join()
    worker = ProcWorker(redis_url, tmp_path, queue=queue, concurrency=4,
                        extra=("--cpu-affinity", "all")).start()
    try:
        wait_all_done(client, producer.uuids, 90)
        _until("two children", lambda: len(worker.children()) == 2, 30, worker)
        pinned = {pid: _thread_cpus(pid) for pid in worker.children()}
        for pid, sets in pinned.items():
            assert len(sets) == 1 and len(next(iter(sets))) == 1, (pid, sets)
        used = sorted(c for sets in pinned.values() for s in sets for c in s)
        assert used == sorted(cpus[i % len(cpus)] for i in range(2)), (used, cpus)
        assert worker.proc is not None
        assert _thread_cpus(worker.proc.pid) == {frozenset(cpus)}
        assert worker.log_tail(100_000).count("pinned to CPU(s)") == 2, worker.log_tail()
        assert worker.stop(60) == 0, worker.log_tail()

        more = Producer(redis_url, 20, seed=9, queue=queue, task="add").start()
        more.join()
        worker = ProcWorker(redis_url, tmp_path, queue=queue, concurrency=4, processes=1,
                            extra=("--cpu-affinity", str(cpus[-1]))).start()
        wait_all_done(client, more.uuids, 90)
        assert worker.proc is not None
        assert _thread_cpus(worker.proc.pid) == {frozenset([cpus[-1]])}
        assert worker.stop(60) == 0, worker.log_tail()
        more.close()

        bad = subprocess.run(
            [sys.executable, "-m", "machinery_compat", "worker", "-A", APP, "--cpu-affinity",
             str(max(cpus) + 1000)], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert bad.returncode == 2, (bad.returncode, bad.stderr)
        assert f"CPU(s) {max(cpus) + 1000} not available to this process" in bad.stderr
    finally:
        worker.kill()
        producer.close()
