"""Producer and worker throughput on SQS (moto server): machinery_compat vs Go Machinery.

``python -m bench.sqs_bench [--n 500] [--concurrency 8] [--repeat 3] [--skip-go]``

Starts a private moto server (``tests.services.MotoServer``: ``python -m moto.server`` on a
free loopback port, dummy credentials, region us-east-1) and a private ``redis-server``,
measures, prints one Markdown table and writes it to ``bench/results/latest-sqs.md``.  Every
process it starts is stopped on exit, Ctrl-C or error.

Broker: SQS (moto), one standard queue ``machinery_tasks`` (visibility timeout 30 s, SQS's
default); results backend: Redis, for both implementations (Go's SQS broker with a Redis
backend is a supported Machinery setup; timing the drain by the SUCCESS states in Redis, as
the other benchmarks do, keeps the benchmark's own polling off the moto server that both
workers talk to).  Both run the task ``add(1)`` with worker concurrency C and Machinery's
default SQS settings (``receive_wait_time_seconds`` 0, the queue's visibility timeout).
Celery is not measured (its SQS transport needs pycurl and is not what this compares).
Between implementations the queues are purged and Redis is flushed.

* producer: N sends from one thread, each a complete send: the PENDING state in Redis, then
  ``SendMessage``.  machinery_compat is timed around the send loop after one untimed send to
  another queue (connecting); Go (``mcproducer -parallel 1``) by wall time minus that of a
  one-task run (best of three).
* worker drain: the benchmark receives the N queued messages itself (visibility timeout
  600 s: in flight, invisible to workers), starts the worker process, sends one untimed task
  and waits for its result (the worker is up and polling), then makes the N messages visible
  again (``ChangeMessageVisibilityBatch`` to 0, 10 per call, from the first one sent) and
  starts the clock; it stops when all N results are stored in Redis as SUCCESS (the Lua poller
  of ``bench.redis_bench``, every 5 ms).  Worker start-up is not counted.

moto runs every SQS call in one Python process on the same machine: its figures compare the
two clients' behaviour against the same server, they do not predict AWS latency (on AWS each
call is a network round trip of several milliseconds, which dominates).  moto's
``ReceiveMessage`` also costs time in proportion to the queue's size for every message it
returns (its retention check recomputes all the queue's attributes), so rates fall as N grows
and the whole run grows as N²: N is 500 by default (about 5 minutes with ``--repeat 3``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from bench._common import (
    DASH,
    INTEROP,
    MC_DONE,
    RESULTS_DIR,
    TIMES,
    BenchError,
    Cell,
    DoneWatcher,
    RedisServer,
    Row,
    add_common_args,
    child_env,
    ensure_go_binaries,
    go_machinery_version,
    go_sent_ids,
    ignore_signals,
    interrupt_on_signals,
    machine,
    measure,
    proc_cpu,
    push_ids,
    ratio,
    ratio_row,
    redis_cpu,
    run_go_producer,
    run_mc_worker,
    running,
    spawn,
    tail,
    version,
)
from bench.amqp_bench import Runs, loadavg

if TYPE_CHECKING:
    from machinery_compat import Machinery
    from tests.services import MotoServer

QUEUE = "machinery_tasks"  # Machinery's default queue (machinery_compat and Go)
WARMUP_QUEUE = "bench_warmup"  # the untimed first send (connecting) goes here
IDS_KEY = "bench:ids"  # the task ids of the current run, in send order
ACCOUNT = "123456789012"  # moto's default account: queue URLs are <endpoint>/<account>/<queue>
HOLD_VISIBILITY = 600  # seconds the benchmark keeps the queued messages in flight

log = logging.getLogger("bench")


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


def mc_app(broker: str, backend: str, region: str) -> Machinery:
    """The machinery_compat app of producer and worker (SQS broker, Redis results)."""
    from machinery_compat import Machinery
    from machinery_compat.config import Config, SQSConfig

    return Machinery(config=Config(broker=broker, result_backend=backend, default_queue=QUEUE,
                                   sqs=SQSConfig(region=region)))


class Bench:
    def __init__(self, moto: MotoServer, server: RedisServer, args: argparse.Namespace,
                 workdir: Path) -> None:
        self.moto = moto
        self.n: int = args.n
        self.c: int = args.concurrency
        self.workdir = workdir
        self.drain_timeout: float = args.drain_timeout
        self.endpoint = moto.endpoint_url
        self.region = moto.region
        self.broker_url = f"{self.endpoint}/{ACCOUNT}"
        self.backend_url = server.url
        self.r = redis.Redis.from_url(server.url)
        self.watcher = DoneWatcher(self.r, IDS_KEY)
        self.sqs: Any = moto.client("sqs")
        self.urls = {q: self.sqs.create_queue(QueueName=q)["QueueUrl"]
                     for q in (QUEUE, WARMUP_QUEUE)}

    # -- shared steps -------------------------------------------------------------------
    def reset(self) -> None:
        self.r.flushall()
        for url in self.urls.values():
            self.sqs.purge_queue(QueueUrl=url)

    def depth(self, queue: str = QUEUE) -> tuple[int, int]:
        """(visible, in flight) messages of ``queue``."""
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=self.urls[queue],
            AttributeNames=["ApproximateNumberOfMessages",
                            "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        return (int(attrs["ApproximateNumberOfMessages"]),
                int(attrs["ApproximateNumberOfMessagesNotVisible"]))

    def cpu(self) -> tuple[float | None, float]:
        """CPU seconds so far of the moto server and of redis-server."""
        pid = self.moto.pid
        return (proc_cpu(pid) if pid else None), redis_cpu(self.r)

    def check_queued(self) -> None:
        """All N sent (a few more messages than ids: an SDK retried a send whose reply was
        lost under load; the worker runs those too, unseen by the clock)."""
        deadline = time.monotonic() + 10
        while True:
            queued, ids = self.depth()[0], self.r.llen(IDS_KEY)
            if queued >= self.n and ids == self.n:
                if queued > self.n:
                    print(f" ({queued - self.n} duplicate message(s) queued)", end="",
                          file=sys.stderr)
                return
            if time.monotonic() > deadline:
                raise BenchError(f"expected {self.n} queued messages and ids, found {queued} / "
                                 f"{ids}")
            time.sleep(0.05)

    def hold(self, timeout: float = 120) -> list[str]:
        """Receive every queued message (in flight for HOLD_VISIBILITY s): their receipt
        handles, in the order received."""
        handles: list[str] = []
        deadline = time.monotonic() + timeout
        while len(handles) < self.n:
            got = self.sqs.receive_message(QueueUrl=self.urls[QUEUE], MaxNumberOfMessages=10,
                                           VisibilityTimeout=HOLD_VISIBILITY,
                                           WaitTimeSeconds=0).get("Messages", [])
            handles += [m["ReceiptHandle"] for m in got]
            if not got and time.monotonic() > deadline:
                raise BenchError(f"took only {len(handles)}/{self.n} messages from {QUEUE}")
        return handles

    def release(self, handles: list[str]) -> None:
        url = self.urls[QUEUE]
        for i in range(0, len(handles), 10):
            entries = [{"Id": str(j), "ReceiptHandle": h, "VisibilityTimeout": 0}
                       for j, h in enumerate(handles[i:i + 10])]
            reply = self.sqs.change_message_visibility_batch(QueueUrl=url, Entries=entries)
            if reply.get("Failed"):
                raise BenchError(f"could not release held messages: {reply['Failed'][:2]}")

    def wait_warm(self, proc: subprocess.Popen, logfile: Path, timeout: float = 90) -> None:
        """Send one task and wait for its SUCCESS: the worker is up and consuming."""
        app = mc_app(self.broker_url, self.backend_url, self.region)
        try:
            task_id = app.send_task("add", args=[1]).id
        finally:
            app.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.r.get(task_id)
            if value is not None and MC_DONE.encode() in value:
                return
            if proc.poll() is not None:
                raise BenchError(f"worker exited with {proc.returncode}:\n{tail(logfile)}")
            time.sleep(0.02)
        raise BenchError(f"worker did not run a task within {timeout:.0f}s:\n{tail(logfile)}")

    def drain(self, start_worker: Callable[[], subprocess.Popen], logfile: Path) -> Cell:
        """Time a started, warm worker through the N queued messages (see module doc)."""
        handles = self.hold()
        proc = start_worker()
        with running(proc):
            self.wait_warm(proc, logfile)
            cpu0, (mcpu0, rcpu0) = proc_cpu(proc.pid), self.cpu()
            t0 = time.perf_counter()
            self.release(handles)
            count, t1 = self.watcher.wait(self.n, "", MC_DONE, t0, self.drain_timeout, proc,
                                          logfile)
            if count < self.n:
                return Cell(note=f"timeout: {count}/{self.n} done in {t1 - t0:.0f}s")
            cpu1, (mcpu1, rcpu1) = proc_cpu(proc.pid), self.cpu()
        deadline = time.monotonic() + 30
        while self.depth() != (0, 0):  # every message deleted (the last deletes may lag)
            if time.monotonic() > deadline:
                raise BenchError(f"{self.depth()} (visible, in flight) messages left in "
                                 f"{QUEUE} after all results were stored")
            time.sleep(0.1)
        return Cell(rate=self.n / (t1 - t0), seconds=t1 - t0, n=self.n,
                    cpu=(_diff(cpu0, cpu1), _diff(mcpu0, mcpu1), rcpu1 - rcpu0))

    # -- machinery_compat ---------------------------------------------------------------
    def mc_producer(self) -> Cell:
        app = mc_app(self.broker_url, self.backend_url, self.region)
        try:
            send = app.send_task
            send("add", args=[1], queue=WARMUP_QUEUE)  # connects (untimed), as Go's base run
            ids: list[str] = []
            append = ids.append
            mcpu0, rcpu0 = self.cpu()
            cpu0, t0 = time.process_time(), time.perf_counter()
            for _ in range(self.n):
                append(send("add", args=[1]).id)
            elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            mcpu1, rcpu1 = self.cpu()
        finally:
            app.close()
        push_ids(self.r, IDS_KEY, ids)
        self.check_queued()
        return Cell(rate=self.n / elapsed, seconds=elapsed, n=self.n,
                    cpu=(cpu, _diff(mcpu0, mcpu1), rcpu1 - rcpu0))

    def mc_drain(self) -> Cell:
        logfile = self.workdir / "mc-worker.log"
        cmd = [sys.executable, "-m", "bench.sqs_bench", "_mc-worker", "--broker",
               self.broker_url, "--backend", self.backend_url, "--region", self.region,
               "--concurrency", str(self.c)]

        def start() -> subprocess.Popen:
            return spawn(cmd, stdout=logfile.open("wb"), env=self.env())

        return self.drain(start, logfile)

    def env(self) -> dict[str, str]:
        from tests.services import AWS_TEST_ENV

        return child_env(**AWS_TEST_ENV)

    # -- Go Machinery -------------------------------------------------------------------
    def go_flags(self, queue: str) -> list[str]:
        return ["-broker", self.broker_url, "-backend", self.backend_url, "-queue", queue,
                "-sqs-endpoint", self.endpoint, "-aws-region", self.region]

    def go_producer(self) -> Cell:
        # start-up + connect + one send, best of three, subtracted from the N-task run
        base = min(run_go_producer(self.go_flags(WARMUP_QUEUE), 1, self.workdir,
                                   f"base{i}")[0] for i in range(3))
        mcpu0, rcpu0 = self.cpu()
        elapsed, outfile, cpu = run_go_producer(self.go_flags(QUEUE), self.n, self.workdir,
                                                "main")
        mcpu1, rcpu1 = self.cpu()
        push_ids(self.r, IDS_KEY, go_sent_ids(outfile, self.n))
        self.check_queued()
        net = elapsed - base
        return Cell(rate=(self.n - 1) / net, seconds=net, n=self.n,
                    cpu=(cpu, _diff(mcpu0, mcpu1), rcpu1 - rcpu0))

    def go_drain(self) -> Cell:
        logfile = self.workdir / "go-worker.log"
        cmd = [str(INTEROP / "bin" / "mcworker"), *self.go_flags(QUEUE),
               "-concurrency", str(self.c)]

        def start() -> subprocess.Popen:
            # stdout: one JSON line per task (the interop harness's record), kept for debugging
            return spawn(cmd, stdout=(self.workdir / "go-worker.out").open("wb"),
                         stderr=logfile.open("wb"), env=self.env())

        return self.drain(start, logfile)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.sqs.close()
        self.r.close()


# --------------------------------------------------------------------------------------
# the machinery_compat worker subprocess
# --------------------------------------------------------------------------------------


def mc_worker_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bench.sqs_bench _mc-worker")
    p.add_argument("--broker", required=True)
    p.add_argument("--backend", required=True)
    p.add_argument("--region", required=True)
    p.add_argument("--concurrency", type=int, default=8)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    return run_mc_worker(mc_app(a.broker, a.backend, a.region), a.concurrency, None)


# --------------------------------------------------------------------------------------
# runs and report
# --------------------------------------------------------------------------------------


def run_all(bench: Bench, args: argparse.Namespace) -> dict[str, Row]:
    impls: list[tuple[str, str, Callable[[], Cell], Callable[[], Cell]]] = [
        ("mc", f"machinery_compat {version('machinery-compat')} (boto3 {version('boto3')})",
         bench.mc_producer, bench.mc_drain)]
    names = {key: name for key, name, _, _ in impls}
    go_skipped = None
    if not args.skip_go:
        go_name = f"Go Machinery {go_machinery_version()} (aws-sdk-go-v2, redigo)"
        names["go"] = go_name
        go_skipped = ensure_go_binaries()
        if go_skipped is None:
            impls.append(("go", go_name, bench.go_producer, bench.go_drain))
    runs: dict[str, tuple[Runs, Runs]] = {key: (Runs(), Runs()) for key in names}
    print(f"N={bench.n} C={bench.c} sqs={bench.broker_url} redis={bench.backend_url}",
          file=sys.stderr)
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


def render(rows: dict[str, Row], args: argparse.Namespace, redis_version: str,
           load: tuple[str, str]) -> str:
    mc = rows["mc"]
    each = ("each measurement once" if args.repeat == 1 else
            f"each measurement {args.repeat} times, interleaved: median (min{DASH}max) of the "
            "rates, median CPU")
    out = [
        "# SQS throughput: machinery_compat vs Go Machinery (SQS broker on a moto server, "
        "Redis results backend)",
        "",
        f"N = {args.n:,} tasks, C = {args.concurrency} (worker threads / goroutines); task "
        "`add(1)` everywhere. Broker: a private moto server (`moto[server]` "
        f"{version('moto')}), one standard queue (visibility timeout 30 s), Machinery's default "
        "SQS settings for both workers; results backend: a private Redis, the same for both.",
        "",
        f"Machine: {machine()}; Redis {redis_version} (loopback TCP); boto3 "
        f"{version('boto3')}, redis-py {version('redis')}; Go Machinery "
        f"{go_machinery_version()} (aws-sdk-go-v2, redigo). Run "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {each}; load average {load[0]} at the start, "
        f"{load[1]} at the end.",
        "",
        "| Implementation | Producer (tasks/s) | Producer CPU µs/task (client + moto + Redis) "
        "| Worker drain (tasks/s) | Drain CPU µs/task (worker + moto + Redis) |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows.values():
        out.append(f"| {row.name} | {row.producer.show()} | {row.producer.show_cpu()} "
                   f"| {row.drain.show()} | {row.drain.show_cpu()} |")
    if "go" in rows:
        go = rows["go"]
        out += ["", "| Ratio (tasks/s) | Value | Target | Met |", "|---|---:|---:|:---:|",
                ratio_row("machinery_compat / Go Machinery, producer", mc.producer,
                          go.producer, None),
                ratio_row("machinery_compat / Go Machinery, worker drain", mc.drain,
                          go.drain, None)]
    out += [
        "",
        "Producer: N sends from one thread (machinery_compat `app.send_task(\"add\", "
        "args=[1])`; Go `server.SendTask` via `interop/bin/mcproducer -parallel 1`): the "
        "PENDING state in Redis, then `SendMessage`. Python: timed around the send loop, after "
        "one untimed send to another queue; Go: process wall time minus a one-task run's.",
        "",
        "Worker drain: the benchmark receives the N queued messages itself (in flight for "
        f"{HOLD_VISIBILITY} s), starts the worker (machinery_compat `app.worker(concurrency=C)`"
        ", log level WARNING: `ReceiveMessage` of up to 10; `interop/bin/mcworker -concurrency "
        "C`: Machinery's one message per `ReceiveMessage`), waits for one untimed task's "
        "result, then makes the N messages visible (`ChangeMessageVisibilityBatch` to 0) and "
        "starts the clock; it stops when every result is stored in Redis as SUCCESS.",
        "",
        "CPU µs/task: user + system CPU of the producer or worker process, of the moto server "
        "process and of `redis-server` over the timed interval, divided by N.",
        "",
        "moto serves every call from one Python process on this machine: these figures compare "
        "the two clients against the same server; they do not predict AWS latency (on AWS "
        "every call is a network round trip of milliseconds, which dominates).",
    ]
    notes = [f"{row.name}: {c.note}" for row in rows.values() for c in (row.producer, row.drain)
             if c.note]
    if notes:
        out += ["", "Notes: " + "; ".join(notes) + "."]
    return "\n".join(out) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.sqs_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                conflict_handler="resolve")  # --n: another default
    add_common_args(p, RESULTS_DIR / "latest-sqs.md")
    p.add_argument("--repeat", type=int, default=3,
                   help="measure everything this many times, interleaved; the table shows the "
                        "median and the range (3)")
    p.add_argument("--n", type=int, default=500,
                   help="tasks per measurement (500: moto slows down as its queue grows)")
    p.set_defaults(skip_celery=True)
    a = p.parse_args(argv)
    if a.n < 2 or a.concurrency < 1 or a.repeat < 1:
        p.error("--n must be ≥ 2, --concurrency and --repeat ≥ 1")
    if a.profile:
        p.error("--profile is not implemented for SQS (use bench.redis_bench --profile)")
    return a


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_mc-worker":
        return mc_worker_main(argv[1:])
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    interrupt_on_signals()
    try:
        from tests.services import AWS_TEST_ENV, MotoServer, ServiceError, ServiceUnavailable
    except ImportError as e:  # pytest missing: the dev extra
        print(f"benchmark failed: tests.services is not importable ({e}); "
              "pip install -e '.[dev]'", file=sys.stderr)
        return 1
    os.environ.update(AWS_TEST_ENV)  # dummy credentials: never the caller's real ones
    with tempfile.TemporaryDirectory(prefix="sqs-bench-") as tmp:
        workdir = Path(tmp)
        server = RedisServer(args.redis_server, workdir)
        moto: MotoServer | None = None
        bench: Bench | None = None
        try:
            load0 = loadavg()
            print("starting a private moto server and redis-server…", file=sys.stderr)
            moto = MotoServer()
            moto.start()
            server.start()
            bench = Bench(moto, server, args, workdir)
            redis_version = bench.r.info("server")["redis_version"]
            rows = run_all(bench, args)
            table = render(rows, args, redis_version, (load0, loadavg()))
            print(table)
            if "go" in rows:
                for which in ("producer", "drain"):
                    value = ratio(getattr(rows["mc"], which), getattr(rows["go"], which))
                    shown = "—" if value is None else f"{value:.2f}{TIMES}"
                    print(f"  {which} vs Go: {shown}", file=sys.stderr)
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
            if moto is not None:
                moto.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
