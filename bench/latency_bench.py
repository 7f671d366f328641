"""Latency on an idle Redis: enqueue → task start, enqueue → result visible to ``get()``,
for a machinery_compat worker and a Go Machinery v2 worker, measured in the same run.

``python -m bench.latency_bench [--n 2000] [--concurrency 8]``

Starts a private ``redis-server``.  Each worker (its own process, concurrency C, the other
one stopped) gets N tasks one at a time from this process: the clock starts before
``send_task`` (PENDING + message in one write) and the next task is sent once the result
was read.

* **start**: machinery_compat's task ``stamp`` returns ``time.time_ns()`` when it runs;
  Go's ``add`` is timed by the ``ts`` mcworker prints for every task (Go's ``time.Now()``
  when the task function returns: for ``add``, within microseconds of its start).
* **visible**: when ``AsyncResult.get(interval=0.0002)`` returns, i.e. the SUCCESS state is
  readable (polled every 0.2 ms).

Prints one Markdown table (p50/p90/p99 in ms) and writes it to
``bench/results/latest-latency.md``.  Issue #13's targets: start p50 ≤ 1 ms, p99 ≤ 5 ms;
visible p50 ≤ 2 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from bench._common import (
    RESULTS_DIR,
    BenchError,
    RedisServer,
    bench_main,
    child_env,
    ensure_go_binaries,
    go_machinery_version,
    loadavg,
    machine,
    spawn,
    start_go_worker,
    stop_process,
    version,
)

QUEUE = "latency_tasks"


def worker_main(argv: list[str]) -> int:
    """``python -m bench.latency_bench _worker URL C``: a worker whose ``stamp`` task returns
    the Unix time (ns) at which it ran."""
    from machinery_compat import Machinery

    url, concurrency = argv[0], int(argv[1])
    app = Machinery(broker=url, default_queue=QUEUE)

    @app.task(name="stamp")
    def stamp() -> int:  # (an int64 result)
        return time.time_ns()

    print("ready", flush=True)
    app.worker(concurrency=concurrency).run()
    return 0


def _percentiles(values: list[float]) -> tuple[float, float, float]:
    qs = statistics.quantiles(values, n=100, method="inclusive")
    return qs[49], qs[89], qs[98]


def _ms(ns: float) -> str:
    return f"{ns / 1e6:.2f}"


def _wait_ready(check: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise BenchError(f"{what} did not start")
        time.sleep(0.05)


def measure_python(url: str, n: int, concurrency: int, workdir: Path) -> tuple[list[int], list[int]]:
    from machinery_compat import Machinery

    log = workdir / "mc-worker.log"
    proc = spawn([sys.executable, "-m", "bench.latency_bench", "_worker", url, str(concurrency)],
                  stdout=log.open("wb"), env=child_env())
    try:
        _wait_ready(lambda: "ready" in log.read_text(errors="replace"), "the Python worker")
        app = Machinery(broker=url, default_queue=QUEUE)
        time.sleep(0.5)  # its BLPOP in place
        for _ in range(50):  # warm up
            app.send_task("stamp").get(timeout=10, interval=0.0002)
        starts, visible = [], []
        for _ in range(n):
            t0 = time.time_ns()
            ran = app.send_task("stamp").get(timeout=10, interval=0.0002)
            visible.append(time.time_ns() - t0)
            starts.append(int(ran) - t0)
        app.close()
        return starts, visible
    finally:
        stop_process(proc)


def measure_go(url: str, n: int, concurrency: int, workdir: Path) -> tuple[list[int], list[int]]:
    from machinery_compat import Machinery

    log = workdir / "go-worker.log"
    out = log.with_suffix(".out")
    proc = start_go_worker(["-flavour", "v2-redigo", "-broker", url, "-queue", QUEUE,
                            "-concurrency", str(concurrency), "-normal-poll-ms", "1000"], log)
    try:
        _wait_ready(lambda: out.exists() and '"ready"' in out.read_text(errors="replace"),
                    "the Go worker")
        app = Machinery(broker=url, default_queue=QUEUE)
        time.sleep(0.5)
        for _ in range(50):
            app.send_task("add", args=[1]).get(timeout=10, interval=0.0002)
        sent: dict[str, int] = {}
        visible = []
        for _ in range(n):
            t0 = time.time_ns()
            res = app.send_task("add", args=[1])
            res.get(timeout=10, interval=0.0002)
            visible.append(time.time_ns() - t0)
            sent[res.id] = t0
        app.close()
    finally:
        stop_process(proc)
    starts = []
    for line in out.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            ev = json.loads(line)
            if ev.get("event") == "task" and ev.get("uuid") in sent:
                ts = datetime.fromisoformat(ev["ts"].replace("Z", "+00:00"))
                # RFC 3339 nano: fromisoformat keeps microseconds
                starts.append(int(ts.timestamp() * 1e9) - sent[ev["uuid"]])
    if len(starts) != n:
        raise BenchError(f"the Go worker printed {len(starts)} task lines for {n} tasks")
    return starts, visible


def run(args: argparse.Namespace, workdir: Path, stack: contextlib.ExitStack) -> None:
    import shutil

    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchError("redis-server not found")
    why = ensure_go_binaries()
    server = RedisServer(binary, workdir).start()
    stack.callback(server.stop)
    load_before = loadavg()
    rows = {"machinery_compat": measure_python(server.url, args.n, args.concurrency, workdir)}
    if why is None:
        rows[f"Go Machinery {go_machinery_version()} (redigo)"] = measure_go(
            server.url, args.n, args.concurrency, workdir)
    lines = [
        f"N = {args.n} tasks one at a time, C = {args.concurrency}; {machine()}; "
        f"machinery_compat {version('machinery-compat')}; run "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load {load_before} → {loadavg()}.",
        "",
        "| Worker | enqueue → start p50 / p90 / p99 (ms) | enqueue → result visible p50 / p90 / "
        "p99 (ms) |",
        "|---|---:|---:|",
    ]
    for name, (starts, visible) in rows.items():
        s, v = _percentiles(starts), _percentiles(visible)
        lines.append(f"| {name} | {' / '.join(map(_ms, s))} | {' / '.join(map(_ms, v))} |")
    if why is not None:
        lines.append(f"\nGo row skipped: {why}")
    py_s, py_v = (_percentiles(x) for x in rows["machinery_compat"])
    lines += ["", "| #13 target | value | met |", "|---|---:|:---:|"]
    for label, value, limit in (("start p50 ≤ 1 ms", py_s[0], 1e6),
                                ("start p99 ≤ 5 ms", py_s[2], 5e6),
                                ("result visible p50 ≤ 2 ms", py_v[0], 2e6)):
        lines.append(f"| {label} | {_ms(value)} ms | {'yes' if value <= limit else '**no**'} |")
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "latest-latency.md").write_text(text)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_worker"]:
        return worker_main(argv[1:])
    p = argparse.ArgumentParser(prog="bench.latency_bench", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=8)
    args = p.parse_args(argv)
    return bench_main("mc-latency-", lambda workdir, stack: run(args, workdir, stack))


if __name__ == "__main__":
    sys.exit(main())
