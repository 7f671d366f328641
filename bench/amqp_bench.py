"""Producer and worker throughput on RabbitMQ: machinery_compat vs Celery vs Go Machinery.

``python -m bench.amqp_bench [--n 20000] [--concurrency 8] [--prefetch C] [--repeat 1]
[--skip-celery] [--skip-go]``

Starts a private RabbitMQ node (``tests.services.RabbitMQServer``: its own Erlang node, ports
and data directory, nothing of the system service touched) and a private ``redis-server``,
measures, prints one Markdown table and writes it to ``bench/results/latest-amqp.md``.
Every process it starts is stopped on exit, Ctrl-C or error.

The broker is RabbitMQ and the results backend Redis for all three implementations (an AMQP
broker with a Redis backend is the common production setup; Machinery's AMQP result backend
makes a queue per task).  Every implementation runs the same task, ``add`` with one integer
argument 1, from the same durable queue, with the same worker concurrency C and the same
RabbitMQ prefetch count (``basic.qos``; default C for everyone: Machinery's
``amqp.prefetch_count``, Celery's ``worker_prefetch_multiplier`` 1).  Between
implementations the queues are deleted and Redis is flushed.

* producer: N sends from one thread, each a complete send: the PENDING state in Redis
  (machinery_compat and Go; Celery subscribes to the task's result channel instead), then the
  message, published with publisher confirms on for all three (each send waits for RabbitMQ's
  ``basic.ack``: Go Machinery always does; machinery_compat always does; Celery with
  ``confirm_publish``).  Python producers are timed around the send loop after one untimed
  send to another queue (connecting); the Go producer (``mcproducer``, one goroutine) by wall
  time minus that of a one-task run (process start-up, connecting).
* worker drain: the N messages the producer queued are taken by the benchmark on a consumer
  of its own (prefetch unlimited, not acknowledged) and that consumer is cancelled, so the
  queue is empty; the worker process is started and, once RabbitMQ counts a consumer on the
  queue (passive ``queue.declare``), one ``basic.nack(multiple, requeue)`` puts all N back
  at once, in order, and the clock starts.  It stops when all N results are stored as
  SUCCESS in Redis (the same Lua-script poller as ``bench.redis_bench``, every 5 ms).  Worker
  start-up is not counted, for any implementation.

``--profile`` instead runs the machinery_compat producer and worker under cProfile and
prints the top functions by own time.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import logging
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from bench._common import (
    CELERY_DONE,
    DASH,
    INTEROP,
    MC_DONE,
    RESULTS_DIR,
    ROOT,
    TIMES,
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
    ratio,
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

if TYPE_CHECKING:
    import amqp

    from machinery_compat import Machinery
    from tests.services import RabbitMQServer

QUEUE = "machinery_tasks"  # Machinery's default queue (machinery_compat and Go)
CELERY_QUEUE = "celery"
WARMUP_QUEUE = "bench_warmup"  # the untimed first send (connecting) goes here
IDS_KEY = "bench:ids"  # the task ids of the current run, in send order

log = logging.getLogger("bench")


# --------------------------------------------------------------------------------------
# RabbitMQ helpers
# --------------------------------------------------------------------------------------


def beam_pid(pid: int) -> int | None:
    """The ``beam.smp`` process under ``pid`` (the ``rabbitmq-server`` script), or None."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d.name))
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            if Path(f"/proc/{p}/comm").read_text().strip().startswith("beam"):
                return p
        except OSError:
            pass
        todo += children.get(p, [])
    return None


class Held:
    """Every message of a queue, delivered to a consumer of the benchmark's own and not
    acknowledged; the consumer is cancelled, so the queue looks empty to everyone else.
    :meth:`release` gives them all back in one ``basic.nack(multiple, requeue)``."""

    def __init__(self, node: RabbitMQServer, queue: str, n: int, keep_bodies: bool = False,
                 timeout: float = 60.0) -> None:
        self.conn: amqp.Connection = node.connection()
        self.channel = self.conn.channel()
        self.channel.basic_qos(0, 0, False)
        self.count = 0
        self.last_tag = 0
        self.bodies: list[bytes] = []

        def on_message(msg: Any) -> None:
            self.count += 1
            self.last_tag = msg.delivery_tag
            if keep_bodies:
                body = msg.body
                self.bodies.append(body if isinstance(body, bytes) else bytes(body))

        tag = self.channel.basic_consume(queue, callback=on_message, no_ack=False)
        deadline = time.monotonic() + timeout
        while self.count < n:
            if time.monotonic() > deadline:
                self.close()
                raise BenchError(f"took only {self.count}/{n} messages from {queue}")
            with contextlib.suppress(TimeoutError):
                self.conn.drain_events(timeout=1)
        self.channel.basic_cancel(tag)

    def release(self) -> None:
        """All held messages back into their queue (at their places: the head)."""
        from amqp import spec

        self.channel.send_method(spec.Basic.Nack, "Lbb", (self.last_tag, True, True))

    def ack_all(self) -> None:
        self.channel.basic_ack(self.last_tag, multiple=True)

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:  # closing anyway; unacked messages go back to the queue
            log.debug("closing the holding connection", exc_info=True)


# --------------------------------------------------------------------------------------
# measuring
# --------------------------------------------------------------------------------------


class Bench:
    def __init__(self, node: RabbitMQServer, server: RedisServer, args: argparse.Namespace,
                 workdir: Path) -> None:
        self.node = node
        self.server = server
        self.n: int = args.n
        self.c: int = args.concurrency
        self.prefetch: int = args.prefetch
        self.workdir = workdir
        self.drain_timeout: float = args.drain_timeout
        self.broker_url = node.url
        self.backend_url = server.url
        self.r = redis.Redis.from_url(server.url)
        self.watcher = DoneWatcher(self.r, IDS_KEY)
        self.beam = beam_pid(node.pid or 0)
        self._admin = node.connection()
        self._channel: Any = self._admin.channel()
        props = self._admin.server_properties
        self.rabbitmq_version = _text(props.get("version", "?"))
        self.erlang = _text(props.get("platform", "Erlang"))

    # -- shared steps -------------------------------------------------------------------
    def channel(self) -> Any:
        if self._channel is None or not self._channel.is_open:
            self._channel = self._admin.channel()
        return self._channel

    def queue_state(self, queue: str) -> tuple[int, int]:
        """(ready messages, consumers) of ``queue``; (0, 0) when it does not exist."""
        import amqp

        try:
            ok = self.channel().queue_declare(queue, passive=True)
        except amqp.exceptions.NotFound:
            self._channel = None
            return 0, 0
        return ok.message_count, ok.consumer_count

    def reset(self) -> None:
        self.r.flushall()
        for q in (QUEUE, CELERY_QUEUE, WARMUP_QUEUE):
            self.channel().queue_delete(q)

    def cpu(self) -> tuple[float | None, float]:
        """CPU seconds so far of RabbitMQ (its Erlang VM) and of redis-server."""
        return (proc_cpu(self.beam) if self.beam else None), redis_cpu(self.r)

    def check_queued(self, queue: str) -> None:
        deadline = time.monotonic() + 10
        while True:
            queued, ids = self.queue_state(queue)[0], self.r.llen(IDS_KEY)
            if queued == self.n and ids == self.n:
                return
            if time.monotonic() > deadline:
                raise BenchError(f"expected {self.n} queued messages and ids, found {queued} / "
                                 f"{ids}")
            time.sleep(0.05)

    def wait_consuming(self, queue: str, proc: subprocess.Popen, logfile: Path,
                       timeout: float = 90) -> None:
        """Until RabbitMQ counts a consumer on ``queue`` (the worker: nobody else consumes)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.queue_state(queue)[1] >= 1:
                return
            if proc.poll() is not None:
                raise BenchError(f"worker exited with {proc.returncode}:\n{tail(logfile)}")
            time.sleep(0.02)
        raise BenchError(f"worker not consuming after {timeout:.0f}s:\n{tail(logfile)}")

    def drain(self, queue: str, prefix: str, done: str, start_worker: Callable[[], Any],
              logfile: Path) -> Cell:
        """Time a started, idle worker through the N queued messages (see module doc)."""
        held = Held(self.node, queue, self.n)
        try:
            proc = start_worker()
            with running(proc):
                self.wait_consuming(queue, proc, logfile)
                cpu0, (bcpu0, rcpu0) = proc_cpu(proc.pid), self.cpu()
                t0 = time.perf_counter()
                held.release()
                count, t1 = self.watcher.wait(self.n, prefix, done, t0, self.drain_timeout,
                                              proc, logfile)
                if count < self.n:
                    return Cell(note=f"timeout: {count}/{self.n} done in {t1 - t0:.0f}s")
                cpu1, (bcpu1, rcpu1) = proc_cpu(proc.pid), self.cpu()
        finally:
            held.close()
        left = self.queue_state(queue)[0]
        if left:
            raise BenchError(f"{left} messages left in {queue} after all results were stored")
        return Cell(rate=self.n / (t1 - t0), seconds=t1 - t0, n=self.n,
                    cpu=(_diff(cpu0, cpu1), _diff(bcpu0, bcpu1), rcpu1 - rcpu0))

    # -- machinery_compat ---------------------------------------------------------------
    def mc_app(self) -> Machinery:
        return mc_app(self.broker_url, self.backend_url, self.prefetch)

    def mc_producer(self, profile: cProfile.Profile | None = None) -> Cell:
        app = self.mc_app()
        try:
            send = app.send_task
            send("add", args=[1], queue=WARMUP_QUEUE)  # connects (untimed), as Go's base run
            ids: list[str] = []
            append = ids.append
            bcpu0, rcpu0 = self.cpu()
            if profile is not None:
                profile.enable()
            cpu0, t0 = time.process_time(), time.perf_counter()
            for _ in range(self.n):
                append(send("add", args=[1]).id)
            elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            if profile is not None:
                profile.disable()
            bcpu1, rcpu1 = self.cpu()
        finally:
            app.close()
        push_ids(self.r, IDS_KEY, ids)
        self.check_queued(QUEUE)
        return Cell(rate=self.n / elapsed, seconds=elapsed, n=self.n,
                    cpu=(cpu, _diff(bcpu0, bcpu1), rcpu1 - rcpu0))

    def mc_drain(self, profile_out: Path | None = None) -> Cell:
        logfile = self.workdir / "mc-worker.log"
        cmd = [sys.executable, "-m", "bench.amqp_bench", "_mc-worker", "--broker",
               self.broker_url, "--backend", self.backend_url, "--concurrency", str(self.c),
               "--prefetch", str(self.prefetch)]
        if profile_out is not None:
            cmd += ["--profile", str(profile_out)]

        def start() -> subprocess.Popen:
            return spawn(cmd, stdout=logfile.open("wb"), env=child_env())

        return self.drain(QUEUE, "", MC_DONE, start, logfile)

    # -- Celery ---------------------------------------------------------------------------
    def celery_env(self) -> dict[str, str]:
        return child_env(BENCH_BROKER_URL=self.broker_url, BENCH_REDIS_URL=self.backend_url,
                         BENCH_PREFETCH_MULTIPLIER=str(self.prefetch // self.c),
                         BENCH_IDS_KEY=IDS_KEY, BENCH_WARMUP_QUEUE=WARMUP_QUEUE)

    def celery_producer(self) -> Cell:
        logfile = self.workdir / "celery-producer.log"
        bcpu0, rcpu0 = self.cpu()
        out = subprocess.run(
            [*die_with_bench(), sys.executable, "-m", "bench.celery_app", "produce", str(self.n)],
            cwd=ROOT, env=self.celery_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=logfile.open("wb"), timeout=900, start_new_session=True, check=False,
        )
        if out.returncode != 0:
            raise BenchError(f"celery producer failed ({out.returncode}):\n{tail(logfile)}")
        # the servers' CPU over the whole subprocess (start-up, warm-up, pushing the ids: small)
        bcpu1, rcpu1 = self.cpu()
        res = json.loads(out.stdout.decode().strip().splitlines()[-1])
        self.check_queued(CELERY_QUEUE)
        return Cell(rate=self.n / res["elapsed"], seconds=res["elapsed"], n=self.n,
                    cpu=(res["cpu"], _diff(bcpu0, bcpu1), rcpu1 - rcpu0))

    def celery_drain(self) -> Cell:
        logfile = self.workdir / "celery-worker.log"
        celery = shutil.which("celery") or "celery"
        cmd = [celery, "-A", "bench.celery_app", "worker", "--pool", "threads",
               "--concurrency", str(self.c), "--without-gossip", "--without-mingle",
               "--without-heartbeat", "-l", "warning", "-n", "bench@%h"]

        def start() -> subprocess.Popen:
            return spawn(cmd, stdout=logfile.open("wb"), env=self.celery_env())

        return self.drain(CELERY_QUEUE, "celery-task-meta-", CELERY_DONE, start, logfile)

    # -- Go Machinery -------------------------------------------------------------------
    def _run_go_producer(self, lines: int, queue: str, tag: str) -> tuple[float, Path, float]:
        return run_go_producer(["-broker", self.broker_url, "-backend", self.backend_url,
                                "-queue", queue], lines, self.workdir, tag)

    def go_producer(self) -> Cell:
        # start-up + connect + one send, best of three, subtracted from the N-task run
        base = min(self._run_go_producer(1, WARMUP_QUEUE, f"base{i}")[0] for i in range(3))
        bcpu0, rcpu0 = self.cpu()
        elapsed, outfile, cpu = self._run_go_producer(self.n, QUEUE, "main")
        bcpu1, rcpu1 = self.cpu()
        push_ids(self.r, IDS_KEY, go_sent_ids(outfile, self.n))
        self.check_queued(QUEUE)
        net = elapsed - base
        return Cell(rate=(self.n - 1) / net, seconds=net, n=self.n,
                    cpu=(cpu, _diff(bcpu0, bcpu1), rcpu1 - rcpu0))

    def go_drain(self) -> Cell:
        logfile = self.workdir / "go-worker.log"
        cmd = [str(INTEROP / "bin" / "mcworker"), "-broker", self.broker_url, "-backend",
               self.backend_url, "-queue", QUEUE, "-concurrency", str(self.c),
               "-amqp-prefetch", str(self.prefetch)]

        def start() -> subprocess.Popen:
            # stdout: one JSON line per task (the interop harness's record), kept for debugging
            return spawn(cmd, stdout=(self.workdir / "go-worker.out").open("wb"),
                         stderr=logfile.open("wb"))

        return self.drain(QUEUE, "", MC_DONE, start, logfile)

    def close(self) -> None:
        try:
            self._admin.close()
        except Exception:
            log.debug("closing the admin connection", exc_info=True)
        self.r.close()


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def mc_app(broker: str, backend: str, prefetch: int) -> Machinery:
    """The machinery_compat app of producer and worker: the Go interop programs' AMQP
    settings (binding key = the queue, so producers and workers use one queue) and
    ``prefetch`` as RabbitMQ prefetch count."""
    from machinery_compat import Machinery
    from machinery_compat.config import AMQPConfig, Config

    cfg = Config(broker=broker, result_backend=backend, default_queue=QUEUE,
                 amqp=AMQPConfig(binding_key=QUEUE, prefetch_count=prefetch))
    return Machinery(config=cfg)


# --------------------------------------------------------------------------------------
# the machinery_compat worker subprocess
# --------------------------------------------------------------------------------------


def mc_worker_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bench.amqp_bench _mc-worker")
    p.add_argument("--broker", required=True)
    p.add_argument("--backend", required=True)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--prefetch", type=int, default=8)
    p.add_argument("--profile", type=Path, help="write cProfile stats of all threads here")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    return run_mc_worker(mc_app(a.broker, a.backend, a.prefetch), a.concurrency, a.profile)


# --------------------------------------------------------------------------------------
# several runs
# --------------------------------------------------------------------------------------


@dataclass
class Runs:
    """The cells of one implementation and measurement over ``--repeat`` runs."""

    cells: list[Cell] = field(default_factory=list)

    def summary(self) -> Cell:
        """The median run (its rate and CPU), with the spread of the rates in its note."""
        ok = sorted((c for c in self.cells if c.rate is not None), key=lambda c: c.rate or 0)
        failed = [c.note for c in self.cells if c.rate is None]
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


def run_all(bench: Bench, args: argparse.Namespace) -> dict[str, Row]:
    impls: list[tuple[str, str, Callable[[], Cell], Callable[[], Cell]]] = [
        ("mc", f"machinery_compat {version('machinery-compat')}", bench.mc_producer,
         bench.mc_drain)]
    if not args.skip_celery:
        impls.append(("celery", f"Celery {version('celery')} (threads pool, py-amqp)",
                      bench.celery_producer, bench.celery_drain))
    names = {key: name for key, name, _, _ in impls}
    go_skipped = None
    if not args.skip_go:
        go_name = f"Go Machinery {go_machinery_version()} (amqp091-go, redigo)"
        names["go"] = go_name
        go_skipped = ensure_go_binaries()
        if go_skipped is None:
            impls.append(("go", go_name, bench.go_producer, bench.go_drain))
    runs: dict[str, tuple[Runs, Runs]] = {key: (Runs(), Runs()) for key in names}
    print(f"N={bench.n} C={bench.c} prefetch={bench.prefetch} rabbitmq={bench.broker_url} "
          f"redis={bench.backend_url}", file=sys.stderr)
    for i in range(args.repeat):
        if args.repeat > 1:
            print(f"run {i + 1}/{args.repeat} (load average {loadavg()})", file=sys.stderr)
        for key, name, producer, drain in impls:
            bench.reset()
            p = measure(f"{name} producer", producer)
            runs[key][0].cells.append(p)
            if p.rate is not None:
                runs[key][1].cells.append(measure(f"{name} worker drain", drain))
    bench.reset()
    rows: dict[str, Row] = {}
    for key, name in names.items():
        if key == "go" and go_skipped:
            rows[key] = Row(name, Cell(note=go_skipped), Cell(note=go_skipped))
        else:
            rows[key] = Row(name, runs[key][0].summary(), runs[key][1].summary())
    return rows


# --------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def render(rows: dict[str, Row], args: argparse.Namespace, bench: Bench, redis_version: str,
           load: tuple[str, str]) -> str:
    mc = rows["mc"]
    each = ("each measurement once" if args.repeat == 1 else
            f"each measurement {args.repeat} times, interleaved: median (min{DASH}max) of the rates, "
            "median CPU")
    out = [
        "# AMQP throughput: machinery_compat vs Celery vs Go Machinery "
        "(RabbitMQ broker, Redis results backend)",
        "",
        f"N = {args.n:,} tasks, C = {args.concurrency} (worker threads / goroutines), RabbitMQ "
        f"prefetch count {args.prefetch} for every worker; task `add(1)` everywhere. Broker: a "
        "private RabbitMQ node (durable queue, persistent messages); results backend: a "
        "private Redis, the same for all three (AMQP broker + Redis backend, the common "
        "production setup). Publisher confirms on for all three producers: every send waits "
        "for RabbitMQ's `basic.ack` (Go Machinery always does, machinery_compat always does, "
        "Celery with `confirm_publish`).",
        "",
        f"Machine: {machine()}; RabbitMQ {bench.rabbitmq_version} ({bench.erlang}, loopback "
        f"TCP); Redis {redis_version} (loopback TCP, `--save '' --appendonly no`); py-amqp "
        f"{version('amqp')}, kombu {version('kombu')}, redis-py {version('redis')}, hiredis "
        f"{version('hiredis')}; Celery {version('celery')}; Go Machinery "
        f"{go_machinery_version()} (amqp091-go, redigo). Run {datetime.now(UTC):%Y-%m-%d %H:%M} "
        f"UTC, {each}; load average {load[0]} at the start, {load[1]} at the end.",
        "",
        "| Implementation | Producer (tasks/s) | Producer CPU µs/task (client + RabbitMQ + "
        "Redis) | Worker drain (tasks/s) | Drain CPU µs/task (worker + RabbitMQ + Redis) |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows.values():
        out.append(f"| {row.name} | {row.producer.show()} | {row.producer.show_cpu()} "
                   f"| {row.drain.show()} | {row.drain.show_cpu()} |")
    out += ["", "| Ratio (tasks/s) | Value | Target | Met |", "|---|---:|---:|:---:|"]
    if "go" in rows:
        go = rows["go"]
        out.append(ratio_row("machinery_compat / Go Machinery, producer", mc.producer,
                             go.producer, 1))
        out.append(ratio_row("machinery_compat / Go Machinery, worker drain", mc.drain,
                             go.drain, 1))
    if "celery" in rows:
        cel = rows["celery"]
        out.append(ratio_row("machinery_compat / Celery, worker drain", mc.drain, cel.drain, 3))
        out.append(ratio_row("machinery_compat / Celery, producer", mc.producer, cel.producer,
                             None))
    out += [
        "",
        "Producer: N sends from one thread, publisher confirms on (machinery_compat "
        "`app.send_task(\"add\", args=[1])`: PENDING `SET` in Redis, then `basic.publish` and "
        "wait for the confirm; Celery `add.apply_async(args=[1])`, which also subscribes to the "
        "task's Redis result channel; Go `server.SendTask` via `interop/bin/mcproducer "
        "-parallel 1`: PENDING in Redis, then publish and wait for the confirm). Python: timed "
        "around the send loop, after one untimed send to another queue; Go: process wall time "
        "minus a one-task run's (start-up, connecting).",
        "",
        "Worker drain: the benchmark takes the N queued messages on a consumer of its own "
        "without acknowledging them and cancels it; the worker process is started "
        "(machinery_compat `app.worker(concurrency=C)` with `amqp.prefetch_count`, log level "
        "WARNING; `celery worker --pool threads --concurrency C --without-gossip "
        "--without-mingle --without-heartbeat -l warning` with `worker_prefetch_multiplier` "
        f"{args.prefetch // args.concurrency}; `interop/bin/mcworker -concurrency C "
        "-amqp-prefetch P`), and once RabbitMQ counts its consumer on the empty queue, one "
        "`basic.nack(multiple, requeue)` gives all N messages back and the clock starts; it "
        "stops when every task's result is stored in Redis as SUCCESS (a Lua script checks the "
        "ids in send order, every 5 ms). Worker start-up is not counted.",
        "",
        "CPU µs/task: user + system CPU of the producer (Python: the sending process during the "
        "loop; Go: the whole `mcproducer` process) or of the worker process (all threads, from "
        "`/proc`), of RabbitMQ's Erlang VM (`/proc`) and of `redis-server` (`INFO cpu`), over "
        "the timed interval, divided by N.",
    ]
    notes = [f"{row.name}: {c.note}" for row in rows.values() for c in (row.producer, row.drain)
             if c.note]
    if notes:
        out += ["", "Notes: " + "; ".join(notes) + "."]
    return "\n".join(out) + "\n"


def targets_summary(rows: dict[str, Row]) -> list[str]:
    """One line per target for stderr."""
    mc = rows["mc"]
    out = []
    for key, which, target in (("go", "producer", 1.0), ("go", "drain", 1.0),
                               ("celery", "drain", 3.0)):
        if key not in rows:
            continue
        value = ratio(getattr(mc, which), getattr(rows[key], which))
        shown = "—" if value is None else f"{value:.2f}{TIMES}"
        met = "?" if value is None else ("met" if value >= target else "MISSED")
        out.append(f"  {which} vs {key}: {shown} (target ≥ {target:g}{TIMES}): {met}")
    return out


# --------------------------------------------------------------------------------------
# profiling
# --------------------------------------------------------------------------------------


def profile_handle(bench: Bench) -> None:
    """``Worker.handle`` on the N queued messages, one after the other in this thread (the
    broker's acks are skipped: the benchmark holds the deliveries and acks them at the end)."""
    from machinery_compat.brokers.base import Delivery

    held = Held(bench.node, QUEUE, bench.n, keep_bodies=True)
    app = bench.mc_app()
    register_add(app)
    try:
        worker = app.worker(concurrency=1)  # not started: only its per-message path is used
        deliveries = [Delivery(body, QUEUE) for body in held.bodies]
        prof = cProfile.Profile()
        cpu0, t0 = time.process_time(), time.perf_counter()
        prof.enable()
        for d in deliveries:
            worker.handle(d)
        prof.disable()
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        held.ack_all()
    finally:
        held.close()
        app.close()
    n = len(deliveries)
    print(f"\nmachinery_compat Worker.handle(), one thread, under cProfile (no broker round "
          f"trips: acks skipped): {n / elapsed:,.0f} tasks/s, {cpu / n * 1e6:,.0f} µs CPU/task")
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
                  pstats.Stats(str(out)), top=25)
    else:
        print(f"no worker profile written:\n{tail(bench.workdir / 'mc-worker.log')}")


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.amqp_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, RESULTS_DIR / "latest-amqp.md")
    p.add_argument("--prefetch", type=int, default=0,
                   help="RabbitMQ prefetch count of every worker (default: the concurrency; "
                        "with Celery, a multiple of it)")
    p.add_argument("--repeat", type=int, default=1,
                   help="measure everything this many times, interleaved; the table shows the "
                        "median and the range (1)")
    a = p.parse_args(argv)
    if a.n < 2 or a.concurrency < 1 or a.repeat < 1:
        p.error("--n must be ≥ 2, --concurrency and --repeat ≥ 1")
    a.prefetch = a.prefetch or a.concurrency
    if not a.skip_celery and a.prefetch % a.concurrency:
        p.error("Celery's prefetch count is a multiple of the concurrency "
                "(worker_prefetch_multiplier): pick such a --prefetch, or --skip-celery")
    return a


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_mc-worker":
        return mc_worker_main(argv[1:])
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    interrupt_on_signals()
    try:
        from tests.services import RabbitMQServer, ServiceError, ServiceUnavailable
    except ImportError as e:  # pytest missing: the dev extra
        print(f"benchmark failed: tests.services is not importable ({e}); "
              "pip install -e '.[dev]'", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="amqp-bench-") as tmp:
        workdir = Path(tmp)
        server = RedisServer(args.redis_server, workdir)
        node: RabbitMQServer | None = None
        bench: Bench | None = None
        try:
            load0 = loadavg()
            print("starting a private RabbitMQ node and redis-server…", file=sys.stderr)
            node = RabbitMQServer()
            node.start()
            server.start()
            bench = Bench(node, server, args, workdir)
            if args.profile:
                run_profile(bench)
                return 0
            redis_version = bench.r.info("server")["redis_version"]
            rows = run_all(bench, args)
            table = render(rows, args, bench, redis_version, (load0, loadavg()))
            print(table)
            print("\n".join(targets_summary(rows)), file=sys.stderr)
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(table)
            print(f"(written to {args.output})", file=sys.stderr)
        except KeyboardInterrupt:
            print("\ninterrupted: stopping everything", file=sys.stderr)
            return 130
        except (BenchError, ServiceError, ServiceUnavailable) as e:
            print(f"benchmark failed: {e}", file=sys.stderr)
            return 1
        finally:
            ignore_signals()
            if bench is not None:
                bench.close()
            server.stop()
            if node is not None:
                node.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
