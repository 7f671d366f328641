"""OpenTelemetry spans for sending and running tasks, with the trace context in the message.

Needs the ``otel`` extra (``pip install machinery-compat[otel]``: opentelemetry-api and -sdk).

.. code-block:: python

    from machinery_compat.tracing import instrument

    instrument(app)       # the global TracerProvider and propagator, or pass your own

Then every message this app publishes gets a PRODUCER span (``SendTask``; ``SendGroup``,
``SendChord`` or ``SendChain`` around a workflow, as Go names them) whose context is written
into the Signature's ``Headers``, and a Python worker of this app runs every task inside a
CONSUMER span named after the task, whose parent is the context found in ``Headers``
(a new trace when there is none).  Callbacks, chord callbacks and retries the worker sends
are published inside that span, so a workflow run by Python workers is one trace.

Wire format.  Go Machinery (``v2/tracing``) injects the span of ``SendTask`` into
``Signature.Headers`` with ``opentracing.GlobalTracer().Inject(…, TextMap, headers)`` and the
worker extracts it from there: the keys and values are whatever the Go program's tracer
writes.  This module reads and writes ``Headers`` through an OpenTelemetry text-map
propagator, the global one unless you pass ``propagator=`` (``OTEL_PROPAGATORS``; W3C
``traceparent``/``tracestate`` and ``baggage`` by default), so pick the one the Go side uses:

* Go with the OpenTelemetry bridge (``go.opentelemetry.io/otel/bridge/opentracing``,
  ``opentracing.SetGlobalTracer(bridgeTracer)`` and ``otel.SetTextMapPropagator(
  propagation.TraceContext{})``): the default W3C propagator here.  Tested against a Go
  worker with otel v1.47.0.  OpenTelemetry Python writes the trace flags ``03`` (sampled +
  the W3C level-2 "random trace id" bit); Go's otel propagator refused flags above ``02``
  before it knew that bit (v1.36.0 does: the Go worker then silently starts a new trace):
  ``instrument(app, sampled_flag_only=True)`` writes ``01`` instead.
* Go with jaeger-client-go (Machinery's example): ``uber-trace-id``; install
  ``opentelemetry-propagator-jaeger`` and set ``OTEL_PROPAGATORS=jaeger`` (or pass
  ``propagator=JaegerPropagator()``).  Tested against a Go worker (jaeger-client-go v2.30.0).
* Go with the default no-op tracer: nothing is written or read on the Go side; the headers a
  Python producer wrote travel unchanged through a Go worker's callbacks.

Every value written is a string (Go's AMQP re-publish refuses anything else) and values that
are not strings are skipped when reading, as Go's ``Headers.ForeachKey`` does.

What Go does with the context, which this module cannot change: Machinery's worker starts
its task span with a *FollowsFrom* reference to the producer; Jaeger puts that span in the
producer's trace, the OpenTelemetry bridge makes it the root of a new trace with a *link* to
the producer.  The callbacks, chord callbacks and retries a Go worker sends go through
``server.SendTask``, i.e. ``context.Background()``: each starts a new trace (its headers carry
that new ``SendTask`` span), whatever the tracer.  A Go task that takes a
``context.Context`` and sends its follow-up with ``SendTaskWithContext(ctx, …)`` keeps the
trace going.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.propagators.textmap import Getter, Setter, TextMapPropagator
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "machinery_compat.tracing needs OpenTelemetry: pip install 'machinery-compat[otel]'"
    ) from e

if TYPE_CHECKING:
    from .app import Machinery
    from .protocol import Signature

__all__ = ["HeadersGetter", "HeadersSetter", "Tracing", "instrument", "uninstrument"]

#: Go's ``tracing.MachineryTag``: ``component=machinery`` on every span.
COMPONENT = "machinery"
_MAX_DEPTH = 64


class HeadersGetter(Getter[Mapping[str, Any]]):
    """Reads a Signature's ``Headers``: string values only (Go skips the others too); a key
    is matched exactly, else case-insensitively."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = carrier.get(key)
        if value is None:
            lower = key.lower()
            value = next((v for k, v in carrier.items() if k.lower() == lower), None)
        return [value] if isinstance(value, str) else None

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return [k for k, v in carrier.items() if isinstance(v, str)]


class HeadersSetter(Setter[MutableMapping[str, Any]]):
    """Writes into a Signature's ``Headers`` (string values)."""

    def set(self, carrier: MutableMapping[str, Any], key: str, value: str) -> None:
        carrier[key] = str(value)


_GETTER = HeadersGetter()
_SETTER = HeadersSetter()


class TaskSpan:
    """What the worker tells the CONSUMER span about the outcome."""

    __slots__ = ("span",)

    def __init__(self, span: trace.Span) -> None:
        self.span = span

    def outcome(self, state: str, exc: BaseException | None = None) -> None:
        """The state written (``SUCCESS``, ``FAILURE``, ``RETRY``) and the exception, if any;
        FAILURE sets the span's status to ERROR."""
        self.span.set_attribute("machinery.state", state)
        if exc is not None:
            self.span.record_exception(exc)
        if state == "FAILURE":
            self.span.set_status(Status(StatusCode.ERROR, str(exc) if exc is not None else None))


class Tracing:
    """Producer and consumer spans for one app (see the module documentation)."""

    def __init__(self, tracer_provider: trace.TracerProvider | None = None,
                 propagator: TextMapPropagator | None = None, *,
                 sampled_flag_only: bool = False) -> None:
        from . import __version__

        self.tracer = trace.get_tracer("machinery_compat", __version__,
                                       tracer_provider=tracer_provider)
        self._propagator = propagator
        self.sampled_flag_only = sampled_flag_only

    @property
    def propagator(self) -> TextMapPropagator:
        """The propagator given, else the global one (looked up at each use)."""
        return self._propagator if self._propagator is not None else propagate.get_global_textmap()

    def inject(self, sig: Signature, ctx: otel_context.Context | None = None) -> None:
        """Write the current (or ``ctx``'s) span context into ``sig.headers`` and into the
        headers of every callback nested in it (OnSuccess, OnError, chord callback), as Go
        does for a chain's steps and a chord's callback."""
        propagator = self.propagator
        stack: list[tuple[Signature, int]] = [(sig, 0)]
        while stack:
            s, depth = stack.pop()
            if s.headers is None:
                s.headers = {}
            propagator.inject(s.headers, context=ctx, setter=_SETTER)
            if self.sampled_flag_only:
                _sampled_flag_only(s.headers)
            if depth < _MAX_DEPTH:
                nested = [*(s.on_success or ()), *(s.on_error or ())]
                if s.chord_callback is not None:
                    nested.append(s.chord_callback)
                stack.extend((n, depth + 1) for n in nested)

    def extract(self, headers: Mapping[str, Any] | None) -> otel_context.Context:
        """The context a message's ``Headers`` carry (empty when none)."""
        return self.propagator.extract(headers or {}, getter=_GETTER)

    @contextlib.contextmanager
    def producer(self, sigs: Sequence[Signature], operation: str = "SendTask") -> Iterator[None]:
        """A PRODUCER span around publishing ``sigs``, injected into each of them."""
        attributes: dict[str, str | int] = {"component": COMPONENT}
        if len(sigs) == 1:
            attributes.update(_signature_attributes(sigs[0]))
        else:
            attributes["group.tasks.length"] = len(sigs)
            if sigs and sigs[0].group_uuid:
                attributes["group.uuid"] = sigs[0].group_uuid
        with self.tracer.start_as_current_span(operation, kind=SpanKind.PRODUCER,
                                               attributes=attributes):
            for s in sigs:
                self.inject(s)
            yield

    @contextlib.contextmanager
    def consumer(self, sig: Signature) -> Iterator[TaskSpan]:
        """A CONSUMER span named after the task, child of the context in its headers, current
        while the task runs and its callbacks are sent."""
        parent = self.extract(sig.headers)
        attributes: dict[str, str | int] = {"component": COMPONENT, **_signature_attributes(sig)}
        with self.tracer.start_as_current_span(sig.name, context=parent, kind=SpanKind.CONSUMER,
                                               attributes=attributes,
                                               record_exception=False,
                                               set_status_on_exception=False) as span:
            yield TaskSpan(span)


def _sampled_flag_only(headers: MutableMapping[str, Any]) -> None:
    """Clear every trace flag of a version-00 ``traceparent`` but *sampled*."""
    value = headers.get("traceparent")
    if not isinstance(value, str):
        return
    parts = value.split("-")
    if len(parts) == 4 and parts[0] == "00" and len(parts[3]) == 2:
        try:
            flags = int(parts[3], 16) & 0x01
        except ValueError:
            return
        headers["traceparent"] = "-".join([*parts[:3], f"{flags:02x}"])


def _signature_attributes(sig: Signature) -> dict[str, str | int]:
    """Go's ``AnnotateSpanWithSignatureInfo`` tags, and the queue."""
    out: dict[str, str | int] = {"signature.name": sig.name, "signature.uuid": sig.uuid}
    if sig.group_uuid:
        out["signature.group.uuid"] = sig.group_uuid
    if sig.chord_callback is not None:
        out["signature.chord.callback.uuid"] = sig.chord_callback.uuid
        out["signature.chord.callback.name"] = sig.chord_callback.name
    if sig.routing_key:
        out["messaging.destination.name"] = sig.routing_key
    return out


def instrument(app: Machinery, *, tracer_provider: trace.TracerProvider | None = None,
               propagator: TextMapPropagator | None = None,
               sampled_flag_only: bool = False) -> Tracing:
    """Trace what ``app`` sends and what its Python workers run; returns the :class:`Tracing`.

    ``tracer_provider``: default the global one (``opentelemetry.trace``); ``propagator``:
    default the global text-map propagator (see the module documentation for Go's formats);
    ``sampled_flag_only``: write ``traceparent`` flags ``01``/``00`` only, for Go workers
    whose otel propagator refuses the random-trace-id bit (v1.36.0 does).
    """
    tracing = Tracing(tracer_provider, propagator, sampled_flag_only=sampled_flag_only)
    app.tracing = tracing
    return tracing


def uninstrument(app: Machinery) -> None:
    """Stop tracing ``app``."""
    app.tracing = None
