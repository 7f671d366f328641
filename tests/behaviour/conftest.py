"""The behaviour suite: worker, producer and canvas behaviour, written once and run over
every broker and result-backend combination.

Fixtures (names are stable; write new behaviour tests against them):

* ``app_kind``  the combination under test, one of :data:`KINDS`:
  ``"redis"`` (Redis broker + Redis backend, same server), ``"memory"`` (memory broker +
  memory backend) and ``"redis+memory"`` (Redis broker + memory backend).  A test runs over
  :data:`DEFAULT_KINDS` (``redis``, ``memory``); mark it ``@pytest.mark.mixed`` to run it on
  ``redis+memory`` too, or ``@pytest.mark.kinds("memory", …)`` to choose the kinds exactly
  (both work on a module via ``pytestmark``).  Redis kinds use the session redis-server
  (``redis_url``: flushed per test; skipped when redis-server is missing, failed under CI=true)
  and get the ``redis`` marker.
* ``broker_url`` / ``backend_url``  the URLs of this combination (memory stores get a name
  unique to the test and are thrown away afterwards).
* ``app``  a :class:`~machinery_compat.Machinery` on those URLs, ``default_queue="machinery_tasks"``.
* ``make_app``  ``make_app(**kwargs)``: another app on the same broker and backend (a second
  process, say); keyword arguments go to ``Machinery``.
* ``start_worker``  ``start_worker(target_app=None, **worker_options)`` starts a worker on
  ``app`` (or ``target_app``) with ``concurrency=2, poll_timeout=0.1,
  delayed_poll_interval=0.05`` unless given; every worker is stopped at teardown.
* ``probe``  a :class:`Probe`: broker-independent access to what is stored —
  ``messages(queue)`` / ``dead(queue)`` (raw bodies waiting in a queue / in ``<queue>.dead``,
  head first), ``push(queue, *bodies)`` (inject raw bytes, as a Go producer would),
  ``delayed()`` (raw ``(body, due_ns)`` pairs, soonest first), ``push_delayed(body, due_ns)``,
  ``pending(queue)`` / ``delayed_tasks()`` (decoded :class:`Signature` lists) and
  ``state_bytes(uuid)`` / ``put_state_bytes(uuid, body)`` (the Go JSON the backend holds for a
  task or group UUID; write one as a Go worker would).
* ``eager_app``  an app on ``eager://<unique name>`` (eager broker, memory-backed results).

Helpers: :func:`tests.helpers.wait_for` (re-exported here); ``StartWorker`` (the type of
``start_worker``).  Every test logs ``machinery_compat`` at INFO into ``caplog``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from machinery_compat import Machinery, Signature
from machinery_compat.backends import memory as memory_backend
from machinery_compat.brokers import memory as memory_broker
from machinery_compat.worker import Worker
from tests.helpers import wait_for

__all__ = ["DEFAULT_KINDS", "KINDS", "Probe", "StartWorker", "wait_for"]

#: Every broker+backend combination the behaviour suite knows.
KINDS = ("redis", "memory", "redis+memory")
#: What a test runs over unless marked ``mixed`` or ``kinds(...)``.
DEFAULT_KINDS = ("redis", "memory")

StartWorker = Callable[..., Worker]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "mixed: also run this behaviour test on redis+memory")
    config.addinivalue_line("markers", "kinds(*kinds): the broker+backend kinds to run this behaviour test on")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "app_kind" not in metafunc.fixturenames:
        return
    chosen = metafunc.definition.get_closest_marker("kinds")
    if chosen is not None:
        kinds = tuple(chosen.args)
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise pytest.UsageError(f"unknown behaviour kinds {sorted(unknown)}; known: {KINDS}")
    elif metafunc.definition.get_closest_marker("mixed") is not None:
        kinds = KINDS
    else:
        kinds = DEFAULT_KINDS
    metafunc.parametrize("app_kind", kinds, indirect=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "redis" in str(callspec.params.get("app_kind", "")):
            item.add_marker(pytest.mark.redis)


@pytest.fixture
def app_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def _memory_name() -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    memory_broker.reset(name)
    memory_backend.reset(name)


@pytest.fixture
def broker_url(app_kind: str, request: pytest.FixtureRequest, _memory_name: str) -> str:
    if app_kind.split("+")[0] == "redis":
        url: str = request.getfixturevalue("redis_url")
        return url
    return f"memory://{_memory_name}"


@pytest.fixture
def backend_url(app_kind: str, request: pytest.FixtureRequest, _memory_name: str) -> str:
    if app_kind.split("+")[-1] == "redis":
        url: str = request.getfixturevalue("redis_url")
        return url
    return f"memory://{_memory_name}"


@pytest.fixture
def make_app(broker_url: str, backend_url: str) -> Iterator[Callable[..., Machinery]]:
    apps: list[Machinery] = []

    def make(**kwargs: Any) -> Machinery:
        kwargs.setdefault("default_queue", "machinery_tasks")
        a = Machinery(broker=broker_url, result_backend=backend_url, **kwargs)
        apps.append(a)
        return a

    yield make
    for a in apps:
        a.close()


@pytest.fixture
def app(make_app: Callable[..., Machinery]) -> Machinery:
    return make_app()


@pytest.fixture
def start_worker(app: Machinery) -> Iterator[StartWorker]:
    """Start workers (``start_worker(concurrency=2)``); all are stopped at teardown."""
    workers: list[Worker] = []

    def start(target: Machinery | None = None, **options: Any) -> Worker:
        options.setdefault("concurrency", 2)
        options.setdefault("poll_timeout", 0.1)
        options.setdefault("delayed_poll_interval", 0.05)
        w = (target or app).worker(**options).start()
        workers.append(w)
        return w

    yield start
    for w in workers:
        w.stop(timeout=10)


class Probe:
    """Broker/backend-independent access to the stored bytes of one app's broker and backend."""

    def __init__(self, app: Machinery) -> None:
        self.app = app
        self.broker = app.broker
        self.backend = app.backend

    def _redis(self, side: Any) -> Any:
        return getattr(side, "client", None)

    # -- queues -------------------------------------------------------------------------
    def messages(self, queue: str = "machinery_tasks") -> list[bytes]:
        """Raw bodies waiting in ``queue``, head first."""
        client = self._redis(self.broker)
        if client is not None:
            return list(client.lrange(queue, 0, -1))
        assert isinstance(self.broker, memory_broker.MemoryBroker)
        return self.broker.messages(queue)

    def dead(self, queue: str = "machinery_tasks") -> list[bytes]:
        """Raw bodies kept in ``<queue>.dead``."""
        return self.messages(f"{queue}.dead")

    def push(self, queue: str, *bodies: bytes) -> None:
        """Append raw bodies to ``queue``."""
        client = self._redis(self.broker)
        if client is not None:
            client.rpush(queue, *bodies)
            return
        assert isinstance(self.broker, memory_broker.MemoryBroker)
        self.broker.push(queue, *bodies)

    def delayed(self) -> list[tuple[bytes, int]]:
        """Raw delayed bodies with their due time (Unix ns), soonest first."""
        client = self._redis(self.broker)
        if client is not None:
            key = self.broker.delayed_tasks_key  # type: ignore[attr-defined]
            return [(b, int(s)) for b, s in client.zrange(key, 0, -1, withscores=True)]
        assert isinstance(self.broker, memory_broker.MemoryBroker)
        return self.broker.delayed_messages()

    def push_delayed(self, body: bytes, due_ns: int) -> None:
        client = self._redis(self.broker)
        if client is not None:
            client.zadd(self.broker.delayed_tasks_key, {body: due_ns})  # type: ignore[attr-defined]
            return
        assert isinstance(self.broker, memory_broker.MemoryBroker)
        self.broker.push_delayed(body, due_ns)

    def pending(self, queue: str | None = None) -> list[Signature]:
        return self.broker.pending_tasks(queue)

    def delayed_tasks(self) -> list[Signature]:
        return self.broker.delayed_tasks()

    # -- results ------------------------------------------------------------------------
    def state_bytes(self, uuid: str) -> bytes | None:
        """The Go JSON the backend stores under a task or group UUID."""
        client = self._redis(self.backend)
        if client is not None:
            raw: bytes | None = client.get(uuid)
            return raw
        assert isinstance(self.backend, memory_backend.MemoryBackend)
        return self.backend.raw(uuid)

    def put_state_bytes(self, uuid: str, body: bytes) -> None:
        """Store raw bytes under a task or group UUID, as a Go worker would write them."""
        client = self._redis(self.backend)
        if client is not None:
            client.set(uuid, body, ex=3600)
            return
        assert isinstance(self.backend, memory_backend.MemoryBackend)
        self.backend.store_raw(uuid, body)


@pytest.fixture
def probe(app: Machinery) -> Probe:
    return Probe(app)


@pytest.fixture
def eager_app() -> Iterator[Machinery]:
    name = f"eager-{uuid.uuid4().hex[:12]}"
    a = Machinery(broker=f"eager://{name}", default_queue="machinery_tasks")
    yield a
    a.close()
    memory_broker.reset(name)
    memory_backend.reset(name)


@pytest.fixture(autouse=True)
def _worker_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="machinery_compat")
