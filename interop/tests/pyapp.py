"""The Python side of the interop suite: a machinery_compat app with the Go worker's tasks.

Task names, signatures and behaviour mirror ``interop/cmd/mcworker`` (see interop/README.md)
so a Go producer cannot tell which worker ran a task:

* ``echo_<T>`` for all 29 Machinery types, with the Go type pinned on the parameter and
  the return value (``Annotated[int, GoType("int8")]``) so the stored result's ``Type``
  is ``int8`` and Go's ``AsyncResult`` reflects it into an ``int8``;
* ``add``/``multiply``/``concat``, ``multi_return`` (42, "answer", true), ``only_error``
  (no results), ``fail`` (error text = msg), ``panic_task`` (an unexpected exception
  raised deep in the task: the Python analogue of a recovered Go panic), ``panic_exit``
  (``sys.exit(msg)``, a BaseException), ``fail_n_times``
  and ``retry_later`` (same Redis counter keys as Go: ``fail_n_times:<key>``,
  ``retry_later:<key>``), ``sleep``;
* ``py_only`` (Python-only, for the unregistered-task hand-off), ``py_dict`` (Python-only,
  returns a dict: a result Go readers cannot reflect).

Every run is recorded in :class:`Executions` (task name, uuid, args, retry fields, ETA,
wall time), the Python analogue of mcworker's ``task`` lines.

For the CLI (``python -m machinery_compat worker -A interop.tests.pyapp:app``) the module
builds ``app`` from ``MC_INTEROP_BROKER`` / ``MC_INTEROP_QUEUE`` (and, when set,
``MC_INTEROP_BACKEND``, ``MC_INTEROP_COUNTERS`` and ``MC_INTEROP_AMQP``: the JSON of the
``amqp`` config section, see :meth:`interop.tests.harness.AMQPSettings.as_config_kwargs`;
``MC_INTEROP_SQS`` / ``MC_INTEROP_DYNAMODB``: those of the ``sqs`` / ``dynamodb`` sections,
:class:`interop.tests.harness.AWSSettings`).
"""

# No `from __future__ import annotations`: the Annotated hints below are built at run time.

import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any

import redis

from machinery_compat import Config, GoType, Machinery, Retry

#: Machinery's 29 argument types, in the Go worker's registration order.
ECHO_TYPES = (
    "bool", "int", "int8", "int16", "int32", "int64", "uint", "uint8", "uint16", "uint32",
    "uint64", "float32", "float64", "string",
    "[]bool", "[]int", "[]int8", "[]int16", "[]int32", "[]int64", "[]uint", "[]uint8",
    "[]uint16", "[]uint32", "[]uint64", "[]float32", "[]float64", "[]byte", "[]string",
)  # fmt: skip

#: Every task name this app can register.
ALL_TASKS = frozenset(
    ["add", "multiply", "concat", "multi_return", "only_error", "fail", "panic_task",
     "panic_exit", "fail_n_times", "retry_later", "sleep", "py_only", "py_dict"]
    + [f"echo_{t}" for t in ECHO_TYPES]
)


def python_base(go_type: str) -> Any:
    """The natural Python type for a Go type (the ``Annotated`` base)."""
    if go_type in ("[]byte", "[]uint8"):
        return bytes
    if go_type.startswith("[]"):
        return list[python_base(go_type[2:])]  # type: ignore[misc]
    if go_type == "bool":
        return bool
    if go_type == "string":
        return str
    if go_type.startswith("float"):
        return float
    return int


@dataclass(frozen=True, slots=True)
class Run:
    name: str
    uuid: str
    args: tuple[Any, ...]
    retry_count: int
    retry_timeout: int
    eta: float | None  # the delivery's ETA, Unix seconds
    eta_text: str | None  # ... as written in the message (offset kept)
    at: float  # time.time() when the task function started
    thread: str


class Executions:
    """Thread-safe record of every task-function run in this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.runs: list[Run] = []

    def record(self, task: Any, name: str, args: tuple[Any, ...]) -> None:
        req = task.request
        sig = req.signature
        eta = sig.eta.timestamp() if sig.eta is not None else None
        eta_text = sig.eta.isoformat() if sig.eta is not None else None
        run = Run(name, req.id, args, sig.retry_count, sig.retry_timeout, eta, eta_text,
                  time.time(), threading.current_thread().name)
        with self._lock:
            self.runs.append(run)

    def snapshot(self) -> list[Run]:
        with self._lock:
            return list(self.runs)

    def for_uuid(self, uuid: str) -> list[Run]:
        return [r for r in self.snapshot() if r.uuid == uuid]

    def counts(self) -> Counter[str]:
        return Counter(r.uuid for r in self.snapshot())


class TaskPanic(Exception):
    """What ``panic_task`` raises from deep inside (a bug, not a planned failure)."""


def _explode(msg: str, depth: int) -> None:
    if depth == 0:
        raise TaskPanic(msg)
    _explode(msg, depth - 1)


@dataclass(slots=True)
class PyApp:
    app: Machinery
    executions: Executions
    counters: redis.Redis  # for fail_n_times / retry_later

    def close(self) -> None:
        try:
            self.app.close()  # the broker's and the backend's connections
        finally:
            self.counters.close()


def make_app(broker: str, queue: str = "machinery_tasks", *,
             only: Iterable[str] | None = None, backend: str | None = None,
             counters: str | None = None, amqp: dict[str, Any] | None = None,
             sqs: dict[str, Any] | None = None, dynamodb: dict[str, Any] | None = None,
             queues: dict[str, str] | None = None,
             redis_settings: dict[str, Any] | None = None) -> PyApp:
    """A Machinery app on ``broker`` and ``backend`` (default: the broker) with the tasks
    named in ``only`` (default: all of :data:`ALL_TASKS`); ``counters`` is the Redis of the
    fail_n_times/retry_later counters (default: the broker); ``amqp`` / ``sqs`` /
    ``dynamodb`` the keyword arguments of those config sections (``Config.amqp``, Go's
    ``AMQPConfig``; ``Config.sqs``, ``Config.dynamodb``); ``queues`` a queue per task name
    (the task's default routing key); ``redis_settings`` those of ``Config.redis`` (Sentinel:
    ``master_name``, ``sentinel_password``)."""
    config = None
    if amqp is not None or sqs is not None or dynamodb is not None or redis_settings:
        config = Config.default()
    if redis_settings:
        from machinery_compat.config import RedisConfig

        config.redis = RedisConfig(**redis_settings)  # type: ignore[union-attr]
    if amqp is not None:
        from machinery_compat.config import AMQPConfig

        config.amqp = AMQPConfig(**amqp)  # type: ignore[union-attr]
    if sqs is not None:
        from machinery_compat.config import SQSConfig

        config.sqs = SQSConfig(**sqs)  # type: ignore[union-attr]
    if dynamodb is not None:
        from machinery_compat.config import DynamoDBConfig

        config.dynamodb = DynamoDBConfig(**dynamodb)  # type: ignore[union-attr]
    app = Machinery(broker=broker, result_backend=backend or broker, default_queue=queue,
                    config=config)
    ex = Executions()
    wanted = set(ALL_TASKS if only is None else only)
    unknown = wanted - ALL_TASKS
    if unknown:
        raise ValueError(f"unknown tasks {sorted(unknown)}")
    counters = redis.Redis.from_url(counters or broker)

    def register(name: str, fn: Any, annotations: dict[str, Any] | None = None) -> None:
        if name not in wanted:
            return
        if annotations is not None:
            fn.__annotations__ = annotations
        app.task(name=name, bind=True, queue=(queues or {}).get(name))(fn)

    def add(self: Any, *nums: int) -> int:
        ex.record(self, "add", nums)
        return sum(nums)

    def multiply(self: Any, *nums: int) -> int:
        ex.record(self, "multiply", nums)
        p = 1
        for n in nums:
            p *= n
        return p

    def concat(self: Any, *parts: str) -> str:
        ex.record(self, "concat", parts)
        return "".join(parts)

    def multi_return(self: Any) -> tuple[int, str, bool]:
        ex.record(self, "multi_return", ())
        return 42, "answer", True

    def only_error(self: Any) -> None:
        ex.record(self, "only_error", ())

    def fail(self: Any, msg: str) -> int:
        ex.record(self, "fail", (msg,))
        raise RuntimeError(msg)

    def panic_task(self: Any, msg: str) -> int:
        ex.record(self, "panic_task", (msg,))
        _explode(msg, 3)
        return 0  # pragma: no cover

    def fail_n_times(self: Any, key: str, n: int) -> int:
        ex.record(self, "fail_n_times", (key, n))
        k = int(counters.incr(f"fail_n_times:{key}"))
        if k <= n:
            raise RuntimeError(f"attempt {k} failed")
        return k

    def retry_later(self: Any, key: str, delay_ms: int) -> str:
        ex.record(self, "retry_later", (key, delay_ms))
        k = int(counters.incr(f"retry_later:{key}"))
        if k == 1:
            raise Retry("later", countdown=delay_ms / 1000)
        return "done"

    def panic_exit(self: Any, msg: str) -> int:
        ex.record(self, "panic_exit", (msg,))
        sys.exit(msg)  # a BaseException: the closest Python cousin of an unplanned Go panic

    def sleep(self: Any, ms: int) -> int:
        ex.record(self, "sleep", (ms,))
        time.sleep(ms / 1000)
        return ms

    def py_only(self: Any, text: str) -> str:
        ex.record(self, "py_only", (text,))
        return "py:" + text.upper()

    def py_dict(self: Any) -> Any:
        ex.record(self, "py_dict", ())
        return {"k": [1, 2]}  # untyped: stored as "map[string]interface {}"

    for fn in (add, multiply, concat, multi_return, only_error, fail, panic_task, panic_exit,
               fail_n_times, retry_later, sleep, py_only, py_dict):
        register(fn.__name__, fn)

    def make_echo(name: str) -> Any:
        def echo(self: Any, value: Any) -> Any:
            ex.record(self, name, (value,))
            return value

        return echo

    for go_type in ECHO_TYPES:
        hint = Annotated[python_base(go_type), GoType(go_type)]  # type: ignore[misc]
        register(f"echo_{go_type}", make_echo(f"echo_{go_type}"),
                 {"self": Any, "value": hint, "return": hint})
    return PyApp(app, ex, counters)


def stack_app(stack: Any, *, only: Iterable[str] | None = None,
              queues: dict[str, str] | None = None) -> PyApp:
    """:func:`make_app` on an :class:`interop.tests.harness.Stack` (its broker, backend,
    counters, queue and AMQP/AWS settings: the ones its Go programs get)."""
    amqp, aws = stack.amqp, stack.aws
    return make_app(stack.broker, stack.queue, only=only, backend=stack.backend,
                    counters=stack.counters,
                    amqp=amqp.as_config_kwargs() if amqp is not None else None,
                    sqs=aws.sqs_config_kwargs() if aws is not None else None,
                    dynamodb=aws.dynamodb_config_kwargs() if aws is not None else None,
                    queues=queues)


def stack_env(stack: Any) -> dict[str, str]:
    """The environment that makes this module's ``app`` an app on ``stack`` (for the CLI)."""
    env = {"MC_INTEROP_BROKER": stack.broker, "MC_INTEROP_QUEUE": stack.queue,
           "MC_INTEROP_BACKEND": stack.backend, "MC_INTEROP_COUNTERS": stack.counters}
    if stack.amqp is not None:
        env["MC_INTEROP_AMQP"] = json.dumps(stack.amqp.as_config_kwargs())
    if stack.aws is not None:
        for name, section in (("MC_INTEROP_SQS", stack.aws.sqs_config_kwargs()),
                              ("MC_INTEROP_DYNAMODB", stack.aws.dynamodb_config_kwargs())):
            if section is not None:
                env[name] = json.dumps(section)
    return env


def _env_json(name: str) -> Any:
    return json.loads(os.environ[name]) if os.environ.get(name) else None


_default = make_app(
    os.environ.get("MC_INTEROP_BROKER", "redis://127.0.0.1:6379/0"),
    os.environ.get("MC_INTEROP_QUEUE", "machinery_tasks"),
    backend=os.environ.get("MC_INTEROP_BACKEND") or None,
    counters=os.environ.get("MC_INTEROP_COUNTERS") or None,
    amqp=_env_json("MC_INTEROP_AMQP"),
    sqs=_env_json("MC_INTEROP_SQS"),
    dynamodb=_env_json("MC_INTEROP_DYNAMODB"),
)
app = _default.app
executions = _default.executions
