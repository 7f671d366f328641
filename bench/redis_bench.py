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
import cProfile
import json
import logging
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from bench._common import (
    CELERY_DONE,
    INTEROP,
    MC_DONE,
    RESULTS_DIR,
    ROOT,
    BenchError,
    Cell,
    DoneWatcher,
    RedisServer,
    Row,
    add_common_args,
    child_env,
    die_with_bench,
    ensure_go_binaries,
    go_machinery_version,
    go_sent_ids,
    ignore_signals,
    interrupt_on_signals,
    machine,
    measure,
    print_top,
    proc_cpu,
    push_ids,
    ratio_row,
    redis_cpu,
    register_add,
    run_go_producer,
    run_mc_worker,
    running,
    spawn,
    tail,
    version,
)

QUEUE = "machinery_tasks"  # Machinery's default queue (machinery_compat and Go)
CELERY_QUEUE = "celery"
IDS_KEY = "bench:ids"  # the task ids of the current run, in send order
STAGING_KEY = "bench:staging"  # where the queued messages wait while a worker starts

log = logging.getLogger("bench")


# --------------------------------------------------------------------------------------
# measuring
# --------------------------------------------------------------------------------------


class Bench:
    def __init__(self, server: RedisServer, n: int, concurrency: int, workdir: Path,
                 drain_timeout: float) -> None:
        self.server = server
        self.n = n
        self.c = concurrency
        self.workdir = workdir
        self.drain_timeout = drain_timeout
        self.r = redis.Redis.from_url(server.url)
        self.watcher = DoneWatcher(self.r, IDS_KEY)

    # -- shared steps -------------------------------------------------------------------
    def reset(self) -> None:
        self.r.flushall()

    def redis_cpu(self) -> float:
        return redis_cpu(self.r)

    def push_ids(self, ids: list[str]) -> None:
        push_ids(self.r, IDS_KEY, ids)

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
            count, t1 = self.watcher.wait(self.n, prefix, done, t0, self.drain_timeout, proc,
                                          logfile)
            if count < self.n:
                return Cell(note=f"timeout: {count}/{self.n} done in {t1 - t0:.0f}s")
            cpu1, rcpu1 = proc_cpu(proc.pid), self.redis_cpu()
        left = self.r.llen(queue)
        if left:
            raise BenchError(f"{left} messages left in {queue} after all results were stored")
        return Cell(rate=self.n / (t1 - t0), seconds=t1 - t0, n=self.n,
                    cpu=(None if cpu0 is None or cpu1 is None else cpu1 - cpu0, rcpu1 - rcpu0))

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
        return Cell(rate=self.n / elapsed, seconds=elapsed, n=self.n, cpu=(cpu, rcpu))

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
            [*die_with_bench(), sys.executable, "-m", "bench.celery_app", "produce", str(self.n)],
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
                    cpu=(res["cpu"], rcpu))

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
        return run_go_producer(["-broker", self.server.url, "-queue", queue], lines,
                               self.workdir, tag)

    def go_producer(self) -> Cell:
        # start-up + connect + one send, best of three, subtracted from the N-task run
        base = min(self._run_go_producer(1, "bench_warmup", f"base{i}")[0] for i in range(3))
        self.reset()
        rcpu0 = self.redis_cpu()
        elapsed, outfile, cpu = self._run_go_producer(self.n, QUEUE, "main")
        rcpu = self.redis_cpu() - rcpu0
        self.push_ids(go_sent_ids(outfile, self.n))
        self.check_queued(QUEUE)
        net = elapsed - base
        return Cell(rate=(self.n - 1) / net, seconds=net, n=self.n, cpu=(cpu, rcpu))

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
    from machinery_compat import Machinery

    app = Machinery(broker=a.url, result_backend=a.url, default_queue=QUEUE)
    return run_mc_worker(app, a.concurrency, a.profile)


# --------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------


def render(rows: dict[str, Row], args: argparse.Namespace, redis_version: str) -> str:
    mc = rows["mc"]
    out = [
        "# Redis throughput: machinery_compat vs Celery vs Go Machinery",
        "",
        f"N = {args.n:,} tasks, C = {args.concurrency} (worker threads / goroutines); "
        "task `add(1)` everywhere, results backend on the same Redis.",
        "",
        f"Machine: {machine()}; Redis {redis_version} "
        "(local, loopback TCP, `--save '' --appendonly no`); redis-py "
        f"{version('redis')}, hiredis {version('hiredis')}; Celery {version('celery')}, "
        f"kombu {version('kombu')}; Go Machinery {go_machinery_version()} (redigo). "
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


def run_all(bench: Bench, args: argparse.Namespace) -> dict[str, Row]:
    rows: dict[str, Row] = {}
    print(f"N={bench.n} C={bench.c} redis={bench.server.url}", file=sys.stderr)

    bench.reset()
    row = rows["mc"] = Row(f"machinery_compat {version('machinery-compat')}")
    row.producer = measure("machinery_compat producer", bench.mc_producer)
    if row.producer.rate is not None:
        row.drain = measure("machinery_compat worker drain", bench.mc_drain)

    if not args.skip_celery:
        bench.reset()
        row = rows["celery"] = Row(f"Celery {version('celery')} (threads pool)")
        row.producer = measure("Celery producer", bench.celery_producer)
        if row.producer.rate is not None:
            row.drain = measure("Celery worker drain", bench.celery_drain)

    if not args.skip_go:
        row = rows["go"] = Row(f"Go Machinery {go_machinery_version()} (redigo)")
        why = ensure_go_binaries()
        if why:
            row.producer = row.drain = Cell(note=why)
        else:
            bench.reset()
            row.producer = measure("Go Machinery producer", bench.go_producer)
            if row.producer.rate is not None:
                row.drain = measure("Go Machinery worker drain", bench.go_drain)
    bench.reset()
    return rows


def profile_handle(bench: Bench) -> None:
    """``Worker.handle`` on the N queued messages, one after the other in this thread."""
    from machinery_compat import Machinery
    from machinery_compat.brokers.base import Delivery

    url = bench.server.url
    app = Machinery(broker=url, result_backend=url, default_queue=QUEUE)
    register_add(app)
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
    add_common_args(p, RESULTS_DIR / "latest.md")
    a = p.parse_args(argv)
    if a.n < 2 or a.concurrency < 1:
        p.error("--n must be ≥ 2 and --concurrency ≥ 1")
    return a


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_mc-worker":
        return mc_worker_main(argv[1:])
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    interrupt_on_signals()
    with tempfile.TemporaryDirectory(prefix="redis-bench-") as tmp:
        workdir = Path(tmp)
        server = RedisServer(args.redis_server, workdir)
        try:
            server.start()
            bench = Bench(server, args.n, args.concurrency, workdir, args.drain_timeout)
            if args.profile:
                run_profile(bench)
                return 0
            redis_version = bench.r.info("server")["redis_version"]
            rows = run_all(bench, args)
            table = render(rows, args, redis_version)
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
            ignore_signals()
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
