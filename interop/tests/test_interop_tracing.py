"""Trace context across Python and Go: a traced Python app (machinery_compat.tracing, the
OpenTelemetry SDK's in-memory exporter) and the Go Machinery v2 worker ``interop/cmd/mctrace``,
which logs the span context it extracts from ``Signature.Headers`` and the spans it makes, on
one Redis.  Two Go tracers, each with the Python propagator that speaks its format:

* the OpenTelemetry bridge (W3C ``traceparent``): Machinery starts the worker's task span with
  a FollowsFrom reference, which the bridge turns into a *link*, so the Go side starts a new
  trace linked to the Python producer's;
* jaeger-client-go (``uber-trace-id``, Machinery's own example; Python:
  opentelemetry-propagator-jaeger): FollowsFrom is a parent, so Python producer → Go worker
  → Python task is one trace.

With either, a task that sends with ``SendTaskWithContext(ctx, …)`` continues its trace, and
the callbacks Machinery's worker sends use ``context.Background()`` (a new trace each).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from interop.tests.harness import BIN, INTEROP
from machinery_compat import Machinery
from tests.helpers import wait_for
from tests.services import in_ci

otel_sdk = pytest.importorskip("opentelemetry.sdk.trace", reason="needs machinery-compat[otel]")
from opentelemetry.propagators.textmap import TextMapPropagator  # noqa: E402
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind  # noqa: E402
from opentelemetry.trace.propagation.tracecontext import (  # noqa: E402
    TraceContextTextMapPropagator,
)

from machinery_compat.tracing import instrument  # noqa: E402

pytestmark = [pytest.mark.interop, pytest.mark.redis, pytest.mark.slow]

SRC = INTEROP / "cmd" / "mctrace"


@pytest.fixture(scope="session")
def mctrace_bin() -> Path:
    """``interop/bin/mctrace``, built from its own module (``go build``, cached by Go)."""
    out = BIN / "mctrace"
    reason = ""
    if shutil.which("go") is None:
        reason = "go not found in PATH"
    else:
        proc = subprocess.run(["go", "build", "-o", str(out), "."], cwd=SRC,
                              capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            reason = f"go build of {SRC} failed:\n{proc.stderr[-3000:]}"
    if reason:
        if in_ci():
            pytest.fail(f"{reason}\n(CI=true: mctrace must build)")
        pytest.skip(reason)
    return out


class GoTracer:
    """A running mctrace and the JSON events it printed."""

    def __init__(self, binary: Path, broker: str, queue: str, log: Path,
                 tracer: str = "otel") -> None:
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stderr = log.open("wb")
        self.proc = subprocess.Popen([str(binary), "-broker", broker, "-queue", queue,
                                      "-tracer", tracer],
                                     stdout=subprocess.PIPE, stderr=self._stderr, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.log = log
        wait_for(lambda: self.find("ready") is not None or self.proc.poll() is not None,
                 timeout=60, what="mctrace ready")
        assert self.proc.poll() is None, log.read_text()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            with self._lock:
                self.events.append(ev)

    def find(self, event: str, **match: Any) -> dict[str, Any] | None:
        with self._lock:
            for ev in self.events:
                if ev.get("event") == event and all(ev.get(k) == v for k, v in match.items()):
                    return ev
        return None

    def wait(self, event: str, **match: Any) -> dict[str, Any]:
        wait_for(lambda: self.find(event, **match) is not None, timeout=30,
                 what=f"mctrace {event} {match}")
        found = self.find(event, **match)
        assert found is not None
        return found

    def spans(self, name: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if e.get("event") == "span" and e.get("name") == name]

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


Traced = tuple[Machinery, InMemorySpanExporter, "GoTracer"]


@pytest.fixture
def traced(request: pytest.FixtureRequest, mctrace_bin: Path, new_db: Callable[[], str],
           tmp_path: Path) -> Iterator[Traced]:
    """A traced app and a running mctrace; ``tracer`` (indirect parameter): ``otel`` (W3C,
    the default) or ``jaeger``."""
    tracer = getattr(request, "param", "otel")
    propagator: TextMapPropagator
    if tracer == "jaeger":
        jaeger = pytest.importorskip("opentelemetry.propagators.jaeger",
                                     reason="needs opentelemetry-propagator-jaeger")
        propagator = jaeger.JaegerPropagator()
    else:
        propagator = TraceContextTextMapPropagator()
    url = new_db()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = Machinery(broker=url, result_backend=url, default_queue="trace_py")
    instrument(app, tracer_provider=provider, propagator=propagator)
    go = GoTracer(mctrace_bin, url, "trace_go", tmp_path / "mctrace.stderr", tracer)
    try:
        yield app, exporter, go
    finally:
        go.close()
        app.close()
        provider.shutdown()


def _hex(span: ReadableSpan) -> tuple[str, str]:
    ctx = span.get_span_context()
    assert ctx is not None
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"


def _span(exporter: InMemorySpanExporter, name: str, **attrs: Any) -> ReadableSpan | None:
    for s in exporter.get_finished_spans():
        if s.name == name and all((s.attributes or {}).get(k) == v for k, v in attrs.items()):
            return s
    return None


def _wait_span(exporter: InMemorySpanExporter, name: str, **attrs: Any) -> ReadableSpan:
    wait_for(lambda: _span(exporter, name, **attrs) is not None, timeout=30,
             what=f"Python span {name} {attrs}")
    found = _span(exporter, name, **attrs)
    assert found is not None
    return found


def test_python_producer_go_worker_python_task(
        traced: Traced) -> None:
    """Python SendTask → the Go worker extracts exactly that span context → the Go task sends
    a Python task with SendTaskWithContext → the Python worker's span is a child of Go's
    SendTask span, in the Go task's trace."""
    app, exporter, go = traced

    @app.task(name="py_after")
    def py_after() -> str:
        return "python"

    worker = app.worker(concurrency=2, queue="trace_py", poll_timeout=0.2).start()
    try:
        result = app.send_task("go_relay", args=["py_after", "trace_py"], queue="trace_go")
        assert result.get(timeout=30) == "relayed"
        consumer = _wait_span(exporter, "py_after")
    finally:
        worker.stop(timeout=30)

    producer = _wait_span(exporter, "SendTask", **{"signature.uuid": result.id})
    assert producer.kind is SpanKind.PRODUCER
    p_trace, p_span = _hex(producer)

    # 1. Go read exactly what Python wrote, through Machinery's opentracing global tracer
    pre = go.wait("pre_task", uuid=result.id)
    assert pre.get("extract_error") is None, pre
    assert pre["extracted"] == {"trace_id": p_trace, "span_id": p_span}
    # flags 01 (sampled), or 03 with the W3C level-2 random-trace-id bit that OpenTelemetry
    # Python sets (Go's otel propagator refused flags > 2 before it knew that bit: v1.36 did)
    assert pre["headers"]["traceparent"] in (f"00-{p_trace}-{p_span}-01",
                                             f"00-{p_trace}-{p_span}-03")
    assert all(isinstance(v, str) for v in pre["headers"].values())

    # 2. Machinery's FollowsFrom: with the OpenTelemetry bridge, a link to our producer span
    task_span = go.wait("task_span", uuid=result.id)
    assert task_span["links"] == [{"trace_id": p_trace, "span_id": p_span, "remote": True}]
    assert task_span["parent"] is None

    # 3. the Go task's SendTaskWithContext span is a child of its task span
    go_send = next(s for s in go.spans("SendTask")
                   if (s["parent"] or {}).get("span_id") == task_span["span_id"])
    assert go_send["kind"] == "producer"
    assert go_send["trace_id"] == task_span["trace_id"]

    # 4. and the Python worker continues that trace, as a child of Go's SendTask span
    c_trace, _ = _hex(consumer)
    assert consumer.kind is SpanKind.CONSUMER
    assert consumer.parent is not None and consumer.parent.is_remote
    assert f"{consumer.parent.span_id:016x}" == go_send["span_id"]
    assert c_trace == go_send["trace_id"] == task_span["trace_id"]


def test_go_worker_onsuccess_callback_starts_a_new_trace(
        traced: Traced) -> None:
    """A Python producer writes its context into the callback's headers too; Machinery's Go
    worker sends the OnSuccess callback with SendTask (context.Background()): a new root
    SendTask span overwrites it, and the Python worker follows that one."""
    app, exporter, go = traced

    @app.task(name="py_total")
    def py_total(total: int) -> int:
        return total * 10

    worker = app.worker(concurrency=2, queue="trace_py", poll_timeout=0.2).start()
    try:
        cb = py_total.s().set(queue="trace_py")
        result = app.send_task("go_add", args=[1, 2], queue="trace_go", link=cb)
        assert result.get(timeout=30) == 3
        consumer = _wait_span(exporter, "py_total")
    finally:
        worker.stop(timeout=30)
    producer = _wait_span(exporter, "SendTask", **{"signature.uuid": result.id})
    p_trace, p_span = _hex(producer)
    assert go.wait("pre_task", uuid=result.id)["extracted"] == {"trace_id": p_trace,
                                                                 "span_id": p_span}
    cb_id = consumer.attributes["signature.uuid"] if consumer.attributes else None
    wait_for(lambda: any(s["parent"] is None for s in go.spans("SendTask")), timeout=30,
             what="Go's root SendTask span for the callback")
    roots = [s for s in go.spans("SendTask") if s["parent"] is None]
    assert consumer.parent is not None
    go_root = next(s for s in roots if s["span_id"] == f"{consumer.parent.span_id:016x}")
    assert go_root["trace_id"] != p_trace  # Go's doing: the chain of traces breaks here
    assert _hex(consumer)[0] == go_root["trace_id"]
    assert cb_id  # the callback ran on the Python worker, in Go's new trace


@pytest.mark.parametrize("traced", ["jaeger"], indirect=True)
def test_jaeger_python_producer_go_worker_python_task_one_trace(traced: Traced) -> None:
    """With jaeger-client-go on the Go side (uber-trace-id in the headers), Machinery's
    FollowsFrom keeps the trace: Python SendTask → Go task span → Go SendTask → Python task
    span are parent and child, all in the producer's trace."""
    app, exporter, go = traced

    @app.task(name="py_after")
    def py_after() -> str:
        return "python"

    worker = app.worker(concurrency=2, queue="trace_py", poll_timeout=0.2).start()
    try:
        result = app.send_task("go_relay", args=["py_after", "trace_py"], queue="trace_go")
        assert result.get(timeout=30) == "relayed"
        consumer = _wait_span(exporter, "py_after")
    finally:
        worker.stop(timeout=30)
    producer = _wait_span(exporter, "SendTask", **{"signature.uuid": result.id})
    p_trace, p_span = _hex(producer)

    pre = go.wait("pre_task", uuid=result.id)
    assert pre.get("extract_error") is None, pre
    assert pre["extracted"] == {"trace_id": p_trace, "span_id": p_span}
    assert pre["headers"]["uber-trace-id"].startswith(f"{p_trace}:{p_span}:")
    assert all(isinstance(v, str) for v in pre["headers"].values())

    task_span = go.wait("task_span", uuid=result.id)
    assert task_span["trace_id"] == p_trace
    assert task_span["parent"] == {"trace_id": p_trace, "span_id": p_span}
    assert [r["type"] for r in task_span["references"]] == [1]  # opentracing FollowsFrom

    go_send = next(s for s in go.spans("SendTask")
                   if (s["parent"] or {}).get("span_id") == task_span["span_id"])
    assert go_send["trace_id"] == p_trace and go_send["kind"] == "producer"

    c_trace, _ = _hex(consumer)
    assert consumer.parent is not None
    assert f"{consumer.parent.span_id:016x}" == go_send["span_id"]
    assert c_trace == p_trace  # one trace: Python → Go → Python
