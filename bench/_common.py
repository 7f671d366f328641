"""What the side-by-side benchmarks (``bench.redis_bench``, ``bench.amqp_bench``,
``bench.sqs_bench``) share.

* processes: children started under ``setpriv --pdeathsig KILL`` in their own process group
  (:func:`spawn`), stopped gracefully then killed (:func:`stop_process`, :func:`running`), their
  CPU time from ``/proc`` (:func:`proc_cpu`);
* a private ``redis-server`` on a free loopback port (:class:`RedisServer`) and the
  :class:`DoneWatcher` that times a drain by the SUCCESS states stored in it;
* the Go interop programs (:func:`ensure_go_binaries`, :func:`run_go_producer`,
  :func:`time_go_producer`, :func:`start_go_worker`), Celery's worker
  (:func:`start_celery_worker`) and the Python peers' producers (:func:`time_peer_producer`:
  Celery, dramatiq, taskiq);
* the machinery_compat producer loop (:func:`send_adds`) and worker subprocess
  (:func:`start_mc_worker`, :func:`mc_worker_main`) with its optional per-thread profiler;
  ``--profile`` (:func:`run_profile`, :func:`profile_handle`);
* the runs: every implementation's producer and drain, ``--repeat`` times interleaved
  (:func:`run_impls`, :class:`Runs`);
* the report: :class:`Cell`/:class:`Row`, :func:`ratio_row`, versions, :func:`print_top`,
  :func:`publish`;
* the frame of each benchmark's ``main()`` (:func:`bench_main`).
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
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import redis

if TYPE_CHECKING:
    from machinery_compat import Machinery

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
INTEROP = ROOT / "interop"
MC_DONE = '"State":"SUCCESS"'  # in a stored Machinery TaskState (machinery_compat and Go)
CELERY_DONE = '"status": "SUCCESS"'  # in a stored Celery result
TIMES = "\u00d7"  # the multiplication sign
DASH = "\u2013"  # the en dash of a range
QUEUE = "machinery_tasks"  # Machinery's default queue (machinery_compat and Go)
CELERY_QUEUE = "celery"
WARMUP_QUEUE = "bench_warmup"  # the untimed first sends (connecting) go here
IDS_KEY = "bench:ids"  # the task ids of the current run, in send order

#: How many of the ids in KEYS[1], from index ARGV[1], have a stored result (key ARGV[3]..id)
#: containing ARGV[4], counting from the start and stopping at the first that has not
#: (at most ARGV[2] checked).
FRONTIER = """
local first = tonumber(ARGV[1])
local ids = redis.call('LRANGE', KEYS[1], first, first + tonumber(ARGV[2]) - 1)
local n = 0
for _, id in ipairs(ids) do
  local v = redis.pcall('GET', ARGV[3] .. id)
  if type(v) == 'table' and v.err then  -- a list (dramatiq's results): its newest item
    v = redis.call('LINDEX', ARGV[3] .. id, 0)
  end
  if not v or not string.find(v, ARGV[4], 1, true) then break end
  n = n + 1
end
return n
"""


class BenchError(RuntimeError):
    pass


# --------------------------------------------------------------------------------------
# processes
# --------------------------------------------------------------------------------------


def die_with_bench() -> list[str]:
    """Command prefix: the child gets SIGKILL if the benchmark dies (util-linux ``setpriv``).

    Not a ``preexec_fn``: Python code between fork and exec can deadlock in a threaded process.
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv and sys.platform == "linux" else []


def spawn(cmd: list[str], *, stdout: Any = subprocess.DEVNULL, stderr: Any = subprocess.STDOUT,
          stdin: Any = subprocess.DEVNULL,
          env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``cmd`` as a child (see :func:`die_with_bench`); file objects given as its ``stdout``
    or ``stderr`` are the child's now, and closed here."""
    proc = subprocess.Popen(
        [*die_with_bench(), *cmd], cwd=ROOT, stdin=stdin, stdout=stdout, stderr=stderr,
        env=env, start_new_session=True,
    )
    for f in (stdout, stderr):
        if hasattr(f, "close"):
            f.close()
    return proc


def stop_process(proc: subprocess.Popen[bytes], *, grace: float = 15.0) -> None:
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
def running(proc: subprocess.Popen[bytes],
            grace: float = 15.0) -> Iterator[subprocess.Popen[bytes]]:
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


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants alive now (Linux ``/proc``)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, ())
    return tree


def tree_cpu(pid: int) -> float | None:
    """:func:`proc_cpu` of ``pid`` plus that of its descendants alive now (a worker started
    with ``--processes``: the supervisor and its forked workers)."""
    total = proc_cpu(pid)
    if total is None:
        return None
    return total + sum(proc_cpu(p) or 0.0 for p in process_tree(pid)[1:])


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a benchmark's child process: the repository importable, and
    machinery_compat workers' task events off unless ``extra`` says otherwise (the main
    rows measure the task path alone; ``bench.redis_bench --events compare`` gives their
    cost beside them)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["MACHINERY_COMPAT_WORKER_EVENTS"] = "0"
    env.update(extra)
    return env


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def interrupt_on_signals() -> None:
    """SIGINT, SIGTERM and SIGHUP raise KeyboardInterrupt, so ``finally`` blocks stop children."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, raise_interrupt)


def ignore_signals() -> None:
    """While cleaning up: a second Ctrl-C must not interrupt the clean-up."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class RedisServer:
    """A throw-away redis-server on a free loopback port, no persistence."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.port = free_port()
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


def redis_cpu(r: redis.Redis) -> float:
    """CPU seconds redis-server has used so far (``INFO cpu``)."""
    info = r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


#: where the queued messages wait (``RENAME``) while a worker starts
STAGING_KEY = "bench:staging"


def redis_mc_app(broker: str, backend: str | None = None) -> Machinery:
    """The machinery_compat app of a Redis benchmark's producer and worker (results on
    ``backend``, by default the broker's Redis), on Machinery's default queue."""
    from machinery_compat import Machinery

    return Machinery(broker=broker, result_backend=backend or broker, default_queue=QUEUE)


def blocked_consumers(r: redis.Redis) -> int:
    """Clients of ``r`` waiting in BLPOP/BRPOP/BLMOVE now (an idle worker's consumers)."""
    return sum(c.get("cmd") in ("blpop", "brpop", "blmove") and "b" in c.get("flags", "")
               for c in r.client_list())


def push_ids(r: redis.Redis, key: str, ids: list[str]) -> None:
    for i in range(0, len(ids), 5000):
        r.rpush(key, *ids[i : i + 5000])


def delta(a: float | None, b: float | None) -> float | None:
    """``b - a``, None when either is not known (CPU seconds before and after)."""
    return None if a is None or b is None else b - a


#: CPU seconds so far of each server a benchmark runs (None: not known), e.g. ``Bench.cpu``
ServersCpu = Callable[[], tuple[float | None, ...]]


def wait_worker(proc: subprocess.Popen[bytes], logfile: Path, ready: Callable[[], bool],
                stuck: str, timeout: float = 90) -> None:
    """Until ``ready()``, polled every 20 ms.  BenchError if the worker ``proc`` exits first, or
    after ``timeout`` seconds: ``worker <stuck> <timeout>s``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if proc.poll() is not None:
            raise BenchError(f"worker exited with {proc.returncode}:\n{tail(logfile)}")
        time.sleep(0.02)
    raise BenchError(f"worker {stuck} {timeout:.0f}s:\n{tail(logfile)}")


class DoneWatcher:
    """Waits until all N task ids in a Redis list have a SUCCESS result stored in Redis.

    A Lua script (:data:`FRONTIER`) walks the ids in send order from the first one not yet
    seen done, reading each result about once, every 5 ms: the polling costs Redis almost
    nothing, and the timer resolution is ~5 ms.
    """

    def __init__(self, r: redis.Redis, ids_key: str) -> None:
        self.r = r
        self.ids_key = ids_key
        self._frontier = r.register_script(FRONTIER)

    def wait(self, n: int, prefix: str, done: str, t0: float, timeout: float,
             proc: subprocess.Popen[bytes], logfile: Path) -> tuple[int, float]:
        """(tasks seen done, ``perf_counter`` when the last was seen); fewer than ``n`` when
        ``timeout`` seconds after ``t0`` passed first.  BenchError if ``proc`` exits."""
        count, t1 = 0, t0
        deadline = t0 + timeout
        while count < n:
            k = int(self._frontier(keys=[self.ids_key], args=[count, 2000, prefix, done]))
            count += k
            t1 = time.perf_counter()
            if k == 2000:
                continue
            if count >= n:
                break
            if t1 > deadline:
                break
            if proc.poll() is not None:
                raise BenchError(f"worker died after {count} tasks:\n{tail(logfile)}")
            time.sleep(0.005)
        return count, t1

    def time_drain(self, n: int, release: Callable[[], object], proc: subprocess.Popen[bytes],
                   logfile: Path, servers_cpu: ServersCpu, timeout: float, prefix: str = "",
                   done: str = MC_DONE) -> Cell:
        """With the worker ``proc`` started and idle: the clock starts, ``release()`` gives it
        the n queued messages, the clock stops when all n are done (:meth:`wait`).  CPU: the
        worker's, then each of ``servers_cpu()``.  On timeout, a cell with only a note."""
        cpu0, servers0 = tree_cpu(proc.pid), servers_cpu()
        t0 = time.perf_counter()
        release()
        count, t1 = self.wait(n, prefix, done, t0, timeout, proc, logfile)
        if count < n:
            return Cell(note=f"timeout: {count}/{n} done in {t1 - t0:.0f}s")
        cpu1, servers1 = tree_cpu(proc.pid), servers_cpu()
        return Cell(rate=n / (t1 - t0), seconds=t1 - t0, n=n,
                    cpu=(delta(cpu0, cpu1), *map(delta, servers0, servers1)))


# --------------------------------------------------------------------------------------
# the Go interop programs
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


def run_go_producer(args: list[str], lines: int, workdir: Path,
                    tag: str) -> tuple[float, Path, float]:
    """``mcproducer -parallel 1 <args>`` sending ``lines`` times ``add(1)`` (no waiting for
    results): (wall seconds, its stdout file, its CPU seconds)."""
    infile = workdir / f"go-{tag}.in"
    outfile = workdir / f"go-{tag}.out"
    errfile = workdir / f"go-{tag}.log"
    line = json.dumps({"name": "add", "args": [{"type": "int64", "value": 1}],
                       "wait": False}) + "\n"
    infile.write_text(line * lines)
    cmd = [str(INTEROP / "bin" / "mcproducer"), *args, "-parallel", "1"]
    with infile.open("rb") as fin, outfile.open("wb") as fout, errfile.open("wb") as ferr:
        cpu0, t0 = children_cpu(), time.perf_counter()
        proc = spawn(cmd, stdin=fin, stdout=fout, stderr=ferr)
        with running(proc):
            rc = proc.wait(600)
        elapsed, cpu = time.perf_counter() - t0, children_cpu() - cpu0
    if rc != 0:
        raise BenchError(f"mcproducer failed ({rc}):\n{tail(errfile)}")
    return elapsed, outfile, cpu


def go_sent_ids(outfile: Path, n: int) -> list[str]:
    """The task ids ``mcproducer`` printed, in input order; BenchError unless all n were sent."""
    rows = [json.loads(x) for x in outfile.read_text().splitlines() if x.strip()]
    rows.sort(key=lambda o: o["line"])
    bad = [o for o in rows if not o.get("sent")]
    if len(rows) != n or bad:
        raise BenchError(f"mcproducer: {len(rows)} lines, {len(bad)} not sent: {bad[:2]}")
    return [o["uuid"] for o in rows]


def go_startup_seconds(flags: list[str], workdir: Path) -> float:
    """Wall seconds of a one-task ``mcproducer`` run to :data:`WARMUP_QUEUE` (start-up,
    connecting, one send), best of three: what :func:`time_go_producer` subtracts."""
    return min(run_go_producer([*flags, "-queue", WARMUP_QUEUE], 1, workdir, f"base{i}")[0]
               for i in range(3))


def time_go_producer(flags: list[str], n: int, workdir: Path, servers_cpu: ServersCpu,
                     startup: float) -> tuple[list[str], Cell]:
    """``mcproducer <flags>`` sending ``n`` times ``add(1)`` to :data:`QUEUE`, timed by its wall
    time minus ``startup`` (:func:`go_startup_seconds`): the task ids and the cell (CPU: the
    ``mcproducer`` process, then each of ``servers_cpu()``)."""
    servers0 = servers_cpu()
    elapsed, outfile, cpu = run_go_producer([*flags, "-queue", QUEUE], n, workdir, "main")
    servers1 = servers_cpu()
    ids = go_sent_ids(outfile, n)
    net = elapsed - startup
    return ids, Cell(rate=(n - 1) / net, seconds=net, n=n,
                     cpu=(cpu, *map(delta, servers0, servers1)))


def start_go_worker(flags: list[str], logfile: Path,
                    env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``mcworker <flags>``, its log in ``logfile``; its stdout (one JSON line per task, the
    interop harness's record) is kept next to it (``.out``) for debugging."""
    return spawn([str(INTEROP / "bin" / "mcworker"), *flags],
                 stdout=logfile.with_suffix(".out").open("wb"), stderr=logfile.open("wb"),
                 env=env)


# --------------------------------------------------------------------------------------
# Celery (bench.celery_app)
# --------------------------------------------------------------------------------------


def time_peer_producer(module: str, n: int, env: dict[str, str], logfile: Path,
                       servers_cpu: ServersCpu, timeout: float) -> Cell:
    """``python -m <module> produce n`` (``bench.celery_app``, ``bench.dramatiq_app``,
    ``bench.taskiq_app``: each pushes the ids it sent itself): its send loop's rate and CPU,
    then each of ``servers_cpu()`` over the whole subprocess (start-up, warm-up, pushing the
    ids: small)."""
    servers0 = servers_cpu()
    with logfile.open("wb") as err:
        out = subprocess.run(
            [*die_with_bench(), sys.executable, "-m", module, "produce", str(n)],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
            timeout=timeout, start_new_session=True, check=False)
    if out.returncode != 0:
        raise BenchError(f"{module} producer failed ({out.returncode}):\n{tail(logfile)}")
    servers1 = servers_cpu()
    res = json.loads(out.stdout.decode().strip().splitlines()[-1])
    return Cell(rate=n / res["elapsed"], seconds=res["elapsed"], n=n,
                cpu=(res["cpu"], *map(delta, servers0, servers1)))


def start_celery_worker(concurrency: int, env: dict[str, str], logfile: Path,
                        cpus: str | None = None) -> subprocess.Popen[bytes]:
    """``celery worker`` of ``bench.celery_app``, threads pool, output to ``logfile``;
    ``cpus``: pinned to them (``taskset -c``; Celery has no option of its own)."""
    celery = shutil.which("celery") or "celery"
    pin = [] if cpus is None else [shutil.which("taskset") or "taskset", "-c", cpus]
    cmd = [*pin, celery, "-A", "bench.celery_app", "worker", "--pool", "threads",
           "--concurrency", str(concurrency), "--without-gossip", "--without-mingle",
           "--without-heartbeat", "-l", "warning", "-n", "bench@%h"]
    return spawn(cmd, stdout=logfile.open("wb"), env=env)


# --------------------------------------------------------------------------------------
# the machinery_compat producer and worker subprocess
# --------------------------------------------------------------------------------------


def register_add(app: Machinery) -> None:
    """The benchmark task: ``add(*nums)``, as Go's ``add(...int64)`` and Celery's."""

    @app.task(name="add")
    def add(*nums: int) -> int:
        return sum(nums)


def send_adds(make_app: Callable[[], Machinery], n: int, servers_cpu: ServersCpu,
              warmup_queue: str | None = None,
              profile: cProfile.Profile | None = None,
              chunk: int | None = None) -> tuple[list[str], Cell]:
    """``app.send_task("add", args=[1])`` n times from this thread, timed around the loop
    (after one untimed send to ``warmup_queue``, if given: connecting, as Go's start-up run),
    under ``profile`` if given: the task ids and the cell (CPU: this process, then each of
    ``servers_cpu()``).  With ``chunk``: one ``app.send_many`` of the n tasks in chunks of
    that many, timed around the call."""
    app = make_app()
    try:
        send = app.send_task
        if warmup_queue is not None:
            send("add", args=[1], queue=warmup_queue)
        ids: list[str] = []
        append = ids.append
        items = [("add", [1])] * n if chunk is not None else []
        servers0 = servers_cpu()
        if profile is not None:
            profile.enable()
        cpu0, t0 = time.process_time(), time.perf_counter()
        if chunk is not None:
            ids = [r.id for r in app.send_many(items, chunk=chunk)]
        else:
            for _ in range(n):
                append(send("add", args=[1]).id)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        if profile is not None:
            profile.disable()
        servers1 = servers_cpu()
    finally:
        app.close()
    return ids, Cell(rate=n / elapsed, seconds=elapsed, n=n,
                     cpu=(cpu, *map(delta, servers0, servers1)))


def start_mc_worker(module: str, flags: list[str], logfile: Path, profile: Path | None = None,
                    env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``python -m <module> _mc-worker <flags> [--profile <profile>]`` (the benchmark's own
    :func:`mc_worker_main`), output to ``logfile``."""
    cmd = [sys.executable, "-m", module, "_mc-worker", *flags]
    if profile is not None:
        cmd += ["--profile", str(profile)]
    return spawn(cmd, stdout=logfile.open("wb"), env=env or child_env())


def mc_worker_main(module: str, argv: list[str],
                   make_app: Callable[[argparse.Namespace], Machinery],
                   add_args: Callable[[argparse.ArgumentParser], object] | None = None) -> int:
    """``python -m <module> _mc-worker --broker URL --backend URL [--concurrency C]
    [--profile FILE]`` and the flags ``add_args`` adds: :func:`run_mc_worker` with the app
    ``make_app(args)``."""
    p = argparse.ArgumentParser(prog=f"{module} _mc-worker")
    p.add_argument("--broker", required=True)
    p.add_argument("--backend", required=True)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--processes", type=int, default=1,
                   help="worker processes sharing --concurrency (app.worker(processes=N))")
    p.add_argument("--profile", type=Path, help="write cProfile stats of all threads here")
    p.add_argument("--cpu-affinity", default=None,
                   help="the worker's cpu_affinity (app.worker(cpu_affinity=...))")
    if add_args is not None:
        add_args(p)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    return run_mc_worker(make_app(a), a.concurrency, a.profile, a.processes, a.cpu_affinity)


def run_mc_worker(app: Machinery, concurrency: int, profile: Path | None,
                  processes: int = 1, cpu_affinity: str | None = None) -> int:
    """Run ``app.worker(concurrency)`` with ``add`` registered until SIGTERM; with ``profile``,
    every thread runs under cProfile (timer: the thread's CPU time) and the merged stats are
    written there.  Prints ``{"processed": n}`` at the end.  ``processes`` > 1:
    ``app.worker(concurrency, processes=N)`` (N forked workers sharing ``concurrency``; no
    profile, nothing printed).  ``cpu_affinity``: the worker's (see
    :mod:`machinery_compat.worker.affinity`)."""
    pinned: dict[str, Any] = {} if cpu_affinity is None else {"cpu_affinity": cpu_affinity}
    if processes > 1:
        if profile is not None:
            raise SystemExit("--profile profiles one worker process: drop --processes")
        register_add(app)
        app.worker(concurrency=concurrency, processes=processes, **pinned).run()
        return 0
    profiles: list[cProfile.Profile] = []
    if profile is not None:
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

    register_add(app)
    # MC_BENCH_PREFETCH: the worker's prefetch (messages taken ahead of the threads), for
    # experiments; unset: the worker's default
    prefetch = int(os.environ.get("MC_BENCH_PREFETCH", "0") or 0)
    worker = (app.worker(concurrency=concurrency, prefetch=prefetch, **pinned) if prefetch
              else app.worker(concurrency=concurrency, **pinned))
    worker.run()  # until SIGTERM: stops fetching, finishes running tasks
    app.close()
    if profiles and profile is not None:
        stats = pstats.Stats(profiles[0])
        for prof in profiles[1:]:
            stats.add(prof)
        stats.dump_stats(str(profile))
    print(json.dumps({"processed": worker.processed}), flush=True)
    return 0


def profile_handle(app: Machinery, bodies: list[bytes], how: str = "") -> None:
    """``Worker.handle`` of a worker of ``app`` (not started: only its per-message path is
    used) on ``bodies``, messages of :data:`QUEUE`, one after the other in this thread under
    cProfile: prints the rate and CPU per task (``under cProfile<how>``) and the top
    functions."""
    from machinery_compat.brokers.base import Delivery

    register_add(app)
    worker = app.worker(concurrency=1)
    deliveries = [Delivery(body, QUEUE) for body in bodies]
    prof = cProfile.Profile()
    cpu0, t0 = time.process_time(), time.perf_counter()
    prof.enable()
    for d in deliveries:
        worker.handle(d)
    prof.disable()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    n = len(deliveries)
    print(f"\nmachinery_compat Worker.handle(), one thread, under cProfile{how}: "
          f"{n / elapsed:,.0f} tasks/s, {cpu / n * 1e6:,.0f} µs CPU/task")
    print_top("machinery_compat Worker.handle() (top by tottime)", pstats.Stats(prof))


class ProfiledBench(Protocol):
    """What :func:`run_profile` uses of a benchmark's ``Bench``."""

    workdir: Path

    def reset(self) -> None: ...

    def mc_producer(self, profile: cProfile.Profile | None = None) -> Cell: ...

    def mc_drain(self, profile_out: Path | None = None) -> Cell: ...


def run_profile(bench: ProfiledBench, handle: Callable[[], None], worker_top: int = 15) -> None:
    """``--profile``: the machinery_compat producer under cProfile, then ``handle()`` (e.g.
    :func:`profile_handle` on the messages it queued), then a worker drain with every thread
    under cProfile; prints the top functions of each."""
    bench.reset()
    prof = cProfile.Profile()
    cell = bench.mc_producer(prof)
    print(f"machinery_compat producer under cProfile: {cell.rate:,.0f} tasks/s")
    print_top("machinery_compat producer (top by tottime)", pstats.Stats(prof))
    handle()
    bench.reset()
    bench.mc_producer()
    out = bench.workdir / "mc-worker.prof"
    cell = bench.mc_drain(out)
    print(f"\nmachinery_compat worker drain under cProfile (timer: per-thread CPU time, which "
          f"inflates functions called very often): {cell.show()} tasks/s")
    if out.exists():
        print_top("machinery_compat worker, all threads (top by tottime)",
                  pstats.Stats(str(out)), top=worker_top)
    else:
        print(f"no worker profile written:\n{tail(bench.workdir / 'mc-worker.log')}")


# --------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------


@dataclass
class Cell:
    rate: float | None = None  # tasks/s
    seconds: float | None = None
    note: str = ""
    #: CPU seconds over the timed interval, one per process shown in the CPU column (e.g. the
    #: producer or worker process, then the servers); None: not known
    cpu: tuple[float | None, ...] = ()
    n: int = 0
    #: (lowest, highest) rate when ``rate`` is the median of several runs
    spread: tuple[float, float] | None = None

    def show_cpu(self) -> str:
        if self.rate is None or not self.n:
            return "—"
        per = [f"{x / self.n * 1e6:,.0f}" if x is not None else "?" for x in self.cpu]
        return " + ".join(per)

    def show(self) -> str:
        if self.rate is None:
            return f"— ({self.note})" if self.note else "—"
        if self.spread is not None:
            return f"{self.rate:,.0f} ({self.spread[0]:,.0f}{DASH}{self.spread[1]:,.0f})"
        return f"{self.rate:,.0f}"


@dataclass
class Row:
    name: str
    producer: Cell = field(default_factory=Cell)
    drain: Cell = field(default_factory=Cell)


def version(dist: str) -> str:
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


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages, as in ``/proc/loadavg``."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def machine() -> str:
    """``N CPUs (model), Linux x.y; Python 3.x``."""
    return (f"{os.cpu_count()} CPUs ({cpu_model()}), {platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}")


def run_stamp(repeat: int) -> str:
    """``Run <date> UTC, each measurement …``: when and how, for a table's header."""
    each = ("each measurement once" if repeat == 1 else
            f"each measurement {repeat} times, interleaved: median (min{DASH}max) of the rates, "
            "median CPU")
    return f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {each}"


def impl_lines(rows: dict[str, Row]) -> list[str]:
    """The table's lines, one per implementation: producer and drain, rate and CPU."""
    return [f"| {row.name} | {row.producer.show()} | {row.producer.show_cpu()} "
            f"| {row.drain.show()} | {row.drain.show_cpu()} |" for row in rows.values()]


#: The head of the ratio table (after a blank line); :func:`ratio_row` makes its lines.
RATIO_HEAD = ["", "| Ratio (tasks/s) | Value | Target | Met |", "|---|---:|---:|:---:|"]


def notes_lines(rows: dict[str, Row]) -> list[str]:
    """The notes of all cells (failures, timeouts) as a last paragraph; none: no lines."""
    notes = [f"{row.name}: {c.note}" for row in rows.values() for c in (row.producer, row.drain)
             if c.note]
    return ["", "Notes: " + "; ".join(notes) + "."] if notes else []


def ratio(a: Cell, b: Cell) -> float | None:
    return None if a.rate is None or b.rate is None else a.rate / b.rate


def ratio_row(label: str, a: Cell, b: Cell, target: float | None) -> str:
    value = ratio(a, b)
    shown = "—" if value is None else f"{value:.2f}{TIMES}"
    if target is None:
        return f"| {label} | {shown} | — | — |"
    met = "—" if value is None else ("yes" if value >= target else "**no**")
    return f"| {label} | {shown} | ≥ {target:g}{TIMES} | {met} |"


def cpu_row(label: str, cell: Cell, limit_us: float) -> str:
    """A ratio-table line for a CPU target: the first CPU figure (the worker's) in µs/task."""
    if cell.rate is None or not cell.n or not cell.cpu or cell.cpu[0] is None:
        return f"| {label} | — | ≤ {limit_us:g} µs | — |"
    us = cell.cpu[0] / cell.n * 1e6
    return (f"| {label} | {us:,.0f} µs | ≤ {limit_us:g} µs | "
            f"{'yes' if us <= limit_us else '**no**'} |")


def measure(label: str, fn: Callable[[], Cell]) -> Cell:
    """``fn()``, its rate printed to stderr; a BenchError becomes a cell with a note."""
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


def print_top(title: str, stats: pstats.Stats, top: int = 15) -> None:
    buf = io.StringIO()
    stats.stream = buf  # type: ignore[attr-defined]
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    print(f"\n== {title} ==")
    lines = buf.getvalue().splitlines()
    start = next((i for i, x in enumerate(lines) if "ncalls" in x), 0)
    print("\n".join(lines[max(0, start - 3):]))


# --------------------------------------------------------------------------------------
# runs
# --------------------------------------------------------------------------------------


@dataclass
class Runs:
    """The cells of one implementation and measurement over ``--repeat`` runs."""

    cells: list[Cell] = field(default_factory=list)

    def summary(self) -> Cell:
        """The median run (its rate and CPU), with the spread of the rates in its note."""
        ok = sorted((c for c in self.cells if c.rate is not None), key=lambda c: c.rate or 0)
        failed = [c.note for c in self.cells if c.rate is None and c.note]  # (no note: not
        # measured, as the drain of the send_many row)
        if not ok:
            return Cell(note="; ".join(failed))
        rates = [c.rate or 0.0 for c in ok]
        mid = ok[(len(ok) - 1) // 2]
        cpu = tuple(_median([c.cpu[i] for c in ok]) for i in range(len(mid.cpu)))
        out = Cell(rate=statistics.median(rates), seconds=mid.seconds, n=mid.n, cpu=cpu,
                   spread=(min(rates), max(rates)) if len(ok) > 1 else None)
        if failed:
            out.note = f"{len(failed)} of {len(self.cells)} runs failed: {failed[0]}"
        return out


def _median(xs: list[float | None]) -> float | None:
    known = [x for x in xs if x is not None]
    return statistics.median(known) if known else None


class Impl(NamedTuple):
    """One implementation measured by :func:`run_impls`."""

    key: str  # of its row: "mc", "celery", "go"
    name: str  # its row's name in the table
    producer: Callable[[], Cell]
    drain: Callable[[], Cell]  # measured only after a producer run that worked
    label: str = ""  # in the progress lines on stderr (default: the name)


def run_impls(impls: list[Impl], go: Impl | list[Impl] | None, reset: Callable[[], None],
              repeat: int = 1) -> dict[str, Row]:
    """Every implementation's producer and then worker drain, each implementation after a
    ``reset()``, ``repeat`` times interleaved; ``reset()`` again at the end.  ``go`` (one or
    several: the Go rows) comes last when the Go interop programs are there (built if need
    be), else its rows say why not.  A row's cells are the median runs (:meth:`Runs.summary`)."""
    gos = [] if go is None else [go] if isinstance(go, Impl) else go
    why = ensure_go_binaries() if gos else None
    measured = [*impls, *gos] if why is None else impls
    runs = {impl.key: (Runs(), Runs()) for impl in measured}
    for i in range(repeat):
        if repeat > 1:
            print(f"run {i + 1}/{repeat} (load average {loadavg()})", file=sys.stderr)
        for impl in measured:
            reset()
            label = impl.label or impl.name
            p = measure(f"{label} producer", impl.producer)
            runs[impl.key][0].cells.append(p)
            if p.rate is not None:
                runs[impl.key][1].cells.append(measure(f"{label} worker drain", impl.drain))
    reset()
    rows = {impl.key: Row(impl.name, runs[impl.key][0].summary(), runs[impl.key][1].summary())
            for impl in measured}
    if why is not None:
        rows.update({g.key: Row(g.name, Cell(note=why), Cell(note=why)) for g in gos})
    return rows


# --------------------------------------------------------------------------------------
# command line and main()
# --------------------------------------------------------------------------------------


def add_common_args(p: argparse.ArgumentParser, output: Path) -> None:
    """The flags every side-by-side benchmark takes."""
    p.add_argument("--n", type=int, default=20_000, help="tasks per measurement (20000)")
    p.add_argument("--concurrency", type=int, default=8, help="worker concurrency C (8)")
    p.add_argument("--processes", type=int, default=2,
                   help="also measure the machinery_compat worker as this many processes "
                        "sharing C (`--processes N`: a second row; 1: the one-process row only; "
                        "default 2)")
    p.add_argument("--pin", type=_pin, default=_pin("last"), metavar="CPU",
                   help="bench.redis_bench, bench.amqp_bench: also measure the "
                        "machinery_compat worker pinned to CPU "
                        "(`--cpu-affinity CPU`; bench.amqp_bench also `--processes P "
                        "--cpu-affinity all` and Celery under `taskset -c CPU`); default: the "
                        "last CPU; none: no pinned rows")
    p.add_argument("--skip-celery", action="store_true", help="do not measure Celery")
    p.add_argument("--skip-go", action="store_true", help="do not measure Go Machinery")
    p.add_argument("--profile", action="store_true",
                   help="profile the machinery_compat producer and worker instead")
    p.add_argument("--drain-timeout", type=float, default=120.0,
                   help="give up on a worker drain after this many seconds (120)")
    p.add_argument("--redis-server", default=shutil.which("redis-server") or "/usr/bin/redis-server")
    p.add_argument("--output", type=Path, default=output,
                   help=f"where to write the Markdown table ({output.relative_to(ROOT)})")


def _pin(text: str) -> str | None:
    """``--pin``: a CPU number, ``last`` (this machine's last CPU) or ``none``."""
    if text.lower() == "none" or not hasattr(os, "sched_getaffinity"):
        return None
    if text.lower() == "last":
        return str(max(os.sched_getaffinity(0)))
    if not text.isdigit() or int(text) not in os.sched_getaffinity(0):
        raise argparse.ArgumentTypeError(f"not a CPU of this machine: {text!r}")
    return text


def add_repeat_arg(p: argparse.ArgumentParser, default: int) -> None:
    p.add_argument("--repeat", type=int, default=default,
                   help="measure everything this many times, interleaved; the table shows the "
                        f"median and the range ({default})")


def publish(table: str, output: Path, summary: list[str] | None = None) -> None:
    """The table on stdout, then the ``summary`` lines on stderr; the table written to
    ``output``."""
    print(table)
    for line in summary or []:
        print(line, file=sys.stderr)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(table)
    print(f"(written to {output})", file=sys.stderr)


def bench_main(workdir_prefix: str, run: Callable[[Path, contextlib.ExitStack], None],
               errors: tuple[type[Exception], ...] = ()) -> int:
    """The frame of a benchmark's ``main()``: ``run(workdir, stack)`` in a new temporary
    directory starts the services, pushing what stops them on ``stack``, and measures.

    SIGINT, SIGTERM and SIGHUP interrupt it: 130; BenchError or one of ``errors`` (the
    services'): 1, with the error on stderr; else 0.  Either way, signals are then ignored
    while ``stack`` stops everything (last pushed first).
    """
    failures: tuple[type[Exception], ...] = (BenchError, *errors)
    interrupt_on_signals()
    with tempfile.TemporaryDirectory(prefix=workdir_prefix) as tmp:
        stack = contextlib.ExitStack()
        try:
            run(Path(tmp), stack)
        except KeyboardInterrupt:
            print("\ninterrupted: stopping everything", file=sys.stderr)
            return 130
        except failures as e:
            print(f"benchmark failed: {e}", file=sys.stderr)
            return 1
        finally:
            ignore_signals()
            stack.close()
    return 0
