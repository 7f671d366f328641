"""Crash and outage rigs shared by ``tests/integration/test_redis_crash.py`` and
``bench/soak.py`` (``make soak``).

* :class:`PyWorker`: ``machinery-compat worker -A tests.integration.apps.crash_app:app`` as a
  subprocess, started under ``setpriv --pdeathsig KILL`` (it cannot outlive the process that
  started it), killed with SIGKILL (:meth:`PyWorker.kill`) or stopped with SIGTERM.
* :class:`GoWorker`: ``interop/bin/mcworker`` on the same queue; counts the tasks it ran
  from its JSON stdout.
* :class:`Producer`: sends ``work`` (or ``add``) tasks from a thread at a steady rate.
* :func:`kill_loop`: kill -9 a worker at random moments while it runs tasks, restart it.
* :func:`tally`: lost (not SUCCESS), duplicated (ran more than once) and what is left in
  queues and processing lists.

Never forks the calling process: every worker is a fresh interpreter or a Go binary.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from machinery_compat import Machinery
from machinery_compat.config import AMQPConfig, Config

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.integration.apps.crash_app:app"
RUNS_KEY = "crash:runs"
STARTED_KEY = "crash:started"
QUEUE = "crash_tasks"
GO_WORKER = ROOT / "interop" / "bin" / "mcworker"


def kill_with_parent() -> list[str]:
    """``setpriv --pdeathsig KILL --``: Linux SIGKILLs the child when the thread that started
    it dies (nothing left behind by a crashed or killed test run)."""
    setpriv = shutil.which("setpriv")
    if not sys.platform.startswith("linux") or setpriv is None:
        return []
    return [setpriv, "--pdeathsig", "KILL", "--"]


def crash_config(broker: str, backend: str, queue: str = QUEUE) -> Config:
    """The crash app's broker side for ``broker`` with results on ``backend`` (an AMQP queue
    is bound with its own name as binding key, as ``crash_app`` does)."""
    amqp = ({"amqp": AMQPConfig(binding_key=queue)}
            if broker.startswith(("amqp://", "amqps://")) else {})
    return Config.from_url(broker, backend, default_queue=queue, **amqp)


class PyWorker:
    """A Python worker subprocess on the crash app (``broker``: another broker URL, e.g.
    AMQP, with results on the Redis ``url``)."""

    def __init__(self, url: str, log_dir: Path, *, name: str = "py", concurrency: int = 4,
                 heartbeat_ttl: int = 1, queue: str = QUEUE, crash_safe: bool = True,
                 broker: str | None = None) -> None:
        self.url = url
        self.broker = broker
        self.name = name
        self.concurrency = concurrency
        self.heartbeat_ttl = heartbeat_ttl
        self.queue = queue
        self.crash_safe = crash_safe
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> PyWorker:
        env = dict(os.environ, MC_CRASH_URL=self.url, MC_CRASH_QUEUE=self.queue,
                   MC_CRASH_TTL=str(self.heartbeat_ttl),
                   MC_CRASH_CRASH_SAFE="1" if self.crash_safe else "0",
                   MC_CRASH_BROKER=self.broker or "", PYTHONPATH=str(ROOT))
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {self.starts}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [*kill_with_parent(), sys.executable, "-m", "machinery_compat", "worker", "-A",
                 APP, "-c", str(self.concurrency), "-l", "warning"],
                cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self.starts += 1
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL (``kill -9``), and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (graceful: finish running tasks); the exit status."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"worker {self.name} did not stop on SIGTERM; log:\n"
                                 f"{self.log_tail()}") from None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class GoWorker:
    """``interop/bin/mcworker`` (Go Machinery v2, redigo) on the same queue; ``runs`` counts
    the task UUIDs it ran, from its stdout."""

    def __init__(self, url: str, log_dir: Path, *, queue: str = QUEUE, concurrency: int = 4,
                 flavour: str = "v2-redigo") -> None:
        self.args = [str(GO_WORKER), "-flavour", flavour, "-broker", url, "-queue", queue,
                     "-concurrency", str(concurrency), "-tag", "go-crash"]
        self.stderr_path = log_dir / "go-worker.stderr.log"
        self.runs: Counter[str] = Counter()
        self.ready = threading.Event()
        self.proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None

    @staticmethod
    def available() -> bool:
        return GO_WORKER.is_file() and os.access(GO_WORKER, os.X_OK)

    def start(self, timeout: float = 30.0) -> GoWorker:
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen([*kill_with_parent(), *self.args],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=err)
        self._reader = threading.Thread(target=self._read, daemon=True, name="go-crash-reader")
        self._reader.start()
        if not self.ready.wait(timeout):
            self.kill()
            raise AssertionError(f"mcworker not ready within {timeout}s: "
                                 f"{self.stderr_path.read_text(errors='replace')[-2000:]}")
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("event") == "ready":
                self.ready.set()
            elif ev.get("event") == "task" and ev.get("uuid"):
                self.runs[ev["uuid"]] += 1

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 40.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout)
        self._close()
        return rc

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._close()

    def _close(self) -> None:
        if self._reader is not None:
            self._reader.join(5)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


class Producer:
    """Sends ``n`` tasks from a thread, spread over ``seconds``: ``work(i, ms)`` with ``ms``
    random in ``ms_range``, ``sleep(ms)`` or ``add(i, 1)`` (both of which Go's worker has
    too).  ``broker``: another broker URL (e.g. AMQP, bound as the crash app binds it), with
    results on the Redis ``url``."""

    def __init__(self, url: str, n: int, *, seconds: float = 0.0, task: str = "work",
                 ms_range: tuple[int, int] = (5, 40), seed: int = 0, queue: str = QUEUE,
                 broker: str | None = None) -> None:
        if broker is None:
            self.app = Machinery(broker=url, result_backend=url, default_queue=queue)
        else:
            self.app = Machinery(config=crash_config(broker, url, queue))
        self.n = n
        self.seconds = seconds
        self.task = task
        self.ms_range = ms_range
        self.rng = random.Random(seed)
        self.uuids: list[str] = []
        self.errors: list[BaseException] = []
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="crash-producer")

    def start(self) -> Producer:
        self._thread.start()
        return self

    def _run(self) -> None:
        began = time.monotonic()
        try:
            for i in range(self.n):
                ms = self.rng.randint(*self.ms_range)
                args = {"work": [i, ms], "sleep": [ms]}.get(self.task, [i, 1])
                while True:
                    try:
                        self.uuids.append(self.app.send_task(self.task, args=args).id)
                        break
                    except Exception as e:  # an outage: a producer retries (documented)
                        self.errors.append(e)
                        time.sleep(0.2)
                due = began + self.seconds * (i + 1) / self.n
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        finally:
            self.done.set()

    def join(self, timeout: float = 120.0) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "producer still sending"

    def close(self) -> None:
        self.app.close()


@dataclass
class Tally:
    tasks: int
    lost: list[str]
    #: runs to the end beyond the first (a task that completed, then ran again)
    duplicated: int
    #: starts beyond the first (a task whose worker died under it, run again)
    restarted: int
    ran_twice_or_more: int
    runs: Counter[str]
    left_in_queues: int
    left_in_processing: int
    kills: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        parts = [f"kills={self.kills}", f"tasks={self.tasks}", f"lost={len(self.lost)}",
                 f"duplicated={self.duplicated}", f"restarted={self.restarted}",
                 f"left_in_queues={self.left_in_queues}",
                 f"left_in_processing={self.left_in_processing}"]
        parts += [f"{k}={v}" for k, v in self.extra.items()]
        return " ".join(parts)


def states(client: redis.Redis, uuids: Sequence[str]) -> list[str]:
    """The State of each task (``"-"`` when none is stored)."""
    out: list[str] = []
    for i in range(0, len(uuids), 1000):
        for raw in client.mget(list(uuids[i:i + 1000])):
            out.append(json.loads(raw)["State"] if raw else "-")
    return out


def done_count(client: redis.Redis, uuids: Sequence[str]) -> int:
    return sum(1 for s in states(client, uuids) if s == "SUCCESS")


def wait_all_done(client: redis.Redis, uuids: Sequence[str], timeout: float,
                  check: Callable[[], None] | None = None) -> None:
    """Until every task is SUCCESS (AssertionError with the counts after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        if check is not None:
            check()
        n = done_count(client, uuids)
        if n == len(uuids):
            return
        if time.monotonic() > deadline:
            st = Counter(states(client, uuids))
            raise AssertionError(f"{len(uuids) - n} of {len(uuids)} tasks not SUCCESS after "
                                 f"{timeout}s: {dict(st)}")
        time.sleep(0.2)


def _count_runs(client: redis.Redis, key: str) -> Counter[str]:
    """Runs per task UUID from ``"<uuid> <run token>"`` entries (one run recorded twice, by a
    write retried after a lost reply, counts once)."""
    return Counter(entry.split()[0] for entry in {r.decode() for r in client.lrange(key, 0, -1)})


def tally(client: redis.Redis, uuids: Sequence[str], *, queue: str = QUEUE,
          extra_runs: Counter[str] | None = None, kills: int = 0) -> Tally:
    st = states(client, uuids)
    lost = [u for u, s in zip(uuids, st, strict=True) if s != "SUCCESS"]
    runs = _count_runs(client, RUNS_KEY)
    if extra_runs:
        runs.update(extra_runs)
    duplicated = sum(c - 1 for c in runs.values() if c > 1)
    started = _count_runs(client, STARTED_KEY)
    restarted = sum(c - 1 for c in started.values() if c > 1)
    processing = sum(int(client.llen(k))
                     for k in client.scan_iter("machinery_compat:processing:*"))
    return Tally(len(uuids), lost, duplicated, restarted, sum(1 for c in runs.values() if c > 1),
                 runs, int(client.llen(queue)), processing, kills)


def kill_loop(start: Callable[[], PyWorker], client: redis.Redis, kills: int,
              rng: random.Random, *, busy: Callable[[], bool],
              min_runs: int = 10, max_pause: float = 0.3,
              timeout: float = 30.0) -> tuple[PyWorker, int]:
    """Start a worker; ``kills`` times: once it has run ``min_runs`` tasks since it started,
    wait a random moment (up to ``max_pause`` s) and kill -9 it, then start a new one.
    Stops early when ``busy()`` says there is no work left.  Returns the last worker (running)
    and how many kills were done."""
    worker = start()
    done = 0
    while done < kills:
        base = client.llen(RUNS_KEY)
        deadline = time.monotonic() + timeout
        while client.llen(RUNS_KEY) < base + min_runs:
            if not busy() or time.monotonic() > deadline:
                return worker, done
            if not worker.alive():
                raise AssertionError(f"worker exited by itself:\n{worker.log_tail()}")
            time.sleep(0.02)
        time.sleep(rng.uniform(0, max_pause))
        worker.kill()
        done += 1
        worker = start()
    return worker, done
