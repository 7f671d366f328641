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
* :class:`AWSTap` is the AWS counterpart (SQS broker, DynamoDB backend on a moto server):
  moto's request recorder keeps every API call any client made (Go v1's aws-sdk-go, Go v2's
  aws-sdk-go-v2, boto3), so a test sees each ``SendMessage`` (body, ``DelaySeconds``, FIFO
  ids), ``ChangeMessageVisibility``, and every ``PutItem``/``UpdateItem`` of a task state.
* :class:`StackSpec` / :class:`Stack`: one broker + result backend combination (``redis``,
  ``amqp``, ``amqp+redis``, ``sqs+dynamodb``, ``sqs+redis``) with a Machinery flavour, and
  the URLs, queue, AMQP/AWS settings and observers a scenario uses on it.
* :func:`exact` parses JSON keeping number literals as :class:`Num` (``-0`` stays ``-0``,
  ``18446744073709551615`` stays exact), to compare values the way Go wrote them.

Nothing here imports machinery_compat: the harness is an independent observer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from interop.tests.memcache_tap import MemcacheRecorder, MemcacheTap
from interop.tests.mongodb_tap import MongoRecorder, MongoTap

REPO = Path(__file__).resolve().parents[2]
INTEROP = REPO / "interop"
BIN = INTEROP / "bin"
FLAVOURS = ("v1", "v2-redigo", "v2-goredis")

#: Broker + result backend combinations, as ``<broker>`` or ``<broker>+<backend>``.
KINDS = ("redis", "amqp", "amqp+redis", "sqs+dynamodb", "sqs+redis", "redis+memcache", "pubsub+redis",
         "redis+mongodb", "amqp+mongodb")
KIND_TITLES = {
    "redis": "Redis broker + Redis backend",
    "amqp": "AMQP (RabbitMQ) broker + AMQP backend",
    "amqp+redis": "AMQP (RabbitMQ) broker + Redis backend",
    "sqs+dynamodb": "AWS SQS broker + DynamoDB backend (moto server)",
    "sqs+redis": "AWS SQS broker (moto server) + Redis backend",
    "pubsub+redis": "GCP Pub/Sub broker (pstest emulator) + Redis backend",
    "redis+memcache": "Redis broker + Memcache backend (three memcached nodes)",
    "redis+mongodb": "Redis broker + MongoDB backend (FerretDB, SQLite backend)",
    "amqp+mongodb": "AMQP (RabbitMQ) broker + MongoDB backend (FerretDB, SQLite backend)",
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
#: Redis columns already cover); on SQS + DynamoDB v1 (aws-sdk-go v1 through its URL
#: factories) and v2 (aws-sdk-go-v2), on SQS + Redis v1 and v2 with go-redis.
STACKS = (
    StackSpec("redis", "v1"), StackSpec("redis", "v2-redigo"), StackSpec("redis", "v2-goredis"),
    StackSpec("amqp", "v1"), StackSpec("amqp", "v2"),
    StackSpec("amqp+redis", "v1"), StackSpec("amqp+redis", "v2-goredis"),
    StackSpec("sqs+dynamodb", "v1"), StackSpec("sqs+dynamodb", "v2"),
    StackSpec("sqs+redis", "v1"), StackSpec("sqs+redis", "v2-goredis"),
    StackSpec("pubsub+redis", "v1"), StackSpec("pubsub+redis", "v2-goredis"),
    StackSpec("redis+memcache", "v1"), StackSpec("redis+memcache", "v2-goredis"),
    StackSpec("redis+mongodb", "v1"), StackSpec("redis+mongodb", "v2-goredis"),
    StackSpec("amqp+mongodb", "v1"), StackSpec("amqp+mongodb", "v2"),
)

#: Where the cases that exercise only the broker run (priority, delayed_queue, ETAs from
#: both producers, unregistered hand-off, the CLI worker): AMQP broker + Redis backend
#: and SQS broker + Redis backend run a representative subset, and with the same broker
#: these cases would only repeat the ``amqp`` / ``sqs+dynamodb`` column.
BROKER_CASE_KINDS = ("redis", "amqp", "sqs+dynamodb", "pubsub+redis")

#: The extra backend combinations: their broker already runs the full matrix with its own
#: backend (``amqp``, ``sqs+dynamodb``) and their Redis backend runs it under the Redis broker
#: (``redis``), so by default they run the echo cases (one per Go type, both directions) for
#: :data:`SUBSET_ECHO_TYPES` only, and every other case (results shape, failures, retries,
#: ETAs, callbacks, mixed pools, workflows) in full.  ``pytest --interop-full`` (``make
#: interop-full``) runs every type there too.
SUBSET_KINDS = ("amqp+redis", "sqs+redis", "redis+memcache", "redis+mongodb", "amqp+mongodb")
#: The echo types the extra combinations run by default: a bool, the widest signed and
#: unsigned integers (exact 64-bit values), a float, a string (JSON escaping), bytes (base64)
#: and a slice.
SUBSET_ECHO_TYPES = ("bool", "int64", "uint64", "float64", "string", "[]byte", "[]string")


def echo_types(kind: str, full: bool, every: Iterable[str]) -> list[str]:
    """The echo types (of ``every``) a module sends and checks on ``kind``."""
    return [t for t in every if full or kind not in SUBSET_KINDS or t in SUBSET_ECHO_TYPES]


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


@contextlib.contextmanager
def yamlworker(config_file: Path, flavour: str, log: Path, *, concurrency: int | None = None,
               go_bins: Path = BIN) -> Iterator[subprocess.Popen[str]]:
    """``bin/yamlworker -config FILE -flavour v1|v2`` (Go Machinery configured only by the YAML
    file) running until the block ends (SIGTERM, then SIGKILL after 30 s); its stderr in
    ``log``.  Yields once it printed ``ready``."""
    args = [str(go_bins / "yamlworker"), "-config", str(config_file), "-flavour", flavour]
    if concurrency is not None:
        args += ["-concurrency", str(concurrency)]
    with log.open("w") as err:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line == "ready", (line, log.read_text())
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


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
# AWS: settings, moto's request recorder, DynamoDB state writes
# --------------------------------------------------------------------------------------

#: The account id in the SQS broker URL (moto's default account).
AWS_ACCOUNT = "123456789012"
AWS_REGION = "us-east-1"
#: The result backend URL that selects the DynamoDB backend on both sides (Go v1's factory
#: wants the prefix ``https://dynamodb``; the URL is otherwise unused).
DYNAMODB_URL = "https://dynamodb.us-east-1.amazonaws.com"
TASK_STATES_TABLE = "task_states"
GROUP_METAS_TABLE = "group_metas"
#: VisibilityTimeout of every queue the suite creates (SQS's default; the cells that need a
#: message back sooner set the receive visibility timeout of the workers).
QUEUE_VISIBILITY = 30
#: ``SQS.WaitTimeSeconds`` of both sides (Machinery's default 0 polls in a busy loop).
SQS_WAIT = 1


@dataclass(frozen=True, slots=True)
class AWSSettings:
    """The moto endpoint and Go's ``config.SQSConfig`` as both sides get it: ``mcworker`` /
    ``mcproducer`` flags (:meth:`go_flags`) and the Python app's ``Config.sqs`` /
    ``Config.dynamodb`` (:meth:`sqs_config_kwargs`, :meth:`dynamodb_config_kwargs`; the
    endpoint is the Python-only ``endpoint_url``)."""

    endpoint: str
    sqs: bool
    dynamodb: bool
    wait_time_seconds: int = SQS_WAIT
    visibility_timeout: int | None = None
    visibility_heartbeat: bool = False

    @property
    def broker_url(self) -> str:
        """Go's SQS broker URL: the queue URL prefix (queue URL = this + "/" + queue)."""
        return f"{self.endpoint}/{AWS_ACCOUNT}"

    def go_flags(self) -> list[str]:
        flags = ["-aws-region", AWS_REGION]
        if self.sqs:
            flags += ["-sqs-endpoint", self.endpoint,
                      "-sqs-wait-time", str(self.wait_time_seconds)]
            if self.visibility_timeout is not None:
                flags += ["-sqs-visibility-timeout", str(self.visibility_timeout)]
            if self.visibility_heartbeat:
                flags += ["-sqs-visibility-heartbeat"]
        if self.dynamodb:
            flags += ["-dynamodb-endpoint", self.endpoint]
        return flags

    def sqs_config_kwargs(self) -> dict[str, Any] | None:
        """Keyword arguments for ``machinery_compat.config.SQSConfig`` (None: no SQS)."""
        if not self.sqs:
            return None
        return {"endpoint_url": self.endpoint, "region": AWS_REGION,
                "wait_time_seconds": self.wait_time_seconds,
                "visibility_timeout": self.visibility_timeout,
                "visibility_heartbeat": self.visibility_heartbeat}

    def dynamodb_config_kwargs(self) -> dict[str, Any] | None:
        """Keyword arguments for ``machinery_compat.config.DynamoDBConfig``."""
        if not self.dynamodb:
            return None
        return {"endpoint_url": self.endpoint, "region": AWS_REGION,
                "task_states_table": TASK_STATES_TABLE, "group_metas_table": GROUP_METAS_TABLE}


@dataclass(frozen=True, slots=True)
class AWSCall:
    """One API call as moto's recorder kept it."""

    index: int  # position in the recording
    service: str  # "sqs" | "dynamodb" | "?"
    action: str  # "SendMessage", "UpdateItem", ...
    params: dict[str, Any]  # JSON-protocol request (Go v1's SQS query form converted)
    client: str  # "go-v1" (aws-sdk-go) | "go-v2" (aws-sdk-go-v2) | "python" (boto3) | "?"
    amz_date: str  # X-Amz-Date (whole seconds)


@dataclass(frozen=True, slots=True)
class SQSSend:
    """One message sent to SQS (``SendMessage`` or one ``SendMessageBatch`` entry)."""

    index: int
    client: str
    queue_url: str
    body: bytes
    delay: int | None  # DelaySeconds as sent (None: absent)
    group_id: str | None
    dedup_id: str | None
    batch: bool

    @property
    def queue(self) -> str:
        return self.queue_url.rsplit("/", 1)[-1]

    def task_uuid(self) -> str | None:
        m = re.match(rb'\{"UUID":"([^"\\]*)"', self.body)
        return m.group(1).decode() if m else None


def _client_of(headers: dict[str, str]) -> str:
    ua = headers.get("User-Agent", "") or headers.get("user-agent", "")
    if ua.startswith("aws-sdk-go-v2/"):
        return "go-v2"
    if ua.startswith("aws-sdk-go/"):
        return "go-v1"
    if "Boto3/" in ua or "botocore/" in ua:
        return "python"
    return "?"


def _query_params(form: dict[str, str]) -> dict[str, Any]:
    """aws-sdk-go v1's SQS query form as the JSON protocol's parameters (the ones read here)."""
    out: dict[str, Any] = {k: v for k, v in form.items() if "." not in k and k != "Action"}
    entries: dict[int, dict[str, Any]] = {}
    for k, v in form.items():
        m = re.match(r"(?:SendMessageBatchRequestEntry|ChangeMessageVisibilityBatchRequestEntry|"
                     r"DeleteMessageBatchRequestEntry)\.(\d+)\.(\w+)\Z", k)
        if m:
            entries.setdefault(int(m.group(1)), {})[m.group(2)] = v
    if entries:
        out["Entries"] = [entries[i] for i in sorted(entries)]
    return out


def parse_recording(text: str, base: int = 0) -> list[AWSCall]:
    """moto's recording (one JSON object per line) from line ``base`` on, as calls."""
    import base64
    from urllib.parse import parse_qsl

    calls = []
    for i, line in enumerate(text.splitlines()):
        if i < base or not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:  # two threads' lines interleaved: skip (rare; moto writes unlocked)
            continue
        headers = rec.get("headers") or {}
        raw = rec.get("body") or ""
        body = base64.b64decode(raw) if rec.get("body_encoded") else raw.encode()
        target = headers.get("X-Amz-Target", "")
        service, action, params = "?", "", {}
        if target:
            prefix, _, action = target.partition(".")
            service = ("sqs" if prefix == "AmazonSQS" else
                       "dynamodb" if prefix.startswith("DynamoDB") else prefix)
            try:
                params = json.loads(body) if body else {}
            except ValueError:
                params = {}
        else:
            form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
            action = form.get("Action", "")
            auth = headers.get("Authorization", "")
            service = "sqs" if "/sqs/" in auth or "QueueUrl" in form else "?"
            params = _query_params(form)
        calls.append(AWSCall(i, service, action, params, _client_of(headers),
                             headers.get("X-Amz-Date", "")))
    return calls


class AWSRecorder:
    """moto's request recorder (``/moto-api/recorder/…``) for one moto server, shared by every
    :class:`AWSTap` of the session: recording runs while at least one tap does (cleared when
    the first one starts), each tap reading the lines recorded since it started."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self._lock = threading.Lock()
        self._active = 0

    def _api(self, method: str, path: str) -> bytes:
        import urllib.request

        request = urllib.request.Request(self.endpoint + "/moto-api/recorder/" + path,
                                         method=method, data=b"" if method == "POST" else None)
        with urllib.request.urlopen(request, timeout=30) as response:
            data: bytes = response.read()
            return data

    def _text(self) -> str:
        return self._api("GET", "download-recording").decode("utf-8", "replace")

    def begin(self) -> int:
        with self._lock:
            if self._active == 0:
                self._api("POST", "reset-recording")
                self._api("POST", "start-recording")
                base = 0
            else:
                base = len(self._text().splitlines())
            self._active += 1
            return base

    def peek(self, base: int) -> list[AWSCall]:
        return parse_recording(self._text(), base)

    def end(self, base: int) -> list[AWSCall]:
        with self._lock:
            calls = parse_recording(self._text(), base)
            self._active -= 1
            if self._active == 0:
                self._api("POST", "stop-recording")
            return calls


def _resolve_update(params: dict[str, Any]) -> dict[str, Any]:
    """The attributes an ``UpdateItem``'s ``SET`` clause assigns, by attribute name."""
    names = params.get("ExpressionAttributeNames") or {}
    values = params.get("ExpressionAttributeValues") or {}
    expr = params.get("UpdateExpression") or ""
    out: dict[str, Any] = {}
    m = re.match(r"\s*SET\s+(.*)\Z", expr, re.S | re.I)
    if not m:
        return {"?": expr}
    for part in m.group(1).split(","):
        lhs, _, rhs = part.partition("=")
        lhs, rhs = lhs.strip(), rhs.strip()
        out[names.get(lhs, lhs)] = values.get(rhs, rhs)
    return out


@dataclass(frozen=True, slots=True)
class DynamoWrite:
    """One write of a task state (``task_states``) or group meta (``group_metas``) item."""

    index: int
    client: str
    op: str  # "PutItem" | "UpdateItem" | …
    key: str
    attributes: dict[str, Any]  # PutItem: the item; UpdateItem: what SET assigns
    params: dict[str, Any]

    @property
    def state(self) -> str | None:
        av = self.attributes.get("State")
        return av.get("S") if isinstance(av, dict) else None


class AWSTap:
    """Every AWS API call made while it runs (any client), via :class:`AWSRecorder`: the AWS
    analogue of :class:`RedisMonitor` and :class:`AMQPTap`."""

    def __init__(self, recorder: AWSRecorder) -> None:
        self.recorder = recorder
        self._base: int | None = None
        self._calls: list[AWSCall] | None = None

    def start(self) -> AWSTap:
        self._base = self.recorder.begin()
        return self

    def stop(self) -> None:
        if self._calls is None and self._base is not None:
            self._calls = self.recorder.end(self._base)

    def snapshot(self) -> list[AWSCall]:
        if self._calls is not None:
            return list(self._calls)
        assert self._base is not None
        return self.recorder.peek(self._base)

    def calls(self, action: str, service: str | None = None) -> list[AWSCall]:
        return [c for c in self.snapshot()
                if c.action == action and (service is None or c.service == service)]

    # -- SQS ------------------------------------------------------------------------------
    def sends(self, uuid: str | None = None) -> list[SQSSend]:
        out = []
        for c in self.snapshot():
            if c.service != "sqs" or c.action not in ("SendMessage", "SendMessageBatch"):
                continue
            entries = (c.params.get("Entries") or []) if c.action == "SendMessageBatch" \
                else [c.params]
            for e in entries:
                delay = e.get("DelaySeconds")
                send = SQSSend(c.index, c.client, str(c.params.get("QueueUrl", "")),
                               str(e.get("MessageBody", "")).encode(),
                               int(delay) if delay not in (None, "") else None,
                               e.get("MessageGroupId"), e.get("MessageDeduplicationId"),
                               c.action == "SendMessageBatch")
                if uuid is None or send.task_uuid() == uuid:
                    out.append(send)
        return out

    # -- DynamoDB -------------------------------------------------------------------------
    def writes(self, table: str, key: str) -> list[DynamoWrite]:
        """Writes of the item whose hash key is ``key`` in ``table``, in order."""
        out = []
        for c in self.snapshot():
            if c.service != "dynamodb" or c.params.get("TableName") != table:
                continue
            if c.action == "PutItem":
                item = c.params.get("Item") or {}
                k = _hash_key(item)
                attrs = dict(item)
            elif c.action == "UpdateItem":
                k = _hash_key(c.params.get("Key") or {})
                attrs = _resolve_update(c.params)
            elif c.action == "DeleteItem":
                k, attrs = _hash_key(c.params.get("Key") or {}), {}
            else:
                continue
            if k == key:
                out.append(DynamoWrite(c.index, c.client, c.action, k, attrs, c.params))
        return out

    def state_writes(self, uuid: str) -> list[DynamoWrite]:
        return [w for w in self.writes(TASK_STATES_TABLE, uuid) if w.state is not None]

    def states(self, uuid: str) -> list[str]:
        return [w.state for w in self.state_writes(uuid) if w.state is not None]

    def group_writes(self, group_uuid: str) -> list[DynamoWrite]:
        return self.writes(GROUP_METAS_TABLE, group_uuid)


def _hash_key(item: dict[str, Any]) -> str | None:
    for name in ("TaskUUID", "GroupUUID"):
        av = item.get(name)
        if isinstance(av, dict) and "S" in av:
            return str(av["S"])
    return None


_RFC3339_NANO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?Z\Z")


def dynamodb_results(values: Sequence[tuple[str, str]] | None) -> dict[str, Any]:
    """The ``Results`` attribute Go's DynamoDB backend writes for ``(Type, %v text)`` pairs
    (``NULL`` when there are none: the PENDING item's, never overwritten)."""
    if not values:
        return {"NULL": True}
    return {"L": [{"M": {"Type": {"S": t}, "Value": {"S": v}}} for t, v in values]}


def dynamodb_write_problems(writes: Sequence[DynamoWrite], uuid: str, name: str, *,
                            results: Sequence[tuple[str, str]] | None = None,
                            error: str = "") -> list[str]:
    """Check every write of one task's DynamoDB item against Go's shapes (§6.5): PENDING a
    ``PutItem`` of the whole state (v1: ``Error``/empty ``Results`` NULL); every later state
    an ``UpdateItem`` that SETs only ``State`` — plus ``TTL`` and ``Results`` (when there are
    some) on SUCCESS, ``Error`` and ``TTL`` on FAILURE (a Python worker may add its
    ``ExceptionRecord``)."""
    problems = []
    now = time.time()
    for i, w in enumerate(writes):
        st = w.state
        a = w.attributes
        if st == "PENDING":
            null = {"NULL": True}
            want_error = null if w.client == "go-v1" else {"S": ""}
            checks = {"op": (w.op, "PutItem"), "TaskUUID": (a.get("TaskUUID"), {"S": uuid}),
                      "TaskName": (a.get("TaskName"), {"S": name}),
                      "Results": (a.get("Results"), null), "Error": (a.get("Error"), want_error),
                      "TTL": (a.get("TTL"), {"N": "0"}),
                      "attributes": (sorted(a), sorted(["TaskUUID", "TaskName", "State",
                                                        "Results", "Error", "CreatedAt",
                                                        "TTL"]))}
            created = (a.get("CreatedAt") or {}).get("S", "")
            if not _RFC3339_NANO.match(created):
                problems.append(f"write {i} (PENDING): CreatedAt {created!r}")
        else:
            want = {"State"}
            if st == "SUCCESS":
                want |= {"TTL"} | ({"Results"} if results else set())
            elif st == "FAILURE":
                want |= {"Error", "TTL"}
            got = set(a)
            if st == "FAILURE" and w.client == "python":
                got.discard("ExceptionRecord")
            checks = {"op": (w.op, "UpdateItem"), "SET": (sorted(got), sorted(want))}
            if st == "SUCCESS" and results:
                checks["Results"] = (a.get("Results"), dynamodb_results(results))
            if st == "FAILURE":
                checks["Error"] = (a.get("Error"), {"S": error})
            if "TTL" in want:
                ttl = int((a.get("TTL") or {}).get("N", "0"))
                if not now + 3000 < ttl < now + 3700:
                    problems.append(f"write {i} ({st}): TTL {ttl} is not about now + 3600")
        for what, (actual, expected) in checks.items():
            if actual != expected:
                problems.append(f"write {i} ({st}, {w.client}): {what} {actual!r} != {expected!r}")
    return problems


# --------------------------------------------------------------------------------------
# a stack: broker + backend + flavour, for one scenario
# --------------------------------------------------------------------------------------


class Observer:
    """What a scenario sees of the backend's state writes and of the broker's messages:
    ``MONITOR`` on the Redis backend DB (``monitor``), the firehose tap on the AMQP vhost
    (``tap``), moto's request recording (``aws``: SQS calls, DynamoDB writes), or two of
    them (AMQP or SQS broker + Redis backend)."""

    def __init__(self, monitor: RedisMonitor | None, tap: AMQPTap | None,
                 backend_kind: str, aws: AWSTap | None = None,
                 memcache: MemcacheTap | None = None,
                 mongodb: MongoTap | None = None) -> None:
        self.monitor, self.tap, self.backend_kind, self.aws = monitor, tap, backend_kind, aws
        self.memcache = memcache
        self.mongodb = mongodb

    def start(self) -> Observer:
        if self.monitor is not None:
            self.monitor.start()
        if self.tap is not None:
            self.tap.start()
        if self.aws is not None:
            self.aws.start()
        if self.memcache is not None:
            self.memcache.start()
        if self.mongodb is not None:
            self.mongodb.start()
        return self

    def stop(self) -> None:
        try:
            if self.monitor is not None:
                self.monitor.stop()
        finally:
            try:
                if self.tap is not None:
                    self.tap.stop()
            finally:
                if self.aws is not None:
                    self.aws.stop()
                if self.mongodb is not None:
                    self.mongodb.stop()

    def state_writes(self, uuid: str) -> list[Any]:
        """The task's state writes: TaskState JSON bytes (Redis, AMQP backends), or
        :class:`DynamoWrite` items (DynamoDB backend)."""
        if self.backend_kind == "redis":
            assert self.monitor is not None
            return self.monitor.state_writes(uuid)
        if self.backend_kind == "dynamodb":
            assert self.aws is not None
            return self.aws.state_writes(uuid)
        if self.backend_kind == "memcache":
            assert self.memcache is not None
            return self.memcache.state_writes(uuid)
        if self.backend_kind == "mongodb":  # the task's document after each write, as Go JSON
            assert self.mongodb is not None
            return self.mongodb.state_writes(uuid)
        assert self.tap is not None
        return self.tap.state_writes(uuid)

    def states(self, uuid: str) -> list[str]:
        if self.backend_kind == "redis":
            assert self.monitor is not None
            return self.monitor.states(uuid)
        if self.backend_kind == "dynamodb":
            assert self.aws is not None
            return self.aws.states(uuid)
        if self.backend_kind == "memcache":
            assert self.memcache is not None
            return self.memcache.states(uuid)
        if self.backend_kind == "mongodb":
            assert self.mongodb is not None
            return self.mongodb.states(uuid)
        assert self.tap is not None
        return self.tap.states(uuid)


@dataclass
class Stack:
    """One scenario's broker, backend, counters Redis and queue on one :class:`StackSpec`.

    ``redis`` is the interop redis-server (``tests.services.RedisServer``); ``rabbit`` the
    interop RabbitMQ node and ``vhost`` its traced vhost (AMQP kinds only); ``moto`` the
    moto server (``tests.services.MotoServer``), ``recorder`` its :class:`AWSRecorder` and
    ``aws`` the endpoint and SQS settings (AWS kinds only)."""

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
    aws: AWSSettings | None = None
    moto: Any = None
    recorder: AWSRecorder | None = None
    memcache: MemcacheRecorder | None = None  # the relays of a Memcache backend
    pubsub: Any = None  # the PubSubEmulator of a Pub/Sub broker
    pubsub_project: str = ""  # its project holding this stack's topics and subscriptions
    mongodb: MongoRecorder | None = None  # the recording relay in front of a MongoDB backend

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
    def poll_timeout(self) -> float:
        """The Python workers' poll period: 0.1 s, on SQS the long-poll wait both sides use
        (moto's long poll sees a message that became visible again only when a poll starts, so
        a Python worker short-polling every 0.1 s would nearly always beat a Go worker to it)."""
        return float(self.aws.wait_time_seconds) if self.sqs_broker and self.aws else 0.1

    @property
    def sqs_broker(self) -> bool:
        return self.spec.broker_kind == "sqs"

    @property
    def dynamodb_backend(self) -> bool:
        return self.spec.backend_kind == "dynamodb"

    @property
    def consuming_reads(self) -> bool:
        """The AMQP backend: a read consumes the oldest state message (§6.4), so each
        task's result can be read once, by one side."""
        return self.spec.backend_kind == "amqp"

    @property
    def merged_states(self) -> bool:
        """Redis merges TaskName/CreatedAt into every state (MongoDB's ``$set`` keeps every
        earlier field); the AMQP backend does not."""
        return self.spec.backend_kind in ("redis", "mongodb")

    def stored_state(self, uuid: str) -> bytes | None:
        """MongoDB backend: the task's document now, as the Go TaskState JSON Go reads."""
        return self.stored_states([uuid])[0]

    def stored_states(self, uuids: Sequence[str]) -> list[bytes | None]:
        """MongoDB backend: the tasks' documents now (one query), as Go TaskState JSON."""
        from bson.codec_options import CodecOptions, DatetimeConversion
        from pymongo import MongoClient

        from interop.tests.mongodb_tap import task_state_json

        assert self.mongodb is not None
        with MongoClient(self.backend, serverSelectionTimeoutMS=5000) as c:
            coll = c.get_database("machinery", codec_options=CodecOptions(
                datetime_conversion=DatetimeConversion.DATETIME_MS)).tasks
            docs = {d["_id"]: d for d in coll.find({"_id": {"$in": list(uuids)}})}
        return [task_state_json(docs[u]) if u in docs else None for u in uuids]

    def with_options(self, *, queue: str | None = None,
                     queue_declare_args: dict[str, Any] | None = None,
                     prefetch_count: int | None = None,
                     delayed_queue: str | None = None,
                     sqs_visibility_timeout: int | None = None,
                     sqs_heartbeat: bool | None = None) -> Stack:
        """The same stack with another queue (binding key; on SQS created if missing), other
        AMQP settings, or other SQS receive settings (``VisibilityTimeout``, heartbeat)."""
        aws = self.aws
        if aws is not None and (sqs_visibility_timeout is not None or sqs_heartbeat is not None):
            aws = dataclasses.replace(
                aws, visibility_timeout=(sqs_visibility_timeout if sqs_visibility_timeout
                                         is not None else aws.visibility_timeout),
                visibility_heartbeat=(sqs_heartbeat if sqs_heartbeat is not None
                                      else aws.visibility_heartbeat))
        st = Stack(self.spec, self.broker, self.backend, self.counters,
                   queue or self.queue, self.redis, self.rabbit, self.vhost,
                   tuple(sorted(queue_declare_args.items())) if queue_declare_args is not None
                   else self.queue_declare_args,
                   prefetch_count if prefetch_count is not None else self.prefetch_count,
                   delayed_queue if delayed_queue is not None else self.delayed_queue,
                   aws, self.moto, self.recorder, self.memcache, self.pubsub,
                   self.pubsub_project, self.mongodb)
        if queue and st.sqs_broker and queue != self.queue:
            st.create_queue(queue)
        if queue and st.pubsub_broker and queue != self.queue:
            st.broker = st.create_topic(queue)
        return st

    # -- Pub/Sub ----------------------------------------------------------------------------
    @property
    def pubsub_broker(self) -> bool:
        return self.spec.broker_kind == "pubsub"

    def create_topic(self, queue: str) -> str:
        """Create the topic ``queue`` and its subscription of the same name (Machinery never
        does); the broker URL consuming it (``gcppubsub://<project>/<queue>``)."""
        self.pubsub.create_topic(self.pubsub_project, queue)
        self.pubsub.create_subscription(self.pubsub_project, queue, queue)
        return f"gcppubsub://{self.pubsub_project}/{queue}"

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
        if self.aws is not None:
            flags += self.aws.go_flags()
        if self.memcache is not None:  # (gomemcache's 100 ms: missed on a loaded machine)
            flags += ["-memcache-timeout", "1s"]
        return flags

    # -- Go programs --------------------------------------------------------------------
    def go_worker(self, *, flags: Sequence[str] = (), **kwargs: Any) -> GoWorker:
        """An ``mcworker`` on this stack (``flags``: more mcworker flags)."""
        return GoWorker(self.flavour, self.broker, self.queue,
                        extra=[*self.go_flags(worker=True), *flags], **kwargs)

    def produce(self, lines: Iterable[dict[str, Any]], **kwargs: Any) -> list[dict[str, Any]]:
        return run_producer(self.flavour, self.broker, lines, queue=self.queue,
                            extra=[*self.go_flags(), *self._poll_flags()], **kwargs)

    def read_one(self, uuid: str, timeout_ms: int = 5000) -> dict[str, Any]:
        return read_one(self.flavour, self.broker, uuid, timeout_ms,
                        extra=[*self.go_flags(), *self._poll_flags(), "-queue", self.queue])

    def _poll_flags(self) -> list[str]:
        """DynamoDB: Go's ``AsyncResult`` polls every 500 ms instead of mcproducer's 50 ms
        (a ``GetItem`` each, for every awaited line: dozens of lines at 50 ms swamp moto)."""
        return ["-poll-ms", "500"] if self.dynamodb_backend else []

    # -- observing ----------------------------------------------------------------------
    def redis_db(self, url: str) -> int:
        return int(url.rsplit("/", 1)[1])

    def observer(self) -> Observer:
        """A started :class:`Observer` (stop it to drain)."""
        mon = (RedisMonitor(self.redis.host, self.redis.port, self.redis_db(self.backend))
               if self.spec.backend_kind == "redis"
               else RedisMonitor(self.redis.host, self.redis.port, self.redis_db(self.broker))
               if self.spec.kind in ("redis+memcache", "redis+mongodb")
               else None)  # (its broker: ZADDs)
        tap = AMQPTap(self.amqp_connection) if self.amqp_broker else None
        aws = AWSTap(self.recorder) if self.recorder is not None else None
        mc = MemcacheTap(self.memcache) if self.memcache is not None else None
        mongo = MongoTap(self.mongodb) if self.mongodb is not None else None
        return Observer(mon, tap, self.spec.backend_kind, aws, mc, mongo).start()

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
        if self.pubsub_broker:
            return self.pubsub.depth(self.pubsub_project, queue)
        if self.sqs_broker:
            try:
                attrs = self.sqs_client().get_queue_attributes(
                    QueueUrl=self.queue_url(queue),
                    AttributeNames=["ApproximateNumberOfMessages"])["Attributes"]
            except Exception as e:
                if "NonExistentQueue" in str(e) or "QueueDoesNotExist" in str(e):
                    return None
                raise
            return int(attrs["ApproximateNumberOfMessages"])
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

    # -- AWS ------------------------------------------------------------------------------
    def sqs_client(self) -> Any:
        assert self.moto is not None
        return self.moto.client("sqs")

    def dynamodb_client(self) -> Any:
        assert self.moto is not None
        return self.moto.client("dynamodb")

    def queue_url(self, queue: str | None = None) -> str:
        """Go's queue URL: the broker URL + "/" + the queue name."""
        return f"{self.broker}/{queue or self.queue}"

    def create_queue(self, queue: str, **attributes: str) -> str:
        """Create an SQS queue (Machinery never does): ``QUEUE_VISIBILITY`` s visibility
        timeout, FIFO for a ``.fifo`` name; its URL (Go's form)."""
        attrs = {"VisibilityTimeout": str(QUEUE_VISIBILITY), **attributes}
        if queue.endswith(".fifo"):
            attrs.setdefault("FifoQueue", "true")
        self.sqs_client().create_queue(QueueName=queue, Attributes=attrs)
        return self.queue_url(queue)

    def dynamodb_item(self, uuid: str) -> dict[str, Any] | None:
        """The task's item in ``task_states`` (strongly consistent read), or None."""
        got = self.dynamodb_client().get_item(TableName=TASK_STATES_TABLE, ConsistentRead=True,
                                              Key={"TaskUUID": {"S": uuid}})
        item: dict[str, Any] | None = got.get("Item")
        return item

    def group_item(self, group_uuid: str) -> dict[str, Any] | None:
        got = self.dynamodb_client().get_item(TableName=GROUP_METAS_TABLE, ConsistentRead=True,
                                              Key={"GroupUUID": {"S": group_uuid}})
        item: dict[str, Any] | None = got.get("Item")
        return item
