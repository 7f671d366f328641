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
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from bench._common import (
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
    go_machinery_version,
    go_startup_seconds,
    impl_lines,
    loadavg,
    machine,
    mc_worker_main,
    notes_lines,
    proc_cpu,
    publish,
    push_ids,
    ratio,
    ratio_row,
    redis_cpu,
    run_impls,
    run_stamp,
    running,
    send_adds,
    start_go_worker,
    start_mc_worker,
    time_go_producer,
    version,
    wait_worker,
)
from bench.chart import write_results

if TYPE_CHECKING:
    from machinery_compat import Machinery
    from tests.services import MotoServer

ACCOUNT = "123456789012"  # moto's default account: queue URLs are <endpoint>/<account>/<queue>
HOLD_VISIBILITY = 600  # seconds the benchmark keeps the queued messages in flight

log = logging.getLogger("bench")


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

    def wait_warm(self, proc: subprocess.Popen[bytes], logfile: Path) -> None:
        """Send one task and wait for its SUCCESS: the worker is up and consuming."""
        app = self.mc_app()
        try:
            task_id = app.send_task("add", args=[1]).id
        finally:
            app.close()

        def done() -> bool:
            value = self.r.get(task_id)
            return value is not None and MC_DONE.encode() in value

        wait_worker(proc, logfile, done, "did not run a task within")

    def drain(self, start_worker: Callable[[], subprocess.Popen[bytes]], logfile: Path) -> Cell:
        """Time a started, warm worker through the N queued messages (see module doc)."""
        handles = self.hold()
        proc = start_worker()
        with running(proc):
            self.wait_warm(proc, logfile)
            cell = self.watcher.time_drain(self.n, lambda: self.release(handles), proc, logfile,
                                           self.cpu, self.drain_timeout)
        if cell.rate is None:
            return cell
        deadline = time.monotonic() + 30
        while self.depth() != (0, 0):  # every message deleted (the last deletes may lag)
            if time.monotonic() > deadline:
                raise BenchError(f"{self.depth()} (visible, in flight) messages left in "
                                 f"{QUEUE} after all results were stored")
            time.sleep(0.1)
        return cell

    # -- machinery_compat ---------------------------------------------------------------
    def mc_app(self) -> Machinery:
        return mc_app(self.broker_url, self.backend_url, self.region)

    def mc_producer(self) -> Cell:
        ids, cell = send_adds(self.mc_app, self.n, self.cpu, WARMUP_QUEUE)
        push_ids(self.r, IDS_KEY, ids)
        self.check_queued()
        return cell

    def mc_drain(self) -> Cell:
        logfile = self.workdir / "mc-worker.log"
        flags = ["--broker", self.broker_url, "--backend", self.backend_url, "--region",
                 self.region, "--concurrency", str(self.c)]
        return self.drain(lambda: start_mc_worker("bench.sqs_bench", flags, logfile,
                                                  env=self.env()), logfile)

    def env(self) -> dict[str, str]:
        from tests.services import AWS_TEST_ENV

        return child_env(**AWS_TEST_ENV)

    # -- Go Machinery -------------------------------------------------------------------
    def go_flags(self) -> list[str]:
        return ["-broker", self.broker_url, "-backend", self.backend_url,
                "-sqs-endpoint", self.endpoint, "-aws-region", self.region]

    def go_producer(self) -> Cell:
        startup = go_startup_seconds(self.go_flags(), self.workdir)
        ids, cell = time_go_producer(self.go_flags(), self.n, self.workdir, self.cpu, startup)
        push_ids(self.r, IDS_KEY, ids)
        self.check_queued()
        return cell

    def go_drain(self) -> Cell:
        logfile = self.workdir / "go-worker.log"
        flags = [*self.go_flags(), "-queue", QUEUE, "-concurrency", str(self.c)]
        return self.drain(lambda: start_go_worker(flags, logfile, self.env()), logfile)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.sqs.close()
        self.r.close()


# --------------------------------------------------------------------------------------
# runs and report
# --------------------------------------------------------------------------------------


def run_all(bench: Bench, args: argparse.Namespace) -> dict[str, Row]:
    impls = [Impl("mc", f"machinery_compat {version('machinery-compat')} (boto3 "
                        f"{version('boto3')})", bench.mc_producer, bench.mc_drain)]
    go = None if args.skip_go else Impl(
        "go", f"Go Machinery {go_machinery_version()} (aws-sdk-go-v2, redigo)",
        bench.go_producer, bench.go_drain)
    print(f"N={bench.n} C={bench.c} sqs={bench.broker_url} redis={bench.backend_url}",
          file=sys.stderr)
    return run_impls(impls, go, bench.reset, args.repeat)


def render(rows: dict[str, Row], args: argparse.Namespace, redis_version: str,
           load: tuple[str, str]) -> str:
    mc = rows["mc"]
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
        f"{go_machinery_version()} (aws-sdk-go-v2, redigo). {run_stamp(args.repeat)}; load "
        f"average {load[0]} at the start, {load[1]} at the end.",
        "",
        "| Implementation | Producer (tasks/s) | Producer CPU µs/task (client + moto + Redis) "
        "| Worker drain (tasks/s) | Drain CPU µs/task (worker + moto + Redis) |",
        "|---|---:|---:|---:|---:|",
    ]
    out += impl_lines(rows)
    if "go" in rows:
        go = rows["go"]
        out += [*RATIO_HEAD,
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
    out += notes_lines(rows)
    return "\n".join(out) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.sqs_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                conflict_handler="resolve")  # --n: another default
    add_common_args(p, RESULTS_DIR / "latest-sqs.md")
    add_repeat_arg(p, 3)
    p.add_argument("--n", type=int, default=500,
                   help="tasks per measurement (500: moto slows down as its queue grows)")
    p.set_defaults(skip_celery=True)
    a = p.parse_args(argv)
    if a.n < 2 or a.concurrency < 1 or a.repeat < 1:
        p.error("--n must be ≥ 2, --concurrency and --repeat ≥ 1")
    if a.profile:
        p.error("--profile is not implemented for SQS (use bench.redis_bench --profile)")
    return a


def ratios_summary(rows: dict[str, Row]) -> list[str]:
    """machinery_compat / Go, producer and drain, one line each for stderr."""
    if "go" not in rows:
        return []
    out = []
    for which in ("producer", "drain"):
        value = ratio(getattr(rows["mc"], which), getattr(rows["go"], which))
        shown = "—" if value is None else f"{value:.2f}{TIMES}"
        out.append(f"  {which} vs Go: {shown}")
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_mc-worker":
        return mc_worker_main(
            "bench.sqs_bench", argv[1:], lambda a: mc_app(a.broker, a.backend, a.region),
            lambda p: p.add_argument("--region", required=True))
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        from tests.services import AWS_TEST_ENV, MotoServer, ServiceError, ServiceUnavailable
    except ImportError as e:  # pytest missing: the dev extra
        print(f"benchmark failed: tests.services is not importable ({e}); "
              "pip install -e '.[dev]'", file=sys.stderr)
        return 1
    os.environ.update(AWS_TEST_ENV)  # dummy credentials: never the caller's real ones

    def run(workdir: Path, stack: contextlib.ExitStack) -> None:
        load0 = loadavg()
        print("starting a private moto server and redis-server…", file=sys.stderr)
        moto = MotoServer()
        stack.callback(moto.close)
        server = RedisServer(args.redis_server, workdir)
        stack.callback(server.stop)
        moto.start()
        server.start()
        bench = Bench(moto, server, args, workdir)
        stack.callback(bench.close)
        redis_version = bench.r.info("server")["redis_version"]
        rows = run_all(bench, args)
        publish(render(rows, args, redis_version, (load0, loadavg())), args.output,
                ratios_summary(rows))
        write_results(rows, f"SQS on moto (Redis results): tasks/s, N = {args.n:,}, C = {args.concurrency} ({machine()})", args.output)

    return bench_main("sqs-bench-", run, (ServiceError, ServiceUnavailable))


if __name__ == "__main__":
    sys.exit(main())
