"""Crash and outage soak for crash-safe consumption on Redis and on AMQP (``make soak``).

``python -m bench.soak [--tasks 5000] [--kills 20] [--outages 3,20] [--outage-tasks 2000]``

Starts a private ``redis-server`` with persistence (``--appendonly yes``) on a free loopback
port, then:

1. **kill loop**: ``--tasks`` tasks (5-40 ms each; Go's ``sleep`` task when a Go worker
   takes part, else ``work``) are sent over ~25 s to a pool of two
   Python worker subprocesses (``-c 4``, heartbeat TTL 1 s) and, when ``interop/bin/mcworker``
   is built, a Go Machinery worker on the same queue; at random moments (0.2-1.0 s apart) one
   of the Python workers gets ``kill -9`` and is restarted, at least ``--kills`` times;
2. **kill loop on AMQP** (unless ``--no-amqp``): the same with a private RabbitMQ node as the
   broker (results and run records on the Redis server), Python workers only;
3. **outages**: for each duration in ``--outages`` (seconds), ``--outage-tasks`` tasks are sent
   to two Python workers and, a quarter of the way through, Redis is shut down (its AOF kept)
   for that long and started again on the same port.  Producers retry a failed send.

For each phase it prints the tasks, kills, lost (not SUCCESS at the end), duplicated (ran to
the end more than once), restarted (started again after their worker died), what is left in
queues and processing lists, and for outages whether every worker survived and how long the
drain took after Redis came back.  Exit status 1 if anything was lost or a worker exited.

Every worker is a fresh process started under ``setpriv --pdeathsig KILL``; the Redis server
and all workers are stopped at the end, on Ctrl-C and on errors.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

from machinery_compat.config import mask_url
from tests.integration.crash_harness import (
    QUEUE,
    GoWorker,
    Producer,
    PyWorker,
    Tally,
    done_count,
    tally,
    wait_all_done,
)
from tests.services import RabbitMQServer, RedisServer


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=5000, help="tasks in the kill loop (5000)")
    p.add_argument("--kills", type=int, default=20, help="at least this many kill -9s (20)")
    p.add_argument("--send-seconds", type=float, default=25.0,
                   help="the kill loop's tasks are sent over this long (25)")
    p.add_argument("--outages", default="3,20", help="Redis outage lengths in s ('3,20'; '' none)")
    p.add_argument("--outage-tasks", type=int, default=2000, help="tasks per outage (2000)")
    p.add_argument("--no-go", action="store_true", help="no Go worker in the kill loop's pool")
    p.add_argument("--no-amqp", action="store_true",
                   help="skip the kill loop on RabbitMQ (AMQP broker, Redis results)")
    p.add_argument("--seed", type=int, default=20)
    return p.parse_args(argv)


def fresh(server: RedisServer) -> None:
    with server.client() as c:
        c.flushall()


def kill_phase(server: RedisServer, args: argparse.Namespace, log_dir: Path,
               broker: str | None = None) -> Tally:
    """The kill loop on Redis (with a Go worker in the pool when built), or with ``broker`` (an
    AMQP URL: RabbitMQ broker, results and run records on ``server``; Python workers only)."""
    fresh(server)
    rng = random.Random(args.seed)
    client = server.client()
    go = None
    if broker is None and not args.no_go and GoWorker.available():
        go = GoWorker(server.url, log_dir).start()
    workers = [PyWorker(server.url, log_dir, name=f"kill-py{i}", broker=broker).start()
               for i in range(2)]
    task = "sleep" if go is not None else "work"  # sleep(ms): Go's mcworker has it too
    producer = Producer(server.url, args.tasks, seconds=args.send_seconds, seed=args.seed,
                        ms_range=(5, 40), task=task, broker=broker).start()

    def queue_empty() -> bool:  # (on AMQP: all sent and the sending over is enough)
        return broker is not None or client.llen(QUEUE) == 0

    kills = 0
    began = time.monotonic()
    try:
        while kills < args.kills or not producer.done.is_set():
            time.sleep(rng.uniform(0.2, 1.0))
            if producer.done.is_set() and queue_empty() and kills >= args.kills:
                break
            if producer.done.is_set() and queue_empty():
                # out of work before enough kills: send more (counted in the tasks)
                more = Producer(server.url, 200, seconds=1.0, seed=kills, task=task,
                                broker=broker).start()
                more.join()
                producer.uuids.extend(more.uuids)
                more.close()
            w = rng.choice(workers)
            w.kill()
            kills += 1
            w.start()
        producer.join()
        wait_all_done(client, producer.uuids, 180)
        elapsed = time.monotonic() - began
        for w in workers:
            if w.stop() != 0:
                raise SystemExit(f"{w.name} did not exit cleanly:\n{w.log_tail()}")
        go_runs = None
        if go is not None:
            alive = go.alive()
            go.stop()
            go_runs = go.runs
        t = tally(client, producer.uuids, extra_runs=go_runs, kills=kills)
        t.extra["seconds"] = f"{elapsed:.1f}"
        if go is not None:
            t.extra["go_worker"] = "alive throughout" if alive else "DIED"
            t.extra["run_by_go"] = sum((go_runs or {}).values())
        t.extra["producer_errors"] = len(producer.errors)
        return t
    finally:
        for w in workers:
            w.kill()
        if go is not None:
            go.kill()
        producer.close()
        client.close()


def outage_phase(server: RedisServer, seconds: float, args: argparse.Namespace,
                 log_dir: Path) -> Tally:
    fresh(server)
    client = server.client()
    workers = [PyWorker(server.url, log_dir, name=f"outage{seconds:g}-py{i}").start()
               for i in range(2)]
    producer = Producer(server.url, args.outage_tasks, seconds=8.0, seed=int(seconds),
                        ms_range=(2, 20)).start()
    try:
        deadline = time.monotonic() + 60
        while client.llen("crash:runs") < args.outage_tasks // 4:
            if time.monotonic() > deadline:
                raise SystemExit("workers did not start running tasks")
            time.sleep(0.02)
        done_before = done_count(client, producer.uuids)
        client.close()
        server.stop()
        down = time.monotonic()
        time.sleep(seconds)
        exited_while_down = [w.name for w in workers if not w.alive()]
        server.start()
        outage = time.monotonic() - down
        back = time.monotonic()
        client = server.client()
        producer.join(120)
        wait_all_done(client, producer.uuids, 240)
        drain = time.monotonic() - back
        exited = exited_while_down + [w.name for w in workers if not w.alive()]
        for w in workers:
            if w.alive() and w.stop() != 0:
                exited.append(f"{w.name} (exit status)")
        t = tally(client, producer.uuids)
        t.extra["outage_s"] = f"{outage:.1f}"
        t.extra["done_before_outage"] = done_before
        t.extra["drained_after_s"] = f"{drain:.1f}"
        t.extra["producer_retries"] = len(producer.errors)
        t.extra["workers_exited"] = ",".join(exited) or "none"
        return t
    finally:
        for w in workers:
            w.kill()
        producer.close()
        client.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    outages = [float(x) for x in args.outages.split(",") if x.strip()]
    results: list[tuple[str, Tally]] = []
    with tempfile.TemporaryDirectory(prefix="mc-soak-") as tmp:
        log_dir = Path(tmp)
        server = RedisServer(extra_args=("--appendonly", "yes"))
        server.start()
        try:
            go = "with a Go worker" if not args.no_go and GoWorker.available() else "Python only"
            print(f"soak: redis {server.url} (appendonly yes), logs in {log_dir}", flush=True)
            print(f"kill loop: {args.tasks} tasks, >= {args.kills} kill -9s, {go}…", flush=True)
            t = kill_phase(server, args, log_dir)
            print("  " + t.line(), flush=True)
            results.append(("kill loop", t))
            if not args.no_amqp:
                with RabbitMQServer() as rabbit:
                    print(f"kill loop on AMQP (RabbitMQ {mask_url(rabbit.url)}, results on Redis): "
                          f"{args.tasks} tasks, >= {args.kills} kill -9s…", flush=True)
                    t = kill_phase(server, args, log_dir, broker=rabbit.url)
                    print("  " + t.line(), flush=True)
                    results.append(("kill loop, AMQP broker", t))
            for seconds in outages:
                print(f"Redis outage {seconds:g} s: {args.outage_tasks} tasks…", flush=True)
                t = outage_phase(server, seconds, args, log_dir)
                print("  " + t.line(), flush=True)
                results.append((f"Redis down {seconds:g} s", t))
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        finally:
            server.close()
    print()
    print("| phase | tasks | kill -9 | lost | duplicated | restarted | left | notes |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    bad = False
    for name, t in results:
        notes = ", ".join(f"{k} {v}" for k, v in t.extra.items())
        print(f"| {name} | {t.tasks} | {t.kills} | {len(t.lost)} | {t.duplicated} | "
              f"{t.restarted} | {t.left_in_queues + t.left_in_processing} | {notes} |")
        exited = (t.extra.get("workers_exited", "none") != "none"
                  or t.extra.get("go_worker") == "DIED")
        bad = bad or bool(t.lost) or exited
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
