"""Prometheus metrics of a Python worker: ``machinery-compat worker --metrics-port N``
(needs ``pip install machinery-compat[metrics]``: prometheus-client).

Served at ``http://<address>:N/metrics`` from a registry of its own; the names follow the
Celery exporters' (``celery_task_succeeded_total`` …) with the ``machinery_`` prefix:

================================================  ==========  ===============================
metric                                            type        labels
================================================  ==========  ===============================
``machinery_task_received_total``                 counter     name, queue, hostname
``machinery_task_started_total``                  counter     name, queue, hostname
``machinery_task_succeeded_total``                counter     name, queue, hostname
``machinery_task_failed_total``                   counter     name, queue, hostname
``machinery_task_retried_total``                  counter     name, queue, hostname
``machinery_task_dead_lettered_total``            counter     name, queue, hostname
``machinery_task_sent_total``                     counter     name, queue, hostname
``machinery_task_runtime_seconds``                histogram   name, queue
``machinery_worker_up``                           gauge       hostname (1 online, 0 offline)
``machinery_worker_tasks_active``                 gauge       hostname (read at scrape)
``machinery_queue_length``                        gauge       queue (the broker's count, read
                                                              at scrape: Go's traffic too)
``machinery_queue_delayed``                       gauge       — (messages waiting for an ETA)
``machinery_events_dropped_total``                counter     — (events not written)
================================================  ==========  ===============================

The counters count what this process's workers did since it started (a counter per
process, as Prometheus expects: sum them over instances).  They are fed by the emitter of
the events (:mod:`.emitter`, as its listener), also with ``MACHINERY_COMPAT_WORKER_EVENTS=0``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any, Final

from ..exceptions import ConfigError
from .emitter import Emitter, emitter_for
from .model import (
    DEAD_LETTERED,
    FAILED,
    RECEIVED,
    RETRIED,
    SENT,
    STARTED,
    SUCCEEDED,
    WORKER_HEARTBEAT,
    WORKER_OFFLINE,
    WORKER_ONLINE,
    Event,
)

logger = logging.getLogger(__name__)

#: runtime histogram buckets (seconds), Celery exporter-like
BUCKETS: Final = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                  60.0, 300.0, float("inf"))
#: seconds a queue-length reading is reused between scrapes
QUEUE_CACHE: Final = 1.0

_COUNTED: Final = {RECEIVED: "received", STARTED: "started", SUCCEEDED: "succeeded",
                   FAILED: "failed", RETRIED: "retried", DEAD_LETTERED: "dead_lettered",
                   SENT: "sent"}


def _client() -> Any:
    try:
        import prometheus_client
    except ImportError as e:
        raise ConfigError("--metrics-port needs prometheus-client: pip install "
                          "'machinery-compat[metrics]'") from e
    return prometheus_client


class WorkerMetrics:
    """The metrics of one app's workers in this process (:meth:`serve` starts the endpoint)."""

    def __init__(self, app: Any) -> None:
        pc = _client()
        self.app = app
        self.registry = pc.CollectorRegistry(auto_describe=True)
        labels = ["name", "queue", "hostname"]
        self.counters = {
            kind: pc.Counter(f"machinery_task_{kind}", f"Tasks {kind.replace('_', '-')} by "
                             "this process's Python workers (sent: by this app)", labels,
                             registry=self.registry)
            for kind in _COUNTED.values()}
        self.runtime = pc.Histogram("machinery_task_runtime_seconds",
                                    "Seconds the task function ran (succeeded and failed)",
                                    ["name", "queue"], buckets=BUCKETS, registry=self.registry)
        self.up = pc.Gauge("machinery_worker_up", "1 while the Python worker is online",
                           ["hostname"], registry=self.registry)
        self.registry.register(_ScrapeCollector(self))
        self._emitter: Emitter | None = None
        self._server: Any = None
        self._queue_cache: tuple[float, list[tuple[str, int | None]], int | None] | None = None

    def on_event(self, e: Event) -> None:
        kind = _COUNTED.get(e.type)
        if kind is not None:
            self.counters[kind].labels(e.name, e.queue, e.hostname).inc()
            if e.runtime is not None and e.type in (SUCCEEDED, FAILED):
                self.runtime.labels(e.name, e.queue).observe(e.runtime)
        elif e.type in (WORKER_ONLINE, WORKER_HEARTBEAT):
            self.up.labels(e.hostname).set(1)
        elif e.type == WORKER_OFFLINE:
            self.up.labels(e.hostname).set(0)

    def attach(self) -> WorkerMetrics:
        """Feed from the app's events (before its workers start)."""
        em = emitter_for(self.app, store=False)
        assert em is not None
        if self.on_event not in em.listeners:
            em.listeners.append(self.on_event)
        self._emitter = em
        return self

    def serve(self, port: int, address: str = "0.0.0.0") -> WorkerMetrics:
        """Attach and serve ``/metrics`` on ``address:port`` (a daemon thread)."""
        pc = _client()
        self.attach()
        try:
            started = pc.start_http_server(port, addr=address, registry=self.registry)
        except OSError as e:
            raise ConfigError(f"--metrics-port {port}: cannot listen on {address}:{port}: {e}"
                              ) from e
        self._server = started[0] if isinstance(started, tuple) else None
        logger.info("Prometheus metrics on http://%s:%d/metrics", address, port)
        return self

    def close(self) -> None:
        if self._emitter is not None and self.on_event in self._emitter.listeners:
            self._emitter.listeners.remove(self.on_event)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- read at scrape time -----------------------------------------------------------------
    def queue_lengths(self) -> tuple[list[tuple[str, int | None]], int | None]:
        now = time.monotonic()
        cached = self._queue_cache
        if cached is not None and now - cached[0] < QUEUE_CACHE:
            return cached[1], cached[2]
        from ..ops import Unsupported, broker_ops

        em = self._emitter
        queues = sorted({q for w in (em.workers if em else ()) for q in getattr(w, "queues", ())}
                        or {self.app.config.default_queue})
        try:
            ops = broker_ops(self.app.broker)
        except Unsupported:
            return [], None
        try:
            lengths = [(q, ops.depth(q).messages) for q in queues]
            try:
                delayed = ops.delayed_count(queues if ops.kind == "sqs" else ())
            except Unsupported:
                delayed = None
        finally:
            ops.close()
        self._queue_cache = (now, lengths, delayed)
        return lengths, delayed


class _ScrapeCollector:
    """Values read when Prometheus scrapes: queue lengths, active tasks, dropped events."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Any]:
        return []  # the families vary with the workers: no fixed description

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        m = self.metrics
        em = m._emitter
        active = GaugeMetricFamily("machinery_worker_tasks_active",
                                   "Tasks the Python worker is running now", labels=["hostname"])
        for w in list(em.workers if em is not None else ()):
            host = getattr(w, "hostname", None) or (em.hostname if em is not None else "")
            active.add_metric([host], len(getattr(w, "_running", ())))
        yield active
        dropped = CounterMetricFamily("machinery_events_dropped",
                                      "Events not written (buffer full or store refused)")
        dropped.add_metric([], em.dropped if em else 0)
        yield dropped
        length = GaugeMetricFamily("machinery_queue_length",
                                   "Messages waiting in the queue (the broker's count)",
                                   labels=["queue"])
        delayed_g = GaugeMetricFamily("machinery_queue_delayed",
                                      "Messages waiting for their ETA (the broker's count)")
        try:
            lengths, delayed = m.queue_lengths()
        except Exception as e:
            logger.warning("queue lengths not read for the metrics: %s", e)
            lengths, delayed = [], None
        for q, n in lengths:
            if n is not None:
                length.add_metric([q], n)
        yield length
        if delayed is not None:
            delayed_g.add_metric([], delayed)
        yield delayed_g


def serve_metrics(app: Any, port: int, address: str = "0.0.0.0") -> WorkerMetrics:
    """``worker --metrics-port``: :class:`WorkerMetrics` of ``app``, served."""
    return WorkerMetrics(app).serve(port, address)
