"""The behaviour suite: worker, producer and canvas behaviour, written once and run over
every broker and result-backend combination.

Fixtures (names are stable; write new behaviour tests against them):

* ``app_kind``  the combination under test, one of :data:`KINDS`:
  ``"redis"`` (Redis broker + Redis backend, same server), ``"memory"`` (memory broker +
  memory backend), ``"redis+memory"`` (Redis broker + memory backend), ``"amqp"`` (AMQP
  broker + AMQP backend, one RabbitMQ vhost), ``"amqp+redis"`` (AMQP broker + Redis
  backend, the common production setup), ``"sqs+redis"`` (SQS broker on the session moto
  server + Redis backend) and ``"redis+memcache"`` (Redis broker + Memcache backend on the
  session's three memcached nodes, ``memcache_url``: flushed per test; marker ``memcache``);
  ``"redis-sentinel"`` (Redis broker + backend through the session's three sentinels,
  ``redis.master_name``/``sentinel_password`` and ``wait_replicas: 1``: ``redis_settings``;
  the master's DB 0 flushed per test); ``"redis-cluster"`` (Redis broker + backend on the
  session's six-node Redis Cluster, ``redis.cluster_enabled`` and every address in the URL,
  as Go v2 reads them: ``redis_settings``; every master flushed per test).
  A test runs over :data:`DEFAULT_KINDS` (``redis``, ``memory``,
  ``amqp``, ``sqs+redis``); mark it ``@pytest.mark.mixed`` to run it on ``redis+memory`` and
  ``amqp+redis`` too, or ``@pytest.mark.kinds("memory", …)`` to choose the kinds exactly
  (both work on a module via ``pytestmark``).  Redis kinds use the session redis-server
  (``redis_url``: flushed per test; skipped when redis-server is missing, failed under CI=true)
  and get the ``redis`` marker; AMQP kinds use a fresh vhost of the session RabbitMQ node
  (``rabbitmq_vhost_url``) and get the ``rabbitmq`` marker; SQS kinds use the session moto
  server (``moto_server``) in region :data:`SQS_REGION`, whose queues are deleted before each
  test and :data:`SQS_QUEUES` created (SQS brokers create no queues), and get the ``aws``
  marker.  AMQP apps set
  ``amqp.binding_key`` to the default queue, so default-routed tasks land in exactly the
  queue the workers consume, as on the other brokers (Go's default config, where
  ``machinery_task`` and ``machinery_tasks`` both get a copy, is covered by
  ``tests/integration/test_amqp_layout.py``).
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
  task or group UUID; write one as a Go worker would).  On AMQP ``messages`` peeks (the
  messages stay; ones a worker holds unacked are not seen), ``state_bytes`` is the newest
  state message of the task's queue (peeked; else the newest one this app consumed), and
  ``delayed()`` browses the delay queues this app's broker published into, with the due time
  given to ``push_delayed`` or else the body's ETA (a delay queue keeps no score).  On SQS
  ``messages`` peeks too (receives every visible message, then makes them visible again;
  in-flight ones are not seen), ``dead`` reads ``<queue>-dead`` (SQS names allow no ``.``),
  ``pending`` decodes ``messages`` (the broker's ``pending_tasks`` cannot peek), and
  ``delayed()`` lists what this test's apps sent (or ``push_delayed`` pushed) whose ETA (due
  time) is still ahead: SQS cannot list delayed messages.
* ``eager_app``  an app on ``eager://<unique name>`` (eager broker, memory-backed results).
* ``producer`` / ``producer_api``  what a test sends and reads through: ``producer.send_task``,
  ``.apply_async(canvas)``, ``.send_group``, ``.AsyncResult``.  ``producer_api`` is ``"sync"``
  (the app's own calls and results), except in tests marked ``@pytest.mark.both_apis``: they
  also run with ``"aio"`` on :data:`~tests.behaviour._aio_driver.AIO_KINDS` (``redis``,
  ``amqp+redis``, ``amqp``, ``redis-sentinel``), where every send and read is ``app.aio``'s,
  awaited on a loop thread behind a sync-looking result view, and ``start_worker`` starts
  asyncio-pool workers running the app's tasks as ``async def`` (tests/behaviour/_aio_driver.py).

Helpers: :func:`tests.helpers.wait_for` (re-exported here); ``StartWorker`` (the type of
``start_worker``).  Every test logs ``machinery_compat`` at INFO into ``caplog``.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from machinery_compat import Machinery, Signature
from machinery_compat.backends import memory as memory_backend
from machinery_compat.backends.amqp import AMQPBackend
from machinery_compat.backends.dynamodb import DynamoDBBackend
from machinery_compat.backends.memcache import MemcacheBackend
from machinery_compat.backends.mongodb import MongoDBBackend
from machinery_compat.brokers import memory as memory_broker
from machinery_compat.brokers.amqp import MIN_DELAY_MS, AMQPBroker
from machinery_compat.brokers.azure import AzureBroker
from machinery_compat.brokers.base import Delivery
from machinery_compat.brokers.pubsub import PubSubBroker
from machinery_compat.brokers.sqs import SQSBroker, dead_letter_queue
from machinery_compat.config import AMQPConfig, AzureConfig, Config, SQSConfig
from machinery_compat.worker import Worker
from tests.helpers import wait_for

from ._aio_driver import (
    AIO_KINDS,
    PRODUCER_APIS,
    AioProducer,
    SyncProducer,
    as_coroutines,
    make_producer,
)

__all__ = ["DEFAULT_KINDS", "KINDS", "Probe", "StartWorker", "wait_for"]

#: Every broker+backend combination the behaviour suite knows.
KINDS = ("redis", "memory", "redis+memory", "amqp", "amqp+redis", "sqs+redis", "sqs+dynamodb",
         "memory+dynamodb", "redis+memcache", "pubsub+redis", "redis+mongodb", "azure+redis",
         "redis-sentinel", "redis-cluster")
#: What a test runs over unless marked ``mixed`` or ``kinds(...)``.
DEFAULT_KINDS = ("redis", "memory", "amqp", "sqs+redis", "sqs+dynamodb", "pubsub+redis",
                 "azure+redis")

#: SQS kinds: the moto region their queues live in (nothing else uses it: the queues there are
#: deleted before each test), the account of the broker URL, and the queues the behaviour
#: tests use (created before each test: an SQS broker creates none, as Go's).
SQS_REGION = "us-west-2"
SQS_ACCOUNT = "123456789012"
SQS_QUEUES = ("machinery_tasks", "qa", "qb", "qw", "qx", "q", "other", "q2", "qd", "qlower",
              "elsewhere", "a", "b")

StartWorker = Callable[..., Worker]

_NO_MERGE = ("Go's AMQP result backend never merges: each state is its own message, so "
             "RECEIVED..SUCCESS carry TaskName \"\" and a zero CreatedAt (see "
             "tests/integration/test_amqp_backend.py)")
_NO_GROUP_META = ("Go's AMQP result backend keeps no group meta (InitGroup does nothing): a "
                  "group is complete when its queue holds GroupTaskCount states (see "
                  "tests/integration/test_amqp_backend.py)")
#: Behaviour tests that check what an AMQP broker or backend does differently, by Go's design:
#: test name -> ("broker" | "backend", why).  Their AMQP params are reported as skipped with
#: the reason (a "backend" entry concerns ``amqp`` only; ``amqp+redis`` keeps Redis results).
AMQP_LIMITS: dict[str, tuple[str, str]] = {
    "test_merge_keeps_task_name_and_created_at": ("backend", _NO_MERGE),
    "test_go_produced_message_final_state_byte_for_byte": ("backend", _NO_MERGE),
    "test_failure_state_and_error_text": ("backend", _NO_MERGE),
    "test_failure_state_bytes_stay_go_exact_and_record_beside_them": ("backend", _NO_MERGE),
    "test_group_meta_chord_trigger_once_and_purge": ("backend", _NO_GROUP_META),
    "test_group_results_in_order": ("backend", _NO_GROUP_META),
    "test_chord_callback_gets_member_results_in_group_order": (
        "backend", "Go's AMQP GroupTaskStates returns the members' states in completion "
                   "order, so chord callbacks get results in that order"),
    "test_requeue_front_and_back_keep_the_bytes_and_order": (
        "broker", "AMQP cannot put new bytes at a queue's head; a requeued delivery goes back "
                  "to its own place (see tests/integration/test_amqp_broker.py)"),
    "test_move_due_delayed_routes_by_routing_key": (
        "broker", "workers move due tasks out of Redis' delayed_tasks; on AMQP RabbitMQ "
                  "dead-letters them from the delay queues (see test_amqp_layout.py)"),
}

_NO_PEEK = ("SQS cannot list a queue's messages without receiving them (which hides them and "
            "counts toward a redrive policy): pending_tasks/delayed_tasks raise "
            "NotImplementedError naming queue_depth() (tests/integration/test_sqs_broker.py)")
_EMPTY_ROUTING_KEY = ("Go's SQS broker encodes the body before defaulting the routing key: a task "
                      "sent without a queue carries \"RoutingKey\":\"\" (§5.3, §12.3; "
                      "tests/unit/test_golden.py, tests/integration/test_sqs_broker.py)")
#: Behaviour tests that check what SQS cannot do, by its design or Go's: test name -> why.
#: Their SQS params are reported as skipped with the reason.
SQS_LIMITS: dict[str, str] = {
    "test_requeue_front_and_back_keep_the_bytes_and_order": (
        "SQS has no queue head or tail: a message given back becomes visible again where it "
        "was (ChangeMessageVisibility 0), bytes not received from SQS are sent anew"),
    "test_dead_letters_are_a_plain_queue": (
        "SQS queue names allow no '.': undecodable messages go to <queue>-dead "
        "(tests/integration/test_sqs_broker.py)"),
    "test_move_due_delayed_routes_by_routing_key": (
        "SQS delays messages itself (DelaySeconds): there are no delayed tasks for workers to "
        "move (ETAs: tests/integration/test_sqs_broker.py)"),
    "test_make_app_shares_broker_and_backend": _NO_PEEK,
    "test_pending_tasks_inspection": _NO_PEEK,
    "test_eta_goes_to_delayed_tasks_due_in_nanoseconds": _NO_PEEK,
    "test_send_task_pushes_go_bytes_and_pending_first": _EMPTY_ROUTING_KEY,
    "test_generated_ids_and_default_headers": _EMPTY_ROUTING_KEY,
}


_DYNAMODB_TTL = ("Go's DynamoDB backend stores TTL = now + results_expire_in on SUCCESS and "
                 "FAILURE (the TaskState's TTL field, 0 elsewhere), so the state's JSON differs "
                 "in \"TTL\" (see tests/integration/test_dynamodb_backend.py)")
#: Behaviour tests that check what the DynamoDB backend does differently, by Go's design:
#: test name -> why.  Their ``*+dynamodb`` params are reported as skipped with the reason.
DYNAMODB_LIMITS: dict[str, str] = {
    "test_merge_keeps_task_name_and_created_at": _DYNAMODB_TTL,
    "test_go_produced_message_final_state_byte_for_byte": _DYNAMODB_TTL,
    "test_failure_state_and_error_text": _DYNAMODB_TTL,
    "test_failure_state_bytes_stay_go_exact_and_record_beside_them": _DYNAMODB_TTL,
    "test_received_without_prior_state": (
        _DYNAMODB_TTL + "; and the item of a task without results holds no Results (Go's "
        "UpdateItem sets Results only when there are some; AsyncResult reads that as [])"),
    "test_results_typed_for_go_readers": (
        "Go's DynamoDB backend stores result values as %v strings: a map comes back as the "
        "string 'map[k:[1 2]]' (see machinery_compat/protocol/gofmt.py)"),
    "test_results_expire_after_results_expire_in": (
        "DynamoDB deletes expired items in the background (within days; moto never), and "
        "Go's PENDING has TTL 0 (never expires)"),
}


_MEMCACHE_NO_MERGE = ("Go's Memcache result backend never merges: each state replaces the stored "
                      "one, so RECEIVED..SUCCESS carry TaskName \"\" and a zero CreatedAt (see "
                      "tests/integration/test_memcache_backend.py)")
#: Behaviour tests that check what the Memcache backend does differently, by Go's design:
#: test name -> why.  Their ``*+memcache`` params are reported as skipped with the reason.
MEMCACHE_LIMITS: dict[str, str] = {
    "test_merge_keeps_task_name_and_created_at": _MEMCACHE_NO_MERGE,
    "test_go_produced_message_final_state_byte_for_byte": _MEMCACHE_NO_MERGE,
    "test_failure_state_and_error_text": _MEMCACHE_NO_MERGE,
    "test_failure_state_bytes_stay_go_exact_and_record_beside_them": _MEMCACHE_NO_MERGE,
}


_PUBSUB_NO_PEEK = ("Pub/Sub cannot list a subscription without pulling it: pending_tasks/"
                   "delayed_tasks raise NotImplementedError (tests/integration/"
                   "test_pubsub_broker.py)")
#: Behaviour tests that check what Pub/Sub cannot do, by its design or Go's: test name -> why.
#: Their ``pubsub+*`` params are reported as skipped with the reason.
PUBSUB_LIMITS: dict[str, str] = {
    "test_requeue_front_and_back_keep_the_bytes_and_order": (
        "Pub/Sub has no queue head or tail, nor an order: a message given back is redelivered "
        "(ModifyAckDeadline 0), bytes not received from it are published anew"),
    "test_move_due_delayed_routes_by_routing_key": (
        "Pub/Sub has no delayed messages: a task is published at once with its ETA and a "
        "Python worker's consumer holds it until due (tests/integration/test_pubsub_broker.py)"),
    "test_fetch_is_fifo_and_takes_from_the_first_non_empty_queue": (
        "Pub/Sub delivers a subscription's messages in no set order (Go publishes no ordering "
        "key); taking from the first non-empty queue is checked by the other fetch tests"),
    "test_countdown_and_datetime_eta": (
        "Pub/Sub has no delay: tasks with an ETA wait in the subscription with the others "
        "(a Python consumer holds them until due), so the queue holds all three; ETAs: "
        "tests/integration/test_pubsub_broker.py"),
    "test_make_app_shares_broker_and_backend": _PUBSUB_NO_PEEK,
    "test_pending_tasks_inspection": _PUBSUB_NO_PEEK,
    "test_eta_goes_to_delayed_tasks_due_in_nanoseconds": _PUBSUB_NO_PEEK,
}
#: Pub/Sub kinds: the topics (each with a subscription of the same name) made in the test's
#: own project (a Pub/Sub broker creates none, as Go's); the URL names ``machinery_tasks``.
PUBSUB_TOPICS = SQS_QUEUES


_MONGODB_MS = ("Go's MongoDB backend stores created_at as a BSON date (milliseconds), so a "
               "state read back carries CreatedAt to the millisecond, not the nanosecond of the "
               "JSON written here (see tests/integration/test_mongodb_backend.py)")
#: Behaviour tests that check what the MongoDB backend does differently, by Go's design:
#: test name -> why.  Their ``*+mongodb`` params are reported as skipped with the reason.
MONGODB_LIMITS: dict[str, str] = {
    "test_go_produced_message_final_state_byte_for_byte": _MONGODB_MS,
}


#: Azure kinds: the default queue (Azure names allow no ``_``: ``machinery_tasks`` is not a
#: valid name, so the suite's default queue becomes this one there).
AZURE_QUEUE = "machinery-tasks"
#: Behaviour tests that check what the Azure broker cannot do, by its design or the fork's:
#: test name -> why.  Their ``azure+*`` params are reported as skipped with the reason.
_AZURE_QUEUES = ("custom queues: the fork's Azure broker consumes its default queue only, and "
                 "the suite's queue names (q, qa, q2, other, ...) are no valid Azure names "
                 "(3-63 lowercase letters, digits, single hyphens)")
_AZURE_NAME = ("the suite's default queue machinery_tasks is no valid Azure name (no _): on "
               "Azure it is machinery-tasks, which these routing-key/byte comparisons do not "
               "expect; the bytes are compared with the fork's golden captures in "
               "tests/integration/test_azure_broker.py")
_AZURE_NO_PEEK = ("Azure cannot list hidden (delayed or received) messages: pending_tasks/"
                  "delayed_tasks raise NotImplementedError (tests/integration/"
                  "test_azure_broker.py checks delays)")
AZURE_LIMITS: dict[str, str] = {
    "test_routing_key_is_the_queue": _AZURE_QUEUES,
    "test_fetch_is_fifo_and_takes_from_the_first_non_empty_queue": _AZURE_QUEUES,
    "test_fetch_wakes_up_when_a_message_arrives": _AZURE_QUEUES,
    "test_queue_option_and_options_on_the_wire": _AZURE_QUEUES,
    "test_worker_consumes_several_queues": _AZURE_QUEUES,
    "test_requeue_front_and_back_keep_the_bytes_and_order": (
        "Azure queues have no head: a message given back becomes visible again in its place "
        "(Update Message, visibility 0)"),
    "test_dead_letters_are_a_plain_queue": (
        "the Azure broker has one dead-letter queue, azure.dlq_queue (default "
        "<default_queue>-dead: Azure names allow no '.'), whatever the queue"),
    "test_move_due_delayed_routes_by_routing_key": (
        "Azure has no delayed set to move from: a delayed message is hidden (visibility "
        "timeout) and a Python consumer hides it again until due"),
    "test_make_app_shares_broker_and_backend": _AZURE_NO_PEEK,
    "test_pending_tasks_inspection": _AZURE_NO_PEEK,
    "test_eta_goes_to_delayed_tasks_due_in_nanoseconds": _AZURE_NO_PEEK,
    "test_send_task_pushes_go_bytes_and_pending_first": _AZURE_NAME,
    "test_generated_ids_and_default_headers": _AZURE_NAME,
    "test_signals_of_a_successful_task_in_order": _AZURE_NAME,
}


def _kind_param(kind: str, test_name: str) -> Any:
    limit = AMQP_LIMITS.get(test_name)
    if limit is not None:
        side, why = limit
        hit = kind.split("+")[0] == "amqp" if side == "broker" else kind.split("+")[-1] == "amqp"
        if hit:
            return pytest.param(kind, marks=pytest.mark.skip(reason=f"{kind}: {why}"))
    if kind.split("+")[0] == "sqs" and test_name in SQS_LIMITS:
        return pytest.param(kind, marks=pytest.mark.skip(reason=f"{kind}: {SQS_LIMITS[test_name]}"))
    if kind.split("+")[0] == "pubsub" and test_name in PUBSUB_LIMITS:
        return pytest.param(kind, marks=pytest.mark.skip(
            reason=f"{kind}: {PUBSUB_LIMITS[test_name]}"))
    if kind.split("+")[0] == "azure" and test_name in AZURE_LIMITS:
        return pytest.param(kind, marks=pytest.mark.skip(
            reason=f"{kind}: {AZURE_LIMITS[test_name]}"))
    if kind.split("+")[-1] == "mongodb" and test_name in MONGODB_LIMITS:
        return pytest.param(kind, marks=pytest.mark.skip(
            reason=f"{kind}: {MONGODB_LIMITS[test_name]}"))
    if kind.split("+")[-1] == "memcache" and test_name in MEMCACHE_LIMITS:
        return pytest.param(kind, marks=pytest.mark.skip(
            reason=f"{kind}: {MEMCACHE_LIMITS[test_name]}"))
    if kind.split("+")[-1] == "dynamodb" and test_name in DYNAMODB_LIMITS:
        return pytest.param(kind, marks=pytest.mark.skip(
            reason=f"{kind}: {DYNAMODB_LIMITS[test_name]}"))
    return kind


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "mixed: also run this behaviour test on redis+memory and amqp+redis")
    config.addinivalue_line("markers", "kinds(*kinds): the broker+backend kinds to run this behaviour test on")
    config.addinivalue_line("markers", "both_apis: also run this behaviour test's producer side "
                            "(the producer fixture) through app.aio, on the kinds AIO_KINDS")


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
    name = metafunc.definition.originalname
    if (metafunc.definition.get_closest_marker("both_apis") is not None
            and "producer_api" in metafunc.fixturenames):
        # every kind with "sync", the kinds of AIO_KINDS with "aio" too
        metafunc.parametrize(["app_kind", "producer_api"],
                             [_with_api(_kind_param(k, name), api) for k in kinds
                              for api in PRODUCER_APIS if api == "sync" or k in AIO_KINDS],
                             indirect=True)
        return
    metafunc.parametrize("app_kind", [_kind_param(k, name) for k in kinds], indirect=True)


def _with_api(kind_param: Any, api: str) -> Any:
    """A kind parameter of :func:`_kind_param` (its skip mark kept) with a producer API."""
    if isinstance(kind_param, str):
        return pytest.param(kind_param, api)
    return pytest.param(kind_param.values[0], api, marks=kind_param.marks)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        kind = str(callspec.params.get("app_kind", "")) if callspec is not None else ""
        if "redis" in kind:
            item.add_marker(pytest.mark.redis)
        if "amqp" in kind:
            item.add_marker(pytest.mark.rabbitmq)
        if "sqs" in kind or "dynamodb" in kind:
            item.add_marker(pytest.mark.aws)
        if "memcache" in kind:
            item.add_marker(pytest.mark.memcache)
        if "mongodb" in kind:
            item.add_marker(pytest.mark.mongodb)
        if "pubsub" in kind:
            item.add_marker(pytest.mark.pubsub)
        if "azure" in kind:
            item.add_marker(pytest.mark.azure)


@pytest.fixture
def producer_api(request: pytest.FixtureRequest) -> str:
    """``"sync"``, or ``"aio"`` in the app.aio variant of a ``both_apis`` test."""
    return str(getattr(request, "param", "sync"))


@pytest.fixture
def producer(app: Machinery, producer_api: str) -> Iterator[SyncProducer | AioProducer]:
    """What a ``both_apis`` test sends and reads through (tests/behaviour/_aio_driver.py)."""
    p = make_producer(app, producer_api)
    yield p
    p.close()


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


def _url_for(side: str, request: pytest.FixtureRequest, memory_name: str) -> str:
    url: str
    if side == "redis":
        url = request.getfixturevalue("redis_url")
    elif side == "sqs":
        url = request.getfixturevalue("_sqs_queues")
    elif side == "amqp":
        url = request.getfixturevalue("rabbitmq_vhost_url")  # one vhost per test
    elif side == "dynamodb":
        url = "https://dynamodb.us-east-1.amazonaws.com"  # selects the backend, as Go v1's factory
    elif side == "pubsub":
        url = request.getfixturevalue("_pubsub_topics")
    elif side == "azure":
        url = request.getfixturevalue("_azure_queues")
    elif side == "memcache":
        url = request.getfixturevalue("memcache_url")  # three nodes, flushed
    elif side == "mongodb":
        url = request.getfixturevalue("mongodb_url")  # the database: mongodb_config
    elif side == "redis-sentinel":
        url = request.getfixturevalue("_sentinel_url")  # settings: redis_settings
    elif side == "redis-cluster":
        url = request.getfixturevalue("_cluster_url")  # settings: redis_settings
    else:
        url = f"memory://{memory_name}"
    return url


@pytest.fixture
def broker_url(app_kind: str, request: pytest.FixtureRequest, _memory_name: str) -> str:
    return _url_for(app_kind.split("+")[0], request, _memory_name)


@pytest.fixture
def backend_url(app_kind: str, broker_url: str, request: pytest.FixtureRequest,
                _memory_name: str) -> str:
    side = app_kind.split("+")[-1]
    if side == "amqp" and broker_url.startswith("amqp"):
        return broker_url  # the same vhost
    return _url_for(side, request, _memory_name)


@pytest.fixture
def _sqs_queues(moto_server: Any, moto_endpoint: str) -> str:
    """The SQS broker URL of this test, with every queue of :data:`SQS_REGION` deleted and
    :data:`SQS_QUEUES` created afresh."""
    sqs = moto_server.client("sqs", region_name=SQS_REGION)
    for url in sqs.list_queues().get("QueueUrls", []):
        sqs.delete_queue(QueueUrl=url)
    for name in SQS_QUEUES:
        sqs.create_queue(QueueName=name)
    return f"{moto_endpoint}/{SQS_ACCOUNT}"


@pytest.fixture
def _pubsub_topics(pubsub_emulator: Any, pubsub_project: str) -> str:
    """The Pub/Sub broker URL of this test: a fresh project with :data:`PUBSUB_TOPICS`, each
    with a subscription of the same name (the URL's is ``machinery_tasks``)."""
    for name in PUBSUB_TOPICS:
        pubsub_emulator.create_topic(pubsub_project, name)
        pubsub_emulator.create_subscription(pubsub_project, name, name)
    return f"gcppubsub://{pubsub_project}/machinery_tasks"


@pytest.fixture
def _azure_queues(azurite: Any) -> str:
    """The Azure broker URL of this test, with every queue on the session's Azurite deleted
    and :data:`AZURE_QUEUE` created afresh (the broker creates only its dead-letter queue)."""
    service = azurite.service()
    for q in list(service.list_queues()):
        service.delete_queue(q.name)
    azurite.create_queue(AZURE_QUEUE)
    return str(azurite.broker_url)


def _record_azure_sends(app: Machinery, sent: list[tuple[bytes, int]]) -> None:
    """Note the ETA of every message ``app``'s Azure broker sends (invisible ones cannot be
    listed)."""
    broker = app.broker
    assert isinstance(broker, AzureBroker)
    params_of = broker.message_params

    def record(sig: Signature, now_ns: int | None = None) -> tuple[str, dict[str, Any]]:
        queue, params = params_of(sig, now_ns)
        raw = params["content"].encode("utf-8")
        due = _eta_ns(raw) or (time.time_ns() + sig.delay if sig.delay > 0 else 0)
        if due and all(b != raw for b, _ in sent):
            sent.append((raw, due))
        return queue, params

    broker.message_params = record  # type: ignore[method-assign]


@pytest.fixture
def _sqs_sent() -> list[tuple[bytes, int]]:
    """SQS kinds: (body, due ns) of every task this test's apps sent with an ETA."""
    return []


def _record_sqs_sends(app: Machinery, sent: list[tuple[bytes, int]]) -> None:
    """Note the ETA of every message ``app``'s SQS client sends (SQS cannot list delayed ones)."""

    def note(body: str) -> None:
        raw = body.encode("utf-8", "surrogateescape")
        due = _eta_ns(raw)
        if due and all(b != raw for b, _ in sent):
            sent.append((raw, due))

    def record(params: dict[str, Any], **_: Any) -> None:
        if "MessageBody" in params:
            note(params["MessageBody"])
        for entry in params.get("Entries") or ():
            if "MessageBody" in entry:
                note(entry["MessageBody"])

    events = app.broker.client.meta.events  # type: ignore[attr-defined]
    events.register("provide-client-params.sqs.SendMessage", record)
    events.register("provide-client-params.sqs.SendMessageBatch", record)


def _record_pubsub_sends(app: Machinery, sent: list[tuple[bytes, int]]) -> None:
    """Note the ETA of every message ``app``'s Pub/Sub broker publishes (nothing lists them)."""
    broker = app.broker
    assert isinstance(broker, PubSubBroker)
    publish = broker._gapic_publish

    def record(**request: Any) -> Any:
        for message in request.get("messages") or ():
            raw = bytes(message["data"])
            due = _eta_ns(raw)
            if due and all(b != raw for b, _ in sent):
                sent.append((raw, due))
        return publish(**request)

    broker._gapic_publish = record  # type: ignore[method-assign]


@pytest.fixture
def dynamodb_config(app_kind: str, request: pytest.FixtureRequest) -> Iterator[Any]:
    """dynamodb kinds: a DynamoDB section on the session moto server with tables of this test's
    own (created as Go expects them, deleted afterwards); ``None`` for other kinds."""
    if app_kind.split("+")[-1] != "dynamodb":
        yield None
        return
    from machinery_compat.backends.dynamodb import create_tables
    from machinery_compat.config import DynamoDBConfig

    moto = request.getfixturevalue("moto_server")
    suffix = uuid.uuid4().hex[:12]
    cfg = DynamoDBConfig(task_states_table=f"task_states_{suffix}",
                         group_metas_table=f"group_metas_{suffix}",
                         endpoint_url=request.getfixturevalue("moto_endpoint"), region=moto.region)
    create_tables(cfg)
    yield cfg
    client = moto.client("dynamodb")
    for table in (cfg.task_states_table, cfg.group_metas_table):
        client.delete_table(TableName=table)


@pytest.fixture
def mongodb_config(app_kind: str, request: pytest.FixtureRequest) -> Any:
    """mongodb kinds: a ``mongodb`` section naming a database of this test's own on the session
    FerretDB (dropped afterwards); ``None`` for other kinds."""
    if app_kind.split("+")[-1] != "mongodb":
        return None
    from machinery_compat.config import MongoDBConfig

    return MongoDBConfig(database=request.getfixturevalue("mongodb_database"))


@pytest.fixture
def _sentinel_url(redis_sentinel: Any) -> str:
    """redis-sentinel: the session sentinel set's URL (the sentinels' addresses), its master's
    DB 0 flushed."""
    with redis_sentinel.wait_stable().client() as c:
        c.flushdb()
    return str(redis_sentinel.url())


@pytest.fixture
def _cluster_url(redis_cluster: Any) -> str:
    """redis-cluster: the session cluster's URL (every node's address), every master
    flushed."""
    redis_cluster.wait_ok()
    redis_cluster.flushall()
    return str(redis_cluster.url())


@pytest.fixture
def redis_settings(app_kind: str) -> Any:
    """redis-sentinel: the ``redis`` section Go v2 reads too (``master_name``,
    ``sentinel_password``) and ``wait_replicas: 1`` (every hot-path batch waits for the
    replica); redis-cluster: ``cluster_enabled``; ``None`` for other kinds."""
    if app_kind not in ("redis-sentinel", "redis-cluster"):
        return None
    from machinery_compat.config import RedisConfig

    if app_kind == "redis-cluster":
        return RedisConfig(cluster_enabled=True)
    from tests.services.redis_cluster_svc import MASTER_NAME, SENTINEL_PASSWORD

    return RedisConfig(master_name=MASTER_NAME, sentinel_password=SENTINEL_PASSWORD,
                       wait_replicas=1)


@pytest.fixture
def make_app(broker_url: str, backend_url: str, dynamodb_config: Any, mongodb_config: Any,
             redis_settings: Any,
             _sqs_sent: list[tuple[bytes, int]]) -> Iterator[Callable[..., Machinery]]:
    apps: list[Machinery] = []

    def make(**kwargs: Any) -> Machinery:
        kwargs.setdefault("default_queue", "machinery_tasks")
        if broker_url.startswith("amqp") and "config" not in kwargs:
            # default routing into the workers' queue (see the module docstring)
            kwargs["config"] = Config(amqp=AMQPConfig(binding_key=kwargs["default_queue"]))
        sqs = broker_url.startswith("http")
        if broker_url.startswith("azure"):
            if kwargs["default_queue"] == "machinery_tasks":
                kwargs["default_queue"] = AZURE_QUEUE
            kwargs.setdefault("config", Config()).azure = AzureConfig(visibility_timeout=5)
        if sqs and "config" not in kwargs:
            kwargs["config"] = Config(sqs=SQSConfig(region=SQS_REGION))
        if dynamodb_config is not None:
            kwargs.setdefault("config", Config()).dynamodb = dynamodb_config
        if mongodb_config is not None:
            kwargs.setdefault("config", Config()).mongodb = mongodb_config
        if redis_settings is not None:
            kwargs.setdefault("config", Config()).redis = redis_settings
        a = Machinery(broker=broker_url, result_backend=backend_url, **kwargs)
        if sqs:
            _record_sqs_sends(a, _sqs_sent)
        if broker_url.startswith("gcppubsub"):
            _record_pubsub_sends(a, _sqs_sent)
        if broker_url.startswith("azure"):
            _record_azure_sends(a, _sqs_sent)
        apps.append(a)
        return a

    yield make
    for a in apps:
        a.close()


@pytest.fixture
def app(make_app: Callable[..., Machinery]) -> Machinery:
    return make_app()


@pytest.fixture
def start_worker(app: Machinery, request: pytest.FixtureRequest) -> Iterator[StartWorker]:
    """Start workers (``start_worker(concurrency=2)``); all are stopped at teardown (the
    app.aio variant of a ``both_apis`` test starts asyncio-pool workers)."""
    workers: list[Worker] = []
    aio = ("producer_api" in request.fixturenames
           and request.getfixturevalue("producer_api") == "aio")

    def start(target: Machinery | None = None, **options: Any) -> Worker:
        if aio:
            options.setdefault("pool", "asyncio")
            as_coroutines(target or app)
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

    def __init__(self, app: Machinery, sqs_sent: list[tuple[bytes, int]] | None = None) -> None:
        self.app = app
        self.broker = app.broker
        self.backend = app.backend
        #: AMQP: the due time given to push_delayed, per body (a delay queue keeps none)
        self._amqp_due: dict[bytes, int] = {}
        #: SQS: what this test's apps sent with an ETA (and push_delayed pushed), with due times
        self._sqs_sent = sqs_sent if sqs_sent is not None else []

    def _redis(self, side: Any) -> Any:
        return getattr(side, "client", None)

    # -- queues -------------------------------------------------------------------------
    def messages(self, queue: str = "machinery_tasks") -> list[bytes]:
        """Raw bodies waiting in ``queue``, head first."""
        if isinstance(self.broker, AMQPBroker):
            return amqp_peek(self.broker.url, queue)
        if isinstance(self.broker, SQSBroker):
            return sqs_peek(self.broker, queue)
        if isinstance(self.broker, PubSubBroker):
            return pubsub_peek(self.broker, queue)
        if isinstance(self.broker, AzureBroker):
            return azure_peek(self.broker, queue)
        client = self._redis(self.broker)
        if client is not None:
            return list(client.lrange(queue, 0, -1))
        assert isinstance(self.broker, memory_broker.MemoryBroker)
        return self.broker.messages(queue)

    def dead(self, queue: str = "machinery_tasks") -> list[bytes]:
        """Raw bodies kept in ``<queue>.dead`` (SQS: ``<queue>-dead``)."""
        if isinstance(self.broker, SQSBroker):
            return self.messages(dead_letter_queue(queue))
        if isinstance(self.broker, AzureBroker):
            return self.messages(self.broker.dlq_name)
        return self.messages(f"{queue}.dead")

    def push(self, queue: str, *bodies: bytes) -> None:
        """Append raw bodies to ``queue``."""
        if isinstance(self.broker, AMQPBroker):
            amqp_push(self.broker, queue, bodies)
            return
        if isinstance(self.broker, SQSBroker):
            for body in bodies:
                self.broker.client.send_message(QueueUrl=self.broker.queue_url(queue),
                                                MessageBody=body.decode("utf-8", "surrogateescape"))
            return
        if isinstance(self.broker, PubSubBroker):
            self.broker._publish(queue, list(bodies), "raw test bytes")
            return
        if isinstance(self.broker, AzureBroker):
            q = self.broker.queue_client(_azure_name(self.broker, queue))
            for body in bodies:
                q.send_message(body.decode("utf-8", "surrogateescape"))
            return
        client = self._redis(self.broker)
        if client is not None:
            client.rpush(queue, *bodies)
            return
        assert isinstance(self.broker, memory_broker.MemoryBroker)
        self.broker.push(queue, *bodies)

    def delayed(self) -> list[tuple[bytes, int]]:
        """Raw delayed bodies with their due time (Unix ns), soonest first."""
        if isinstance(self.broker, SQSBroker | PubSubBroker | AzureBroker):
            now = time.time_ns()
            return sorted(((b, due) for b, due in self._sqs_sent if due > now),
                          key=lambda pair: pair[1])
        if isinstance(self.broker, AMQPBroker):
            out = [(b, self._amqp_due.get(b, _eta_ns(b))) for b in self.broker.delayed_messages()]
            return sorted(out, key=lambda pair: pair[1])
        client = self._redis(self.broker)
        if client is not None:
            key = self.broker.delayed_tasks_key  # type: ignore[attr-defined]
            return [(b, int(s)) for b, s in client.zrange(key, 0, -1, withscores=True)]
        assert isinstance(self.broker, memory_broker.MemoryBroker)
        return self.broker.delayed_messages()

    def push_delayed(self, body: bytes, due_ns: int) -> None:
        if isinstance(self.broker, SQSBroker):
            self._sqs_sent.append((body, due_ns))
            sqs_push_delayed(self.broker, body, due_ns)
            return
        if isinstance(self.broker, AzureBroker):
            self._sqs_sent.append((body, due_ns))
            sig = _routed(body)
            self.broker.adjust_routing_key(sig)
            left = max(0, -((time.time_ns() - due_ns) // 1_000_000_000))
            self.broker.queue_client(_azure_name(self.broker, sig.routing_key)).send_message(
                body.decode("utf-8", "surrogateescape"),
                visibility_timeout=min(left, self.broker.max_delay) or None)
            return
        if isinstance(self.broker, PubSubBroker):  # the ETA is in the body: published at once
            self._sqs_sent.append((body, due_ns))
            sig = _routed(body)
            self.broker.adjust_routing_key(sig)
            self.broker._publish(sig.routing_key, [body], "a raw delayed test message")
            return
        if isinstance(self.broker, AMQPBroker):
            self._amqp_due[body] = due_ns
            amqp_push_delayed(self.broker, body, due_ns)
            return
        client = self._redis(self.broker)
        if client is not None:
            client.zadd(self.broker.delayed_tasks_key, {body: due_ns})  # type: ignore[attr-defined]
            return
        assert isinstance(self.broker, memory_broker.MemoryBroker)
        self.broker.push_delayed(body, due_ns)

    def pending(self, queue: str | None = None) -> list[Signature]:
        if isinstance(self.broker, SQSBroker | PubSubBroker | AzureBroker):
            return _decodable(self.messages(queue or self.broker.default_queue))
        return self.broker.pending_tasks(queue)

    def delayed_tasks(self) -> list[Signature]:
        if isinstance(self.broker, SQSBroker | PubSubBroker | AzureBroker):
            return _decodable([body for body, _ in self.delayed()])
        return self.broker.delayed_tasks()

    # -- results ------------------------------------------------------------------------
    def state_bytes(self, uuid: str) -> bytes | None:
        """The Go JSON the backend stores under a task or group UUID."""
        if isinstance(self.backend, AMQPBackend):
            bodies = amqp_peek(self.backend.url, uuid)
            if bodies:
                return bodies[-1]
            seen = self.backend.last_consumed(uuid)
            return seen.to_json() if seen is not None else None
        if isinstance(self.backend, DynamoDBBackend | MemcacheBackend | MongoDBBackend):
            return self.backend.raw(uuid)
        client = self._redis(self.backend)
        if client is not None:
            raw: bytes | None = client.get(uuid)
            return raw
        assert isinstance(self.backend, memory_backend.MemoryBackend)
        return self.backend.raw(uuid)

    def put_state_bytes(self, uuid: str, body: bytes) -> None:
        """Store raw bytes under a task or group UUID, as a Go worker would write them."""
        if isinstance(self.backend, AMQPBackend):
            self.backend._publish(uuid, body, f"test state of {uuid}")
            return
        if isinstance(self.backend, DynamoDBBackend | MemcacheBackend | MongoDBBackend):
            self.backend.store_raw(uuid, body)
            return
        client = self._redis(self.backend)
        if client is not None:
            client.set(uuid, body, ex=3600)
            return
        assert isinstance(self.backend, memory_backend.MemoryBackend)
        self.backend.store_raw(uuid, body)


def _amqp_channel(url: str) -> tuple[Any, Any]:
    from machinery_compat._amqp import Endpoint, connect

    conn = Endpoint.from_url(url).connection()
    connect(conn, attempts=3, what="test probe")
    return conn, conn.connection.channel()


def amqp_peek(url: str, queue: str) -> list[bytes]:
    """The bodies of the messages ready in ``queue`` (``basic.get`` them all, then nack them
    back with requeue: nothing is consumed), head first; ``[]`` when the queue is missing."""
    import amqp

    conn, ch = _amqp_channel(url)
    try:
        try:
            ch.queue_declare(queue, passive=True)
        except amqp.exceptions.NotFound:
            return []
        bodies: list[bytes] = []
        last = 0
        while True:
            msg = ch.basic_get(queue, no_ack=False)
            if msg is None:
                break
            last = msg.delivery_tag
            bodies.append(bytes(msg.body))
        if last:
            from machinery_compat._amqp import basic_nack

            basic_nack(ch, last, multiple=True, requeue=True)
        return bodies
    finally:
        conn.close()


def _eta_ns(body: bytes) -> int:
    try:
        eta = Signature.from_json(body).eta
    except ValueError:
        return 0
    return eta.unix_ns if eta is not None else 0


def amqp_push_delayed(broker: AMQPBroker, body: bytes, due_ns: int) -> None:
    """Put raw bytes where the AMQP broker delays a task due at ``due_ns`` (its per-delay
    queue), or straight into its queue when already due."""
    try:
        sig = Signature.from_json(body)
    except ValueError:
        sig = Signature()
    broker.adjust_routing_key(sig)
    delay_ms = (due_ns - time.time_ns()) // 1_000_000
    if delay_ms < MIN_DELAY_MS:  # as the broker's own publish does
        broker._republish(Delivery(body, sig.routing_key))
    else:
        broker._publish_delayed(sig, body, delay_ms)


def amqp_push(broker: AMQPBroker, queue: str, bodies: Sequence[bytes]) -> None:
    """Put raw bodies into ``queue`` as a worker declares it (durable, the config's declare
    arguments, bound with the binding key), through the default exchange."""
    from machinery_compat._amqp import bind_queue, declare_exchange, declare_queue

    conn, ch = _amqp_channel(broker.url)
    try:
        declare_exchange(ch, broker.cfg.exchange, broker.cfg.exchange_type)
        declare_queue(ch, queue, durable=True, auto_delete=False, arguments=broker.declare_args)
        bind_queue(ch, queue, broker.cfg.exchange, broker.cfg.binding_key, broker.binding_args)
        ch.confirm_select()
        import amqp

        for body in bodies:
            ch.basic_publish_confirm(amqp.Message(body, content_type="application/json",
                                                  delivery_mode=2), exchange="", routing_key=queue)
    finally:
        conn.close()


def _decodable(bodies: list[bytes]) -> list[Signature]:
    out = []
    for body in bodies:
        with contextlib.suppress(ValueError):
            out.append(Signature.from_json(body))
    return out


def sqs_peek(broker: SQSBroker, queue: str) -> list[bytes]:
    """The bodies of the messages visible in ``queue`` (received, then made visible again at
    once: nothing is consumed, but each counts one more receive), oldest first; ``[]`` when
    the queue is missing."""
    client = broker.client
    url = broker.queue_url(queue)
    got: list[dict[str, Any]] = []
    try:
        while True:
            batch = client.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                           WaitTimeSeconds=0, VisibilityTimeout=5,
                                           MessageSystemAttributeNames=["SentTimestamp"])
            messages = batch.get("Messages") or []
            if not messages:
                break
            got += messages
    except client.exceptions.QueueDoesNotExist:
        return []
    for i in range(0, len(got), 10):
        client.change_message_visibility_batch(QueueUrl=url, Entries=[
            {"Id": str(j), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
            for j, m in enumerate(got[i:i + 10])])
    got.sort(key=lambda m: int(m.get("Attributes", {}).get("SentTimestamp", 0)))
    return [m["Body"].encode("utf-8", "surrogateescape") for m in got]


def _routed(body: bytes) -> Signature:
    try:
        return Signature.from_json(body)
    except ValueError:
        return Signature()


def pubsub_peek(broker: PubSubBroker, queue: str) -> list[bytes]:
    """The data of the messages waiting in ``queue``'s subscription (pulled, then given back at
    once: nothing is consumed), in publish order; ``[]`` when the subscription is missing."""
    from google.api_core import exceptions as gx

    subscriber = broker.subscriber
    path = broker.subscription_path(queue)
    got: list[Any] = []
    try:
        while True:
            batch = list(subscriber.pull(subscription=path, max_messages=100,
                                         timeout=10).received_messages)
            if not batch:
                break
            got += batch
    except gx.NotFound:
        return []
    if got:
        subscriber.modify_ack_deadline(subscription=path, ack_ids=[m.ack_id for m in got],
                                       ack_deadline_seconds=0, timeout=10)
    got.sort(key=lambda m: (m.message.publish_time, m.message.message_id))
    return [bytes(m.message.data) for m in got]


def _azure_name(broker: AzureBroker, queue: str) -> str:
    """The suite's ``machinery_tasks`` is :data:`AZURE_QUEUE` on Azure kinds."""
    return broker.default_queue if queue == "machinery_tasks" else queue


def azure_peek(broker: AzureBroker, queue: str) -> list[bytes]:
    """The visible messages of an Azure queue (up to 32, oldest first), not received; [] when
    the queue does not exist."""
    from azure.core.exceptions import HttpResponseError

    try:
        got = broker.queue_client(_azure_name(broker, queue)).peek_messages(max_messages=32)
    except HttpResponseError:  # no such queue, or no valid Azure name (nothing can be there)
        return []
    return [m.content.encode("utf-8") for m in got]


def sqs_push_delayed(broker: SQSBroker, body: bytes, due_ns: int) -> None:
    """Send raw bytes to the queue their routing key names (default queue when empty) with the
    delay until ``due_ns`` (whole seconds, truncated, at most 900 s), as the broker does."""
    try:
        sig = Signature.from_json(body)
    except ValueError:
        sig = Signature()
    broker.adjust_routing_key(sig)
    params: dict[str, Any] = {"QueueUrl": broker.queue_url(sig.routing_key),
                              "MessageBody": body.decode("utf-8", "surrogateescape")}
    delay = min((due_ns - time.time_ns()) // 1_000_000_000, 900)
    if delay > 0:
        params["DelaySeconds"] = delay
    broker.client.send_message(**params)


@pytest.fixture
def probe(app: Machinery, _sqs_sent: list[tuple[bytes, int]]) -> Probe:
    return Probe(app, _sqs_sent)


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
