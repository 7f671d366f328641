"""Producer and worker throughput on Redis: machinery_compat vs Celery vs Go Machinery.

``python -m bench.redis_bench [--n 20000] [--concurrency 8] [--skip-celery] [--skip-go]``

Starts a private ``redis-server`` on a free loopback port (``--save '' --appendonly no``),
measures, prints one Markdown table and writes it to ``bench/results/latest.md``.  Every
process it starts (Redis, workers, producers) is stopped on exit, Ctrl-C or error.

Every implementation runs the same task, ``add`` with one integer argument 1 (the sum of
its arguments), with its results backend on the same Redis; the database is flushed
between implementations.  How each number is measured:

* producer: N sends from one thread, each a complete send (machinery_compat and Go: the
  PENDING state and the message; Celery: the message, plus the result subscription Celery
  makes for every ``apply_async`` when a Redis result backend is configured).  Python
  producers are timed around the send loop, in-process; the Go producer (``mcproducer``,
  one goroutine) by wall time minus that of a one-task run (process start-up).
* worker drain: the N messages the producer queued are moved aside (``RENAME``); the worker
  process is started with concurrency C and, once it is blocked on an empty queue
  (``CLIENT LIST`` shows it in BLPOP/BRPOP/BLMOVE), they are moved back with one ``RENAME`` and the
  clock starts.  It stops when all N results are stored as SUCCESS, checked by a Lua script
  that walks the task ids in send order from the first not yet seen done (each result is
  read about once, so polling every 5 ms costs Redis next to nothing).  Start-up time of the
  worker is not counted, for any implementation.

``--profile`` instead runs the machinery_compat producer and worker under cProfile and
prints the top functions by own time.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import importlib.metadata
import io
import json
import logging
import os
import platform
import pstats
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
INTEROP = ROOT / "interop"
QUEUE = "machinery_tasks"  # Machinery's default queue (machinery_compat and Go)
CELERY_QUEUE = "celery"
IDS_KEY = "bench:ids"  # the task ids of the current run, in send order
STAGING_KEY = "bench:staging"  # where the queued messages wait while a worker starts
MC_DONE = '"State":"SUCCESS"'
CELERY_DONE = '"status": "SUCCESS"'

#: How many of the ids in KEYS[1], from index ARGV[1], have a stored result (key ARGV[3]..id)
#: containing ARGV[4], counting from the start and stopping at the first that has not
#: (at most ARGV[2] checked).
FRONTIER = """
local first = tonumber(ARGV[1])
local ids = redis.call('LRANGE', KEYS[1], first, first + tonumber(ARGV[2]) - 1)
local n = 0
for _, id in ipairs(ids) do
  local v = redis.call('GET', ARGV[3] .. id)
  if not v or not string.find(v, ARGV[4], 1, true) then break end
  n = n + 1
end
return n
"""

log = logging.getLogger("bench")


class BenchError(RuntimeError):
    pass


# --------------------------------------------------------------------------------------
# processes
# --------------------------------------------------------------------------------------


def _die_with_bench() -> list[str]:
    """Command prefix: the child gets SIGKILL if the benchmark dies (util-linux ``setpriv``).

    Not a ``preexec_fn``: Python code between fork and exec can deadlock in a threaded process.
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv and sys.platform == "linux" else []


def spawn(cmd: list[str], *, stdout: Any = subprocess.DEVNULL, stderr: Any = subprocess.STDOUT,
          stdin: Any = subprocess.DEVNULL, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [*_die_with_bench(), *cmd], cwd=ROOT, stdin=stdin, stdout=stdout, stderr=stderr,
        env=env, start_new_session=True,
    )


def stop_process(proc: subprocess.Popen, *, grace: float = 15.0) -> None:
    """SIGTERM the process group (graceful), SIGKILL it after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


@contextlib.contextmanager
def running(proc: subprocess.Popen, grace: float = 15.0) -> Iterator[subprocess.Popen]:
    try:
        yield proc
    finally:
        stop_process(proc, grace=grace)


def proc_cpu(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid``, all threads (Linux ``/proc``)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class RedisServer:
    """A throw-away redis-server on a free loopback port, no persistence."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        logfile = self.workdir / "redis.log"
        self.proc = spawn([
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self.workdir), "--logfile", str(logfile),
            "--daemonize", "no",
        ])
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + 15
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"redis-server did not start:\n{tail(logfile)}") from None
                time.sleep(0.05)
            finally:
                client.close()
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace=10)
            self.proc = None


# --------------------------------------------------------------------------------------
# measuring
# --------------------------------------------------------------------------------------


@dataclass
class Cell:
    rate: float | None = None  # tasks/s
    seconds: float | None = None
    note: str = ""
    client_cpu: float | None = None  # CPU seconds of the producer / worker process
    redis_cpu: float | None = None  # CPU seconds of redis-server, same interval
    n: int = 0

    def show_cpu(self) -> str:
        if self.rate is None or not self.n:
            return "—"
        per = [f"{x / self.n * 1e6:,.0f}" if x is not None else "?"
               for x in (self.client_cpu, self.redis_cpu)]
        return " + ".join(per)

    def show(self) -> str:
        if self.rate is None:
            return f"— ({self.note})" if self.note else "—"
        return f"{self.rate:,.0f}"


@dataclass
class Row:
    name: str
    producer: Cell = field(default_factory=Cell)
    drain: Cell = field(default_factory=Cell)


class Bench:
    def __init__(self, server: RedisServer, n: int, concurrency: int, workdir: Path,
                 drain_timeout: float) -> None:
        self.server = server
        self.n = n
        self.c = concurrency
        self.workdir = workdir
        self.drain_timeout = drain_timeout
        self.r = redis.Redis.from_url(server.url)
        self._frontier = self.r.register_script(FRONTIER)

    # -- shared steps -------------------------------------------------------------------
    def reset(self) -> None:
        self.r.flushall()

    def redis_cpu(self) -> float:
        info = self.r.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def push_ids(self, ids: list[str]) -> None:
        for i in range(0, len(ids), 5000):
            self.r.rpush(IDS_KEY, *ids[i : i + 5000])

    def check_queued(self, queue: str) -> None:
        queued, ids = self.r.llen(queue), self.r.llen(IDS_KEY)
        if queued != self.n or ids != self.n:
            raise BenchError(f"expected {self.n} queued messages and ids, found {queued} / {ids}")

    def wait_blocked(self, proc: subprocess.Popen, logfile: Path, timeout: float = 90) -> None:
        """Until some client (the worker: nobody else blocks here) waits in BLPOP/BRPOP/BLMOVE."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for c in self.r.client_list():
                if c.get("cmd") in ("blpop", "brpop", "blmove") and "b" in c.get("flags", ""):
                    return
            if proc.poll() is not None:
                raise BenchError(f"worker exited with {proc.returncode}:\n{tail(logfile)}")
            time.sleep(0.02)
        raise BenchError(f"worker not consuming after {timeout:.0f}s:\n{tail(logfile)}")

    def drain(self, queue: str, prefix: str, done: str, start_worker: Callable[[], Any],
              logfile: Path) -> Cell:
        """Time a started, idle worker through the N queued messages (see module doc)."""
        self.r.rename(queue, STAGING_KEY)
        proc = start_worker()
        with running(proc):
            self.wait_blocked(proc, logfile)
            cpu0, rcpu0 = proc_cpu(proc.pid), self.redis_cpu()
            t0 = time.perf_counter()
            self.r.rename(STAGING_KEY, queue)
            count, t1 = 0, t0
            deadline = t0 + self.drain_timeout
            while count < self.n:
                k = int(self._frontier(keys=[IDS_KEY], args=[count, 2000, prefix, done]))
                count += k
                t1 = time.perf_counter()
                if k == 2000:
                    continue
                if count >= self.n:
                    break
                if t1 > deadline:
                    return Cell(note=f"timeout: {count}/{self.n} done in {t1 - t0:.0f}s")
                if proc.poll() is not None:
                    raise BenchError(f"worker died after {count} tasks:\n{tail(logfile)}")
                time.sleep(0.005)
            cpu1, rcpu1 = proc_cpu(proc.pid), self.redis_cpu()
        left = self.r.llen(queue)
        if left:
            raise BenchError(f"{left} messages left in {queue} after all results were stored")
        return Cell(rate=self.n / (t1 - t0), seconds=t1 - t0, n=self.n,
                    client_cpu=None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
                    redis_cpu=rcpu1 - rcpu0)

    # -- machinery_compat ---------------------------------------------------------------
    def mc_producer(self, profile: cProfile.Profile | None = None) -> Cell:
        from machinery_compat import Machinery

        url = self.server.url
        app = Machinery(broker=url, result_backend=url, default_queue=QUEUE)
        try:
            send = app.send_task
            ids: list[str] = []
            append = ids.append
            rcpu0 = self.redis_cpu()
            if profile is not None:
                profile.enable()
            cpu0, t0 = time.process_time(), time.perf_counter()
            for _ in range(self.n):
                append(send("add", args=[1]).id)
            elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            if profile is not None:
                profile.disable()
            rcpu = self.redis_cpu() - rcpu0
        finally:
            app.close()
        self.push_ids(ids)
        self.check_queued(QUEUE)
        return Cell(rate=self.n / elapsed, seconds=elapsed, n=self.n, client_cpu=cpu,
                    redis_cpu=rcpu)

    def mc_drain(self, profile_out: Path | None = None) -> Cell:
        logfile = self.workdir / "mc-worker.log"
        cmd = [sys.executable, "-m", "bench.redis_bench", "_mc-worker", "--url", self.server.url,
               "--concurrency", str(self.c)]
        if profile_out is not None:
            cmd += ["--profile", str(profile_out)]

        def start() -> subprocess.Popen:
            return spawn(cmd, stdout=logfile.open("wb"), env=child_env())

        return self.drain(QUEUE, "", MC_DONE, start, logfile)

    # -- Celery ---------------------------------------------------------------------------
    def celery_producer(self) -> Cell:
        logfile = self.workdir / "celery-producer.log"
        rcpu0 = self.redis_cpu()
        out = subprocess.run(
            [*_die_with_bench(), sys.executable, "-m", "bench.celery_app", "produce", str(self.n)],
            cwd=ROOT, env=child_env(BENCH_REDIS_URL=self.server.url, BENCH_IDS_KEY=IDS_KEY),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=logfile.open("wb"),
            timeout=600, start_new_session=True, check=False,
        )
        if out.returncode != 0:
            raise BenchError(f"celery producer failed ({out.returncode}):\n{tail(logfile)}")
        rcpu = self.redis_cpu() - rcpu0  # includes pushing the ids (~0.1 µs/task)
        res = json.loads(out.stdout.decode().strip().splitlines()[-1])
        self.check_queued(CELERY_QUEUE)
        return Cell(rate=self.n / res["elapsed"], seconds=res["elapsed"], n=self.n,
                    client_cpu=res["cpu"], redis_cpu=rcpu)

    def celery_drain(self) -> Cell:
        logfile = self.workdir / "celery-worker.log"
        celery = shutil.which("celery") or "celery"
        cmd = [celery, "-A", "bench.celery_app", "worker", "--pool", "threads",
               "--concurrency", str(self.c), "--without-gossip", "--without-mingle",
               "--without-heartbeat", "-l", "warning", "-n", "bench@%h"]

        def start() -> subprocess.Popen:
            return spawn(cmd, stdout=logfile.open("wb"),
                         env=child_env(BENCH_REDIS_URL=self.server.url))

        return self.drain(CELERY_QUEUE, "celery-task-meta-", CELERY_DONE, start, logfile)

    # -- Go Machinery -------------------------------------------------------------------
    def _run_go_producer(self, lines: int, queue: str, tag: str) -> tuple[float, Path, float]:
        infile = self.workdir / f"go-{tag}.in"
        outfile = self.workdir / f"go-{tag}.out"
        errfile = self.workdir / f"go-{tag}.log"
        line = json.dumps({"name": "add", "args": [{"type": "int64", "value": 1}],
                           "wait": False}) + "\n"
        infile.write_text(line * lines)
        cmd = [str(INTEROP / "bin" / "mcproducer"), "-broker", self.server.url,
               "-queue", queue, "-parallel", "1"]
        with infile.open("rb") as fin, outfile.open("wb") as fout, errfile.open("wb") as ferr:
            cpu0, t0 = children_cpu(), time.perf_counter()
            proc = spawn(cmd, stdin=fin, stdout=fout, stderr=ferr)
            with running(proc):
                rc = proc.wait(600)
            elapsed, cpu = time.perf_counter() - t0, children_cpu() - cpu0
        if rc != 0:
            raise BenchError(f"mcproducer failed ({rc}):\n{tail(errfile)}")
        return elapsed, outfile, cpu

    def go_producer(self) -> Cell:
        # start-up + connect + one send, best of three, subtracted from the N-task run
        base = min(self._run_go_producer(1, "bench_warmup", f"base{i}")[0] for i in range(3))
        self.reset()
        rcpu0 = self.redis_cpu()
        elapsed, outfile, cpu = self._run_go_producer(self.n, QUEUE, "main")
        rcpu = self.redis_cpu() - rcpu0
        rows = [json.loads(x) for x in outfile.read_text().splitlines() if x.strip()]
        rows.sort(key=lambda o: o["line"])
        bad = [o for o in rows if not o.get("sent")]
        if len(rows) != self.n or bad:
            raise BenchError(f"mcproducer: {len(rows)} lines, {len(bad)} not sent: {bad[:2]}")
        self.push_ids([o["uuid"] for o in rows])
        self.check_queued(QUEUE)
        net = elapsed - base
        return Cell(rate=(self.n - 1) / net, seconds=net, n=self.n, client_cpu=cpu,
                    redis_cpu=rcpu)

    def go_drain(self) -> Cell:
        logfile = self.workdir / "go-worker.log"
        cmd = [str(INTEROP / "bin" / "mcworker"), "-broker", self.server.url, "-queue", QUEUE,
               "-concurrency", str(self.c)]

        def start() -> subprocess.Popen:
            # stdout: one JSON line per task (the interop harness's record), kept for debugging
            return spawn(cmd, stdout=(self.workdir / "go-worker.out").open("wb"),
                         stderr=logfile.open("wb"))

        return self.drain(QUEUE, "", MC_DONE, start, logfile)


# --------------------------------------------------------------------------------------
# the machinery_compat worker subprocess
# --------------------------------------------------------------------------------------


def mc_worker_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bench.redis_bench _mc-worker")
    p.add_argument("--url", required=True)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--profile", type=Path, help="write cProfile stats of all threads here")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    profiles: list[cProfile.Profile] = []
    if a.profile is not None:
        original = threading.Thread.run

        def profiled_run(self: threading.Thread) -> None:
            prof = cProfile.Profile(time.thread_time)  # CPU time: blocking waits cost ~0
            profiles.append(prof)
            prof.enable()
            try:
                original(self)
            finally:
                prof.disable()

        threading.Thread.run = profiled_run  # type: ignore[method-assign]

    from machinery_compat import Machinery

    app = Machinery(broker=a.url, result_backend=a.url, default_queue=QUEUE)

    @app.task(name="add")
    def add(*nums: int) -> int:
        return sum(nums)

    worker = app.worker(concurrency=a.concurrency)
    worker.run()  # until SIGTERM: stops fetching, finishes running tasks
    app.close()
    if profiles:
        stats = pstats.Stats(profiles[0])
        for prof in profiles[1:]:
            stats.add(prof)
        stats.dump_stats(str(a.profile))
    print(json.dumps({"processed": worker.processed}), flush=True)
    return 0


# --------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def go_machinery_version() -> str:
    with contextlib.suppress(OSError):
        for line in (INTEROP / "go.mod").read_text().splitlines():
            parts = line.split()
            if parts and parts[0] == "github.com/RichardKnop/machinery/v2":
                return parts[1]
    return "v2"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


TIMES = "\u00d7"  # the multiplication sign


def ratio_row(label: str, a: Cell, b: Cell, target: float | None) -> str:
    value = None if a.rate is None or b.rate is None else a.rate / b.rate
    shown = "—" if value is None else f"{value:.2f}{TIMES}"
    if target is None:
        return f"| {label} | {shown} | — | — |"
    met = "—" if value is None else ("yes" if value >= target else "**no**")
    return f"| {label} | {shown} | ≥ {target:g}{TIMES} | {met} |"


def render(rows: dict[str, Row], args: argparse.Namespace, redis_version: str) -> str:
    mc = rows["mc"]
    out = [
        "# Redis throughput: machinery_compat vs Celery vs Go Machinery",
        "",
        f"N = {args.n:,} tasks, C = {args.concurrency} (worker threads / goroutines); "
        "task `add(1)` everywhere, results backend on the same Redis.",
        "",
        f"Machine: {os.cpu_count()} CPUs ({cpu_model()}), {platform.system()} "
        f"{platform.release()}; Python {platform.python_version()}; Redis {redis_version} "
        "(local, loopback TCP, `--save '' --appendonly no`); redis-py "
        f"{_version('redis')}, hiredis {_version('hiredis')}; Celery {_version('celery')}, "
        f"kombu {_version('kombu')}; Go Machinery {go_machinery_version()} (redigo). "
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, each measurement once.",
        "",
        "| Implementation | Producer (tasks/s) | Producer CPU µs/task (client + Redis) "
        "| Worker drain (tasks/s) | Drain CPU µs/task (worker + Redis) |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows.values():
        out.append(f"| {row.name} | {row.producer.show()} | {row.producer.show_cpu()} "
                   f"| {row.drain.show()} | {row.drain.show_cpu()} |")
    out += ["", "| Ratio (tasks/s) | Value | Target | Met |", "|---|---:|---:|:---:|"]
    if "celery" in rows:
        cel = rows["celery"]
        out.append(ratio_row("machinery_compat / Celery, producer", mc.producer, cel.producer, 4))
        out.append(ratio_row("machinery_compat / Celery, worker drain", mc.drain, cel.drain, 3))
    if "go" in rows:
        go = rows["go"]
        out.append(ratio_row("machinery_compat / Go Machinery, producer", mc.producer,
                             go.producer, None))
        out.append(ratio_row("machinery_compat / Go Machinery, worker drain", mc.drain,
                             go.drain, None))
    out += [
        "",
        "Producer: N sends from one thread (machinery_compat `app.send_task(\"add\", args=[1])`, "
        "PENDING + RPUSH in one pipelined round trip; Celery `add.apply_async(args=[1])`, which "
        "also subscribes to the result channel; Go `server.SendTask` via `interop/bin/mcproducer "
        "-parallel 1`, SET PENDING then RPUSH). Python: timed around the send loop; Go: process "
        "wall time minus a one-task run's (start-up).",
        "",
        "Worker drain: the N queued messages are set aside, the worker process is started "
        "(machinery_compat `app.worker(concurrency=C)`, log level WARNING; `celery worker --pool "
        "threads --concurrency C --without-gossip --without-mingle --without-heartbeat -l "
        "warning`; `interop/bin/mcworker -concurrency C`), and once it waits in BLPOP/BRPOP/BLMOVE on the "
        "empty queue the messages are put back in one `RENAME` and the clock starts; it stops "
        "when every task's result is stored as SUCCESS (a Lua script checks the ids in send "
        "order, every 5 ms). Worker start-up is not counted.",
        "",
        "CPU µs/task: user + system CPU of the producer (Python: the sending process during the "
        "loop; Go: the whole `mcproducer` process) or of the worker process (all threads, from "
        "`/proc`), and of `redis-server` (`INFO cpu`), over the timed interval, divided by N.",
    ]
    notes = [f"{row.name}: {c.note}" for row in rows.values() for c in (row.producer, row.drain)
             if c.note]
    if notes:
        out += ["", "Notes: " + "; ".join(notes) + "."]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------


def ensure_go_binaries() -> str | None:
    """None when mcproducer and mcworker are there (built if needed), else why not."""
    binaries = [INTEROP / "bin" / "mcproducer", INTEROP / "bin" / "mcworker"]
    if all(b.exists() for b in binaries):
        return None
    build = INTEROP / "build.sh"
    if not build.exists():
        return "interop/bin missing and no interop/build.sh"
    if shutil.which("go") is None:
        return "interop/bin missing and no go toolchain"
    print("building the Go interop binaries (interop/build.sh)…", file=sys.stderr)
    res = subprocess.run(["bash", str(build)], cwd=ROOT, capture_output=True, text=True,
                         timeout=600, check=False)
    if res.returncode != 0 or not all(b.exists() for b in binaries):
        return f"interop/build.sh failed: {res.stderr.strip()[-300:]}"
    return None


def measure(bench: Bench, label: str, fn: Callable[[], Cell]) -> Cell:
    print(f"  {label}…", end="", file=sys.stderr, flush=True)
    try:
        cell = fn()
    except BenchError as e:
        print(f" failed: {e}", file=sys.stderr)
        return Cell(note=str(e).splitlines()[0])
    if cell.rate is not None:
        print(f" {cell.rate:,.0f} tasks/s ({cell.seconds:.2f}s)", file=sys.stderr)
    else:
        print(f" {cell.note}", file=sys.stderr)
    return cell


def run_all(bench: Bench, args: argparse.Namespace) -> dict[str, Row]:
    rows: dict[str, Row] = {}
    print(f"N={bench.n} C={bench.c} redis={bench.server.url}", file=sys.stderr)

    bench.reset()
    row = rows["mc"] = Row(f"machinery_compat {_version('machinery-compat')}")
    row.producer = measure(bench, "machinery_compat producer", bench.mc_producer)
    if row.producer.rate is not None:
        row.drain = measure(bench, "machinery_compat worker drain", bench.mc_drain)

    if not args.skip_celery:
        bench.reset()
        row = rows["celery"] = Row(f"Celery {_version('celery')} (threads pool)")
        row.producer = measure(bench, "Celery producer", bench.celery_producer)
        if row.producer.rate is not None:
            row.drain = measure(bench, "Celery worker drain", bench.celery_drain)

    if not args.skip_go:
        row = rows["go"] = Row(f"Go Machinery {go_machinery_version()} (redigo)")
        why = ensure_go_binaries()
        if why:
            row.producer = row.drain = Cell(note=why)
        else:
            bench.reset()
            row.producer = measure(bench, "Go Machinery producer", bench.go_producer)
            if row.producer.rate is not None:
                row.drain = measure(bench, "Go Machinery worker drain", bench.go_drain)
    bench.reset()
    return rows


def print_top(title: str, stats: pstats.Stats, top: int = 15) -> None:
    buf = io.StringIO()
    stats.stream = buf  # type: ignore[attr-defined]
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    print(f"\n== {title} ==")
    lines = buf.getvalue().splitlines()
    start = next((i for i, x in enumerate(lines) if "ncalls" in x), 0)
    print("\n".join(lines[max(0, start - 3):]))


def profile_handle(bench: Bench) -> None:
    """``Worker.handle`` on the N queued messages, one after the other in this thread."""
    from machinery_compat import Machinery
    from machinery_compat.brokers.base import Delivery

    url = bench.server.url
    app = Machinery(broker=url, result_backend=url, default_queue=QUEUE)

    @app.task(name="add")
    def add(*nums: int) -> int:
        return sum(nums)

    try:
        worker = app.worker(concurrency=1)  # not started: only its per-message path is used
        deliveries = [Delivery(body, QUEUE) for body in bench.r.lpop(QUEUE, bench.n) or []]
        prof = cProfile.Profile()
        cpu0, t0 = time.process_time(), time.perf_counter()
        prof.enable()
        for d in deliveries:
            worker.handle(d)
        prof.disable()
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        app.close()
    n = len(deliveries)
    print(f"\nmachinery_compat Worker.handle(), one thread, under cProfile: {n / elapsed:,.0f} "
          f"tasks/s, {cpu / n * 1e6:,.0f} µs CPU/task")
    print_top("machinery_compat Worker.handle() (top by tottime)", pstats.Stats(prof))


def run_profile(bench: Bench) -> None:
    bench.reset()
    prof = cProfile.Profile()
    cell = bench.mc_producer(prof)
    print(f"machinery_compat producer under cProfile: {cell.rate:,.0f} tasks/s")
    print_top("machinery_compat producer (top by tottime)", pstats.Stats(prof))
    profile_handle(bench)
    bench.reset()
    bench.mc_producer()
    out = bench.workdir / "mc-worker.prof"
    cell = bench.mc_drain(out)
    print(f"\nmachinery_compat worker drain under cProfile (timer: per-thread CPU time, which "
          f"inflates functions called very often): {cell.show()} tasks/s")
    if out.exists():
        print_top("machinery_compat worker, all threads (top by tottime)",
                  pstats.Stats(str(out)))
    else:
        print(f"no worker profile written:\n{tail(bench.workdir / 'mc-worker.log')}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.redis_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=20_000, help="tasks per measurement (20000)")
    p.add_argument("--concurrency", type=int, default=8, help="worker concurrency C (8)")
    p.add_argument("--skip-celery", action="store_true", help="do not measure Celery")
    p.add_argument("--skip-go", action="store_true", help="do not measure Go Machinery")
    p.add_argument("--profile", action="store_true",
                   help="profile the machinery_compat producer and worker instead")
    p.add_argument("--drain-timeout", type=float, default=120.0,
                   help="give up on a worker drain after this many seconds (120)")
    p.add_argument("--redis-server", default=shutil.which("redis-server") or "/usr/bin/redis-server")
    p.add_argument("--output", type=Path, default=RESULTS_DIR / "latest.md",
                   help="where to write the Markdown table (bench/results/latest.md)")
    a = p.parse_args(argv)
    if a.n < 2 or a.concurrency < 1:
        p.error("--n must be ≥ 2 and --concurrency ≥ 1")
    return a


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_mc-worker":
        return mc_worker_main(argv[1:])
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_interrupt)
    with tempfile.TemporaryDirectory(prefix="redis-bench-") as tmp:
        workdir = Path(tmp)
        server = RedisServer(args.redis_server, workdir)
        try:
            server.start()
            bench = Bench(server, args.n, args.concurrency, workdir, args.drain_timeout)
            if args.profile:
                run_profile(bench)
                return 0
            version = bench.r.info("server")["redis_version"]
            rows = run_all(bench, args)
            table = render(rows, args, version)
            print(table)
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(table)
            print(f"(written to {args.output})", file=sys.stderr)
        except KeyboardInterrupt:
            print("\ninterrupted: stopping everything", file=sys.stderr)
            return 130
        except BenchError as e:
            print(f"benchmark failed: {e}", file=sys.stderr)
            return 1
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
