"""Producer and worker throughput on Redis: machinery_compat vs Celery, dramatiq, taskiq and
Go Machinery (redigo and go-redis).

``python -m bench.redis_bench [--n 20000] [--concurrency 8] [--repeat 3] [--sweep 1,32]
[--skip-celery] [--skip-peers] [--skip-go]``

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

``--events on|off|compare`` (default ``compare``): the machinery_compat worker with task events
on (``MACHINERY_COMPAT_WORKER_EVENTS=1``, a worker's default), off, or both: the main row with
events off and a row "task events on", and the ratio of the two drains (#16: events on must
keep ≥ 0.95 of the drain).

A row "machinery_compat, ``send_many``" times ``app.send_many([("add", [1])] * N)`` (chunks of
1,000: each chunk's PENDING states and messages in one pipelined Redis write) as its
producer; its drain is not measured again (the same queued messages as the first row's).
#13 asks for ≥ 50,000 tasks/s.

A second table gives every worker's drain at each ``--sweep`` concurrency (default 1 and 32;
N = ``--sweep-n``, default N / 4) beside the main table's, at ``--concurrency``.

``--profile`` instead runs the machinery_compat producer and worker under cProfile and
prints the top functions by own time.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, cast

import redis

from bench._common import (
    CELERY_DONE,
    CELERY_QUEUE,
    IDS_KEY,
    MC_DONE,
    QUEUE,
    RATIO_HEAD,
    RESULTS_DIR,
    STAGING_KEY,
    BenchError,
    Cell,
    DoneWatcher,
    Impl,
    RedisServer,
    Row,
    add_common_args,
    add_repeat_arg,
    bench_main,
    blocked_consumers,
    child_env,
    cpu_row,
    go_machinery_version,
    go_startup_seconds,
    impl_lines,
    loadavg,
    machine,
    mc_worker_main,
    notes_lines,
    profile_handle,
    publish,
    push_ids,
    ratio_row,
    redis_cpu,
    redis_mc_app,
    run_impls,
    run_profile,
    run_stamp,
    running,
    send_adds,
    start_celery_worker,
    start_go_worker,
    start_mc_worker,
    time_go_producer,
    time_peer_producer,
    version,
    wait_worker,
)
from bench.chart import write_results
from bench.peers import (
    DRAMATIQ_DONE,
    DRAMATIQ_HEARTBEATS,
    DRAMATIQ_QUEUE,
    TASKIQ_DONE,
    TASKIQ_QUEUE,
    start_dramatiq_worker,
    start_taskiq_worker,
)

if TYPE_CHECKING:
    import subprocess



log = logging.getLogger("bench")

#: tasks per ``send_many`` chunk in the send_many row
SEND_MANY_CHUNK = 1000
#: #13: ``send_many`` puts at least this many tasks per second into Redis
SEND_MANY_TARGET = 50_000


# --------------------------------------------------------------------------------------
# measuring
# --------------------------------------------------------------------------------------


class Bench:
    def __init__(self, server: RedisServer, n: int, concurrency: int, workdir: Path,
                 drain_timeout: float, processes: int = 1, events: str = "compare") -> None:
        self.processes = processes
        self.events = events
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

    def cpu(self) -> tuple[float]:
        """CPU seconds so far of redis-server."""
        return (redis_cpu(self.r),)

    def check_queued(self, queue: str) -> None:
        queued, ids = self.r.llen(queue), self.r.llen(IDS_KEY)
        if queued != self.n or ids != self.n:
            raise BenchError(f"expected {self.n} queued messages and ids, found {queued} / {ids}")

    def wait_blocked(self, proc: subprocess.Popen[bytes], logfile: Path, clients: int = 1) -> None:
        """Until ``clients`` clients (the worker's processes: nobody else blocks here) wait in
        BLPOP/BRPOP/BLMOVE."""

        wait_worker(proc, logfile, lambda: blocked_consumers(self.r) >= clients,
                    "not consuming after")

    def drain(self, queue: str, start_worker: Callable[[], subprocess.Popen[bytes]],
              logfile: Path, prefix: str = "", done: str = MC_DONE, processes: int = 1,
              ready: Callable[[], bool] | None = None) -> Cell:
        """Time a started, idle worker through the N queued messages (see module doc); idle:
        ``ready()`` if given, else every process blocked on the queue."""
        self.r.rename(queue, STAGING_KEY)
        proc = start_worker()
        with running(proc):
            if ready is None:
                self.wait_blocked(proc, logfile, processes)
            else:
                wait_worker(proc, logfile, ready, "not polling after")
            cell = self.watcher.time_drain(self.n, lambda: self.r.rename(STAGING_KEY, queue),
                                           proc, logfile, self.cpu, self.drain_timeout, prefix,
                                           done)
        if cell.rate is None:
            return cell
        left = self.r.llen(queue)
        if left:
            raise BenchError(f"{left} messages left in {queue} after all results were stored")
        return cell

    # -- machinery_compat ---------------------------------------------------------------
    def mc_producer(self, profile: cProfile.Profile | None = None) -> Cell:
        url = self.server.url
        ids, cell = send_adds(lambda: redis_mc_app(url, url), self.n, self.cpu, profile=profile)
        push_ids(self.r, IDS_KEY, ids)
        self.check_queued(QUEUE)
        return cell

    def mc_send_many(self) -> Cell:
        """``app.send_many`` of N ``add(1)`` in chunks of :data:`SEND_MANY_CHUNK`, from this
        thread, timed around the call (after one untimed send: connecting)."""
        url = self.server.url
        ids, cell = send_adds(lambda: redis_mc_app(url, url), self.n, self.cpu, "warmup",
                              chunk=SEND_MANY_CHUNK)
        push_ids(self.r, IDS_KEY, ids)
        self.check_queued(QUEUE)
        return cell

    def mc_drain(self, profile_out: Path | None = None, processes: int = 1,
                 events: bool | None = None, extra_env: dict[str, str] | None = None,
                 cpus: str | None = None) -> Cell:
        on = self.events == "on" if events is None else events
        variant = "-" + "-".join(f"{k}={v}" for k, v in extra_env.items()) if extra_env else ""
        variant += f"-cpus{cpus}" if cpus is not None else ""
        logfile = self.workdir / f"mc-worker-{processes}{'-events' if on else ''}{variant}.log"
        url = self.server.url
        flags = ["--broker", url, "--backend", url, "--concurrency", str(self.c),
                 "--processes", str(processes)]
        if cpus is not None:
            flags += ["--cpu-affinity", cpus]
        env = child_env(MACHINERY_COMPAT_WORKER_EVENTS="1" if on else "0", **(extra_env or {}))
        return self.drain(QUEUE, lambda: start_mc_worker("bench.redis_bench", flags, logfile,
                                                         profile_out, env=env), logfile,
                          processes=processes)

    def mc_drain_events(self) -> Cell:
        return self.mc_drain(events=True)

    def mc_drain_processes(self) -> Cell:
        return self.mc_drain(processes=self.processes)

    # -- Celery ---------------------------------------------------------------------------
    def peer_env(self) -> dict[str, str]:
        return child_env(BENCH_REDIS_URL=self.server.url, BENCH_IDS_KEY=IDS_KEY)

    def celery_producer(self) -> Cell:
        cell = time_peer_producer("bench.celery_app", self.n, self.peer_env(),
                                  self.workdir / "celery-producer.log", self.cpu, timeout=600)
        self.check_queued(CELERY_QUEUE)
        return cell

    def celery_drain(self) -> Cell:
        logfile = self.workdir / "celery-worker.log"
        return self.drain(CELERY_QUEUE,
                          lambda: start_celery_worker(self.c, self.peer_env(), logfile),
                          logfile, "celery-task-meta-", CELERY_DONE)

    # -- dramatiq and taskiq ------------------------------------------------------------
    def peer_producer(self, module: str, queue: str) -> Cell:
        name = module.rsplit(".", 1)[1]
        cell = time_peer_producer(module, self.n, self.peer_env(),
                                  self.workdir / f"{name}-producer.log", self.cpu, timeout=600)
        self.check_queued(queue)
        return cell

    def dramatiq_producer(self) -> Cell:
        cell = self.peer_producer("bench.dramatiq_app", DRAMATIQ_QUEUE)
        self.r.delete(DRAMATIQ_HEARTBEATS)  # (the producer's)
        return cell

    def dramatiq_drain(self) -> Cell:
        logfile = self.workdir / f"dramatiq-worker-{self.c}.log"
        return self.drain(DRAMATIQ_QUEUE,
                          lambda: start_dramatiq_worker(self.c, self.peer_env(), logfile),
                          logfile, "", DRAMATIQ_DONE,
                          ready=lambda: bool(self.r.zcard(DRAMATIQ_HEARTBEATS)))

    def taskiq_producer(self) -> Cell:
        return self.peer_producer("bench.taskiq_app", TASKIQ_QUEUE)

    def taskiq_drain(self) -> Cell:
        logfile = self.workdir / f"taskiq-worker-{self.c}.log"
        return self.drain(TASKIQ_QUEUE,
                          lambda: start_taskiq_worker(self.c, self.peer_env(), logfile),
                          logfile, "", TASKIQ_DONE)

    # -- Go Machinery -------------------------------------------------------------------
    def go_producer(self, flavour: str = "v2-redigo") -> Cell:
        flags = ["-broker", self.server.url, "-flavour", flavour]
        startup = go_startup_seconds(flags, self.workdir)
        self.reset()
        ids, cell = time_go_producer(flags, self.n, self.workdir, self.cpu, startup)
        push_ids(self.r, IDS_KEY, ids)
        self.check_queued(QUEUE)
        return cell

    def go_drain(self, flavour: str = "v2-redigo") -> Cell:
        logfile = self.workdir / f"go-worker-{flavour}-{self.c}.log"
        flags = ["-broker", self.server.url, "-flavour", flavour, "-queue", QUEUE,
                 "-concurrency", str(self.c)]
        return self.drain(QUEUE, lambda: start_go_worker(flags, logfile), logfile)


# --------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------


def render(rows: dict[str, Row], args: argparse.Namespace, redis_version: str,
           load: tuple[str, str] = ("?", "?"),
           sweep: dict[int, dict[str, Row]] | None = None) -> str:
    mc = rows["mc"]
    mcp = rows.get("mcp")
    out = [
        "# Redis throughput: machinery_compat vs Celery, dramatiq, taskiq and Go Machinery",
        "",
        f"N = {args.n:,} tasks, C = {args.concurrency} (worker threads / goroutines; "
        f"with `--processes {args.processes}`, C split across the processes); "
        "task `add(1)` everywhere, results backend on the same Redis.",
        "",
        f"Machine: {machine()}; Redis {redis_version} "
        "(local, loopback TCP, `--save '' --appendonly no`); redis-py "
        f"{version('redis')}, hiredis {version('hiredis')}; Celery {version('celery')}, "
        f"kombu {version('kombu')}; dramatiq {version('dramatiq')}; taskiq "
        f"{version('taskiq')}, taskiq-redis {version('taskiq-redis')}; Go Machinery "
        f"{go_machinery_version()} (redigo and go-redis). "
        f"{run_stamp(args.repeat)}; load average {load[0]} at the start, {load[1]} at the end.",
        "",
        "| Implementation | Producer (tasks/s) | Producer CPU µs/task (client + Redis) "
        "| Worker drain (tasks/s) | Drain CPU µs/task (worker + Redis) |",
        "|---|---:|---:|---:|---:|",
    ]
    out += impl_lines(rows)
    out += RATIO_HEAD
    for key, row in rows.items():
        if key.startswith("var"):
            out.append(ratio_row(f"{row.name.split(', ', 1)[1]} / default, worker drain",
                                 row.drain, mc.drain, None))
    if "mcev" in rows:
        out.append(ratio_row("machinery_compat worker drain, task events on / off (#16)",
                             rows["mcev"].drain, mc.drain, 0.95))
    if "celery" in rows:
        cel = rows["celery"]
        out.append(ratio_row("machinery_compat / Celery, producer", mc.producer, cel.producer, 4))
        out.append(ratio_row("machinery_compat / Celery, worker drain", mc.drain, cel.drain, 3))
        if mcp is not None:
            out.append(ratio_row(f"machinery_compat --processes {args.processes} / Celery, "
                                 "worker drain", mcp.drain, cel.drain, 3))
    for key, peer in (("dramatiq", "dramatiq"), ("taskiq", "taskiq")):
        if key in rows:
            out.append(ratio_row(f"machinery_compat / {peer}, producer", mc.producer,
                                 rows[key].producer, None))
            out.append(ratio_row(f"machinery_compat / {peer}, worker drain", mc.drain,
                                 rows[key].drain, None))
    for key, client, _ in GO_ROWS:
        if key not in rows:
            continue
        go = rows[key]
        out.append(ratio_row(f"machinery_compat / Go Machinery ({client}), producer (#13)",
                             mc.producer, go.producer, 1.2))
        out.append(ratio_row(f"machinery_compat (1 process) / Go Machinery ({client}), worker "
                             "drain (#13)", mc.drain, go.drain, 1.0))
        if "mcpin" in rows:
            out.append(ratio_row(f"machinery_compat (1 process, --cpu-affinity {args.pin}) / "
                                 f"Go Machinery ({client}), worker drain", rows["mcpin"].drain,
                                 go.drain, 1.0))
        if mcp is not None:
            out.append(ratio_row(f"machinery_compat --processes {args.processes} / Go "
                                 f"Machinery ({client}), worker drain (#13)", mcp.drain,
                                 go.drain, 1.5))
    out.append(cpu_row("machinery_compat worker CPU per task, 1 process (#13)", mc.drain, 200))
    if "mcmany" in rows:
        many = rows["mcmany"].producer
        shown = "—" if many.rate is None else f"{many.rate:,.0f}/s"
        met = "—" if many.rate is None else ("yes" if many.rate >= SEND_MANY_TARGET
                                             else "**no**")
        out.append(f"| machinery_compat `send_many`, tasks/s (#13) | {shown} | "
                   f"≥ {SEND_MANY_TARGET:,}/s | {met} |")
    out += [
        "",
        "Producer: N sends from one thread (machinery_compat `app.send_task(\"add\", "
        "args=[1])`, PENDING + RPUSH in one pipelined round trip; Celery "
        "`add.apply_async(args=[1])`, which also subscribes to the result channel; dramatiq "
        "`add.send(1)`; taskiq `await add.kiq(1)`; Go `server.SendTask` via "
        "`interop/bin/mcproducer -parallel 1`, SET PENDING then RPUSH). Python: timed around "
        "the send loop; Go: process wall time minus a one-task run's (start-up).",
        "",
        "Worker drain: the N queued messages are set aside, the worker process is started "
        "(machinery_compat `app.worker(concurrency=C)`, or `app.worker(concurrency=C, "
        "processes=P)`: P forked worker processes of C/P threads each, log level WARNING; "
        "`celery worker --pool threads --concurrency C --without-gossip --without-mingle "
        "--without-heartbeat -l warning`; dramatiq: one process, `dramatiq.Worker` with C "
        "threads, its idle poll at most 100 ms apart (bench/dramatiq_app.py); `taskiq worker "
        "--workers 1 --max-async-tasks C`, an async task; `interop/bin/mcworker -concurrency "
        "C`), and once it is idle on the empty queue (every process of it blocked in "
        "BLPOP/BRPOP/BLMOVE; dramatiq, which polls: after its first poll) the messages are put "
        "back in one `RENAME` and the clock starts; it stops when every task's result is "
        "stored (a Lua script checks the ids in send order, every 5 ms). Worker start-up is "
        "not counted.",
        "",
        "CPU µs/task: user + system CPU of the producer (Python: the sending process during "
        "the loop; Go: the whole `mcproducer` process) or of the worker process (all threads, "
        "from `/proc`; with processes, the supervisor and its workers), and of `redis-server` "
        "(`INFO cpu`), over the timed interval, divided by N.",
    ]
    if sweep:
        out += sweep_lines(rows, sweep, args)
    out += notes_lines(rows)
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------


def by_concurrency(rows: dict[str, Row], sweep: dict[int, dict[str, Row]],
                   args: argparse.Namespace) -> dict[int, dict[str, Row]]:
    """Every concurrency's rows of :data:`SWEPT`, the main table's at ``--concurrency``
    included."""
    table = {args.concurrency: rows, **sweep}
    return {c: {k: table[c][k] for k in SWEPT if k in table[c]} for c in sorted(table)}


def sweep_lines(rows: dict[str, Row], sweep: dict[int, dict[str, Row]],
                args: argparse.Namespace) -> list[str]:
    """The table of worker drains by concurrency (after a blank line)."""
    table = by_concurrency(rows, sweep, args)
    cs = list(table)
    keys = [k for k in SWEPT if any(k in t for t in table.values())]
    runs = "" if args.repeat == 1 else f", {args.repeat} runs each"
    out = ["", "## Worker drain by concurrency (tasks/s; worker CPU µs/task)", "",
           f"C = {args.concurrency}: the drains above (N = {args.n:,}); the others N = "
           f"{args.sweep_n:,}, measured the same way{runs}. The processes row needs C ≥ "
           f"{args.processes}.", "",
           "| Implementation | " + " | ".join(f"C = {c}" for c in cs) + " |",
           "|---|" + "---:|" * len(cs)]
    for key in keys:
        name = next(t[key].name for t in table.values() if key in t)
        cells = []
        for c in cs:
            cell = table[c][key].drain if key in table[c] else None
            if cell is None:
                cells.append("")
                continue
            cpu = cell.show_cpu().split(" + ")[0]
            cells.append(cell.show() if cell.rate is None else f"{cell.show()}; {cpu} µs")
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return out


#: the rows of the concurrency table
SWEPT = ("mc", "mcp", "celery", "dramatiq", "taskiq", "go", "gor")


def core_impls(bench: Bench, args: argparse.Namespace) -> tuple[list[Impl], list[Impl]]:
    """The implementations of both tables (the Python ones, the Go ones): machinery_compat
    (one process, and ``bench.processes`` if more), Celery, dramatiq, taskiq, Go Machinery v2
    with redigo and with go-redis."""
    mcv = version("machinery-compat")
    impls = [Impl("mc", f"machinery_compat {mcv}", bench.mc_producer, bench.mc_drain,
                  label="machinery_compat")]
    if bench.processes > 1:
        impls.append(Impl("mcp", f"machinery_compat {mcv}, --processes {bench.processes}",
                          bench.mc_producer, bench.mc_drain_processes,
                          label=f"machinery_compat --processes {bench.processes}"))
    if not args.skip_celery:
        impls.append(Impl("celery", f"Celery {version('celery')} (threads pool)",
                          bench.celery_producer, bench.celery_drain, label="Celery"))
    if not args.skip_peers:
        impls.append(Impl("dramatiq", f"dramatiq {version('dramatiq')} (threads)",
                          bench.dramatiq_producer, bench.dramatiq_drain, label="dramatiq"))
        impls.append(Impl("taskiq", f"taskiq {version('taskiq')}, taskiq-redis "
                                    f"{version('taskiq-redis')} (async)",
                          bench.taskiq_producer, bench.taskiq_drain, label="taskiq"))
    gos = [] if args.skip_go else [
        Impl(key, f"Go Machinery {go_machinery_version()} ({client})",
             lambda f=flavour: bench.go_producer(f),  # type: ignore[misc]
             lambda f=flavour: bench.go_drain(f),  # type: ignore[misc]
             label=f"Go Machinery ({client})")
        for key, client, flavour in GO_ROWS]
    return impls, gos


#: the Go Machinery v2 rows: (row key, Redis client, mcworker/mcproducer -flavour)
GO_ROWS = (("go", "redigo", "v2-redigo"), ("gor", "go-redis", "v2-goredis"))


def run_all(bench: Bench, args: argparse.Namespace) -> dict[str, Row]:
    print(f"N={bench.n} C={bench.c} redis={bench.server.url}", file=sys.stderr)
    impls, gos = core_impls(bench, args)
    mcv = version("machinery-compat")
    extra = [Impl("mcmany", f"machinery_compat {mcv}, `send_many`", bench.mc_send_many, Cell,
                  label="machinery_compat send_many")]
    if args.pin is not None:
        extra.append(Impl("mcpin", f"machinery_compat {mcv}, --cpu-affinity {args.pin}",
                          bench.mc_producer,
                          lambda: bench.mc_drain(cpus=args.pin),
                          label=f"machinery_compat --cpu-affinity {args.pin}"))
    if args.events == "compare":
        extra.append(Impl("mcev", f"machinery_compat {mcv}, task events on", bench.mc_producer,
                          bench.mc_drain_events, label="machinery_compat, events on"))
    for i, (label, env) in enumerate(args.variant or ()):
        extra.append(Impl(f"var{i}", f"machinery_compat {mcv}, {label}", bench.mc_producer,
                          lambda env=env: bench.mc_drain(extra_env=env),  # type: ignore[misc]
                          label=f"machinery_compat, {label}"))
    n_mc = 2 if bench.processes > 1 else 1
    return run_impls([*impls[:n_mc], *extra, *impls[n_mc:]], gos, bench.reset, args.repeat)


def run_sweep(bench: Bench, args: argparse.Namespace) -> dict[int, dict[str, Row]]:
    """The drains at each concurrency of ``--sweep`` (N = ``--sweep-n``), every
    implementation of :func:`core_impls` (the processes row where C allows it)."""
    out = {}
    for c in args.sweep:
        processes = args.processes if 1 < args.processes <= c else 1
        sub = Bench(bench.server, args.sweep_n, c, bench.workdir, bench.drain_timeout,
                    processes, "off")
        print(f"N={sub.n} C={c}", file=sys.stderr)
        out[c] = run_impls(*core_impls(sub, args), sub.reset, args.repeat)
    return out


def profile_queued(bench: Bench) -> None:
    """:func:`profile_handle` on the N queued messages."""
    app = redis_mc_app(bench.server.url, bench.server.url)
    try:
        profile_handle(app, cast("list[bytes]", bench.r.lpop(QUEUE, bench.n) or []))
    finally:
        app.close()


def _variant(text: str) -> tuple[str, dict[str, str]]:
    label, sep, assignments = text.rpartition(":")
    env = dict(a.split("=", 1) for a in assignments.split(",") if "=" in a)
    if not sep or not label or not env:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LABEL:NAME=VALUE[,NAME=VALUE]")
    return label, env


def _concurrencies(text: str) -> tuple[int, ...]:
    try:
        cs = tuple(sorted({int(c) for c in text.split(",") if c.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected C[,C...]") from None
    if any(c < 1 for c in cs):
        raise argparse.ArgumentTypeError(f"{text!r}: concurrencies are ≥ 1")
    return cs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.redis_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, RESULTS_DIR / "latest.md")
    add_repeat_arg(p, 3)
    p.add_argument("--skip-peers", action="store_true", help="do not measure dramatiq and taskiq")
    p.add_argument("--sweep", type=_concurrencies, default=(1, 32), metavar="C[,C...]",
                   help="also time every worker's drain at these concurrencies, in a second "
                        "table (default 1,32; the main table gives C = --concurrency; '' for "
                        "none)")
    p.add_argument("--sweep-n", type=int, default=None,
                   help="tasks per drain of the concurrency table (default N / 4)")
    p.add_argument("--events", choices=("on", "off", "compare"), default="compare",
                   help="the machinery_compat worker's task events: on, off, or compare (both: "
                        "a row with events off and the on/off drain ratio; default)")
    p.add_argument("--variant", action="append", type=_variant, metavar="LABEL:K=V[,K=V]",
                   help="one more machinery_compat worker drain row, with these environment "
                        "variables (e.g. 'exact decoder:MACHINERY_COMPAT_FAST_JSON=0'), and "
                        "its ratio to the default row; repeatable")
    a = p.parse_args(argv)
    a.sweep = tuple(c for c in a.sweep if c != a.concurrency)
    a.sweep_n = a.sweep_n or max(a.n // 4, 2)
    if a.n < 2 or a.concurrency < 1 or a.repeat < 1 or not 1 <= a.processes <= a.concurrency:
        p.error("--n must be ≥ 2, --concurrency and --repeat ≥ 1, --processes 1 to C")
    return a


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_mc-worker":
        return mc_worker_main("bench.redis_bench", argv[1:], lambda a: redis_mc_app(a.broker, a.backend))
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    def run(workdir: Path, stack: contextlib.ExitStack) -> None:
        server = RedisServer(args.redis_server, workdir)
        stack.callback(server.stop)
        server.start()
        bench = Bench(server, args.n, args.concurrency, workdir, args.drain_timeout,
                      args.processes, args.events)
        if args.profile:
            run_profile(bench, lambda: profile_queued(bench))
            return
        redis_version = bench.r.info("server")["redis_version"]
        load0 = loadavg()
        rows = run_all(bench, args)
        sweep = run_sweep(bench, args)
        publish(render(rows, args, redis_version, (load0, loadavg()), sweep), args.output)
        write_results(rows, f"Redis: tasks/s, N = {args.n:,}, C = {args.concurrency} "
                            f"({machine()})", args.output,
                      by_concurrency(rows, sweep, args) if sweep else None)

    return bench_main("redis-bench-", run)


if __name__ == "__main__":
    sys.exit(main())
