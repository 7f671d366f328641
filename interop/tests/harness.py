"""Helpers for the Go <-> Python interop suite.

* :func:`build_go_programs` runs ``interop/build.sh`` (once per session).
* :class:`GoWorker` runs ``bin/mcworker`` as a subprocess, reads its JSON lines in a
  background thread (``ready``, ``task``, ``error_handler``, ``stopped`` ...) and stops it
  with SIGTERM, checking that it exited cleanly.
* :func:`run_producer` feeds JSON lines to ``bin/mcproducer`` and returns its output
  lines (one per input line, sorted by ``line``); result values keep their exact JSON text.
* :class:`RedisMonitor` records, via ``MONITOR``, every task state a client writes
  (``SET task_… {…}``), so a test can see transient states such as ``RETRY``.
* :func:`exact` parses JSON keeping number literals as :class:`Num` (``-0`` stays ``-0``,
  ``18446744073709551615`` stays exact), to compare values the way Go wrote them.

Nothing here imports machinery_compat: the harness is an independent observer.
"""

from __future__ import annotations

import contextlib
import json
import re
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
INTEROP = REPO / "interop"
BIN = INTEROP / "bin"
FLAVOURS = ("v1", "v2-redigo", "v2-goredis")

#: Directions, as shown in RESULTS.md.
PY_TO_GO = "Python → Go worker"
GO_TO_PY = "Go → Python worker"
MIXED = "mixed pool"
WORKFLOWS = "workflows"
DIRECTIONS = (PY_TO_GO, GO_TO_PY, MIXED, WORKFLOWS)


# --------------------------------------------------------------------------------------
# exact JSON
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Num:
    """A JSON number literal, compared by its text (so ``-0`` != ``0`` and ``1`` != ``1.0``)."""

    text: str

    def __repr__(self) -> str:
        return self.text


def exact(text: str | bytes) -> Any:
    """``json.loads`` keeping every number literal as :class:`Num`."""
    return json.loads(text, parse_int=Num, parse_float=Num)


def parse_go_time(text: str) -> float:
    """An RFC 3339 (nano) time as Unix seconds (float; sub-microsecond digits dropped)."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", text)
    if not m:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    base, frac, zone = m.groups()
    dt = datetime.fromisoformat(base + ("+00:00" if zone == "Z" else zone))
    return dt.timestamp() + (int((frac or "0")[:9].ljust(9, "0")) / 1e9)


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition",
             interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy; AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------------------
# building
# --------------------------------------------------------------------------------------

_build_lock = threading.Lock()
_build_result: tuple[bool, str] | None = None


def build_go_programs() -> tuple[bool, str]:
    """Run ``interop/build.sh`` once per process; ``(ok, message)``."""
    global _build_result
    with _build_lock:
        if _build_result is None:
            try:
                proc = subprocess.run(
                    ["bash", str(INTEROP / "build.sh")], capture_output=True, text=True,
                    timeout=900, check=False,
                )
            except (OSError, subprocess.TimeoutExpired) as e:
                _build_result = (False, f"interop/build.sh could not run: {e}")
            else:
                if proc.returncode != 0:
                    output = (proc.stdout + proc.stderr).strip()
                    last = output.splitlines()[-1] if output else ""
                    _build_result = (False, f"interop/build.sh failed (exit {proc.returncode}): "
                                            f"{last}\n{output[-4000:]}")
                else:
                    missing = [n for n in ("mcworker", "mcproducer") if not (BIN / n).is_file()]
                    _build_result = ((False, f"interop/build.sh did not produce {missing}")
                                     if missing else (True, "built"))
        return _build_result


def _die_with_parent() -> list[str]:
    """Command prefix: SIGTERM the Go worker if this process dies (no workers left behind).

    A prefix (``setpriv --pdeathsig``), not a ``preexec_fn``: Python code between fork and
    exec can deadlock in a threaded process, which once hung a whole CI run.
    """
    from tests.services import die_with_parent_prefix

    return die_with_parent_prefix()


# --------------------------------------------------------------------------------------
# mcworker
# --------------------------------------------------------------------------------------


class GoWorker:
    """``bin/mcworker`` as a subprocess; ``events`` holds its stdout JSON lines."""

    def __init__(self, flavour: str, broker: str, queue: str, *, concurrency: int = 4,
                 delayed_poll_ms: int | None = None, normal_poll_ms: int | None = None,
                 tag: str | None = None, log_dir: Path | None = None) -> None:
        self.flavour = flavour
        self.broker = broker
        self.queue = queue
        self.tag = tag or f"go-{flavour}-{queue}"
        self.args = [str(BIN / "mcworker"), "-flavour", flavour, "-broker", broker,
                     "-queue", queue, "-concurrency", str(concurrency), "-tag", self.tag]
        if delayed_poll_ms is not None:
            self.args += ["-delayed-poll-ms", str(delayed_poll_ms)]
        if normal_poll_ms is not None:
            self.args += ["-normal-poll-ms", str(normal_poll_ms)]
        self.log_dir = log_dir
        self.events: list[dict[str, Any]] = []
        self.bad_lines: list[bytes] = []
        self._cond = threading.Condition()
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._stderr_path: Path | None = None
        self.returncode: int | None = None

    # -- lifecycle ----------------------------------------------------------------------
    def start(self, timeout: float = 20.0) -> GoWorker:
        import tempfile

        d = self.log_dir or Path(tempfile.mkdtemp(prefix="mcworker-"))
        self._stderr_path = d / f"{self.tag}.stderr.log"
        with open(self._stderr_path, "wb") as err:
            self._proc = subprocess.Popen(
                [*_die_with_parent(), *self.args], stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=err,
            )
        self._reader = threading.Thread(target=self._read, name=f"read-{self.tag}", daemon=True)
        self._reader.start()
        try:
            ready = self.wait_event(lambda e: e.get("event") in ("ready", "fatal"), timeout,
                                    "ready")
        except AssertionError:
            self.kill()
            raise
        if ready["event"] != "ready":
            self.kill()
            raise AssertionError(f"mcworker failed to start: {ready}; stderr:\n{self.stderr()}")
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for raw in self._proc.stdout:
            line = raw.strip()
            if not line:
                continue
            try:
                ev = json.loads(line)
                ev["_exact"] = line
                ev["_received"] = time.time()
            except ValueError:
                with self._cond:
                    self.bad_lines.append(line)
                continue
            with self._cond:
                self.events.append(ev)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def stop(self, timeout: float = 40.0) -> int:
        """SIGTERM, wait; assert a clean exit (status 0 and a ``stopped`` event)."""
        self.terminate()
        return self.wait_stopped(timeout)

    def terminate(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)

    def wait_stopped(self, timeout: float = 40.0) -> int:
        assert self._proc is not None
        try:
            rc = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"mcworker {self.tag} did not exit within {timeout}s of SIGTERM;"
                                 f" stderr tail:\n{self.stderr()[-3000:]}") from None
        self._close_pipe()
        self.returncode = rc
        stopped = [e for e in self.events if e.get("event") == "stopped"]
        assert rc == 0, f"mcworker {self.tag} exited {rc}; events {stopped}; " \
                        f"stderr tail:\n{self.stderr()[-3000:]}"
        assert stopped and stopped[-1].get("error") == "", stopped
        assert not self.bad_lines, f"non-JSON stdout lines: {self.bad_lines[:5]}"
        return rc

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(10)
        self._close_pipe()

    def _close_pipe(self) -> None:
        if self._reader is not None:
            self._reader.join(5)
        if self._proc is not None and self._proc.stdout is not None:
            self._proc.stdout.close()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stderr(self) -> str:
        if self._stderr_path is None:
            return ""
        try:
            return self._stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    # -- events -------------------------------------------------------------------------
    def snapshot(self) -> list[dict[str, Any]]:
        with self._cond:
            return list(self.events)

    def wait_event(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0,
                   what: str = "event") -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._cond:
            seen = 0
            while True:
                for ev in self.events[seen:]:
                    if predicate(ev):
                        return ev
                seen = len(self.events)
                left = deadline - time.monotonic()
                if left <= 0 or (self._proc is not None and self._proc.poll() is not None
                                 and (self._reader is None or not self._reader.is_alive())):
                    raise AssertionError(
                        f"mcworker {self.tag}: no {what} event within {timeout}s (alive="
                        f"{self.alive()}); stderr tail:\n{self.stderr()[-2000:]}")
                self._cond.wait(min(left, 0.2))

    def tasks(self, uuid: str | None = None, name: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.snapshot() if e.get("event") == "task"
                and (uuid is None or e.get("uuid") == uuid)
                and (name is None or e.get("name") == name)]

    def wait_tasks(self, uuid: str, count: int = 1, timeout: float = 15.0) -> list[dict[str, Any]]:
        wait_for(lambda: len(self.tasks(uuid)) >= count, timeout,
                 f"{count} task event(s) for {uuid} from {self.tag}")
        return self.tasks(uuid)

    def __repr__(self) -> str:
        return f"<GoWorker {self.tag} pid={self.pid}>"


# --------------------------------------------------------------------------------------
# mcproducer
# --------------------------------------------------------------------------------------


def run_producer(flavour: str, broker: str, lines: Iterable[dict[str, Any]], *,
                 queue: str = "machinery_tasks", parallel: int = 1, timeout: float = 120.0,
                 extra: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Run ``bin/mcproducer`` on ``lines``; its output lines, sorted by ``line``.

    Every ``results[i]`` also gets ``exact`` (the value parsed with :func:`exact`).
    """
    payload = "".join(json.dumps(line) + "\n" for line in lines)
    n = payload.count("\n")
    args = [str(BIN / "mcproducer"), "-flavour", flavour, "-broker", broker, "-queue", queue,
            "-parallel", str(parallel), *extra]
    proc = subprocess.run(args, input=payload.encode(), capture_output=True, timeout=timeout,
                          check=False)
    assert proc.returncode == 0, (f"mcproducer exited {proc.returncode}; stderr:\n"
                                  f"{proc.stderr.decode(errors='replace')[-3000:]}")
    out = [_producer_line(raw) for raw in proc.stdout.splitlines() if raw.strip()]
    assert len(out) == n, f"mcproducer printed {len(out)} lines for {n} inputs: {out[:5]}"
    return sorted(out, key=lambda o: o["line"])


def read_one(flavour: str, broker: str, uuid: str, timeout_ms: int = 5000) -> dict[str, Any]:
    """``mcproducer -read UUID`` (the single-shot read mode)."""
    args = [str(BIN / "mcproducer"), "-flavour", flavour, "-broker", broker, "-read", uuid,
            "-timeout-ms", str(timeout_ms)]
    proc = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    lines = [raw for raw in proc.stdout.splitlines() if raw.strip()]
    assert len(lines) == 1, lines
    return _producer_line(lines[0])


def _producer_line(raw: bytes) -> dict[str, Any]:
    obj = json.loads(raw)
    precise = exact(raw)
    for item, p in zip(obj.get("results") or (), precise.get("results") or (), strict=True):
        item["exact"] = p["value"]
    obj["_raw"] = raw
    return obj


# --------------------------------------------------------------------------------------
# MONITOR
# --------------------------------------------------------------------------------------

_MON_LINE = re.compile(rb"\+(\d+\.\d+) \[(\d+) ([^\]]*)\] (.*)\Z", re.S)
_MON_ARG = re.compile(rb'"((?:[^"\\]|\\.)*)"', re.S)
_ESCAPES = {ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t", ord("a"): b"\a",
            ord("b"): b"\b", ord('"'): b'"', ord("\\"): b"\\"}
_STATE = re.compile(rb'"State":"([A-Z]+)"')


def _unrepr(arg: bytes) -> bytes:
    """Undo Redis's ``sdscatrepr`` quoting of one MONITOR argument."""
    out = bytearray()
    i, n = 0, len(arg)
    while i < n:
        c = arg[i]
        if c == 0x5C and i + 1 < n:  # backslash
            nxt = arg[i + 1]
            if nxt == ord("x") and i + 3 < n:
                out.append(int(arg[i + 2:i + 4], 16))
                i += 4
                continue
            out += _ESCAPES.get(nxt, bytes([nxt]))
            i += 2
            continue
        out.append(c)
        i += 1
    return bytes(out)


@dataclass(slots=True)
class MonitoredCommand:
    ts: float
    db: int
    client: str
    args: list[bytes]


class RedisMonitor:
    """Records commands of one Redis DB through ``MONITOR`` (raw socket, own thread)."""

    def __init__(self, host: str, port: int, db: int) -> None:
        self.host, self.port, self.db = host, port, db
        self.commands: list[MonitoredCommand] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self) -> RedisMonitor:
        sock = socket.create_connection((self.host, self.port), timeout=5)
        sock.sendall(b"MONITOR\r\n")
        buf = b""
        while b"\r\n" not in buf:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("MONITOR connection closed")
            buf += chunk
        first, _, rest = buf.partition(b"\r\n")
        if first != b"+OK":
            raise ConnectionError(f"MONITOR refused: {first!r}")
        self._sock = sock
        self._thread = threading.Thread(target=self._run, args=(rest,), name="redis-monitor",
                                        daemon=True)
        self._thread.start()
        return self

    def _run(self, buf: bytes) -> None:
        assert self._sock is not None
        sock = self._sock
        try:
            while True:
                while b"\r\n" in buf:
                    line, _, buf = buf.partition(b"\r\n")
                    self._parse(line)
                if self._stop.is_set():
                    return
                ready, _, _ = select.select([sock], [], [], 0.1)
                if not ready:
                    continue
                chunk = sock.recv(1 << 16)
                if not chunk:
                    return
                buf += chunk
        except OSError as e:  # pragma: no cover - reported by stop()
            if not self._stop.is_set():
                self.error = e

    def _parse(self, line: bytes) -> None:
        m = _MON_LINE.match(line)
        if not m or int(m.group(2)) != self.db:
            return
        args = [_unrepr(a) for a in _MON_ARG.findall(m.group(4))]
        with self._lock:
            self.commands.append(MonitoredCommand(float(m.group(1)), self.db,
                                                  m.group(3).decode(), args))

    def stop(self) -> None:
        """Stop after draining what the server already sent (idempotent)."""
        if self._stop.is_set():
            return
        self._drain()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        if self.error is not None:
            raise AssertionError(f"MONITOR reader failed: {self.error!r}")

    def _drain(self, timeout: float = 10.0) -> None:
        """Wait until everything the server sent before now has been read: a busy server's
        MONITOR stream lags, so send a marker command on this DB and wait to see it."""
        marker = f"monitor-drain-marker:{time.monotonic_ns()}".encode()
        with self._lock:
            start = len(self.commands)
        with socket.create_connection((self.host, self.port), timeout=5) as sock:
            sock.sendall(f"SELECT {self.db}\r\n".encode() + b"EXISTS " + marker + b"\r\n")
            got = b""
            while got.count(b"\r\n") < 2:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                got += chunk
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if any(c.args[1:2] == [marker] for c in self.commands[start:]):
                    return
            if self._thread is None or not self._thread.is_alive():
                return
            time.sleep(0.01)
        raise AssertionError(f"MONITOR stream still behind after {timeout}s")

    def snapshot(self) -> list[MonitoredCommand]:
        with self._lock:
            return list(self.commands)

    def state_writes(self, uuid: str) -> list[bytes]:
        """Every TaskState JSON written with ``SET <uuid> …`` (any client, incl. Lua)."""
        key = uuid.encode()
        return [c.args[2] for c in self.snapshot()
                if len(c.args) >= 3 and c.args[0].upper() == b"SET" and c.args[1] == key]

    def states(self, uuid: str) -> list[str]:
        out = []
        for body in self.state_writes(uuid):
            m = _STATE.search(body)
            out.append(m.group(1).decode() if m else "?")
        return out

    def calls(self, name: str) -> list[MonitoredCommand]:
        up = name.upper().encode()
        return [c for c in self.snapshot() if c.args and c.args[0].upper() == up]


def results_bytes(state: bytes | None) -> bytes | None:
    """The raw ``Results`` JSON of a stored SUCCESS TaskState (byte-exact)."""
    if state is None:
        return None
    m = re.match(rb'\{"TaskUUID":"[^"]*","TaskName":"(?:[^"\\]|\\.)*","State":"SUCCESS",'
                 rb'"Results":(.*),"Error":"","CreatedAt":"[^"]*","TTL":0\}\Z', state, re.S)
    return m.group(1) if m else None



_STATE_WRITE = re.compile(
    rb'\{"TaskUUID":"(?P<uuid>[^"\\]*)","TaskName":"(?P<name>(?:[^"\\]|\\.)*)",'
    rb'"State":"(?P<state>[A-Z]+)","Results":(?P<results>.*),"Error":"(?P<error>(?:[^"\\]|\\.)*)",'
    rb'"CreatedAt":"(?P<created>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?Z)","TTL":0\}\Z',
    re.S,
)


def state_write_problems(writes: Sequence[bytes], uuid: str, name: str, *,
                         results: bytes | None = None, error: bytes = b"") -> list[str]:
    """Check every TaskState write of one task, byte for byte, against Machinery's rules.

    Go's field order and encoding; PENDING carries a fresh ``CreatedAt`` and the task name;
    RECEIVED/STARTED/RETRY/SUCCESS/FAILURE carry ``TaskName`` and ``CreatedAt`` merged from
    the stored state (i.e. the last PENDING), ``Results`` null except on SUCCESS
    (``results``), ``Error`` empty except on FAILURE (``error``, JSON-escaped text).
    """
    problems = []
    created: bytes | None = None
    for i, body in enumerate(writes):
        m = _STATE_WRITE.match(body)
        if m is None:
            problems.append(f"write {i}: not a Go TaskState: {body!r}")
            continue
        st = m["state"].decode()
        want_results = results if st == "SUCCESS" and results is not None else (
            m["results"] if st == "SUCCESS" else b"null")
        want_error = error if st == "FAILURE" else b""
        if st == "PENDING":
            created = m["created"]
        wrong = {
            "TaskUUID": (m["uuid"], uuid.encode()),
            "TaskName": (m["name"], name.encode()),
            "Results": (m["results"], want_results),
            "Error": (m["error"], want_error),
            "CreatedAt": (m["created"], created if created is not None else m["created"]),
        }
        for field_name, (actual, expected) in wrong.items():
            if actual != expected:
                problems.append(f"write {i} ({st}): {field_name} {actual!r} != {expected!r}")
    return problems
