"""Cost independent of queue depth: the machinery_compat worker on a deep Redis queue.

``python -m bench.depth_bench [--depth 1000000] [--window 10000] [--concurrency 8]``

Issue #13's "long rows": the drain rate with 1M tasks queued within 10 % of the rate with 10k
queued, and the worker's memory (RSS) growing by at most 10 % over 1M tasks.  Starts a
private ``redis-server`` on a free loopback port (``--save '' --appendonly no``), measures,
prints one Markdown table and writes it to ``bench/results/latest-depth.md``.  About 3½
minutes with the defaults on a 2-CPU machine (most of it the worker draining 1M tasks at
~8,000/s); Redis holds ~0.85 GB meanwhile.

The worker is the machinery_compat worker in a subprocess, as ``bench.redis_bench`` runs it:
``app.worker(concurrency=C)``, one process, task events off, log level WARNING, results in
the same Redis.  The task is ``add(1)``.  Three drains, each by a freshly started worker:

1. **W queued** (shallow): W tasks are enqueued (``app.send_many``, chunks of 1,000) and set
   aside (``RENAME``); the worker is started, and once it waits in ``BLMOVE`` on the empty
   queue they are put back with one ``RENAME`` and the clock starts.  It stops when all W
   results are stored as SUCCESS (``DoneWatcher``: a Lua script walking the task ids in send
   order, every 5 ms).
2. **D queued** (deep): the same with D tasks enqueued.  The clock stops first when the first
   W tasks of the queue (the W at its head) are done: the rate over that window is the one
   compared with 1.  The worker goes on, and the whole queue is drained: the worker's RSS
   (VmRSS summed over its process tree) is read at checkpoints (after the window, after
   ``--warmup`` tasks, then every tenth of D), and the clock stops again when all D are done.
3. **W queued** again, twice, as 1: the shallow rate is the median (min-max) of the three,
   which bracket the deep run in time, so a change in the machine's load shows as a spread.

The deep rate is the median (min-max) of the first three windows of W (the next two timed
between checkpoints at 2W and 3W, each with about D - 3W still queued): a single window of
~1 s moved the ratio from 0.82 to 1.18 between runs on a quiet machine.

Ratio: rate over the first W with D queued / with W queued (#13: ≥ 0.9).  RSS growth: RSS
when all D are done / RSS after ``--warmup`` tasks - 1 (#13: ≤ 10 %).

A small run for a smoke test: ``--depth 3000 --window 500`` (a few seconds).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import redis

from bench._common import (
    DASH,
    IDS_KEY,
    MC_DONE,
    QUEUE,
    RESULTS_DIR,
    STAGING_KEY,
    TIMES,
    BenchError,
    Cell,
    DoneWatcher,
    RedisServer,
    Runs,
    bench_main,
    blocked_consumers,
    child_env,
    delta,
    loadavg,
    machine,
    mc_worker_main,
    measure,
    process_tree,
    publish,
    push_ids,
    ratio_row,
    redis_cpu,
    redis_mc_app,
    run_stamp,
    running,
    send_adds,
    start_mc_worker,
    tree_cpu,
    version,
    wait_worker,
)

if TYPE_CHECKING:
    import subprocess


MODULE = "bench.depth_bench"  # ``python -m`` name of this module, for the worker subprocess
#: tasks per ``send_many`` chunk (one pipelined Redis write each)
SEND_CHUNK = 1000
#: tasks per ``send_many`` call while enqueueing (keeps the benchmark's own memory small)
SEND_BATCH = 100_000
#: #13: rate with D queued / rate with W queued, at least
DEPTH_TARGET = 0.90
#: the deep run's rate is the median over this many consecutive windows of W at the queue's
#: head (each with about D - 3W still queued): one window of ~1 s moves ±20 % with the load
DEEP_WINDOWS = 3
#: #13: worker RSS growth over the long drain, at most
RSS_TARGET = 0.10
#: the shallow drain's runs: before and after the deep one
SHALLOW_RUNS = 3


# --------------------------------------------------------------------------------------
# memory of a process tree
# --------------------------------------------------------------------------------------


def status_kb(pid: int, key: str) -> int:
    """A ``kB`` figure of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``); 0 if gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def tree_kb(pid: int, key: str = "VmRSS") -> int:
    """:func:`status_kb` summed over the process tree of ``pid``."""
    return sum(status_kb(p, key) for p in process_tree(pid))


# --------------------------------------------------------------------------------------
# measuring
# --------------------------------------------------------------------------------------


def checkpoints(depth: int, window: int, warmup: int, steps: int = 10) -> list[int]:
    """Tasks done at which the deep drain is sampled, ascending, from ``window`` (the first)
    to ``depth``: the window, the warm-up mark (:func:`warm_mark`) and every ``steps``-th of
    ``depth`` past the window."""
    marks = {window, warm_mark(depth, window, warmup), depth,
             *(k * window for k in range(2, DEEP_WINDOWS + 1) if k * window <= depth // 2)}
    marks |= {depth * k // steps for k in range(1, steps)}
    return sorted(m for m in marks if window <= m <= depth)


def warm_mark(depth: int, window: int, warmup: int) -> int:
    """Where the RSS growth is counted from: ``warmup`` clipped to ``[window, depth // 2]``."""
    return min(max(warmup, window), depth // 2)


@dataclass
class Sample:
    """The deep drain at a checkpoint."""

    done: int  # tasks done
    seconds: float  # since the clock started
    rss_kb: int  # the worker's RSS


@dataclass
class Deep:
    """What the deep run measured."""

    enqueue: Cell = field(default_factory=Cell)
    window: Cell = field(default_factory=Cell)
    whole: Cell = field(default_factory=Cell)
    idle_rss_kb: int = 0  # the worker's RSS, started and idle, before the clock starts
    hwm_kb: int = 0  # its peak RSS (VmHWM) at the end
    samples: list[Sample] = field(default_factory=list)
    redis_mb: float = 0.0  # Redis ``used_memory`` with the D tasks queued


class DepthBench:
    def __init__(self, server: RedisServer, args: argparse.Namespace, workdir: Path) -> None:
        self.server = server
        self.depth: int = args.depth
        self.window: int = args.window
        self.warmup: int = args.warmup
        self.c: int = args.concurrency
        self.timeout: float = args.drain_timeout
        self.workdir = workdir
        self.r = redis.Redis.from_url(server.url)

    def cpu(self) -> tuple[float]:
        """CPU seconds so far of redis-server."""
        return (redis_cpu(self.r),)

    @staticmethod
    def ids_key(segment: int) -> str:
        return f"{IDS_KEY}:{segment}"

    def enqueue(self, sizes: list[int]) -> Cell:
        """``sum(sizes)`` tasks ``add(1)`` through ``app.send_many`` (:data:`SEND_CHUNK` a chunk,
        at most :data:`SEND_BATCH` a call); the ids of segment i (``sizes[i]`` tasks, in send
        order) in list :meth:`ids_key` (i).  The cell: the send rate, CPU client + Redis."""
        url = self.server.url
        seconds, client, server = 0.0, 0.0, 0.0
        for i, size in enumerate(sizes):
            for start in range(0, size, SEND_BATCH):
                ids, cell = send_adds(lambda: redis_mc_app(url), min(SEND_BATCH, size - start),
                                      self.cpu, chunk=SEND_CHUNK)
                push_ids(self.r, self.ids_key(i), ids)
                seconds += cell.seconds or 0.0
                client += cell.cpu[0] or 0.0
                server += cell.cpu[1] or 0.0
        n = sum(sizes)
        queued = self.r.llen(QUEUE)
        if queued != n:
            raise BenchError(f"expected {n} queued messages, found {queued}")
        return Cell(rate=n / seconds, seconds=seconds, n=n, cpu=(client, server))

    def start_worker(self, tag: str) -> tuple[subprocess.Popen[bytes], Path]:
        """Set the queued messages aside and start the worker (it then waits, idle)."""
        self.r.rename(QUEUE, STAGING_KEY)
        logfile = self.workdir / f"mc-worker-{tag}.log"
        url = self.server.url
        flags = ["--broker", url, "--backend", url, "--concurrency", str(self.c),
                 "--processes", "1"]
        proc = start_mc_worker(MODULE, flags, logfile,
                               env=child_env(MACHINERY_COMPAT_WORKER_EVENTS="0"))
        return proc, logfile

    def wait_idle(self, proc: subprocess.Popen[bytes], logfile: Path) -> None:
        """Until the worker (nobody else blocks here) waits in BLPOP/BRPOP/BLMOVE."""

        wait_worker(proc, logfile, lambda: blocked_consumers(self.r) > 0,
                    "not consuming after")

    def release(self) -> None:
        self.r.rename(STAGING_KEY, QUEUE)

    def shallow(self, tag: str) -> Cell:
        """Drain 1 / 3 (module doc): W queued, all W timed."""
        self.r.flushall()
        self.enqueue([self.window])
        proc, logfile = self.start_worker(tag)
        with running(proc):
            self.wait_idle(proc, logfile)
            return DoneWatcher(self.r, self.ids_key(0)).time_drain(
                self.window, self.release, proc, logfile, self.cpu, self.timeout)

    def deep(self) -> Deep:
        """Drain 2 (module doc): D queued, the first W timed, then all D with the worker's RSS
        at each of :func:`checkpoints`."""
        out = Deep()
        self.r.flushall()
        marks = checkpoints(self.depth, self.window, self.warmup)
        sizes = [b - a for a, b in zip([0, *marks], marks, strict=False)]
        print(f"  enqueueing {self.depth:,} tasks…", end="", file=sys.stderr, flush=True)
        out.enqueue = self.enqueue(sizes)
        print(f" {out.enqueue.rate or 0:,.0f} tasks/s ({out.enqueue.seconds:.1f}s)",
              file=sys.stderr)
        out.redis_mb = int(self.r.info("memory")["used_memory"]) / 1e6
        proc, logfile = self.start_worker("deep")
        with running(proc):
            self.wait_idle(proc, logfile)
            out.idle_rss_kb = tree_kb(proc.pid)
            t0 = 0.0

            def release() -> None:
                nonlocal t0
                t0 = time.perf_counter()
                self.release()

            cpu0, servers0 = tree_cpu(proc.pid), self.cpu()
            out.window = measure(f"first {self.window:,} of {self.depth:,} queued",
                                 lambda: DoneWatcher(self.r, self.ids_key(0)).time_drain(
                                     self.window, release, proc, logfile, self.cpu,
                                     self.timeout))
            if out.window.rate is None:
                return out
            out.samples.append(Sample(self.window, out.window.seconds or 0.0,
                                      tree_kb(proc.pid)))
            t1 = t0
            for i, (mark, size) in enumerate(zip(marks, sizes, strict=True)):
                if i == 0:
                    continue
                count, t1 = DoneWatcher(self.r, self.ids_key(i)).wait(
                    size, "", MC_DONE, t0, self.timeout, proc, logfile)
                if count < size:
                    out.whole = Cell(note=f"timeout: {mark - size + count:,}/{self.depth:,} "
                                          f"done in {t1 - t0:.0f}s")
                    return out
                sample = Sample(mark, t1 - t0, tree_kb(proc.pid))
                out.samples.append(sample)
                print(f"    {mark:,} done in {sample.seconds:.1f}s, worker RSS "
                      f"{sample.rss_kb / 1024:.1f} MiB", file=sys.stderr)
            cpu1, servers1 = tree_cpu(proc.pid), self.cpu()
            out.window = head_windows(out.window, out.samples, self.window)
            out.hwm_kb = tree_kb(proc.pid, "VmHWM")
            out.whole = Cell(rate=self.depth / (t1 - t0), seconds=t1 - t0, n=self.depth,
                             cpu=(delta(cpu0, cpu1), *map(delta, servers0, servers1)))
        left = self.r.llen(QUEUE)
        if left:
            raise BenchError(f"{left} messages left in {QUEUE} after all results were stored")
        return out


# --------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------


def head_windows(first: Cell, samples: list[Sample], window: int) -> Cell:
    """The deep rate: the median of the first :data:`DEEP_WINDOWS` windows of ``window``
    tasks (the first timed on its own, the next ones between checkpoints), their min-max as
    the spread; the CPU is the first window's."""
    times = {s.done: s.seconds for s in samples}
    rates = [first.rate or 0.0]
    for k in range(2, DEEP_WINDOWS + 1):
        a, b = times.get((k - 1) * window), times.get(k * window)
        if a is None or b is None or b <= a:
            break
        rates.append(window / (b - a))
    if len(rates) == 1:
        return first
    mid = statistics.median(rates)
    return Cell(rate=mid, seconds=window / mid, n=first.n, cpu=first.cpu,
                spread=(min(rates), max(rates)))


def mib(kb: int) -> str:
    return f"{kb / 1024:,.1f}"


def rss_growth(deep: Deep, warm: int) -> tuple[float, Sample, Sample] | None:
    """(end / after warm-up - 1, the two samples); None when the drain did not finish."""
    if deep.whole.rate is None or not deep.samples:
        return None
    start = next((s for s in deep.samples if s.done == warm), None)
    end = deep.samples[-1]
    if start is None or not start.rss_kb:
        return None
    return end.rss_kb / start.rss_kb - 1, start, end


def render(shallow: Cell, deep: Deep, args: argparse.Namespace, redis_version: str,
           load: tuple[str, str]) -> str:
    d, w = args.depth, args.window
    warm = warm_mark(d, w, args.warmup)
    out = [
        "# Queue depth: drain rate and worker memory, machinery_compat on Redis",
        "",
        f"D = {d:,} tasks queued, window W = {w:,}, C = {args.concurrency}: the "
        "machinery_compat worker, one process, task events off, log level WARNING; task "
        "`add(1)`, results in the same Redis.",
        "",
        f"Machine: {machine()}; Redis {redis_version} (local, loopback TCP, `--save '' "
        f"--appendonly no`); redis-py {version('redis')}, hiredis {version('hiredis')}. "
        f"{run_stamp(1)} (the W-queued drain {SHALLOW_RUNS} times, once before the deep run "
        f"and the others after it, median (min{DASH}max); the deep rate the median "
        f"(min{DASH}max) of its first {DEEP_WINDOWS} windows of W); load average {load[0]} at the start, {load[1]} at the end.",
        "",
        "| Measurement | Tasks/s | CPU µs/task | Seconds |",
        "|---|---:|---:|---:|",
    ]

    def line(label: str, cell: Cell, who: str) -> str:
        secs = "—" if cell.rate is None or cell.seconds is None else f"{cell.seconds:.1f}"
        return f"| {label} | {cell.show()} | {cell.show_cpu()} ({who}) | {secs} |"

    out += [
        line(f"worker drain, first {w:,} tasks, {w:,} queued", shallow, "worker + Redis"),
        line(f"worker drain, first {w:,} tasks, {d:,} queued", deep.window, "worker + Redis"),
        line(f"worker drain, all {d:,} tasks, {d:,} queued", deep.whole, "worker + Redis"),
        line(f"enqueue {d:,} tasks: `send_many`, chunks of {SEND_CHUNK:,}", deep.enqueue,
             "client + Redis"),
        "",
        "| Target | Value | Limit | Met |",
        "|---|---:|---:|:---:|",
        ratio_row(f"drain rate over the first {w:,} tasks, {d:,} queued / {w:,} queued (#13)",
                  deep.window, shallow, DEPTH_TARGET),
    ]
    growth = rss_growth(deep, warm)
    label = f"worker RSS growth over {d:,} tasks, from task {warm:,} to the end (#13)"
    limit = f"≤ {RSS_TARGET:.0%}"
    if growth is None:
        out.append(f"| {label} | — | {limit} | — |")
    else:
        g, start, end = growth
        out.append(f"| {label} | {g:+.1%} ({mib(start.rss_kb)} → {mib(end.rss_kb)} MiB) | "
                   f"{limit} | {'yes' if g <= RSS_TARGET else '**no**'} |")
    if deep.samples:
        out += [
            "",
            f"The deep drain, checkpoint by checkpoint (worker RSS: VmRSS summed over its "
            f"process tree; {mib(deep.idle_rss_kb)} MiB when started and idle"
            + (f", peak VmHWM {mib(deep.hwm_kb)} MiB" if deep.hwm_kb else "")
            + f"; Redis `used_memory` with the {d:,} tasks queued: {deep.redis_mb:,.0f} MB):",
            "",
            "| Tasks done | Seconds | Tasks/s since the previous row | Worker RSS (MiB) |",
            "|---:|---:|---:|---:|",
        ]
        prev = Sample(0, 0.0, 0)
        for s in deep.samples:
            rate = (s.done - prev.done) / (s.seconds - prev.seconds) if s.seconds > prev.seconds \
                else 0.0
            out.append(f"| {s.done:,} | {s.seconds:.1f} | {rate:,.0f} | {mib(s.rss_kb)} |")
            prev = s
    out += [
        "",
        f"How: each drain by a freshly started worker. The tasks are enqueued with "
        f"`app.send_many` and set aside (`RENAME`); once the worker waits in `BLMOVE` on the "
        f"empty queue they are put back with one `RENAME` and the clock starts; it stops when "
        f"the first {w:,} tasks' results (the head of the queue) are stored as SUCCESS (a Lua "
        f"script walks the ids in send order every 5 ms). With {d:,} queued the worker then "
        f"drains the whole queue; its RSS is read at each checkpoint. The {w:,}-queued drain "
        f"runs before and after the deep one. CPU µs/task: user + system CPU of the worker "
        f"(`/proc`) or the sending process, and of `redis-server` (`INFO cpu`), over the timed "
        f"interval, divided by the tasks. {TIMES}: ratio of tasks/s.",
    ]
    notes = [f"{name}: {c.note}" for name, c in (
        (f"{w:,} queued", shallow), (f"first {w:,} of {d:,}", deep.window),
        (f"all {d:,}", deep.whole)) if c.note]
    if notes:
        out += ["", "Notes: " + "; ".join(notes) + "."]
    return "\n".join(out) + "\n"


def summary(shallow: Cell, deep: Deep, args: argparse.Namespace) -> list[str]:
    growth = rss_growth(deep, warm_mark(args.depth, args.window, args.warmup))
    ratio = (None if deep.window.rate is None or shallow.rate is None
             else deep.window.rate / shallow.rate)
    return [f"depth ratio {'—' if ratio is None else f'{ratio:.2f}'}; RSS growth "
            f"{'—' if growth is None else f'{growth[0]:+.1%}'}"]


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------


def run_all(bench: DepthBench) -> tuple[Cell, Deep]:
    runs = Runs()
    deep = Deep()
    for i in range(SHALLOW_RUNS):
        label = f"first {bench.window:,} of {bench.window:,} queued ({i + 1}/{SHALLOW_RUNS})"
        runs.cells.append(measure(label, functools.partial(bench.shallow, f"shallow{i}")))
        if i == 0:
            deep = bench.deep()
    return runs.summary(), deep


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depth", type=int, default=1_000_000,
                   help="D: tasks queued in the deep run, all drained (1000000)")
    p.add_argument("--window", type=int, default=10_000,
                   help="W: tasks queued in the shallow run, and the window timed in both "
                        "(10000)")
    p.add_argument("--warmup", type=int, default=50_000,
                   help="RSS growth is counted from this many tasks done (clipped to "
                        "[W, D/2]; 50000)")
    p.add_argument("--concurrency", type=int, default=8, help="worker concurrency C (8)")
    p.add_argument("--drain-timeout", type=float, default=1800.0,
                   help="give up on a drain after this many seconds (1800)")
    p.add_argument("--redis-server", default=shutil.which("redis-server") or "/usr/bin/redis-server")
    output = RESULTS_DIR / "latest-depth.md"
    p.add_argument("--output", type=Path, default=output,
                   help="where to write the Markdown table (bench/results/latest-depth.md)")
    a = p.parse_args(argv)
    if a.window < 1 or a.depth < 2 * a.window or a.concurrency < 1:
        p.error("--window and --concurrency must be ≥ 1, --depth ≥ 2 * --window")
    return a


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_mc-worker":
        return mc_worker_main(MODULE, argv[1:], lambda a: redis_mc_app(a.broker))
    args = parse_args(argv)

    def run(workdir: Path, stack: contextlib.ExitStack) -> None:
        server = RedisServer(args.redis_server, workdir)
        stack.callback(server.stop)
        server.start()
        bench = DepthBench(server, args, workdir)
        redis_version = bench.r.info("server")["redis_version"]
        print(f"D={args.depth} W={args.window} C={args.concurrency} redis={server.url}",
              file=sys.stderr)
        load0 = loadavg()
        shallow, deep = run_all(bench)
        publish(render(shallow, deep, args, redis_version, (load0, loadavg())), args.output,
                summary(shallow, deep, args))

    return bench_main("depth-bench-", run)

if __name__ == "__main__":
    sys.exit(main())
