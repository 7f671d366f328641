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
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from bench._common import (
    CELERY_DONE,
    CELERY_QUEUE,
    IDS_KEY,
    MC_DONE,
    QUEUE,
    RATIO_HEAD,
    RESULTS_DIR,
    TIMES,
    WARMUP_QUEUE,
    BenchError,
    Cell,
    DoneWatcher,
    Impl,
    RedisServer,
    Row,
    add_common_args,
    add_repeat_arg,
    bench_main,
    child_env,
    cpu_row,
    go_machinery_version,
    go_startup_seconds,
    impl_lines,
    loadavg,
    machine,
    mc_worker_main,
    notes_lines,
    proc_cpu,
    profile_handle,
    publish,
    push_ids,
    ratio,
    ratio_row,
    redis_cpu,
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

if TYPE_CHECKING:
    import amqp

    from machinery_compat import Machinery
    from tests.services import RabbitMQServer

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
        self.processes: int = args.processes
        #: the CPU of the pinned rows (``--pin``), None: no pinned rows
        self.pin: str | None = args.pin
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

    def wait_consuming(self, queue: str, proc: subprocess.Popen[bytes], logfile: Path,
                       consumers: int = 1) -> None:
        """Until RabbitMQ counts ``consumers`` consumers on ``queue`` (the worker's processes:
        nobody else consumes)."""
        wait_worker(proc, logfile, lambda: self.queue_state(queue)[1] >= consumers,
                    "not consuming after")

    def drain(self, queue: str, start_worker: Callable[[], subprocess.Popen[bytes]],
              logfile: Path, prefix: str = "", done: str = MC_DONE, processes: int = 1) -> Cell:
        """Time a started, idle worker through the N queued messages (see module doc)."""
        held = Held(self.node, queue, self.n)
        try:
            proc = start_worker()
            with running(proc):
                self.wait_consuming(queue, proc, logfile, processes)
                cell = self.watcher.time_drain(self.n, held.release, proc, logfile, self.cpu,
                                               self.drain_timeout, prefix, done)
        finally:
            held.close()
        if cell.rate is None:
            return cell
        left = self.queue_state(queue)[0]
        if left:
            raise BenchError(f"{left} messages left in {queue} after all results were stored")
        return cell

    # -- machinery_compat ---------------------------------------------------------------
    def mc_app(self) -> Machinery:
        return mc_app(self.broker_url, self.backend_url, self.prefetch)

    def mc_producer(self, profile: cProfile.Profile | None = None) -> Cell:
        ids, cell = send_adds(self.mc_app, self.n, self.cpu, WARMUP_QUEUE, profile)
        push_ids(self.r, IDS_KEY, ids)
        self.check_queued(QUEUE)
        return cell

    def mc_drain(self, profile_out: Path | None = None, processes: int = 1,
                 cpus: str | None = None) -> Cell:
        """``processes`` > 1: each process gets its share of the prefetch count too (the
        same total as one worker); ``cpus``: the worker's ``cpu_affinity``."""
        logfile = self.workdir / f"mc-worker-{processes}{'-pinned' if cpus else ''}.log"
        flags = ["--broker", self.broker_url, "--backend", self.backend_url, "--concurrency",
                 str(self.c), "--prefetch", str(max(1, self.prefetch // processes)),
                 "--processes", str(processes)]
        if cpus is not None:
            flags += ["--cpu-affinity", cpus]
        return self.drain(QUEUE, lambda: start_mc_worker("bench.amqp_bench", flags, logfile,
                                                         profile_out), logfile,
                          processes=processes)

    def mc_drain_processes(self) -> Cell:
        return self.mc_drain(processes=self.processes)

    def mc_drain_pinned(self) -> Cell:
        """One process on the CPU ``--pin`` names (``cpu_affinity``)."""
        return self.mc_drain(cpus=self.pin)

    def mc_drain_processes_pinned(self) -> Cell:
        """``--processes P --cpu-affinity all``: process i on CPU i."""
        return self.mc_drain(processes=self.processes, cpus="all")

    # -- Celery ---------------------------------------------------------------------------
    def celery_env(self) -> dict[str, str]:
        return child_env(BENCH_BROKER_URL=self.broker_url, BENCH_REDIS_URL=self.backend_url,
                         BENCH_PREFETCH_MULTIPLIER=str(self.prefetch // self.c),
                         BENCH_IDS_KEY=IDS_KEY, BENCH_WARMUP_QUEUE=WARMUP_QUEUE)

    def celery_producer(self) -> Cell:
        cell = time_peer_producer("bench.celery_app", self.n, self.celery_env(),
                                  self.workdir / "celery-producer.log", self.cpu, timeout=900)
        self.check_queued(CELERY_QUEUE)
        return cell

    def celery_drain(self, cpus: str | None = None) -> Cell:
        logfile = self.workdir / f"celery-worker{'-pinned' if cpus else ''}.log"
        return self.drain(CELERY_QUEUE,
                          lambda: start_celery_worker(self.c, self.celery_env(), logfile, cpus),
                          logfile, "celery-task-meta-", CELERY_DONE)

    def celery_drain_pinned(self) -> Cell:
        """Celery's worker on the CPU ``--pin`` names (``taskset -c``), as the pinned
        machinery_compat worker."""
        return self.celery_drain(self.pin)

    # -- Go Machinery -------------------------------------------------------------------
    def go_producer(self) -> Cell:
        flags = ["-broker", self.broker_url, "-backend", self.backend_url]
        startup = go_startup_seconds(flags, self.workdir)
        ids, cell = time_go_producer(flags, self.n, self.workdir, self.cpu, startup)
        push_ids(self.r, IDS_KEY, ids)
        self.check_queued(QUEUE)
        return cell

    def go_drain(self) -> Cell:
        logfile = self.workdir / "go-worker.log"
        flags = ["-broker", self.broker_url, "-backend", self.backend_url, "-queue", QUEUE,
                 "-concurrency", str(self.c), "-amqp-prefetch", str(self.prefetch)]
        return self.drain(QUEUE, lambda: start_go_worker(flags, logfile), logfile)

    def close(self) -> None:
        try:
            self._admin.close()
        except Exception:
            log.debug("closing the admin connection", exc_info=True)
        self.r.close()


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
# runs
# --------------------------------------------------------------------------------------


def run_all(bench: Bench, args: argparse.Namespace) -> dict[str, Row]:
    impls = [Impl("mc", f"machinery_compat {version('machinery-compat')}", bench.mc_producer,
                  bench.mc_drain)]
    if args.processes > 1:
        impls.append(Impl("mcp", f"machinery_compat {version('machinery-compat')}, "
                                 f"--processes {args.processes}", bench.mc_producer,
                          bench.mc_drain_processes,
                          label=f"machinery_compat --processes {args.processes}"))
    if args.pin is not None:
        impls.append(Impl("mcpin", f"machinery_compat {version('machinery-compat')}, "
                                   f"--cpu-affinity {args.pin}", bench.mc_producer,
                          bench.mc_drain_pinned,
                          label=f"machinery_compat --cpu-affinity {args.pin}"))
        if args.processes > 1:
            impls.append(Impl("mcppin", f"machinery_compat {version('machinery-compat')}, "
                                        f"--processes {args.processes} --cpu-affinity all",
                              bench.mc_producer, bench.mc_drain_processes_pinned,
                              label=f"machinery_compat --processes {args.processes} "
                                    "--cpu-affinity all"))
    if not args.skip_celery:
        impls.append(Impl("celery", f"Celery {version('celery')} (threads pool, py-amqp)",
                          bench.celery_producer, bench.celery_drain))
        if args.pin is not None:
            impls.append(Impl("celerypin", f"Celery {version('celery')} (threads pool, "
                                           f"py-amqp), taskset -c {args.pin}",
                              bench.celery_producer, bench.celery_drain_pinned,
                              label=f"Celery, taskset -c {args.pin}"))
    go = None if args.skip_go else Impl(
        "go", f"Go Machinery {go_machinery_version()} (amqp091-go, redigo)", bench.go_producer,
        bench.go_drain)
    print(f"N={bench.n} C={bench.c} prefetch={bench.prefetch} rabbitmq={bench.broker_url} "
          f"redis={bench.backend_url}", file=sys.stderr)
    return run_impls(impls, go, bench.reset, args.repeat)


# --------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------


def render(rows: dict[str, Row], args: argparse.Namespace, bench: Bench, redis_version: str,
           load: tuple[str, str]) -> str:
    mc = rows["mc"]
    mcp = rows.get("mcp")
    out = [
        "# AMQP throughput: machinery_compat vs Celery vs Go Machinery "
        "(RabbitMQ broker, Redis results backend)",
        "",
        f"N = {args.n:,} tasks, C = {args.concurrency} (worker threads / goroutines), RabbitMQ "
        f"prefetch count {args.prefetch} for every worker (with `--processes {args.processes}`: C and "
        "the prefetch count split across the processes); task `add(1)` everywhere. Broker: a "
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
        f"{go_machinery_version()} (amqp091-go, redigo). {run_stamp(args.repeat)}; load "
        f"average {load[0]} at the start, {load[1]} at the end.",
        "",
        "| Implementation | Producer (tasks/s) | Producer CPU µs/task (client + RabbitMQ + "
        "Redis) | Worker drain (tasks/s) | Drain CPU µs/task (worker + RabbitMQ + Redis) |",
        "|---|---:|---:|---:|---:|",
    ]
    out += impl_lines(rows)
    out += RATIO_HEAD
    pin = rows.get("mcpin")
    ppin = rows.get("mcppin")
    if "go" in rows:
        go = rows["go"]
        out.append(ratio_row("machinery_compat / Go Machinery, producer", mc.producer,
                             go.producer, 1))
        out.append(ratio_row("machinery_compat (1 process) / Go Machinery, worker drain",
                             mc.drain, go.drain, 1))
        if pin is not None:
            out.append(ratio_row(f"machinery_compat (1 process, --cpu-affinity {args.pin}) / "
                                 "Go Machinery, worker drain", pin.drain, go.drain, 1))
        if mcp is not None:
            out.append(ratio_row(f"machinery_compat --processes {args.processes} / Go "
                                 "Machinery, worker drain (#13)", mcp.drain, go.drain,
                                 1.5))
        if ppin is not None:
            out.append(ratio_row(f"machinery_compat --processes {args.processes} "
                                 "--cpu-affinity all / Go Machinery, worker drain",
                                 ppin.drain, go.drain, None))
    if "celery" in rows:
        cel = rows["celery"]
        out.append(ratio_row("machinery_compat / Celery, worker drain", mc.drain, cel.drain, 3))
        if mcp is not None:
            out.append(ratio_row(f"machinery_compat --processes {args.processes} / Celery, "
                                 "worker drain", mcp.drain, cel.drain, 3))
        celpin = rows.get("celerypin")
        if pin is not None:
            out.append(ratio_row(f"machinery_compat --cpu-affinity {args.pin} / Celery, worker "
                                 "drain", pin.drain, cel.drain, 3))
        if pin is not None and celpin is not None:
            out.append(ratio_row(f"machinery_compat --cpu-affinity {args.pin} / Celery "
                                 f"taskset -c {args.pin}, worker drain (both pinned)", pin.drain,
                                 celpin.drain, 3))
        out.append(ratio_row("machinery_compat / Celery, producer", mc.producer, cel.producer,
                             None))
    out.append(cpu_row("machinery_compat worker CPU per task, 1 process (#13)", mc.drain, 200))
    if pin is not None:
        out.append(cpu_row(f"machinery_compat worker CPU per task, 1 process, --cpu-affinity "
                           f"{args.pin}", pin.drain, 200))
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
        "(machinery_compat `app.worker(concurrency=C)` with `amqp.prefetch_count`, or "
        "`app.worker(concurrency=C, processes=P)` with `amqp.prefetch_count` / P each, log level "
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
        "`/proc`; with processes, the supervisor and its workers), of RabbitMQ's Erlang VM (`/proc`) and of `redis-server` (`INFO cpu`), over "
        "the timed interval, divided by N.",
    ]
    if args.pin is not None:
        out += [
            "",
            f"Pinned rows (`--pin {args.pin}`): the same machinery_compat worker with "
            f"`cpu_affinity` (`--cpu-affinity {args.pin}`: every thread of the one process on CPU "
            f"{args.pin}; with processes `--cpu-affinity all`: process i on CPU i), and Celery's "
            f"worker under `taskset -c {args.pin}` (it has no option of its own). RabbitMQ, Redis, "
            "the poller and Go's worker are never pinned.",
        ]
    out += notes_lines(rows)
    return "\n".join(out) + "\n"


def targets_summary(rows: dict[str, Row]) -> list[str]:
    """One line per target for stderr."""
    out = []
    for row, key, which, target in (("mc", "go", "producer", 1.0), ("mc", "go", "drain", 1.0),
                                    ("mcpin", "go", "drain", 1.0),
                                    ("mcp", "go", "drain", 1.5), ("mc", "celery", "drain", 3.0),
                                    ("mcp", "celery", "drain", 3.0),
                                    ("mcpin", "celery", "drain", 3.0),
                                    ("mcpin", "celerypin", "drain", 3.0)):
        if key not in rows or row not in rows:
            continue
        value = ratio(getattr(rows[row], which), getattr(rows[key], which))
        shown = "—" if value is None else f"{value:.2f}{TIMES}"
        met = "?" if value is None else ("met" if value >= target else "MISSED")
        out.append(f"  {row} {which} vs {key}: {shown} (target ≥ {target:g}{TIMES}): {met}")
    return out


# --------------------------------------------------------------------------------------
# profiling
# --------------------------------------------------------------------------------------


def profile_queued(bench: Bench) -> None:
    """:func:`profile_handle` on the N queued messages (the broker's acks are skipped: the
    benchmark holds the deliveries and acks them at the end)."""
    held = Held(bench.node, QUEUE, bench.n, keep_bodies=True)
    app = bench.mc_app()
    try:
        profile_handle(app, held.bodies, " (no broker round trips: acks skipped)")
        held.ack_all()
    finally:
        held.close()
        app.close()


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
    add_repeat_arg(p, 1)
    a = p.parse_args(argv)
    if a.n < 2 or a.concurrency < 1 or a.repeat < 1 or not 1 <= a.processes <= a.concurrency:
        p.error("--n must be ≥ 2, --concurrency and --repeat ≥ 1, --processes 1 to C")
    a.prefetch = a.prefetch or a.concurrency
    if not a.skip_celery and a.prefetch % a.concurrency:
        p.error("Celery's prefetch count is a multiple of the concurrency "
                "(worker_prefetch_multiplier): pick such a --prefetch, or --skip-celery")
    return a


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_mc-worker":
        return mc_worker_main(
            "bench.amqp_bench", argv[1:], lambda a: mc_app(a.broker, a.backend, a.prefetch),
            lambda p: p.add_argument("--prefetch", type=int, default=8))
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        from tests.services import RabbitMQServer, ServiceError, ServiceUnavailable
    except ImportError as e:  # pytest missing: the dev extra
        print(f"benchmark failed: tests.services is not importable ({e}); "
              "pip install -e '.[dev]'", file=sys.stderr)
        return 1

    def run(workdir: Path, stack: contextlib.ExitStack) -> None:
        load0 = loadavg()
        print("starting a private RabbitMQ node and redis-server…", file=sys.stderr)
        node = RabbitMQServer()
        stack.callback(node.close)
        server = RedisServer(args.redis_server, workdir)
        stack.callback(server.stop)
        node.start()
        server.start()
        bench = Bench(node, server, args, workdir)
        stack.callback(bench.close)
        if args.profile:
            run_profile(bench, lambda: profile_queued(bench), worker_top=25)
            return
        redis_version = bench.r.info("server")["redis_version"]
        rows = run_all(bench, args)
        publish(render(rows, args, bench, redis_version, (load0, loadavg())), args.output,
                targets_summary(rows))
        write_results(rows, f"RabbitMQ (Redis results): tasks/s, N = {args.n:,}, C = {args.concurrency} ({machine()})", args.output)

    return bench_main("amqp-bench-", run, (ServiceError, ServiceUnavailable))


if __name__ == "__main__":
    sys.exit(main())
