"""machinery_compat.tracing with Python producers and workers only (the Go side is in
interop/tests/test_interop_tracing.py), on every broker and backend."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest.importorskip("opentelemetry.sdk.trace", reason="needs machinery-compat[otel]")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import (
    TraceContextTextMapPropagator,
)

from machinery_compat import Machinery, group
from machinery_compat.tracing import HeadersGetter, instrument, uninstrument

from .conftest import Probe, StartWorker, wait_for


@pytest.fixture
def exporter(app: Machinery) -> Iterator[InMemorySpanExporter]:
    exp = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exp))
    instrument(app, tracer_provider=provider, propagator=TraceContextTextMapPropagator())
    yield exp
    uninstrument(app)
    provider.shutdown()


def _one(exp: InMemorySpanExporter, name: str, uuid: str | None = None) -> ReadableSpan:
    spans = [s for s in exp.get_finished_spans() if s.name == name and (
        uuid is None or (s.attributes or {}).get("signature.uuid") == uuid)]
    assert len(spans) == 1, [s.name for s in exp.get_finished_spans()]
    return spans[0]


def test_chain_run_by_python_workers_is_one_trace(app: Machinery, start_worker: StartWorker,
                                                  exporter: InMemorySpanExporter) -> None:
    @app.task(name="first")
    def first(x: int) -> int:
        return x + 1

    @app.task(name="second")
    def second(x: int) -> int:
        return x * 10

    start_worker()
    res = (first.s(1) | second.s()).apply_async()
    assert res.get(timeout=20) == 20
    wait_for(lambda: any(s.name == "second" for s in exporter.get_finished_spans()),
             what="second's span")
    chain = _one(exporter, "SendChain")
    send_first = _one(exporter, "SendTask", res.results[0].id)
    run_first = _one(exporter, "first")
    send_second = _one(exporter, "SendTask", res.results[1].id)
    run_second = _one(exporter, "second")
    assert chain.kind is SpanKind.PRODUCER and run_first.kind is SpanKind.CONSUMER
    trace_ids = {s.context.trace_id for s in (chain, send_first, run_first, send_second,
                                              run_second) if s.context is not None}
    assert len(trace_ids) == 1
    # producer → its worker → the callback it sent → the callback's worker
    assert send_first.parent is not None and chain.context is not None
    assert send_first.parent.span_id == chain.context.span_id
    assert run_first.parent is not None and send_first.context is not None
    assert run_first.parent.span_id == send_first.context.span_id and run_first.parent.is_remote
    assert send_second.parent is not None and run_first.context is not None
    assert send_second.parent.span_id == run_first.context.span_id
    assert run_second.parent is not None and send_second.context is not None
    assert run_second.parent.span_id == send_second.context.span_id
    attrs = run_first.attributes or {}
    assert attrs["component"] == "machinery" and attrs["signature.name"] == "first"
    assert attrs["machinery.state"] == "SUCCESS"


def test_context_in_headers_as_strings_nested_callbacks_too(
        app: Machinery, probe: Probe, exporter: InMemorySpanExporter) -> None:
    cb = app.signature("cb")
    app.send_task("go_task", args=[1], headers={"mine": "kept"}, link=cb)
    group(app.signature("m"), app.signature("m")).apply_async()
    msgs = probe.pending("machinery_tasks")
    sent = next(m for m in msgs if m.name == "go_task")
    assert sent.headers is not None and sent.headers["mine"] == "kept"
    send = _one(exporter, "SendTask")
    assert send.context is not None
    tp = f"{send.context.trace_id:032x}-{send.context.span_id:016x}"
    assert tp in sent.headers["traceparent"]
    assert all(isinstance(v, str) for v in sent.headers.values())
    assert sent.on_success is not None and sent.on_success[0].headers is not None
    assert tp in sent.on_success[0].headers["traceparent"]  # survives a no-op-tracer Go worker
    grp = _one(exporter, "SendGroup")
    assert grp.context is not None
    for m in (m for m in msgs if m.name == "m"):
        assert m.headers is not None
        assert f"{grp.context.span_id:016x}" in m.headers["traceparent"]


def test_failure_marks_the_span(app: Machinery, start_worker: StartWorker,
                                exporter: InMemorySpanExporter) -> None:
    @app.task(name="bad")
    def bad() -> None:
        raise KeyError("k")

    start_worker()
    r = bad.delay()
    wait_for(lambda: r.state == "FAILURE", timeout=20, what="FAILURE")
    wait_for(lambda: any(s.name == "bad" for s in exporter.get_finished_spans()), what="span")
    span = _one(exporter, "bad")
    assert span.status.status_code is StatusCode.ERROR
    assert (span.attributes or {})["machinery.state"] == "FAILURE"
    assert [e.name for e in span.events] == ["exception"]


def test_headers_getter_reads_strings_only() -> None:
    g = HeadersGetter()
    carrier = {"traceparent": "00-x", "Other": "v", "n": 3}
    assert g.get(carrier, "traceparent") == ["00-x"]
    assert g.get(carrier, "other") == ["v"]
    assert g.get(carrier, "n") is None
    assert g.keys(carrier) == ["traceparent", "Other"]


def test_sampled_flag_only_for_old_go_propagators(app: Machinery, probe: Probe,
                                                  exporter: InMemorySpanExporter) -> None:
    assert app.tracing is not None
    app.tracing.sampled_flag_only = True
    app.send_task("go_task", link=app.signature("cb"))
    sent = probe.pending("machinery_tasks")[0]
    assert sent.headers is not None and sent.headers["traceparent"].endswith("-01")
    assert sent.on_success is not None and sent.on_success[0].headers is not None
    assert sent.on_success[0].headers["traceparent"].endswith("-01")
