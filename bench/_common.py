"""What the side-by-side benchmarks (``bench.redis_bench``, ``bench.amqp_bench``) share.

* processes: children started under ``setpriv --pdeathsig KILL`` in their own process group
  (:func:`spawn`), stopped gracefully then killed (:func:`stop_process`, :func:`running`), their
  CPU time from ``/proc`` (:func:`proc_cpu`);
* a private ``redis-server`` on a free loopback port (:class:`RedisServer`) and the
  :class:`DoneWatcher` that times a drain by the SUCCESS states stored in it;
* the Go interop programs (:func:`ensure_go_binaries`, :func:`run_go_producer`);
* the machinery_compat worker subprocess (:func:`run_mc_worker`) with its optional
  per-thread profiler;
* the report: :class:`Cell`/:class:`Row`, :func:`ratio_row`, versions, :func:`print_top`.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import importlib.metadata
import io
import json
import os
import platform
import pstats
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
          stdin: Any = subprocess.DEVNULL, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [*die_with_bench(), *cmd], cwd=ROOT, stdin=stdin, stdout=stdout, stderr=stderr,
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
        self.proc: subprocess.Popen | None = None

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


def push_ids(r: redis.Redis, key: str, ids: list[str]) -> None:
    for i in range(0, len(ids), 5000):
        r.rpush(key, *ids[i : i + 5000])


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
             proc: subprocess.Popen, logfile: Path) -> tuple[int, float]:
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


# --------------------------------------------------------------------------------------
# the machinery_compat worker subprocess
# --------------------------------------------------------------------------------------


def register_add(app: Machinery) -> None:
    """The benchmark task: ``add(*nums)``, as Go's ``add(...int64)`` and Celery's."""

    @app.task(name="add")
    def add(*nums: int) -> int:
        return sum(nums)


def run_mc_worker(app: Machinery, concurrency: int, profile: Path | None) -> int:
    """Run ``app.worker(concurrency)`` with ``add`` registered until SIGTERM; with ``profile``,
    every thread runs under cProfile (timer: the thread's CPU time) and the merged stats are
    written there.  Prints ``{"processed": n}`` at the end."""
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
    worker = app.worker(concurrency=concurrency)
    worker.run()  # until SIGTERM: stops fetching, finishes running tasks
    app.close()
    if profiles and profile is not None:
        stats = pstats.Stats(profiles[0])
        for prof in profiles[1:]:
            stats.add(prof)
        stats.dump_stats(str(profile))
    print(json.dumps({"processed": worker.processed}), flush=True)
    return 0


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


def machine() -> str:
    """``N CPUs (model), Linux x.y; Python 3.x``."""
    return (f"{os.cpu_count()} CPUs ({cpu_model()}), {platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}")


def ratio(a: Cell, b: Cell) -> float | None:
    return None if a.rate is None or b.rate is None else a.rate / b.rate


def ratio_row(label: str, a: Cell, b: Cell, target: float | None) -> str:
    value = ratio(a, b)
    shown = "—" if value is None else f"{value:.2f}{TIMES}"
    if target is None:
        return f"| {label} | {shown} | — | — |"
    met = "—" if value is None else ("yes" if value >= target else "**no**")
    return f"| {label} | {shown} | ≥ {target:g}{TIMES} | {met} |"


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


def add_common_args(p: argparse.ArgumentParser, output: Path) -> None:
    """The flags every side-by-side benchmark takes."""
    p.add_argument("--n", type=int, default=20_000, help="tasks per measurement (20000)")
    p.add_argument("--concurrency", type=int, default=8, help="worker concurrency C (8)")
    p.add_argument("--skip-celery", action="store_true", help="do not measure Celery")
    p.add_argument("--skip-go", action="store_true", help="do not measure Go Machinery")
    p.add_argument("--profile", action="store_true",
                   help="profile the machinery_compat producer and worker instead")
    p.add_argument("--drain-timeout", type=float, default=120.0,
                   help="give up on a worker drain after this many seconds (120)")
    p.add_argument("--redis-server", default=shutil.which("redis-server") or "/usr/bin/redis-server")
    p.add_argument("--output", type=Path, default=output,
                   help=f"where to write the Markdown table ({output.relative_to(ROOT)})")
