"""Go Machinery and Python sharing one Redis: workers and producers on both sides.

Run with ``make demo`` (or ``python examples/demo.py`` once redis-server, the Python
package and the Go programs in interop/ are installed/built).  The demo starts its own
redis-server on a free port, a Go Machinery v2 worker and a Python worker on the same
queue, then:

* the Python producer sends tasks only Go has (``multiply``, ``concat``), tasks only
  Python has (``py_upper``, ``py_stats``) and one both have (``add``);
* the Go producer sends the Python-only tasks and reads their results with Go's
  ``AsyncResult``;

and prints who ran what and what each side read back.  Exit status 0 means every
result was correct.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from machinery_compat import Machinery  # noqa: E402

GO_BIN = ROOT / "interop" / "bin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(port: int, workdir: str) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server not found: run `make bootstrap` (apt-get install redis-server)")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", workdir],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit("redis-server did not start")


def build_go() -> None:
    if not (GO_BIN / "mcworker").exists() or not (GO_BIN / "mcproducer").exists():
        print("building the Go Machinery programs (interop/build.sh) ...", flush=True)
        subprocess.run(["bash", str(ROOT / "interop" / "build.sh")], check=True)


class GoWorker:
    """interop/bin/mcworker as a subprocess; records which task UUIDs it ran."""

    def __init__(self, url: str, queue: str) -> None:
        self.proc = subprocess.Popen(
            [str(GO_BIN / "mcworker"), "-flavour", "v2-redigo", "-broker", url, "-queue", queue,
             "-concurrency", "2", "-delayed-poll-ms", "100", "-tag", "go-demo"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        self.ran: dict[str, str] = {}
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self.ready.wait(30):
            self.stop()
            sys.exit("the Go worker did not become ready")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            event = json.loads(line)
            if event.get("event") == "ready":
                self.ready.set()
            elif event.get("event") == "task":
                self.ran[event["uuid"]] = event["name"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def go_produce(url: str, queue: str, lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = subprocess.run(
        [str(GO_BIN / "mcproducer"), "-flavour", "v2-redigo", "-broker", url, "-queue", queue,
         "-parallel", "4", "-timeout-ms", "20000"],
        input="\n".join(json.dumps(line) for line in lines), capture_output=True, text=True,
        check=True,
    )
    return sorted((json.loads(x) for x in out.stdout.splitlines() if x.strip()),
                  key=lambda r: r["line"])


def make_app(url: str, queue: str, python_ran: dict[str, str]) -> Machinery:
    app = Machinery(broker=url, result_backend=url, default_queue=queue)

    @app.task(name="add", bind=True)
    def add(self: Any, *nums: int) -> int:
        python_ran[self.request.id] = "add"
        return sum(nums)

    @app.task(name="py_upper", bind=True)
    def py_upper(self: Any, text: str) -> str:
        python_ran[self.request.id] = "py_upper"
        return text.upper()

    @app.task(name="py_stats", bind=True)
    def py_stats(self: Any, values: list[float]) -> tuple[float, float, int]:
        python_ran[self.request.id] = "py_stats"
        return min(values), max(values), len(values)

    return app


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    build_go()
    workdir = tempfile.mkdtemp(prefix="mc-demo-")
    port = free_port()
    redis_proc = start_redis(port, workdir)
    url = f"redis://127.0.0.1:{port}/0"
    queue = "machinery_tasks"
    python_ran: dict[str, str] = {}
    go_worker = None
    py_worker = None
    ok = True
    try:
        go_worker = GoWorker(url, queue)
        app = make_app(url, queue, python_ran)
        py_worker = app.worker(concurrency=2, poll_timeout=0.2, delayed_poll_interval=0.1).start()

        print(f"\nredis-server on {url}; Go Machinery v2 worker + Python worker on {queue!r}\n")
        print("Python producer  ->  whoever has the task")
        sent = [
            ("add", [1, 2], 3),
            ("add", [10, 20, 30], 60),
            ("add", [100, 200], 300),
            ("multiply", [6, 7], 42),
            ("concat", ["Go ", "and ", "Python"], "Go and Python"),
            ("py_upper", ["hello from python"], "HELLO FROM PYTHON"),
            ("py_stats", [[3.5, 1.25, 9.0]], (1.25, 9.0, 3)),
        ]
        results = [(name, args, want, app.send_task(name, args=args)) for name, args, want in sent]
        delayed = app.send_task("multiply", args=[2, 21], countdown=1)
        results.append(("multiply (countdown 1s)", [2, 21], 42, delayed))
        for name, args, want, res in results:
            got = res.get(timeout=20)
            runner = "Go" if res.id in go_worker.ran else "Python" if res.id in python_ran else "?"
            good = got == want
            ok &= good
            label = f"{name}({', '.join(map(repr, args))})"
            print(f"  {label:<44} ran on {runner:<6} -> {got!r:<22} {'ok' if good else 'WRONG'}")

        print("\nGo producer  ->  Python-only tasks, results read by Go's AsyncResult")
        lines = [
            {"name": "py_upper", "args": [{"type": "string", "value": "hello from go"}]},
            {"name": "py_stats", "args": [{"type": "[]float64", "value": [2.5, -1, 4]}]},
            {"name": "add", "args": [{"type": "int64", "value": 40}, {"type": "int64", "value": 2}]},
        ]
        expected = [
            [("string", "HELLO FROM GO")],
            [("float64", -1), ("float64", 4), ("int64", 3)],
            [("int64", 42)],
        ]
        for line, want_results in zip(go_produce(url, queue, lines), expected, strict=True):
            got_results = [(r["go_type"], r["value"]) for r in line.get("results", [])]
            runner = "Go" if line["uuid"] in go_worker.ran else "Python" if line["uuid"] in python_ran else "?"
            good = line.get("state") == "SUCCESS" and got_results == want_results
            ok &= good
            shown = ", ".join(f"{t}({v})" for t, v in got_results) or line.get("error")
            print(f"  {line['name']:<10} ran on {runner:<6} -> Go read: {shown:<40} {'ok' if good else 'WRONG'}")

        print(f"\nGo worker ran {len(go_worker.ran)} task(s), Python worker ran {len(python_ran)}.")
    finally:
        if py_worker is not None:
            py_worker.stop(timeout=10)
        if go_worker is not None:
            go_worker.stop()
        redis_proc.terminate()
        redis_proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
    print("demo OK" if ok else "demo FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
