"""The Python side of a conformance run: an app with the Go probe's task names.

``add``, ``multiply`` (int64 varargs), ``sleep`` (ms), ``fail_n_times`` (key, n: fails the
first n attempts, counted in this process) and ``echo_<T>`` for the 29 Machinery types, each
pinned to its Go type so the stored result's ``Type`` is ``T`` (as the Go worker stores it).
Every run is recorded (:class:`Runs`) so a check can tell which side ran a task.
"""

from __future__ import annotations

import copy
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Annotated, Any

from ..app import Machinery
from ..config import AMQPConfig, Config
from ..protocol import GoType

#: Machinery's 29 argument types, in the Go worker's registration order.
ECHO_TYPES = (
    "bool", "int", "int8", "int16", "int32", "int64", "uint", "uint8", "uint16", "uint32",
    "uint64", "float32", "float64", "string",
    "[]bool", "[]int", "[]int8", "[]int16", "[]int32", "[]int64", "[]uint", "[]uint8",
    "[]uint16", "[]uint32", "[]uint64", "[]float32", "[]float64", "[]byte", "[]string",
)  # fmt: skip

Int64 = Annotated[int, GoType("int64")]


def _python_base(go_type: str) -> Any:
    if go_type in ("[]byte", "[]uint8"):
        return bytes
    if go_type.startswith("[]"):
        return list[_python_base(go_type[2:])]  # type: ignore[misc]
    return {"bool": bool, "string": str}.get(go_type, float if go_type.startswith("float") else int)


@dataclass(frozen=True, slots=True)
class Run:
    name: str
    uuid: str
    at: float  # time.time() when the task function started


class Runs:
    """Thread-safe record of every task-function run in this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: list[Run] = []
        self._counters: Counter[str] = Counter()

    def record(self, task: Any, name: str) -> None:
        with self._lock:
            self._runs.append(Run(name, task.request.id, time.time()))

    def incr(self, key: str) -> int:
        with self._lock:
            self._counters[key] += 1
            return self._counters[key]

    def of(self, uuid: str) -> list[Run]:
        with self._lock:
            return [r for r in self._runs if r.uuid == uuid]


def _no_events(app: Machinery) -> None:
    """Keep the run's tasks out of the shared task-event stream (``machinery_compat.events``),
    where a monitor would show them and which the cleanup must not touch."""
    from ..events.settings import EventsConfig

    app.events_config = EventsConfig(worker_events=False, send_events=False)


def make_app(base: Config, *, broker: str, backend: str, queue: str, exchange: str,
             runs: Runs) -> Machinery:
    """An app on ``broker``/``backend`` whose default queue (and AMQP binding key) is
    ``queue``, on the run's own exchange, with the conformance tasks."""
    cfg = copy.deepcopy(base)
    cfg.broker, cfg.result_backend, cfg.default_queue = broker, backend, queue
    old = cfg.amqp or AMQPConfig()
    cfg.amqp = AMQPConfig(exchange=exchange, exchange_type="direct", binding_key=queue,
                          prefetch_count=old.prefetch_count,
                          queue_declare_args=dict(old.queue_declare_args),
                          queue_binding_args=dict(old.queue_binding_args))
    app = Machinery(config=cfg)
    _no_events(app)

    def add(self: Any, *nums: Int64) -> Int64:
        runs.record(self, "add")
        return sum(nums)

    def multiply(self: Any, *nums: Int64) -> Int64:
        runs.record(self, "multiply")
        p = 1
        for n in nums:
            p *= n
        return p

    def sleep(self: Any, ms: Int64) -> Int64:
        runs.record(self, "sleep")
        time.sleep(ms / 1000)
        return ms

    def fail_n_times(self: Any, key: str, n: Int64) -> Int64:
        runs.record(self, "fail_n_times")
        k = runs.incr(key)
        if k <= n:
            raise RuntimeError(f"attempt {k} failed")
        return k

    for fn in (add, multiply, sleep, fail_n_times):
        app.task(name=fn.__name__, bind=True)(fn)

    def make_echo(name: str) -> Any:
        def echo(self: Any, value: Any) -> Any:
            runs.record(self, name)
            return value

        return echo

    for go_type in ECHO_TYPES:
        hint = Annotated[_python_base(go_type), GoType(go_type)]  # type: ignore[valid-type]
        fn = make_echo(f"echo_{go_type}")
        fn.__annotations__ = {"self": Any, "value": hint, "return": hint}
        app.task(name=f"echo_{go_type}", bind=True)(fn)
    return app
