"""The conformance matrix: what one run checks between a Go probe and this package.

Three queues, all named ``<prefix>.<role>``: ``go`` (a Go worker), ``py`` (a Python worker),
``mix`` (a Go and a Python worker together, for the mixed pool).  Every task is routed to the
side that must run it, every task and group UUID carries the prefix, and every run is checked
on the side that ran it (Go's ``task`` lines, the Python app's record):

* ``echo/py->go/<T>``: Python sends ``echo_<T>`` to the Go worker, reads the result;
* ``echo/go->py/<T>``: Go's ``SendTask`` to the Python worker, Go's ``AsyncResult`` reads it;
* ``mixed-pool``: 12 ``sleep`` tasks (half sent by each side) on one queue served by both
  workers: every one ran exactly once, each worker ran some;
* ``retry/go-worker`` (Go's counter needs a Redis: skipped without one) and
  ``retry/py-worker``: ``fail_n_times(key, 1)`` with RetryCount 3 succeeds on the 2nd run;
* ``eta/py->go``, ``eta/go->py``: a task with an ETA 1.5 s ahead does not run before it;
* ``chain/py-producer``, ``group/py-producer``, ``chord/py-producer``, ``chain/go-producer``,
  ``chord/go-producer``: workflows whose steps alternate between the Go and the Python worker.
"""

from __future__ import annotations

import base64
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ..app import Machinery
from ..protocol import Arg, Signature
from .probes import GoSettings, GoWorker, run_producer
from .pyside import ECHO_TYPES, Runs

ETA_AHEAD = 1.5
#: Allowed early start: AMQP delays are whole milliseconds measured at publish time.
EARLY = 0.005

#: A value per type that exercises its range (JSON-exact; floats exact in float32 where needed).
ECHO_VALUES: dict[str, Any] = {
    "bool": True, "int": -7, "int8": -128, "int16": 32767, "int32": -2147483648,
    "int64": 9007199254740993, "uint": 42, "uint8": 255, "uint16": 65535,
    "uint32": 4294967295, "uint64": 18446744073709551615, "float32": 1.5,
    "float64": 0.1, "string": 'héllo "wörld" <&>\n',
    "[]bool": [True, False], "[]int": [1, -2], "[]int8": [-1, 127], "[]int16": [-32768, 5],
    "[]int32": [7, -8], "[]int64": [1, -9007199254740993], "[]uint": [0, 7],
    "[]uint8": b"\x00\x01\xff", "[]uint16": [65535, 0], "[]uint32": [1, 4294967295],
    "[]uint64": [0, 18446744073709551615], "[]float32": [0.5, -2.25], "[]float64": [0.1, -1e300],
    "[]byte": b"\x00hi\xff", "[]string": ["a", "", "ü"],
}  # fmt: skip


@dataclass(slots=True)
class CheckResult:
    name: str
    status: str  # "pass" | "fail" | "skip"
    detail: str = ""
    seconds: float = 0.0


class CheckFailed(Exception):
    """A check's expectation not met (the message says what was seen)."""


class SkipCheck(Exception):
    """A check that cannot mean anything on this setup (the message says why)."""


@dataclass
class Context:
    """One run: the names, both apps, the Go probes and what was created."""

    prefix: str
    go: GoSettings
    app: Machinery  # Python producer and the Python worker's app (queue ``py``)
    mix_app: Machinery  # the Python worker of the mixed pool (queue ``mix``)
    runs: Runs
    go_worker: GoWorker
    start_mix_worker: Callable[[], GoWorker]
    counters_ok: bool
    timeout: float = 30.0  # seconds to wait for any one result
    uuids: list[str] = field(default_factory=list)  # every task/group UUID made
    #: time.time() by which every delay queue the run made has expired (AMQP: x-expires = 2 x
    #: the delay, counted from the last publish into it, which is before this is set)
    delay_queues_gone: float = 0.0
    _n: int = 0

    def delayed(self) -> None:
        """Note that a delayed publish (ETA, retry: at most ETA_AHEAD) happened by now."""
        self.delay_queues_gone = max(self.delay_queues_gone, time.time() + 2 * ETA_AHEAD + 0.5)

    def q(self, role: str) -> str:
        return f"{self.prefix}.{role}"

    def uuid(self, kind: str = "task") -> str:
        self._n += 1
        u = f"{kind}_{self.prefix}-{self._n:04d}"
        self.uuids.append(u)
        return u

    def sig(self, name: str, args: list[Arg], role: str, **options: Any) -> Signature:
        return self.app.build_signature(name, args, queue=self.q(role),
                                        task_id=self.uuid(), **options)

    def producer(self, lines: list[dict[str, Any]]) -> dict[Any, dict[str, Any]]:
        return run_producer(self.go, self.q("py"), lines, timeout=self.timeout + 30)


Check = tuple[str, Callable[[Context], str]]


def i64(*values: int) -> list[Arg]:
    return [Arg("int64", v) for v in values]


def _line_arg(go_type: str, value: Any) -> dict[str, Any]:
    if isinstance(value, bytes):
        value = base64.b64encode(value).decode()
    return {"type": go_type, "value": value}


def _same(got: Any, want: Any) -> bool:
    if isinstance(want, float):
        return isinstance(got, (int, float)) and (got == want or math.isclose(got, want))
    if isinstance(want, bytes) and isinstance(got, (list, tuple)):
        return bytes(got) == want
    if isinstance(want, list) and isinstance(got, (list, tuple)):
        return len(got) == len(want) and all(_same(g, w) for g, w in zip(got, want, strict=True))
    return type(got) is type(want) and bool(got == want)


def _go_ran(ctx: Context, uuid: str, worker: GoWorker | None = None, *,
            n: int = 1) -> list[dict[str, Any]]:
    """The Go worker's runs of ``uuid``, waiting (briefly) for ``n`` of them."""
    return (worker or ctx.go_worker).wait_runs(uuid, n)


def _expect(cond: bool, message: str) -> None:
    if not cond:
        raise CheckFailed(message)


def _go_result(out: dict[str, Any], want: list[Any]) -> None:
    """An awaited mcproducer line read ``want`` (values as JSON)."""
    _expect(out.get("sent") is True, f"Go could not send: {out.get('error')}")
    values = [r.get("value") for r in out.get("results") or []]
    _expect(out.get("state") == "SUCCESS" and values == want,
            f"Go read state {out.get('state')!r} results {values} error {out.get('error')!r}, "
            f"want SUCCESS {want}")


# -- echo -----------------------------------------------------------------------------------
def echo_py_to_go(go_type: str) -> Callable[[Context], str]:
    def check(ctx: Context) -> str:
        want = ECHO_VALUES[go_type]
        sig = ctx.sig(f"echo_{go_type}", [Arg(go_type, want)], "go")
        got = ctx.app.send_signature(sig).get(timeout=ctx.timeout)
        _expect(_same(got, want), f"read back {got!r}, sent {want!r}")
        _expect(len(_go_ran(ctx, sig.uuid)) == 1, "not run by the Go worker exactly once")
        return ""
    return check


def echo_go_to_py(ctx: Context, go_type: str, out: dict[str, Any]) -> str:
    want = ECHO_VALUES[go_type]
    wire = _line_arg(go_type, want)["value"]
    _go_result(out, [wire])
    want_type = "[]uint8" if go_type == "[]byte" else go_type
    got_type = out["results"][0].get("go_type")
    _expect(got_type == want_type, f"Go reflected the result as {got_type}, want {want_type}")
    _expect(len(ctx.runs.of(out["uuid"])) == 1, "not run by the Python worker exactly once")
    return ""


def echo_checks() -> Iterator[Check]:
    for t in ECHO_TYPES:
        yield f"echo/py->go/{t}", echo_py_to_go(t)


def go_to_py_echo_lines(ctx: Context, types: Sequence[str]) -> list[dict[str, Any]]:
    return [{"id": t, "name": f"echo_{t}", "uuid": ctx.uuid(), "routing_key": ctx.q("py"),
             "args": [_line_arg(t, ECHO_VALUES[t])], "timeout_ms": int(ctx.timeout * 1000)}
            for t in types]


# -- mixed pool, retries, ETA ------------------------------------------------------------
def mixed_pool(ctx: Context) -> str:
    worker = ctx.start_mix_worker()
    py_worker = ctx.mix_app.worker(concurrency=2, queue=ctx.q("mix"), crash_safe=False).start()
    try:
        uuids = []
        for _ in range(6):
            sig = ctx.mix_app.build_signature("sleep", i64(150), task_id=ctx.uuid())
            ctx.mix_app.send_signature(sig)
            uuids.append(sig.uuid)
        lines: list[dict[str, Any]] = [{"id": i, "name": "sleep", "uuid": ctx.uuid(), "routing_key": ctx.q("mix"),
                  "args": [{"type": "int64", "value": 150}], "wait": False} for i in range(6)]
        out = run_producer(ctx.go, ctx.q("mix"), lines, timeout=ctx.timeout)
        _expect(all(o.get("sent") for o in out.values()), f"Go could not send: {out}")
        uuids += [str(line["uuid"]) for line in lines]
        for u in uuids:
            got = ctx.mix_app.AsyncResult(u).get(timeout=ctx.timeout)
            _expect(got == 150, f"{u} returned {got!r}")
        py_runs = {u: len(ctx.runs.of(u)) for u in uuids}
        go_runs = {u: len(worker.wait_runs(u, 1, timeout=0 if py_runs[u] else 3))
                   for u in uuids}
        twice = [u for u in uuids if go_runs[u] + py_runs[u] != 1]
        _expect(not twice, f"ran {len(twice)} task(s) other than once: {twice}")
        n_go = sum(go_runs.values())
        _expect(0 < n_go < len(uuids), f"the Go worker ran {n_go} of {len(uuids)}: "
                                       "both workers should take some")
        return f"Go ran {n_go}, Python {len(uuids) - n_go}"
    finally:
        py_worker.stop(timeout=20)
        worker.stop()


def _makes_delays(fn: Callable[[Context], str]) -> Callable[[Context], str]:
    """A check that publishes with a delay (ETA, retry): noted for the AMQP cleanup."""
    def check(ctx: Context) -> str:
        try:
            return fn(ctx)
        finally:
            ctx.delayed()
    return check


@_makes_delays
def retry_go_worker(ctx: Context) -> str:
    if not ctx.counters_ok:
        raise SkipCheck("the Go probe counts attempts in a Redis: give a Redis broker or backend")
    sig = ctx.sig("fail_n_times", [Arg("string", ctx.uuid("key")), Arg("int64", 1)], "go",
                  retry_count=3)
    got = ctx.app.send_signature(sig).get(timeout=ctx.timeout)
    _expect(got == 2, f"returned {got!r}, want 2 (the 2nd attempt)")
    attempts = _go_ran(ctx, sig.uuid, n=2)
    _expect(len(attempts) == 2, f"the Go worker ran it {len(attempts)} times, want 2")
    return ""


@_makes_delays
def retry_py_worker(ctx: Context) -> str:
    line: dict[str, Any] = {"id": 1, "name": "fail_n_times", "uuid": ctx.uuid(), "routing_key": ctx.q("py"),
            "args": [{"type": "string", "value": ctx.uuid("key")}, {"type": "int64", "value": 1}],
            "retry_count": 3, "timeout_ms": int(ctx.timeout * 1000)}
    out = ctx.producer([line])[1]
    _go_result(out, [2])
    n = len(ctx.runs.of(line["uuid"]))
    _expect(n == 2, f"the Python worker ran it {n} times, want 2")
    return ""


def _eta() -> datetime:
    return datetime.now(UTC) + timedelta(seconds=ETA_AHEAD)


@_makes_delays
def eta_py_to_go(ctx: Context) -> str:
    eta = _eta()
    sig = ctx.sig("add", i64(1, 2), "go", eta=eta)
    got = ctx.app.send_signature(sig).get(timeout=ctx.timeout)
    _expect(got == 3, f"returned {got!r}")
    runs = _go_ran(ctx, sig.uuid)
    _expect(len(runs) == 1, f"the Go worker ran it {len(runs)} times")
    started = datetime.fromisoformat(str(runs[0]["ts"]).replace("Z", "+00:00"))
    early = (eta - started).total_seconds()
    _expect(early <= EARLY, f"started {early:.3f}s before its ETA")
    return f"started {-early:.3f}s after its ETA"


@_makes_delays
def eta_go_to_py(ctx: Context) -> str:
    eta = _eta()
    line: dict[str, Any] = {"id": 1, "name": "add", "uuid": ctx.uuid(), "routing_key": ctx.q("py"),
            "args": [{"type": "int64", "value": 1}, {"type": "int64", "value": 2}],
            "eta": eta.isoformat().replace("+00:00", "Z"), "timeout_ms": int(ctx.timeout * 1000)}
    out = ctx.producer([line])[1]
    _go_result(out, [3])
    runs = ctx.runs.of(line["uuid"])
    _expect(len(runs) == 1, f"the Python worker ran it {len(runs)} times")
    early = eta.timestamp() - runs[0].at
    _expect(early <= EARLY, f"started {early:.3f}s before its ETA")
    return f"started {-early:.3f}s after its ETA"


# -- workflows -----------------------------------------------------------------------------
def _ran_on(ctx: Context, uuids_roles: list[tuple[str, str]]) -> None:
    for uuid, role in uuids_roles:
        want = (1, 0) if role == "go" else (0, 1)
        n_go = len(ctx.go_worker.wait_runs(uuid, 1, timeout=3 if role == "go" else 0))
        n_py = len(ctx.runs.of(uuid))
        _expect((n_go, n_py) == want, f"{uuid} ran {n_go}x on Go and {n_py}x on Python, "
                                      f"want once on {role}")


def chain_py_producer(ctx: Context) -> str:
    s1 = ctx.sig("add", i64(1, 2), "go")
    s2 = ctx.sig("multiply", i64(4), "py")
    s3 = ctx.sig("add", i64(10), "go")
    s2.on_success = [s3]
    s1.on_success = [s2]
    ctx.app.send_signature(s1)
    got = ctx.app.AsyncResult(s3.uuid).get(timeout=ctx.timeout)
    _expect(got == 22, f"(1+2)*4+10 returned {got!r}")
    _ran_on(ctx, [(s1.uuid, "go"), (s2.uuid, "py"), (s3.uuid, "go")])
    return ""


def _group(ctx: Context, members: list[Signature]) -> str:
    gid = ctx.uuid("group")
    for m in members:
        m.group_uuid, m.group_task_count = gid, len(members)
    return gid


def group_py_producer(ctx: Context) -> str:
    roles = ["go", "py", "go"]
    members = [ctx.sig("add", i64(n, n), role) for n, role in zip((1, 2, 3), roles, strict=True)]
    _group(ctx, members)
    got = ctx.app.send_group(members).get(timeout=ctx.timeout)
    _expect(got == [2, 4, 6], f"returned {got!r}")
    _ran_on(ctx, [(m.uuid, r) for m, r in zip(members, roles, strict=True)])
    return ""


def chord_py_producer(ctx: Context) -> str:
    members = [ctx.sig("add", i64(1, 1), "go"), ctx.sig("add", i64(2, 2), "py"),
               ctx.sig("add", i64(3, 3), "py")]
    callback = ctx.sig("multiply", i64(10), "go")
    _group(ctx, members)
    for m in members:
        m.chord_callback = callback
    ctx.app.send_group(members)
    got = ctx.app.AsyncResult(callback.uuid).get(timeout=ctx.timeout)
    _expect(got == 10 * 2 * 4 * 6, f"multiply(10, 2, 4, 6) returned {got!r}")
    _ran_on(ctx, [(members[0].uuid, "go"), (members[1].uuid, "py"), (members[2].uuid, "py"),
                  (callback.uuid, "go")])
    return ""


def _task(ctx: Context, name: str, args: list[int], role: str, **more: Any) -> dict[str, Any]:
    return {"name": name, "uuid": ctx.uuid(), "routing_key": ctx.q(role),
            "args": [{"type": "int64", "value": a} for a in args], **more}


def chain_go_producer(ctx: Context) -> str:
    s3 = _task(ctx, "add", [10], "py")
    s2 = _task(ctx, "multiply", [4], "go", on_success=[s3])
    s1 = _task(ctx, "add", [1, 2], "py", on_success=[s2], id=1, wait=False)
    out = ctx.producer([s1])[1]
    _expect(out.get("sent") is True, f"Go could not send: {out.get('error')}")
    got = ctx.app.AsyncResult(s3["uuid"]).get(timeout=ctx.timeout)
    _expect(got == 22, f"(1+2)*4+10 returned {got!r}")
    _ran_on(ctx, [(s1["uuid"], "py"), (s2["uuid"], "go"), (s3["uuid"], "py")])
    return ""


def chord_go_producer(ctx: Context) -> str:
    """Go's SendChord = InitGroup, a PENDING state per member, then SendTask per member: the
    probe has SendTask only, so the first two steps are done here through the backend (as
    Go's SendGroup does them) and Go publishes the members."""
    callback = _task(ctx, "add", [100], "py")
    gid = ctx.uuid("group")
    members = [_task(ctx, "add", [a, a], role, id=i, group_uuid=gid, group_task_count=3,
                     chord_callback=callback, wait=False)
               for i, (a, role) in enumerate(((1, "go"), (2, "py"), (3, "go")))]
    backend = ctx.app.backend
    backend.init_group(gid, [m["uuid"] for m in members])
    for m in members:
        backend.set_state_pending(ctx.app.build_signature("add", task_id=m["uuid"]))
    out = ctx.producer(members)
    _expect(all(o.get("sent") for o in out.values()), f"Go could not send: {out}")
    got = ctx.app.AsyncResult(callback["uuid"]).get(timeout=ctx.timeout)
    _expect(got == 112, f"add(100, 2, 4, 6) returned {got!r}")
    _ran_on(ctx, [(members[0]["uuid"], "go"), (members[1]["uuid"], "py"),
                  (members[2]["uuid"], "go"), (callback["uuid"], "py")])
    return ""


def other_checks() -> list[Check]:
    return [
        ("mixed-pool", mixed_pool),
        ("retry/go-worker", retry_go_worker),
        ("retry/py-worker", retry_py_worker),
        ("eta/py->go", eta_py_to_go),
        ("eta/go->py", eta_go_to_py),
        ("chain/py-producer", chain_py_producer),
        ("group/py-producer", group_py_producer),
        ("chord/py-producer", chord_py_producer),
        ("chain/go-producer", chain_go_producer),
        ("chord/go-producer", chord_go_producer),
    ]


def run_check(ctx: Context, name: str, fn: Callable[[Context], str]) -> CheckResult:
    t0 = time.monotonic()
    try:
        detail = fn(ctx)
        status = "pass"
    except SkipCheck as e:
        status, detail = "skip", str(e)
    except Exception as e:  # a check's failure, whatever raised it, is reported, not fatal
        status, detail = "fail", f"{type(e).__name__}: {e}" if not isinstance(
            e, CheckFailed) else str(e)
    return CheckResult(name, status, detail, round(time.monotonic() - t0, 3))

