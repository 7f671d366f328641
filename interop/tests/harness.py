"""Helpers for the Go <-> Python interop suite.

* :func:`build_go_programs` runs ``interop/build.sh`` (once per session).
* :class:`GoWorker` runs ``bin/mcworker`` as a subprocess, reads its JSON lines in a
  background thread (``ready``, ``task``, ``error_handler``, ``stopped`` ...) and stops it
  with SIGTERM, checking that it exited cleanly.
* :func:`run_producer` feeds JSON lines to ``bin/mcproducer`` and returns its output
  lines (one per input line, sorted by ``line``); result values keep their exact JSON text.
* :class:`RedisMonitor` records, via ``MONITOR``, every task state a client writes
  (``SET task_… {…}``), so a test can see transient states such as ``RETRY``.
* :class:`AMQPTap` is the RabbitMQ counterpart: RabbitMQ's firehose tracer
  (``amq.rabbitmq.trace``) copies every message published to the Machinery exchange —
  task messages, delay-queue messages, and the AMQP result backend's state messages —
  with its routing key, properties, routed queues and publishing connection.
* :class:`StackSpec` / :class:`Stack`: one broker + result backend combination (``redis``,
  ``amqp``, ``amqp+redis``) with a Machinery flavour, and the URLs, queue, AMQP settings
  and observers a scenario uses on it.
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

#: Broker + result backend combinations, as ``<broker>`` or ``<broker>+<backend>``.
KINDS = ("redis", "amqp", "amqp+redis")
KIND_TITLES = {
    "redis": "Redis broker + Redis backend",
    "amqp": "AMQP (RabbitMQ) broker + AMQP backend",
    "amqp+redis": "AMQP (RabbitMQ) broker + Redis backend",
}


@dataclass(frozen=True, slots=True)
class StackSpec:
    """A broker/backend kind and a Go Machinery flavour (a column of the matrix)."""

    kind: str
    flavour: str

    @property
    def id(self) -> str:
        return self.flavour if self.kind == "redis" else f"{self.kind}-{self.flavour}"

    @property
    def broker_kind(self) -> str:
        return self.kind.split("+")[0]

    @property
    def backend_kind(self) -> str:
        return self.kind.split("+")[-1]


#: Every column: all three Go flavours on Redis; v1 (URL factories) and v2 (the AMQP
#: constructors, no Redis client involved) on AMQP; on AMQP + Redis backend v1 and v2 with
#: go-redis (v2 with redigo differs from it only in the backend's Redis client, which the
#: Redis columns already cover).
STACKS = (
    StackSpec("redis", "v1"), StackSpec("redis", "v2-redigo"), StackSpec("redis", "v2-goredis"),
    StackSpec("amqp", "v1"), StackSpec("amqp", "v2"),
    StackSpec("amqp+redis", "v1"), StackSpec("amqp+redis", "v2-goredis"),
)

#: Where the cases that exercise only the broker run (priority, delayed_queue, ETAs from
#: both producers, unregistered hand-off, the CLI worker): AMQP broker + Redis backend
#: runs a representative subset, and with the same AMQP broker these cases would only
#: repeat the ``amqp`` column.
BROKER_CASE_KINDS = ("redis", "amqp")

#: Machinery's AMQP defaults (config.defaultCnf), except the binding key (see AMQPSettings).
AMQP_EXCHANGE = "machinery_exchange"

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
    """``bin/mcworker`` as a subprocess; ``events`` holds its stdout JSON lines.

    Start it from a thread that outlives it (normally the test's main thread): the
    die-with-parent signal (``setpriv --pdeathsig``) fires when the *thread* that forked it
    exits, so a worker started from a short-lived helper thread gets SIGTERM at once.
    """

    def __init__(self, flavour: str, broker: str, queue: str, *, concurrency: int = 4,
                 delayed_poll_ms: int | None = None, normal_poll_ms: int | None = None,
                 tag: str | None = None, log_dir: Path | None = None,
                 extra: Sequence[str] = ()) -> None:
        self.flavour = flavour
        self.broker = broker
        self.queue = queue
        self.tag = tag or f"go-{flavour}-{queue}"
        self.args = [str(BIN / "mcworker"), "-flavour", flavour, "-broker", broker,
                     "-queue", queue, "-concurrency", str(concurrency), "-tag", self.tag,
                     *extra]
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


def read_one(flavour: str, broker: str, uuid: str, timeout_ms: int = 5000, *,
             extra: Sequence[str] = ()) -> dict[str, Any]:
    """``mcproducer -read UUID`` (the single-shot read mode)."""
    args = [str(BIN / "mcproducer"), "-flavour", flavour, "-broker", broker, "-read", uuid,
            "-timeout-ms", str(timeout_ms), *extra]
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
                         results: bytes | None = None, error: bytes = b"",
                         merged: bool = True) -> list[str]:
    """Check every TaskState write of one task, byte for byte, against Machinery's rules.

    Go's field order and encoding; PENDING carries a fresh ``CreatedAt`` and the task name;
    RECEIVED/STARTED/RETRY/SUCCESS/FAILURE carry ``TaskName`` and ``CreatedAt`` merged from
    the stored state (i.e. the last PENDING) on Redis (``merged``), and ``""`` / the zero
    time on the AMQP backend, which never merges (§6.4); ``Results`` null except on SUCCESS
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
        if merged or st == "PENDING":
            want_name = name.encode()
            want_created = created if created is not None else m["created"]
        else:
            want_name, want_created = b"", b"0001-01-01T00:00:00Z"
        wrong = {
            "TaskUUID": (m["uuid"], uuid.encode()),
            "TaskName": (m["name"], want_name),
            "Results": (m["results"], want_results),
            "Error": (m["error"], want_error),
            "CreatedAt": (m["created"], want_created),
        }
        for field_name, (actual, expected) in wrong.items():
            if actual != expected:
                problems.append(f"write {i} ({st}): {field_name} {actual!r} != {expected!r}")
    return problems


# --------------------------------------------------------------------------------------
# AMQP: settings, firehose tap, queue inspection
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AMQPSettings:
    """Go's ``config.AMQPConfig`` as both sides get it: ``mcworker``/``mcproducer`` flags
    (:meth:`go_flags`) and the Python app's ``Config.amqp`` (:meth:`as_config_kwargs`).

    Machinery's defaults, except ``binding_key``: a scenario uses its own queue, and
    Machinery routes a task without routing key to the *binding key* on a direct exchange
    (§5.1), so the binding key is the scenario's queue name (as a deployment that
    consumes a custom queue must configure it too)."""

    binding_key: str
    exchange: str = AMQP_EXCHANGE
    exchange_type: str = "direct"
    prefetch_count: int = 3
    queue_declare_args: tuple[tuple[str, Any], ...] = ()
    delayed_queue: str = ""

    def go_flags(self) -> list[str]:
        flags = ["-amqp-exchange", self.exchange, "-amqp-exchange-type", self.exchange_type,
                 "-amqp-binding-key", self.binding_key,
                 "-amqp-prefetch", str(self.prefetch_count)]
        if self.queue_declare_args:
            flags += ["-amqp-queue-args", json.dumps(dict(self.queue_declare_args))]
        if self.delayed_queue:
            flags += ["-amqp-delayed-queue", self.delayed_queue]
        return flags

    def as_config_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``machinery_compat.config.AMQPConfig``."""
        return {"exchange": self.exchange, "exchange_type": self.exchange_type,
                "binding_key": self.binding_key, "prefetch_count": self.prefetch_count,
                "queue_declare_args": dict(self.queue_declare_args),
                "delayed_queue": self.delayed_queue}


@dataclass(frozen=True, slots=True)
class Published:
    """One message published to the Machinery exchange, as RabbitMQ's tracer saw it."""

    at: float  # when the tap received the copy (time.time())
    routing_key: str
    routed_queues: tuple[str, ...]
    properties: dict[str, Any]  # AMQP basic properties as RabbitMQ saw them
    client_port: int | None  # local port of the publishing connection
    body: bytes

    @property
    def is_state(self) -> bool:
        return self.body.startswith(b'{"TaskUUID":')

    @property
    def is_task(self) -> bool:
        return self.body.startswith(b'{"UUID":')

    def task_uuid(self) -> str | None:
        m = re.match(rb'\{"UUID":"([^"\\]*)"', self.body)
        return m.group(1).decode() if m else None


class AMQPTap:
    """Every message published to ``exchange`` in one vhost, via RabbitMQ's firehose
    (``rabbitmqctl trace_on -p <vhost>``; the copies go to ``amq.rabbitmq.trace`` with
    routing key ``publish.<exchange>``).  The AMQP analogue of :class:`RedisMonitor`: task
    messages (with their properties), delay-queue messages, and the AMQP result backend's
    state messages (routing key = task UUID, or group UUID for group completions)."""

    def __init__(self, connect: Callable[[], Any], exchange: str = AMQP_EXCHANGE) -> None:
        self.connect = connect
        self.exchange = exchange
        self.records: list[Published] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._conn: Any = None
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self) -> AMQPTap:
        conn = self.connect()
        ch = conn.channel()
        queue = ch.queue_declare("", exclusive=True, auto_delete=True).queue
        ch.queue_bind(queue, "amq.rabbitmq.trace", f"publish.{self.exchange}")
        ch.basic_consume(queue, no_ack=True, callback=self._on_message)
        self._conn = conn
        self._thread = threading.Thread(target=self._run, name="amqp-tap", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    self._conn.drain_events(timeout=0.1)
                except TimeoutError:
                    continue
        except Exception as e:  # pragma: no cover - reported by stop()
            if not self._stop.is_set():
                self.error = e

    def _on_message(self, msg: Any) -> None:
        h = msg.headers or {}
        keys = h.get("routing_keys") or [""]
        conn = str(h.get("connection", ""))
        m = re.match(r"[^ ]*:(\d+) -> ", conn)
        body = msg.body if isinstance(msg.body, bytes) else str(msg.body).encode()
        rec = Published(time.time(), str(keys[0]), tuple(h.get("routed_queues") or ()),
                        dict(h.get("properties") or {}), int(m.group(1)) if m else None, body)
        with self._lock:
            self.records.append(rec)

    def stop(self, timeout: float = 15.0) -> None:
        """Stop after every message published before now was recorded (idempotent)."""
        if self._stop.is_set():
            return
        marker = f"tap-marker.{time.monotonic_ns()}"
        try:
            conn = self.connect()
            try:
                conn.channel().basic_publish(_amqp_message(b"marker"), exchange=self.exchange,
                                             routing_key=marker)
            finally:
                conn.close()
            wait_for(lambda: any(r.routing_key == marker for r in self.snapshot()), timeout,
                     "the AMQP tap to catch up")
        finally:
            self._stop.set()
            if self._thread is not None:
                self._thread.join(5)
            with contextlib.suppress(Exception):
                self._conn.close()
        if self.error is not None:
            raise AssertionError(f"AMQP tap failed: {self.error!r}")

    def snapshot(self) -> list[Published]:
        with self._lock:
            return list(self.records)

    def to(self, routing_key: str) -> list[Published]:
        return [r for r in self.snapshot() if r.routing_key == routing_key]

    def state_writes(self, uuid: str) -> list[bytes]:
        """Every TaskState message the AMQP backend published for task ``uuid``."""
        return [r.body for r in self.to(uuid) if r.is_state]

    def states(self, uuid: str) -> list[str]:
        out = []
        for body in self.state_writes(uuid):
            m = _STATE.search(body)
            out.append(m.group(1).decode() if m else "?")
        return out

    def task_messages(self, uuid: str | None = None) -> list[Published]:
        """Task (Signature) messages, optionally those of task ``uuid``."""
        return [r for r in self.snapshot()
                if r.is_task and (uuid is None or r.task_uuid() == uuid)]


def task_properties(body: bytes, *, delayed: bool = False) -> dict[str, Any]:
    """The AMQP properties Go publishes a task message with (§5.1): JSON content type,
    persistent, the Signature's ``Headers`` as message headers (absent when empty), its
    ``Priority`` (absent when 0, and on a delay-queue message)."""
    sig = json.loads(body)
    props: dict[str, Any] = {"content_type": "application/json", "delivery_mode": 2}
    if sig.get("Headers"):
        props["headers"] = sig["Headers"]
    if sig.get("Priority") and not delayed:
        props["priority"] = sig["Priority"]
    return props


def _amqp_message(body: bytes) -> Any:
    import amqp

    return amqp.Message(body)


DELAY_QUEUE = re.compile(r"delay\.(\d+)\.(.+)\Z")


def delay_queue(routing_key: str, exchange: str = AMQP_EXCHANGE) -> tuple[int, str] | None:
    """``(delay_ms, routing key)`` of a Machinery delay queue name
    (``delay.<ms>.<exchange>.<routing key>``), else None."""
    m = DELAY_QUEUE.match(routing_key)
    if not m or not m.group(2).startswith(exchange + "."):
        return None
    return int(m.group(1)), m.group(2)[len(exchange) + 1:]


# --------------------------------------------------------------------------------------
# a stack: broker + backend + flavour, for one scenario
# --------------------------------------------------------------------------------------


class Observer:
    """What a scenario sees of the backend's state writes and of the broker's messages:
    ``MONITOR`` on the Redis backend DB (``monitor``), the firehose tap on the AMQP vhost
    (``tap``), or both (AMQP broker + Redis backend)."""

    def __init__(self, monitor: RedisMonitor | None, tap: AMQPTap | None,
                 backend_kind: str) -> None:
        self.monitor, self.tap, self.backend_kind = monitor, tap, backend_kind

    def start(self) -> Observer:
        if self.monitor is not None:
            self.monitor.start()
        if self.tap is not None:
            self.tap.start()
        return self

    def stop(self) -> None:
        try:
            if self.monitor is not None:
                self.monitor.stop()
        finally:
            if self.tap is not None:
                self.tap.stop()

    def state_writes(self, uuid: str) -> list[bytes]:
        if self.backend_kind == "redis":
            assert self.monitor is not None
            return self.monitor.state_writes(uuid)
        assert self.tap is not None
        return self.tap.state_writes(uuid)

    def states(self, uuid: str) -> list[str]:
        if self.backend_kind == "redis":
            assert self.monitor is not None
            return self.monitor.states(uuid)
        assert self.tap is not None
        return self.tap.states(uuid)


@dataclass
class Stack:
    """One scenario's broker, backend, counters Redis and queue on one :class:`StackSpec`.

    ``redis`` is the interop redis-server (``tests.services.RedisServer``); ``rabbit`` the
    interop RabbitMQ node and ``vhost`` its traced vhost (AMQP kinds only)."""

    spec: StackSpec
    broker: str
    backend: str
    counters: str  # Redis URL of the fail_n_times/retry_later counters
    queue: str
    redis: Any
    rabbit: Any = None
    vhost: str | None = None
    queue_declare_args: tuple[tuple[str, Any], ...] = ()
    prefetch_count: int = 3
    delayed_queue: str = ""

    @property
    def flavour(self) -> str:
        return self.spec.flavour

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def amqp_broker(self) -> bool:
        return self.spec.broker_kind == "amqp"

    @property
    def consuming_reads(self) -> bool:
        """The AMQP backend: a read consumes the oldest state message (§6.4), so each
        task's result can be read once, by one side."""
        return self.spec.backend_kind == "amqp"

    @property
    def merged_states(self) -> bool:
        """Redis merges TaskName/CreatedAt into every state; the AMQP backend does not."""
        return self.spec.backend_kind == "redis"

    def with_options(self, *, queue: str | None = None,
                     queue_declare_args: dict[str, Any] | None = None,
                     prefetch_count: int | None = None,
                     delayed_queue: str | None = None) -> Stack:
        """The same stack with another queue (binding key) or other AMQP settings."""
        return Stack(self.spec, self.broker, self.backend, self.counters,
                     queue or self.queue, self.redis, self.rabbit, self.vhost,
                     tuple(sorted(queue_declare_args.items())) if queue_declare_args is not None
                     else self.queue_declare_args,
                     prefetch_count if prefetch_count is not None else self.prefetch_count,
                     delayed_queue if delayed_queue is not None else self.delayed_queue)

    @property
    def amqp(self) -> AMQPSettings | None:
        if "amqp" not in (self.spec.broker_kind, self.spec.backend_kind):
            return None
        return AMQPSettings(binding_key=self.queue, prefetch_count=self.prefetch_count,
                            queue_declare_args=self.queue_declare_args,
                            delayed_queue=self.delayed_queue)

    def go_flags(self, *, worker: bool = False) -> list[str]:
        flags = ["-backend", self.backend]
        if worker:
            flags += ["-counters", self.counters]
        if self.amqp is not None:
            flags += self.amqp.go_flags()
        return flags

    # -- Go programs --------------------------------------------------------------------
    def go_worker(self, **kwargs: Any) -> GoWorker:
        return GoWorker(self.flavour, self.broker, self.queue, extra=self.go_flags(worker=True),
                        **kwargs)

    def produce(self, lines: Iterable[dict[str, Any]], **kwargs: Any) -> list[dict[str, Any]]:
        return run_producer(self.flavour, self.broker, lines, queue=self.queue,
                            extra=self.go_flags(), **kwargs)

    def read_one(self, uuid: str, timeout_ms: int = 5000) -> dict[str, Any]:
        return read_one(self.flavour, self.broker, uuid, timeout_ms,
                        extra=[*self.go_flags(), "-queue", self.queue])

    # -- observing ----------------------------------------------------------------------
    def redis_db(self, url: str) -> int:
        return int(url.rsplit("/", 1)[1])

    def observer(self) -> Observer:
        """A started :class:`Observer` (stop it to drain)."""
        mon = (RedisMonitor(self.redis.host, self.redis.port, self.redis_db(self.backend))
               if self.spec.backend_kind == "redis" else None)
        tap = AMQPTap(self.amqp_connection) if self.amqp_broker else None
        return Observer(mon, tap, self.spec.backend_kind).start()

    def amqp_connection(self) -> Any:
        assert self.rabbit is not None and self.vhost is not None
        return self.rabbit.connection(self.vhost)

    def queue_arguments(self, names: Iterable[str]) -> dict[str, list[list[Any]]]:
        """``rabbitmqctl list_queues`` arguments of these queues, sorted, each
        ``[name, type, value]`` with RabbitMQ's type names (``long`` = AMQP ``l``,
        ``signedint`` = ``I``, ``longstr`` = ``S``); queues that do not exist are absent."""
        wanted = set(names)
        rows = self.rabbit.queues(self.vhost, ("name", "arguments"))
        return {r["name"]: sorted(r["arguments"]) for r in rows if r["name"] in wanted}

    def queue_depth(self, queue: str | None = None) -> int | None:
        """Messages waiting in a broker queue (ready, not unacked); None if it does not
        exist (AMQP) — a Redis list that does not exist is just empty (0)."""
        queue = queue or self.queue
        if not self.amqp_broker:
            import redis

            with redis.Redis(host=self.redis.host, port=self.redis.port,
                             db=self.redis_db(self.broker)) as c:
                return int(c.llen(queue))
        import amqp

        conn = self.amqp_connection()
        try:
            try:
                return int(conn.channel().queue_declare(queue, passive=True).message_count)
            except amqp.exceptions.NotFound:
                return None
        finally:
            with contextlib.suppress(Exception):
                conn.close()
