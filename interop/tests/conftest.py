"""Fixtures and the RESULTS.md writer for the Go <-> Python interop suite.

* ``go_bins`` (session): builds interop/bin/ with ``interop/build.sh`` (cached by Go's
  build cache); a failed build skips locally and FAILS under CI=true.
* The servers are the session's, shared with tests/ (``tests.services``, registered for
  every tree by the root ``conftest.py``): one redis-server, one RabbitMQ node, one moto
  server per session, started on first use; interop keeps to its own part of each.
* ``interop_redis`` (session): the session redis-server (``redis_server``); interop uses
  its DBs ``SHARED_REDIS_DBS``.. only (16..127; tests/ use 0..15).
* ``interop_rabbitmq`` (session): the session RabbitMQ node (``rabbitmq_server``) and the
  vhost ``interop`` on it with the firehose tracer on (``rabbitmqctl trace_on``, turned on
  again after a restart of the node), so :class:`~interop.tests.harness.AMQPTap` sees every
  publish; queue names are unique in the session.
* ``new_db`` (session): ``new_db()`` returns the URL of a fresh, flushed DB of interop's
  range, so every scenario has its own queues *and* its own ``delayed_tasks`` set.
* ``interop_aws`` (session): the session moto server (``moto_server``: dummy AWS credentials
  and region in ``os.environ`` while it runs), the DynamoDB tables Go expects
  (``task_states``, ``group_metas``, created again if a test reset the server) and the
  :class:`~interop.tests.harness.AWSRecorder` on it.
* ``stack_spec`` (module, parametrized by ``pytest_generate_tests``): the broker/backend
  kind and Go flavour of a matrix column (:data:`~interop.tests.harness.STACKS`): on
  ``redis`` ``v1``, ``v2-redigo``, ``v2-goredis``; on ``amqp`` (AMQP broker + AMQP backend)
  ``v1``, ``v2``; on ``amqp+redis`` (AMQP broker + Redis backend) ``v1``, ``v2-goredis``;
  on ``sqs+dynamodb`` ``v1``, ``v2``; on ``sqs+redis`` ``v1``, ``v2-goredis``; on
  ``pubsub+redis`` (Pub/Sub broker on the session pstest emulator + Redis backend) ``v1``,
  ``v2-goredis``, each stack a topic and subscription of its own in the flavour's project.
  A test runs on every kind unless marked ``@pytest.mark.kinds("redis", …)``;
  ``@pytest.mark.skip_on("amqp", reason=…)`` keeps the cell but skips it there (the
  reason is listed in RESULTS.md); ``@pytest.mark.xfail_on("amqp", reason=…)`` marks a
  known machinery_compat bug there (strict xfail, listed in RESULTS.md as a known bug).
  ``flavour`` is ``stack_spec.flavour``.
* ``new_stack`` (module): ``new_stack(name)`` returns a fresh
  :class:`~interop.tests.harness.Stack` (its own Redis DB(s), a queue name unique in the
  session — on SQS created, with SQS's default 30 s visibility timeout —, the AMQP/AWS
  settings both sides use).

Each test carries ``@pytest.mark.matrix(direction, case)``; at session end the outcomes are
written to ``interop/RESULTS.md`` (only when interop tests actually ran and none were
deselected, so a partial run never overwrites the full table).

The extra backend combinations (``amqp+redis``, ``sqs+redis``: harness.SUBSET_KINDS) run the
echo cases of harness.SUBSET_ECHO_TYPES only, the other echo cells deselected (and shown as
such); ``--interop-full`` (``make interop-full``) runs them all.  A run without it keeps
those kinds' RESULTS.md sections of the last run that had every cell, adding a line on how
the subset went (a section from a subset run is replaced by the next run's).

``--interop-kinds sqs+dynamodb,sqs+redis`` runs the matrix on those kinds only (every cell of
them: the parametrization is restricted, nothing is deselected; the tests outside the
matrix do not run): RESULTS.md then gets those kinds' sections replaced (or added), keeps
the other kinds' sections of the last run, and the header's totals are summed over every
section.  The name ``other`` in that list adds the tests outside the matrix, so that two
processes can share a whole run (``scripts/pytest-parallel.sh``: each names its kinds, one
of them ``other``); the matrix cells without a stack column are Redis cells and run with
``redis``.  Each process rewrites RESULTS.md under a lock (``RESULTS.md.lock``).
"""

from __future__ import annotations

import fcntl
import itertools
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from interop.tests.harness import (  # noqa: E402
    BIN,
    DIRECTIONS,
    DYNAMODB_URL,
    GROUP_METAS_TABLE,
    INTEROP,
    KIND_TITLES,
    KINDS,
    PY_TO_GO,
    STACKS,
    SUBSET_ECHO_TYPES,
    SUBSET_KINDS,
    TASK_STATES_TABLE,
    AWSRecorder,
    AWSSettings,
    Stack,
    StackSpec,
    build_go_programs,
)
from interop.tests.memcache_tap import MemcacheRecorder  # noqa: E402
from interop.tests.mongodb_tap import GO_CANNOT_STORE, MongoRecorder  # noqa: E402
from tests.services import (  # noqa: E402
    SESSION_REDIS_DATABASES,
    SHARED_REDIS_DBS,
    MotoServer,
    RabbitMQServer,
    RedisServer,
    in_ci,
)
from tests.services.ferretdb_svc import FerretDBServer  # noqa: E402
from tests.services.memcached_svc import MemcachedNodes  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS_PATH = INTEROP / "RESULTS.md"
#: The session redis-server's DBs interop allocates from (round robin; tests/ use the others).
INTEROP_DBS = range(SHARED_REDIS_DBS, SESSION_REDIS_DATABASES)
#: interop's vhost on the session RabbitMQ node (tests/ use fresh vhosts ``t<n>``).
INTEROP_VHOST = "interop"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--interop-kinds", default="",
        help="run the interop matrix on these broker/backend kinds only (comma-separated, of "
             f"{', '.join(KINDS)}; `{OTHER}`: the tests outside the matrix); RESULTS.md gets "
             "their sections replaced")
    parser.addoption(
        "--interop-full", action="store_true", default=False,
        help="run every echo type on the extra backend combinations "
             f"({', '.join(SUBSET_KINDS)}) too; by default they run "
             f"{', '.join(SUBSET_ECHO_TYPES)} only (`make interop-full`)")


#: ``--interop-kinds`` name for the tests outside the matrix.
OTHER = "other"


def _selected_kinds(config: pytest.Config) -> tuple[str, ...] | None:
    text = str(config.getoption("--interop-kinds", default="") or "")
    if not text:
        return None
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = set(kinds) - set(KINDS) - {OTHER}
    if unknown:
        raise pytest.UsageError(f"--interop-kinds: unknown {sorted(unknown)}; known: {KINDS}")
    return kinds


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "matrix(direction, case): one cell of the interop matrix (interop/RESULTS.md)"
    )
    config.addinivalue_line(
        "markers", "kinds(*kinds): the broker/backend kinds an interop test runs on"
    )
    config.addinivalue_line(
        "markers", "skip_on(*kinds, reason): skip this interop cell on these kinds, by design"
    )
    config.addinivalue_line(
        "markers", "full_only: on the extra backend combinations (harness.SUBSET_KINDS) this "
        "test runs only with --interop-full (its kind's own broker and backend run it always)")
    config.addinivalue_line(
        "markers", "xfail_on(*kinds, reason): a known machinery_compat bug on these kinds "
        "(strict xfail: the cell fails once the bug is fixed, so the marker gets removed)"
    )
    global _STATE
    _STATE = _State()
    _STATE.only_kinds = _selected_kinds(config)
    _STATE.full = bool(config.getoption("--interop-full", default=False))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "stack_spec" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("kinds")
    kinds = tuple(marker.args) if marker is not None else KINDS
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise pytest.UsageError(f"unknown interop kinds {sorted(unknown)}; known: {KINDS}")
    only = _selected_kinds(metafunc.config)
    specs = [s for s in STACKS if s.kind in kinds and (only is None or s.kind in only)]
    metafunc.parametrize("stack_spec", specs, ids=[s.id for s in specs], indirect=True,
                         scope="module")


# --------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def go_bins() -> Path:
    ok, message = build_go_programs()
    if not ok:
        if in_ci():
            pytest.fail(f"{message}\n(CI=true: the Go interop programs must build)")
        pytest.skip(f"Go interop programs unavailable: {message.splitlines()[0]}")
    return BIN


@pytest.fixture(scope="session")
def interop_redis(redis_server: RedisServer) -> RedisServer:
    """The session redis-server (shared with tests/); interop uses its DBs
    :data:`INTEROP_DBS` only."""
    return redis_server


@pytest.fixture(scope="session")
def new_db(interop_redis: RedisServer) -> Callable[[], str]:
    dbs = itertools.cycle(INTEROP_DBS)

    def allocate() -> str:
        if not interop_redis.running:  # a test of tests/ stopped it and left it stopped
            interop_redis.start()
        db = next(dbs)
        with interop_redis.client(db=db) as c:
            c.flushdb()
        return interop_redis.url_for_db(db)

    return allocate


class InteropRabbit:
    """interop's traced vhost on the session RabbitMQ node."""

    def __init__(self, server: RabbitMQServer) -> None:
        self.server = server
        self.vhost = server.ensure_vhost(INTEROP_VHOST)
        self.url = server.url_for(self.vhost)
        self._traced_pid: int | None = None
        self.ensure()

    def ensure(self) -> None:
        """The node running and tracing the vhost: tracing is not kept across a restart of
        the node (the vhost and its queues are), so it is turned on again after one."""
        if not self.server.running:
            self.server.start()
        if self._traced_pid != self.server.pid:
            self.server.ctl("trace_on", "-p", self.vhost)
            self._traced_pid = self.server.pid

    def version(self) -> str:
        try:
            out = self.server.ctl("version", timeout=30).strip()
        except Exception:
            return "?"
        return out.splitlines()[-1] if out else "?"


@pytest.fixture(scope="session")
def interop_rabbitmq(rabbitmq_server: RabbitMQServer) -> InteropRabbit:
    rabbit = InteropRabbit(rabbitmq_server)
    _STATE.rabbitmq_version = rabbit.version()
    return rabbit


class InteropAWS:
    """The interop moto server, its DynamoDB tables and its request recorder."""

    def __init__(self, server: MotoServer) -> None:
        self.server = server
        self.endpoint = server.endpoint_url
        self.recorder = AWSRecorder(self.endpoint)
        self.ensure()

    def ensure(self) -> None:
        """The server running, with the tables (created again if a test of tests/ reset or
        restarted the shared server: moto keeps nothing)."""
        if not self.server.running:
            self.server.start()
        ddb = self.server.client("dynamodb")
        existing = set(ddb.list_tables()["TableNames"])
        for table, key in ((TASK_STATES_TABLE, "TaskUUID"), (GROUP_METAS_TABLE, "GroupUUID")):
            if table not in existing:
                ddb.create_table(TableName=table, BillingMode="PAY_PER_REQUEST",
                                 KeySchema=[{"AttributeName": key, "KeyType": "HASH"}],
                                 AttributeDefinitions=[{"AttributeName": key,
                                                        "AttributeType": "S"}])

    def version(self) -> str:
        try:
            import boto3
            import moto

            return f"moto {moto.__version__}, boto3 {boto3.__version__}"
        except ImportError:
            return "?"


@pytest.fixture(scope="session")
def interop_aws(moto_server: MotoServer) -> InteropAWS:
    aws = InteropAWS(moto_server)
    _STATE.aws_version = aws.version()
    return aws


@pytest.fixture(scope="session")
def interop_mongodb(ferretdb_server: FerretDBServer) -> Iterator[MongoRecorder]:
    """A recording relay in front of the session's FerretDB (shared with tests/): the
    ``*+mongodb`` stacks' backend URL is the relay's (interop/tests/mongodb_tap.py); both sides
    use Machinery's default database ``machinery`` (task and group UUIDs are unique)."""
    _STATE.ferretdb_version = ferretdb_server.version()
    recorder = MongoRecorder(f"{ferretdb_server.host}:{ferretdb_server.port}").start()
    yield recorder
    recorder.close()


@pytest.fixture(scope="session")
def interop_memcache(memcached_nodes: MemcachedNodes, go_bins: Path) -> Iterator[MemcacheRecorder]:
    """Recording relays (``bin/mcrelay``) in front of the session's three memcached nodes
    (shared with tests/): the ``redis+memcache`` stacks' backend URL lists the relays
    (interop/tests/memcache_tap.py)."""
    recorder = MemcacheRecorder([n.address for n in memcached_nodes.nodes]).start()
    yield recorder
    recorder.close()


@pytest.fixture(scope="session")
def interop_full(request: pytest.FixtureRequest) -> bool:
    """``--interop-full``: every echo type on :data:`~interop.tests.harness.SUBSET_KINDS` too
    (pass it to :func:`~interop.tests.harness.echo_types`)."""
    return bool(request.config.getoption("--interop-full", default=False))


@pytest.fixture(scope="module")
def stack_spec(request: pytest.FixtureRequest) -> StackSpec:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def flavour(stack_spec: StackSpec) -> str:
    return stack_spec.flavour


_queue_serial = itertools.count(1)


@pytest.fixture(scope="module")
def new_stack(stack_spec: StackSpec, interop_redis: RedisServer, new_db: Callable[[], str],
              request: pytest.FixtureRequest) -> Callable[[str], Stack]:
    """``new_stack(name)``: a fresh scenario on this module's stack: Redis kinds get a new DB
    (broker, backend and counters share it, as before); AMQP and SQS kinds a queue name
    unique in the session (``q_<name>_<column>_<n>``; on the traced vhost, or created on the
    moto server), and a new Redis DB for the counters (and for the backend on ``amqp+redis``
    and ``sqs+redis``)."""

    def make(name: str) -> Stack:
        if stack_spec.kind == "redis":
            url = new_db()
            return Stack(stack_spec, url, url, url, f"q_{name}_{stack_spec.flavour}",
                         interop_redis)
        if stack_spec.kind == "redis+mongodb":
            mongo: MongoRecorder = request.getfixturevalue("interop_mongodb")
            url = new_db()
            return Stack(stack_spec, url, mongo.url, url,
                         f"q_{name}_{stack_spec.id.replace('+', '_')}_{next(_queue_serial)}",
                         interop_redis, mongodb=mongo)
        if stack_spec.backend_kind == "memcache":  # (Redis broker)
            recorder: MemcacheRecorder = request.getfixturevalue("interop_memcache")
            url = new_db()
            return Stack(stack_spec, url, recorder.url, url,
                         f"q_{name}_{stack_spec.id.replace('+', '_')}_{next(_queue_serial)}",
                         interop_redis, memcache=recorder)
        if stack_spec.broker_kind == "pubsub":  # (Redis backend)
            emulator = request.getfixturevalue("pubsub_emulator")
            db = new_db()
            queue = f"q_{name}_{stack_spec.id.replace('+', '_')}_{next(_queue_serial)}"
            st = Stack(stack_spec, "", db, db, queue, interop_redis, pubsub=emulator,
                       pubsub_project=f"mc-interop-{stack_spec.flavour}")
            st.broker = st.create_topic(queue)
            return st
        if stack_spec.broker_kind == "sqs":
            aws: InteropAWS = request.getfixturevalue("interop_aws")
            aws.ensure()
            settings = AWSSettings(aws.endpoint, sqs=True,
                                   dynamodb=stack_spec.backend_kind == "dynamodb")
            db = new_db()
            backend = DYNAMODB_URL if settings.dynamodb else db
            queue = f"q_{name}_{stack_spec.id.replace('+', '_')}_{next(_queue_serial)}"
            st = Stack(stack_spec, settings.broker_url, backend, db, queue, interop_redis,
                       aws=settings, moto=aws.server, recorder=aws.recorder)
            st.create_queue(queue)
            return st
        rabbit: InteropRabbit = request.getfixturevalue("interop_rabbitmq")
        rabbit.ensure()
        db = new_db()
        backend = rabbit.url if stack_spec.backend_kind == "amqp" else db
        queue = f"q_{name}_{stack_spec.id}_{next(_queue_serial)}"
        if stack_spec.backend_kind == "mongodb":
            mongo = request.getfixturevalue("interop_mongodb")
            return Stack(stack_spec, rabbit.url, mongo.url, db, queue, interop_redis,
                         rabbit.server, rabbit.vhost, mongodb=mongo)
        return Stack(stack_spec, rabbit.url, backend, db, queue, interop_redis,
                     rabbit.server, rabbit.vhost)

    return make


# --------------------------------------------------------------------------------------
# RESULTS.md
# --------------------------------------------------------------------------------------


class _State:
    def __init__(self) -> None:
        self.cells: dict[str, tuple[str, str, str, str]] = {}  # nodeid -> (dir, case, kind, flavour)
        self.skip_reasons: dict[tuple[str, str], str] = {}  # (kind, case) -> skip_on reason
        self.bug_reasons: dict[tuple[str, str], str] = {}  # (kind, case) -> xfail_on reason
        self.rabbitmq_version: str | None = None
        self.aws_version: str | None = None
        self.ferretdb_version: str | None = None
        self.order: list[str] = []  # cases, first-seen order
        self.last_case: dict[str, str] = {}
        self.extra: dict[str, str | None] = {}
        self.notes: list[tuple[tuple[str, str, str, str], str]] = []  # (cell, note)
        self.outcomes: dict[str, str] = {}
        self.deselected_interop = 0
        self.started = time.monotonic()
        self.only_kinds: tuple[str, ...] | None = None  # --interop-kinds
        self.full = False  # --interop-full
        # cells of SUBSET_KINDS left out of this run (no --interop-full): (kind, case) pairs,
        # and the node ids (deselected by us, so not a user's partial selection)
        self.subset_cut: dict[str, set[tuple[str, str]]] = {}
        self.subset_nodeids: set[str] = set()
        self.modules: set[Path] = set()  # modules with interop items, before --interop-kinds


_STATE = _State()


def _is_ours(item: pytest.Item) -> bool:
    return Path(str(item.path)).resolve().is_relative_to(HERE)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    st = _STATE
    st.modules |= {Path(str(i.path)).resolve() for i in items if _is_ours(i)}
    if st.only_kinds is not None:
        # only the matrix on those kinds (and with `other`, the tests outside the matrix);
        # matrix tests left without a column (pytest's "empty parameter set") do not run
        items[:] = [i for i in items if not _is_ours(i) or _selected(i, st.only_kinds)]
    if not st.full:
        _cut_to_subset(config, items)
    ours = [i for i in items if _is_ours(i)]
    # definition order (pytest may have regrouped items by module-scoped parameters)
    ours.sort(key=lambda i: (str(i.path), i.reportinfo()[1] or 0))
    for item in ours:
        m = item.get_closest_marker("matrix")
        if m is None:
            st.extra[item.nodeid] = None
            continue
        direction, case = m.args
        params = getattr(getattr(item, "callspec", None), "params", {})
        case = case.format(**params)
        spec = params.get("stack_spec")
        kind, flv = (spec.kind, spec.flavour) if isinstance(spec, StackSpec) else ("redis", "-")
        st.cells[item.nodeid] = (direction, case, kind, flv)
        if "amqp" in kind:
            item.add_marker(pytest.mark.rabbitmq)
        if "sqs" in kind or "dynamodb" in kind:
            item.add_marker(pytest.mark.aws)
        if "memcache" in kind:
            item.add_marker(pytest.mark.memcache)
        if "mongodb" in kind:
            item.add_marker(pytest.mark.mongodb)
        missing = _missing_python(kind)
        if missing:
            item.add_marker(pytest.mark.skip(reason=f"pending: {missing}"))
        why = _mongodb_skip(kind, direction, case, item)
        if why:
            item.add_marker(pytest.mark.skip(reason=why))
            st.skip_reasons[(kind, case)] = why
        for skip in item.iter_markers("skip_on"):
            if kind in skip.args:
                reason = str(skip.kwargs["reason"])
                item.add_marker(pytest.mark.skip(reason=f"by design on {kind}: {reason}"))
                st.skip_reasons[(kind, case)] = reason
        for bug in item.iter_markers("xfail_on"):
            if kind in bug.args:
                reason = str(bug.kwargs["reason"])
                item.add_marker(pytest.mark.xfail(strict=True, reason=f"known bug: {reason}"))
                st.bug_reasons[(kind, case)] = reason
        if case not in st.order:
            # keep a module's own order: a case only one direction has goes right after
            # the case that precedes it in its module
            prev = st.last_case.get(item.module.__name__ if item.module else "")
            pos = st.order.index(prev) + 1 if prev in st.order else len(st.order)
            st.order.insert(pos, case)
        st.last_case[item.module.__name__ if item.module else ""] = case


#: The MongoDB columns (``*+mongodb``): the matrix cells skipped there by design, with why
#: (Py->Go cells with no value left: every one is above int64's range, which a Go worker
#: cannot store there).  What crosses between Go and Python on MongoDB, and what Go does with
#: those values, is pinned by interop/tests/test_interop_mongodb.py.
_MONGODB_PY_TO_GO_CASES = {
    "echo []uint": GO_CANNOT_STORE,
    "echo []uint64": GO_CANNOT_STORE,
}


def _mongodb_skip(kind: str, direction: str, case: str, item: pytest.Item) -> str | None:
    if kind.endswith("+mongodb") and direction == PY_TO_GO:
        return _MONGODB_PY_TO_GO_CASES.get(case)
    return None


#: The machinery_compat module each broker/backend kind needs.
_PY_MODULES = {
    "broker": {"amqp": "machinery_compat.brokers.amqp", "sqs": "machinery_compat.brokers.sqs"},
    "backend": {"amqp": "machinery_compat.backends.amqp",
                "dynamodb": "machinery_compat.backends.dynamodb",
                "memcache": "machinery_compat.backends.memcache",
                "mongodb": "machinery_compat.backends.mongodb"},
}


def _selected(item: pytest.Item, kinds: tuple[str, ...]) -> bool:
    """Whether an interop item belongs to an ``--interop-kinds`` run of ``kinds``."""
    if item.get_closest_marker("matrix") is None:
        return OTHER in kinds
    spec = getattr(getattr(item, "callspec", None), "params", {}).get("stack_spec")
    if isinstance(spec, StackSpec):
        return True  # (the parametrization has only the selected kinds' columns)
    # a matrix test without a stack column: a Redis cell, unless its column set was empty
    return "stack_spec" not in getattr(item, "fixturenames", ()) and "redis" in kinds


def _missing_python(kind: str) -> str | None:
    """What machinery_compat still lacks for this kind (its AWS modules are being written,
    issue #10), or None."""
    import importlib.util

    broker, backend = kind.split("+")[0], kind.split("+")[-1]
    wanted = [m for m in (_PY_MODULES["broker"].get(broker), _PY_MODULES["backend"].get(backend))
              if m is not None]
    absent = [m for m in wanted if importlib.util.find_spec(m) is None]
    return f"machinery_compat has no {' / '.join(absent)} yet" if absent else None


def _cut_to_subset(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without ``--interop-full``: deselect, on SUBSET_KINDS, the echo cells of the types
    outside SUBSET_ECHO_TYPES and the cells of tests marked ``full_only`` (reported as
    deselected; RESULTS.md keeps those kinds' sections of the last run that had them all)."""
    st = _STATE
    keep, cut = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        spec = params.get("stack_spec")
        m = item.get_closest_marker("matrix")
        if (_is_ours(item) and m is not None and isinstance(spec, StackSpec)
                and spec.kind in SUBSET_KINDS
                and (("echo_type" in params and params["echo_type"] not in SUBSET_ECHO_TYPES)
                     or item.get_closest_marker("full_only") is not None)):
            cut.append(item)
            st.subset_cut.setdefault(spec.kind, set()).add((m.args[0], m.args[1].format(**params)))
            st.subset_nodeids.add(item.nodeid)
        else:
            keep.append(item)
    if cut:
        items[:] = keep
        config.hook.pytest_deselected(items=cut)


def pytest_deselected(items: list[pytest.Item]) -> None:
    if not items:
        return
    st = _STATE
    st.deselected_interop += sum(1 for i in items
                                 if _is_ours(i) and i.nodeid not in st.subset_nodeids)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    st = _STATE
    if report.nodeid in st.cells:
        outcomes: dict[str, str | None] = st.outcomes  # type: ignore[assignment]
    elif report.nodeid in st.extra:
        outcomes = st.extra
    else:
        return
    for key, value in report.user_properties:
        if key == "note" and report.when == "call" and report.nodeid in st.cells:
            st.notes.append((st.cells[report.nodeid], str(value)))
    prev = outcomes.get(report.nodeid)
    if report.failed:
        outcomes[report.nodeid] = "failed"
    elif report.skipped and hasattr(report, "wasxfail") and prev != "failed":
        outcomes[report.nodeid] = "xfailed"
    elif report.skipped and prev != "failed":
        outcomes[report.nodeid] = "skipped"
    elif report.passed and report.when == "call" and prev is None:
        outcomes[report.nodeid] = "passed"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    st = _STATE
    ran = [o for o in st.outcomes.values() if o in ("passed", "failed")]
    if not ran or st.deselected_interop or session.config.option.collectonly:
        return
    if {p.resolve() for p in HERE.glob("test_*.py")} - st.modules:
        return  # only some modules ran: a partial table must not replace the full one
    # two processes sharing a run (scripts/pytest-parallel.sh) each replace their kinds'
    # sections: one at a time
    with open(RESULTS_PATH.with_name("RESULTS.md.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            old = (RESULTS_PATH.read_text(encoding="utf-8")
                   if st.only_kinds is not None or st.subset_cut else None)
        except OSError:
            old = None
        try:
            RESULTS_PATH.write_text(_render(st, old), encoding="utf-8")
        except OSError as e:  # pragma: no cover
            sys.stderr.write(f"could not write {RESULTS_PATH}: {e}\n")


_ICON = {"passed": "✅", "failed": "❌", "skipped": "skipped", "xfailed": "❌ known bug",
         None: "not run"}
_SHORT = {"Python → Go worker": "Py→Go", "Go → Python worker": "Go→Py", "mixed pool": "mixed",
          "workflows": "wf"}


def _versions() -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        gomod = (INTEROP / "go.mod").read_text()
    except OSError:
        gomod = ""
    for label, mod in (("Machinery v1", r"github\.com/RichardKnop/machinery"),
                       ("Machinery v2", r"github\.com/RichardKnop/machinery/v2"),
                       ("go-redis", r"github\.com/redis/go-redis/v9"),
                       ("amqp091-go", r"github\.com/rabbitmq/amqp091-go"),
                       ("aws-sdk-go", r"github\.com/aws/aws-sdk-go"),
                       ("aws-sdk-go-v2", r"github\.com/aws/aws-sdk-go-v2"),
                       ("aws-sdk-go-v2 sqs", r"github\.com/aws/aws-sdk-go-v2/service/sqs"),
                       ("aws-sdk-go-v2 dynamodb",
                        r"github\.com/aws/aws-sdk-go-v2/service/dynamodb"),
                       ("mongo-driver", r"go\.mongodb\.org/mongo-driver")):
        m = re.search(rf"^\s*(?:require\s+)?{mod}\s+(v\S+)", gomod, re.M)
        out[label] = m.group(1) if m else "?"
    for label, cmd in (("Go", ["go", "version"]), ("redis-server", ["redis-server", "--version"])):
        try:
            text = subprocess.run(cmd, capture_output=True, text=True, timeout=20,
                                  check=False).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            text = "?"
        out[label] = text
    out["Python"] = platform.python_version()
    try:
        import pymongo

        out["pymongo"] = pymongo.version
    except ImportError:
        out["pymongo"] = "?"
    try:
        import amqp
        import kombu

        out["py-amqp"] = f"kombu {kombu.__version__}, py-amqp {amqp.__version__}"
    except ImportError:
        out["py-amqp"] = "?"
    return out


def _kind_flavours(kind: str) -> list[str]:
    return [s.flavour for s in STACKS if s.kind == kind]


_COUNTS = re.compile(r"(\d+) / (\d+) / (\d+) / (\d+)")


def _split_sections(text: str) -> dict[str, list[str]]:
    """A RESULTS.md's ``## `` sections, by title (each with its heading line)."""
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("## "):
            current = out.setdefault(line[3:].strip(), [])
        if current is not None:
            current.append(line)
    return out


def _section_totals(lines: list[str]) -> dict[str, int]:
    """passed / failed / skipped / known bug summed over a kind section's per-flavour table."""
    total = {"passed": 0, "failed": 0, "skipped": 0, "xfailed": 0}
    for line in lines:
        if line.startswith("| "):
            for m in _COUNTS.finditer(line):
                for key, n in zip(total, m.groups(), strict=True):
                    total[key] += int(n)
    return total


def _render(st: _State, old: str | None = None) -> str:
    """RESULTS.md for this run; with ``old`` (a ``--interop-kinds`` run), the other kinds'
    sections are kept from it and the header's totals summed over every section."""
    counts: dict[tuple[str, str, str], dict[str, int]] = {}
    grid: dict[tuple[str, str, str, str], str | None] = {}
    for nodeid, (direction, case, kind, flv) in st.cells.items():
        outcome = st.outcomes.get(nodeid)
        grid[(direction, case, kind, flv)] = outcome
        c = counts.setdefault((direction, kind, flv),
                              {"passed": 0, "failed": 0, "skipped": 0, "xfailed": 0})
        if outcome in c:
            c[outcome] += 1
    v = _versions()
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    elapsed = time.monotonic() - st.started
    kinds = [k for k in KINDS if any(key[2] == k for key in grid)]
    how = ("a full run" if st.only_kinds is None
           else f"`--interop-kinds {','.join(st.only_kinds)}`")
    if st.full:
        how += " with `--interop-full`"
    old_sections = _split_sections(old) if old is not None else {}
    for section in old_sections.values():
        while section and not section[-1].strip():
            section.pop()
    run = f"{now}, {how}, {elapsed:.0f} s for {', '.join(kinds)}"
    sections = {}
    for k in kinds:
        title, cut = KIND_TITLES[k], st.subset_cut.get(k)
        kept = old_sections.get(title)
        if cut and kept and not any(line.startswith(_SUBSET_NOTE) for line in kept):
            # the last section with every type stays; this run's subset outcome is noted
            sections[title] = _note_subset_rerun(kept, k, grid, now)
        else:
            sections[title] = _render_kind(st, k, grid, counts, run, cut)
    ordered = [sections.get(t) or old_sections.get(t) for t in (KIND_TITLES[k] for k in KINDS)]
    body = [s for s in ordered if s]
    total = {"passed": 0, "failed": 0, "skipped": 0, "xfailed": 0}
    for section in body:
        for key, n in _section_totals(section).items():
            total[key] += n
    old_head = (old or "").split("\n## ", 1)[0]
    rabbit = (f"; RabbitMQ {st.rabbitmq_version} ({v['py-amqp']} on the Python side, "
              f"amqp091-go `{v['amqp091-go']}` on the Go side)" if st.rabbitmq_version else "")
    if not rabbit and old is not None:  # (this run did not start RabbitMQ)
        m = re.search(r"; RabbitMQ [^;]*?amqp091-go `[^`]*` on the Go side\)", old_head)
        rabbit = m.group(0) if m else ""
    aws = (f"; {st.aws_version} (Go v1: aws-sdk-go `{v['aws-sdk-go']}`, Go v2: aws-sdk-go-v2 "
           f"`{v['aws-sdk-go-v2']}`, sqs `{v['aws-sdk-go-v2 sqs']}`, dynamodb "
           f"`{v['aws-sdk-go-v2 dynamodb']}`)" if st.aws_version else "")
    if not aws and old is not None:  # (this run did not start moto)
        m = re.search(r"; moto [^;]*?, dynamodb `[^`]*`\)", old_head)
        aws = m.group(0) if m else ""
    mongo = (f"; FerretDB {st.ferretdb_version} with its SQLite backend for MongoDB (pymongo "
             f"{v['pymongo']} on the Python side, mongo-driver `{v['mongo-driver']}` on the Go "
             f"side)" if st.ferretdb_version else "")
    if not mongo and old is not None:  # (this run did not start FerretDB)
        m = re.search(r"; FerretDB [^;]*?mongo-driver `[^`]*` on the Go side\)", old_head)
        mongo = m.group(0) if m else ""
    if st.only_kinds is None or OTHER in st.only_kinds:
        ex = list(st.extra.values())
        extra = (f"{len(ex)} other test(s) in interop/tests (regressions): "
                 f"{ex.count('passed')} passed, {ex.count('failed')} failed, "
                 f"{ex.count('skipped')} skipped")
        date = f"* Date: {now}; {elapsed:.0f} s"
    else:
        m = re.search(r"\d+ other test\(s\) in interop/tests[^;\n]*?skipped", old_head)
        extra = f"{m.group(0)} (the last run that had them)" if m else "other tests: not run"
        m = (re.search(r"the last full run: ([^)\n]*)", old_head)
             or re.search(r"^\* Date: ([^;(\n]*)", old_head, re.M))
        date = (f"* Date: {now} ({', '.join(st.only_kinds)} only"
                + (f"; the last full run: {m.group(1).strip()}" if m else "") + ")")
    lines = [
        "# Interop results: Go Machinery ⇄ machinery_compat on Redis, RabbitMQ and AWS (moto)",
        "",
        "Generated by `interop/tests/conftest.py` from the outcomes of the last run of",
        "`python -m pytest interop/tests` per kind — a full run, or `--interop-kinds …` for the",
        "kinds it names (each section says which) — (do not edit by hand).  The extra backend",
        f"combinations ({', '.join(SUBSET_KINDS)}) run a representative subset of the echo",
        "types by default: their tables are from the last run with `--interop-full` (`make",
        "interop-full`), with a line on how the subset did in the last default run.",
        "",
        date,
        f"* Machinery: v1 `{v['Machinery v1']}` (flavour `v1`), v2 `{v['Machinery v2']}` "
        f"(flavours `v2-redigo`, `v2-goredis` with go-redis `{v['go-redis']}`, and `v2` "
        "= no Redis client involved)",
        f"* {v['Go']}; {v['redis-server'].split(' sha=')[0]}{rabbit}{aws}{mongo}; "
        f"Python {v['Python']}",
        f"* Outcome: {total['passed']} passed, {total['failed']} failed, {total['skipped']} "
        f"skipped, {total['xfailed']} known machinery_compat bug(s) (strict xfail) of "
        f"{sum(total.values())} matrix cells; {extra}",
        "",
        "Directions: **Py→Go** = Python producer, Go worker (results read by Python's",
        "`AsyncResult` and by Go's `AsyncResult` via `mcproducer`); **Go→Py** = Go producer",
        "(`mcproducer`, `AsyncResult.Get`), Python worker; **mixed** = one Go and one Python",
        "worker on the same queue, tasks from both producers; **wf** = workflows (chains,",
        "groups, chords) whose steps run on a Go and a Python worker sharing one queue, each",
        "worker registering a different set of task names, sent by either producer.",
        "On the AMQP result backend a read consumes the task's oldest state message (§6.4), so",
        "each result is read once: by the side that did *not* write it (Python reads what the",
        "Go worker stored, Go reads what the Python worker stored); the bytes of every state",
        "message are checked from RabbitMQ's firehose.",
    ]
    for section in body:
        lines += ["", *section]
    lines += ["", NOT_IN_MATRIX.strip(), ""]
    return "\n".join(lines)


_SUBSET_NOTE = "Representative subset:"
_RERUN_NOTE = "Representative-subset run"


def _note_subset_rerun(section: list[str], kind: str,
                       grid: dict[tuple[str, str, str, str], str | None], now: str) -> list[str]:
    """A kept section (the last run of every cell of ``kind``) with a line saying how this
    run's representative subset of it went (replacing the line of an earlier one)."""
    outcomes = [o for key, o in grid.items() if key[2] == kind]
    n = {o: outcomes.count(o) for o in ("passed", "failed", "skipped", "xfailed")}
    note = (f"{_RERUN_NOTE} ({now}, without `--interop-full`): {n['passed']} passed, "
            f"{n['failed']} failed, {n['skipped']} skipped, {n['xfailed']} known bug(s) of "
            f"the {len(outcomes)} cells it runs; the table below is the last run of every cell.")
    out: list[str] = []
    for line in section:  # drop the earlier note with the blank line after it
        if line.startswith(_RERUN_NOTE) or (not line.strip() and out and not out[-1].strip()):
            continue
        out.append(line)
    at = next((i + 1 for i, line in enumerate(out) if line.startswith("Run: ")), None)
    if at is None:  # a section kept from before Run: lines were written
        out[1:1] = ["", "Run: the last full run (its date was not recorded)."]
        at = 3
    while at < len(out) and not out[at].strip():
        at += 1
    return [*out[:at], note, "", *out[at:]]


def _render_kind(st: _State, kind: str, grid: dict[tuple[str, str, str, str], str | None],
                 counts: dict[tuple[str, str, str], dict[str, int]], run: str,
                 cut: set[tuple[str, str]] | None = None) -> list[str]:
    """One kind's section of RESULTS.md (its heading first, trailing blank lines dropped);
    ``cut``: the cells left out of this run (the representative subset of SUBSET_KINDS)."""
    flavours = _kind_flavours(kind)
    columns = [(d, f) for d in DIRECTIONS for f in flavours
               if any(k[0] == d and k[2] == kind and k[3] == f for k in grid)]
    cases = [c for c in st.order if any(k[1] == c and k[2] == kind for k in grid)]
    lines = [f"## {KIND_TITLES[kind]}", "", f"Run: {run}.", ""]
    if cut:
        lines += [f"{_SUBSET_NOTE} the echo cases of {', '.join(SUBSET_ECHO_TYPES)} only "
                  f"(`make interop-full` runs the other {len({c for _, c in cut})} too).", ""]
    lines += ["| case | " + " | ".join(f"{_SHORT.get(d, d)} {f}" for d, f in columns) + " |",
              "|---|" + "|".join(":-:" for _ in columns) + "|"]
    for case in cases:
        row = [_ICON[grid[(d, case, kind, f)]] if (d, case, kind, f) in grid else ""
               for d, f in columns]
        lines.append(f"| {case} | " + " | ".join(row) + " |")
    lines += ["", "Per flavour and direction (passed / failed / skipped / known bug):", "",
              "| direction | " + " | ".join(flavours) + " |",
              "|---|" + "|".join(":-:" for _ in flavours) + "|"]
    for d in DIRECTIONS:
        cells = []
        for f in flavours:
            c = counts.get((d, kind, f))
            cells.append(f"{c['passed']} / {c['failed']} / {c['skipped']} / {c['xfailed']}"
                         if c else "")
        if any(cells):
            lines.append(f"| {_SHORT.get(d, d)} | " + " | ".join(cells) + " |")
    reasons = sorted((case, r) for (k, case), r in st.skip_reasons.items() if k == kind)
    if reasons:
        lines += ["", "Skipped here by design:", ""]
        lines += [f"* {case}: {r}" for case, r in reasons]
    bugs = sorted((case, r) for (k, case), r in st.bug_reasons.items() if k == kind)
    if bugs:
        lines += ["", "Known machinery_compat bugs (strict xfail):", ""]
        lines += [f"* {case}: {r}" for case, r in bugs]
    notes = [(case, flv, note) for (_d, case, k, flv), note in st.notes if k == kind]
    if notes:
        lines += ["", "Observed in this run:", ""]
        lines += [f"* {case} [{flv}]: {note}" for case, flv, note in notes]
    return lines


NOT_IN_MATRIX = """
## Left out of the matrix, and why

* **Argument-reflection failures sent to a Go worker** (`{"Type":"int64","Value":1.5}`,
  `"1"` for an `int64`): Machinery's `Process` returns the error to the broker after
  storing FAILURE, and then v2-redigo livelocks, v2-goredis and v1 lose already-popped
  messages (interop/README.md, last section); a JSON bool/object for a slice type even
  crashes the Go process (protocol notes §2.2). The Python worker's answer to the same bytes
  (FAILURE `Reflect task args error: …`, Go's texts) is tested in
  `tests/behaviour/test_worker.py`.
* **Undecodable messages sent to a Go worker**: the same consumer breakage (protocol
  notes §5.2).
* **Chords sent by Go's `SendGroup`/`SendChord`**: `mcproducer` only calls `SendTask`, so the
  Go-produced chords (wf) get `InitGroup` and the members' PENDING states from Python first
  (what `SendGroup` does before publishing, §3.1), then Go publishes every member.

* **On AMQP, what is Redis-specific is observed differently, not skipped**: state writes
  through RabbitMQ's firehose instead of `MONITOR`; ETAs through Go's delay queues
  (`delay.<ms>.<exchange>.<queue>`, arguments checked with `rabbitmqctl list_queues`; no
  worker moves anything, so "moved by both workers" becomes "published to a delay queue by
  both producers, run by both workers"); on the AMQP backend (no group meta) the chord
  trigger is attributed to the connection that published the callback.  Only reads that
  the AMQP backend makes impossible are left out there: a second read of a result (Go
  reading what the Go worker stored after Python read it, and the reverse) and reads of
  group metadata.
* **AMQP broker + Redis backend runs a representative subset**: everything except the
  cases that exercise the broker alone (priority, `amqp.delayed_queue`, 200 delayed tasks
  from both producers, the unregistered-task hand-offs, the CLI worker), which would only
  repeat the AMQP + AMQP column with the same broker.  By default (without
  `--interop-full`) it also runs the echo cases of a few types only (bool, int64, uint64,
  float64, string, []byte, []string): every type crosses the same broker in the AMQP + AMQP
  column and the same Redis backend in the Redis column.
* **Priority and `amqp.delayed_queue`** exist on AMQP only (the Redis broker ignores
  `Priority`); those cells are skipped on Redis.
* **`queue_binding_args`, non-direct exchange types, `amqps://`, several broker URLs**: not
  in the matrix yet (the Go programs take the `-amqp-*` flags for them).

* **On AWS (SQS broker, DynamoDB or Redis backend, one moto server)** the Go programs get SDK
  clients with moto's endpoint, dummy credentials and region `us-east-1` (v1: aws-sdk-go through
  its URL factories, v2: aws-sdk-go-v2); what Redis shows through `MONITOR`, moto's request
  recording shows: every `SendMessage` (body, `DelaySeconds`, FIFO ids), visibility change and
  `PutItem`/`UpdateItem` of a state, with the client that made it.  Both sides long-poll with
  `receive_wait_time_seconds: 1` (Machinery's 0 is a busy loop).  SQS + Redis backend runs the
  representative subset, as AMQP + Redis does (echo types included).
* **DynamoDB results are Go's `%v` text**, so Go's `AsyncResult` reads `string` results only:
  for every other type the cells check the reflection error Go reports (`3 is not int64`,
  `91 is not string` for a `[]string`, `illegal base64 data at input byte 0` for unsigned and
  byte slices), and the value through Python's `AsyncResult`, which parses the text back.  A
  Python worker writes RECEIVED and STARTED as one update there (states PENDING, STARTED,
  SUCCESS).
* **Chords with a Go callback on DynamoDB** are left out: a Go worker appends the members'
  results to the callback as the strings it read back, the Go callback cannot reflect them,
  and Go's SQS consumer never recovers from that (the message fails again after every
  visibility timeout).  Chords with Python callbacks run there, each callback's outcome
  checked against who sent it.
* **Workflows on SQS** give the Python-only tasks a queue of their own: a Go worker that
  receives a task it lacks returns an error to its SQS consumer, which leaks a receive loop
  (and can then never quit); the unregistered-task cells pin that behaviour instead.
* **Priority and `amqp.delayed_queue`** mean nothing on SQS (skipped there); **delays beyond
  15 minutes** run with the Python producer's step limit shortened to 2 s (`max_delay`), as
  SQS's own 900 s would make the cell wait a quarter of an hour.

## Go behaviour worth knowing (seen in these runs)

* A Go worker moves at most one due task from `delayed_tasks` per poll period
  (default 500 ms), and the go-redis flavour takes the *latest*-due first
  (`ZREVRANGEBYSCORE`): with several tasks due together, an early one can wait several
  periods. The Python worker moves every due task in one Lua call.
* A Go worker keeps RPUSHing a task it does not have back to its queue in a busy loop
  until another worker takes it (the unregistered-task cases); on AMQP it `basic.nack`s it
  with requeue, the same loop through RabbitMQ.
* On AMQP a Go worker cannot retry a task whose Signature `Headers` hold a number (its
  `UseNumber` decoding gives `json.Number`, which amqp091-go refuses in a headers table):
  the retry is never published and the task stays in `RETRY` (the known bug above, via
  the `retries` header a Python retry adds).
* The AMQP backend hands chord callbacks the members' results in completion order, and
  opens a new connection for every state write and read (interop/README.md).
* On SQS (v1 and v2) `DelaySeconds` is truncated to whole seconds (a 1 s retry runs at once),
  an ETA beyond 15 minutes fails to publish after PENDING was written, FIFO retries reuse the
  task UUID as deduplication id (SQS drops the second one), every consumer error leaks a
  receive loop after which `Quit` never returns, and v2's visibility heartbeat runs two
  loops (interop/README.md).
"""

