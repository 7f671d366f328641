"""The configuration data model: Machinery's defaults, the section dataclasses and
:class:`Config` (see the package documentation, :mod:`machinery_compat.config`)."""

from __future__ import annotations

import dataclasses
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO, Any, Final

from ..exceptions import ConfigError
from .masking import _mask_secret, _masked_repr, mask_url

# --------------------------------------------------------------------------------------------
# Machinery's defaults (v2/config/config.go ``defaultCnf`` and the in-code fallbacks)
# --------------------------------------------------------------------------------------------

#: ``broker`` and ``result_backend`` default (Go ``defaultCnf``).
DEFAULT_BROKER: Final = "amqp://guest:guest@localhost:5672/"
DEFAULT_RESULT_BACKEND: Final = "amqp://guest:guest@localhost:5672/"
#: ``default_queue`` default.
DEFAULT_QUEUE: Final = "machinery_tasks"
#: ``results_expire_in`` default, and what backends use when it is 0 (Go
#: ``DefaultResultsExpireIn``).
DEFAULT_RESULTS_EXPIRE_IN: Final = 3600
DEFAULT_AMQP_EXCHANGE: Final = "machinery_exchange"
DEFAULT_AMQP_EXCHANGE_TYPE: Final = "direct"
DEFAULT_AMQP_BINDING_KEY: Final = "machinery_task"
DEFAULT_AMQP_PREFETCH_COUNT: Final = 3
DEFAULT_DYNAMODB_TASK_STATES_TABLE: Final = "task_states"
DEFAULT_DYNAMODB_GROUP_METAS_TABLE: Final = "group_metas"
#: MongoDB database Go uses when ``Config.MongoDB`` is nil.
DEFAULT_MONGODB_DATABASE: Final = "machinery"
#: Sorted set of delayed tasks when ``redis.delayed_tasks_key`` is empty.
DEFAULT_REDIS_DELAYED_TASKS_KEY: Final = "delayed_tasks"
#: Redis poll periods (ms) used when the configured value is <= 0.
DEFAULT_REDIS_NORMAL_TASKS_POLL_PERIOD: Final = 1000
DEFAULT_REDIS_DELAYED_TASKS_POLL_PERIOD: Final = 500
#: ``sqs.max_delay_seconds`` default (Python only): SQS's longest ``DelaySeconds``, 15 minutes.
DEFAULT_SQS_MAX_DELAY_SECONDS: Final = 900
#: Seconds a Python worker's heartbeat key lives (``redis.heartbeat_ttl``; crash-safe mode).
DEFAULT_REDIS_HEARTBEAT_TTL: Final = 5
#: Port assumed when a Redis URL names none (Go itself would fail to dial).
DEFAULT_REDIS_PORT: Final = 6379
#: Go's ``NewFromYaml`` reads at most this many bytes of the file.
GO_YAML_READ_LIMIT: Final = 1000

#: Range of Go's ``int``/``int64`` (integer keys, Redis db numbers).
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class AMQPConfig:
    """RabbitMQ settings (Go ``AMQPConfig``); YAML section ``amqp``.

    Environment variables take the ``AMQP_`` names below (or the envconfig prefixed form
    ``AMQP_AMQP_...``).
    """

    #: ``exchange`` / ``AMQP_EXCHANGE``; default ``machinery_exchange``.
    exchange: str = DEFAULT_AMQP_EXCHANGE
    #: ``exchange_type`` / ``AMQP_EXCHANGE_TYPE``; default ``direct``.
    exchange_type: str = DEFAULT_AMQP_EXCHANGE_TYPE
    #: ``queue_declare_args`` / ``AMQP_QUEUE_DECLARE_ARGS``; arguments of every queue
    #: declare (e.g. ``x-max-priority``). From the environment Go keeps the keys only.
    queue_declare_args: dict[str, Any] = field(default_factory=dict)
    #: ``queue_binding_args`` / ``AMQP_QUEUE_BINDING_ARGS`` (``k:v,k2:v2``); arguments of the
    #: queue binding (headers exchanges).
    queue_binding_args: dict[str, Any] = field(default_factory=dict)
    #: ``binding_key`` / ``AMQP_BINDING_KEY``; default ``machinery_task``. Also the default
    #: routing key for direct exchanges.
    binding_key: str = DEFAULT_AMQP_BINDING_KEY
    #: ``prefetch_count`` / ``AMQP_PREFETCH_COUNT``; default 3, 0 means unlimited.
    prefetch_count: int = DEFAULT_AMQP_PREFETCH_COUNT
    #: ``auto_delete`` / ``AMQP_AUTO_DELETE``; applies to delay queues only.
    auto_delete: bool = False
    #: ``delayed_queue`` / ``AMQP_DELAYED_QUEUE``; default ``""``.
    delayed_queue: str = ""


@dataclass(kw_only=True)
class SQSConfig:
    """AWS SQS settings (Go ``SQSConfig``); YAML section ``sqs``. Absent by default."""

    #: Code only: a boto3 SQS client to use instead of building one.
    client: Any = field(default=None, repr=False, compare=False)
    #: ``receive_wait_time_seconds`` / ``SQS_WAIT_TIME_SECONDS``; long-poll wait, default 0.
    wait_time_seconds: int = 0
    #: ``receive_visibility_timeout`` / ``SQS_VISIBILITY_TIMEOUT``; ``None`` (default) keeps
    #: the queue's own visibility timeout.
    visibility_timeout: int | None = None
    #: ``visibility_hearth_beat`` (sic) / ``SQS_VISIBILITY_HEARTBEAT``; Go v2 only: extend the
    #: visibility timeout while a task runs. Default ``False``.
    visibility_heartbeat: bool = False
    #: Python only (Go ignores it): ``endpoint_url`` / ``SQS_ENDPOINT_URL``; the SQS API
    #: endpoint boto3 talks to (emulators such as moto, VPC endpoints).  Empty: boto3's
    #: default for the region.  Queue URLs are still ``broker + "/" + queue`` as in Go.
    endpoint_url: str = ""
    #: Python only: ``region`` / ``SQS_REGION``; empty: boto3's standard chain
    #: (``AWS_REGION``/``AWS_DEFAULT_REGION``, profile), as Go's SDK session does.
    region: str = ""
    #: Python only: ``max_delay_seconds`` / ``SQS_MAX_DELAY_SECONDS``; the longest
    #: ``DelaySeconds`` a Python producer sends, and the step in which a task due later is
    #: handed back until due.  Default 900 (SQS's limit); smaller values are for tests and
    #: fast clocks; <= 0 means 900; above 900 is an error (SQS refuses such a delay).
    max_delay_seconds: int = DEFAULT_SQS_MAX_DELAY_SECONDS

    @property
    def effective_max_delay_seconds(self) -> int:
        """``max_delay_seconds`` with its fallback (<= 0 means 900); :class:`ConfigError`
        above 900, SQS's limit."""
        if self.max_delay_seconds <= 0:
            return DEFAULT_SQS_MAX_DELAY_SECONDS
        if self.max_delay_seconds > DEFAULT_SQS_MAX_DELAY_SECONDS:
            raise ConfigError(
                f"sqs.max_delay_seconds (SQS_MAX_DELAY_SECONDS) is {self.max_delay_seconds}: "
                f"SQS delays a message at most {DEFAULT_SQS_MAX_DELAY_SECONDS} s")
        return self.max_delay_seconds


@dataclass(kw_only=True, repr=False)
class RedisConfig:
    """Redis settings (Go ``RedisConfig``); YAML section ``redis``.

    Environment variables take the ``REDIS_`` names below (or the envconfig prefixed form
    ``REDIS_REDIS_...``). When ``Config.redis`` is ``None`` Go falls back to other pool
    values; :meth:`nil_fallback` returns them.
    """

    #: ``max_idle`` / ``REDIS_MAX_IDLE``; idle connections kept in the pool. Default 3.
    max_idle: int = 3
    #: ``max_active`` / ``REDIS_MAX_ACTIVE``; pool size limit, 0 (default) = unlimited.
    max_active: int = 0
    #: ``max_idle_timeout`` / ``REDIS_IDLE_TIMEOUT``; seconds before an idle connection is
    #: closed, 0 = never. Default 240.
    idle_timeout: int = 240
    #: ``wait`` / ``REDIS_WAIT``; wait for a free connection when the pool is full.
    wait: bool = False
    #: ``read_timeout`` / ``REDIS_READ_TIMEOUT``; seconds. Default 15.
    read_timeout: int = 15
    #: ``write_timeout`` / ``REDIS_WRITE_TIMEOUT``; seconds. Default 15.
    write_timeout: int = 15
    #: ``connect_timeout`` / ``REDIS_CONNECT_TIMEOUT``; seconds. Default 15.
    connect_timeout: int = 15
    #: ``normal_tasks_poll_period`` / ``REDIS_NORMAL_TASKS_POLL_PERIOD``; milliseconds, the
    #: BLPOP timeout (rounded to whole seconds). Default 1000; <= 0 means 1000.
    normal_tasks_poll_period: int = DEFAULT_REDIS_NORMAL_TASKS_POLL_PERIOD
    #: ``delayed_tasks_poll_period`` / ``REDIS_DELAYED_TASKS_POLL_PERIOD``; milliseconds
    #: between two moves of a due delayed task. Default 500; <= 0 means 500.
    delayed_tasks_poll_period: int = DEFAULT_REDIS_DELAYED_TASKS_POLL_PERIOD
    #: ``delayed_tasks_key`` / ``REDIS_DELAYED_TASKS_KEY``; sorted set of delayed tasks.
    #: ``""`` (default) means ``delayed_tasks``; see :attr:`effective_delayed_tasks_key`.
    delayed_tasks_key: str = ""
    #: ``client_name`` / ``REDIS_CLIENT_NAME``; ``CLIENT SETNAME`` value (Go v2, redigo only).
    client_name: str = ""
    #: ``master_name`` / ``REDIS_MASTER_NAME``; set it to use Sentinel: the URL's addresses are
    #: then Sentinel addresses.
    master_name: str = ""
    #: ``cluster_enabled`` / ``REDIS_CLUSTER_ENABLED`` (v2) or ``cluster_mode`` /
    #: ``REDIS_CLUSTER_MODE`` (v1); use a Redis Cluster client even for one address.
    cluster_enabled: bool = False
    #: ``sentinel_password`` / ``REDIS_SENTINEL_PASSWORD``; password of the Sentinels
    #: themselves (Go v2 only). Masked in ``repr()``.
    sentinel_password: str = ""
    #: ``crash_safe`` / ``REDIS_CRASH_SAFE`` (Python workers only; Go ignores it): take each
    #: message into a per-worker processing list and re-queue the lists of dead workers (see
    #: :mod:`machinery_compat.brokers.redis`). Default ``True``; ``False``: LPOP/BLPOP as Go.
    crash_safe: bool = True
    #: ``heartbeat_ttl`` / ``REDIS_HEARTBEAT_TTL`` (Python workers only): seconds a worker's
    #: heartbeat key lives; a worker silent that long is taken for dead and its messages are
    #: re-queued. Default 5; <= 0 means 5.
    heartbeat_ttl: int = DEFAULT_REDIS_HEARTBEAT_TTL
    #: ``wait_replicas`` / ``REDIS_WAIT_REPLICAS`` (Python only; Go has no such setting):
    #: after each batch of hot-path commands (publish, state writes, taking and settling a
    #: message), ``WAIT`` until this many replicas have it; fewer within ``wait_timeout``
    #: (the master died or was replaced) makes the batch fail like a lost connection, so it
    #: is retried on the new master: no acknowledged write is lost in a Sentinel failover,
    #: at the price of a replication round trip per batch (a retried publish may be
    #: duplicated: at-least-once).  Default 0: off, as Go.
    wait_replicas: int = 0
    #: ``wait_timeout`` / ``REDIS_WAIT_TIMEOUT`` (Python only): milliseconds the ``WAIT`` of
    #: ``wait_replicas`` waits at most.  Default 1000; <= 0 means 1000.
    wait_timeout: int = 1000

    @property
    def effective_heartbeat_ttl(self) -> int:
        """``heartbeat_ttl`` in seconds, with the fallback (<= 0 means 5)."""
        return self.heartbeat_ttl if self.heartbeat_ttl > 0 else DEFAULT_REDIS_HEARTBEAT_TTL

    @property
    def effective_delayed_tasks_key(self) -> str:
        """The delayed-tasks sorted set Go uses: ``delayed_tasks_key`` or ``delayed_tasks``."""
        return self.delayed_tasks_key or DEFAULT_REDIS_DELAYED_TASKS_KEY

    @property
    def effective_normal_tasks_poll_period(self) -> int:
        """``normal_tasks_poll_period`` in ms, with Go's fallback (<= 0 means 1000)."""
        if self.normal_tasks_poll_period > 0:
            return self.normal_tasks_poll_period
        return DEFAULT_REDIS_NORMAL_TASKS_POLL_PERIOD

    @property
    def effective_delayed_tasks_poll_period(self) -> int:
        """``delayed_tasks_poll_period`` in ms, with Go's fallback (<= 0 means 500)."""
        if self.delayed_tasks_poll_period > 0:
            return self.delayed_tasks_poll_period
        return DEFAULT_REDIS_DELAYED_TASKS_POLL_PERIOD

    @classmethod
    def nil_fallback(cls) -> RedisConfig:
        """What Go uses when ``Config.Redis`` is nil (``v2/common/redis.go``).

        Pool of at most 100 connections, 10 idle, idle timeout 300 s, waiting when full.
        (Go's table also says 20 ms for the delayed poll period, but the brokers ignore it and
        use 500 ms, as returned here.)
        """
        return cls(max_idle=10, max_active=100, idle_timeout=300, wait=True)

    def __repr__(self) -> str:
        return _masked_repr(self, {"sentinel_password": _mask_secret})


@dataclass(kw_only=True)
class DynamoDBConfig:
    """AWS DynamoDB result-backend settings (Go ``DynamoDBConfig``); YAML section ``dynamodb``."""

    #: Code only: a boto3 DynamoDB client to use instead of building one.
    client: Any = field(default=None, repr=False, compare=False)
    #: ``task_states_table`` / ``TASK_STATES_TABLE``; default ``task_states``.
    task_states_table: str = DEFAULT_DYNAMODB_TASK_STATES_TABLE
    #: ``group_metas_table`` / ``GROUP_METAS_TABLE``; default ``group_metas``.
    group_metas_table: str = DEFAULT_DYNAMODB_GROUP_METAS_TABLE
    #: Python only (Go ignores it): ``endpoint_url`` / ``DYNAMODB_ENDPOINT_URL``; the
    #: DynamoDB API endpoint boto3 talks to (emulators, VPC endpoints).  Empty: boto3's
    #: default for the region.
    endpoint_url: str = ""
    #: Python only: ``region`` / ``DYNAMODB_REGION``; empty: boto3's standard chain.
    region: str = ""


@dataclass(kw_only=True)
class MongoDBConfig:
    """MongoDB result-backend settings (Go ``MongoDBConfig``); code only, absent by default.

    Go uses database ``machinery`` when the section is absent. Go's zero value for
    ``Database`` is ``""`` (which MongoDB refuses), so this class defaults to ``machinery``.
    """

    #: Code only: a pymongo ``MongoClient`` to use instead of connecting to the URL.
    client: Any = field(default=None, repr=False, compare=False)
    #: Database holding the ``tasks`` and ``group_metas`` collections.
    database: str = DEFAULT_MONGODB_DATABASE


@dataclass(kw_only=True)
class GCPPubSubConfig:
    """Google Cloud Pub/Sub settings (Go ``GCPPubSubConfig``); code only."""

    #: Code only: a ``google.cloud.pubsub`` client to use instead of building one.
    client: Any = field(default=None, repr=False, compare=False)
    #: Maximum ack-deadline extension in **seconds** (Go: a ``time.Duration``); 0 (default)
    #: keeps the client library's default.
    max_extension: float = 0.0



@dataclass(kw_only=True)
class AzureConfig:
    """Azure Storage Queues settings of the sublime-security fork (Go ``AzureConfig``; its
    ``TTL``, ``VisibilityTimeout``, ``MaxReceives`` and ``DLQTTL``, here in seconds), plus the
    Python-only ways to reach the account and name the dead-letter queue.  Code only; see
    :mod:`machinery_compat.brokers.azure`."""

    #: Code only: an ``azure.storage.queue.QueueServiceClient`` to use (Go's ``Client``).
    client: Any = field(default=None, repr=False, compare=False)
    #: Code only (Python): a credential for a ``https://<account>.queue.core.windows.net``
    #: broker URL (an account key, a SAS token, a ``TokenCredential``...).
    credential: Any = field(default=None, repr=False, compare=False)
    #: Python only: an Azure Storage connection string (used by ``azure://`` without a host,
    #: and by a ``queue.core.windows`` URL without a credential); empty: the environment's
    #: ``AZURE_STORAGE_CONNECTION_STRING``.
    connection_string: str = field(default="", repr=False)
    #: ``TTL``: message time-to-live sent with every publish, seconds; <= 0: the service's
    #: default (7 days; Go sends 0, outside the service's documented range).
    ttl: float = 0.0
    #: ``VisibilityTimeout``: how long a received message stays hidden, seconds (the worker
    #: extends it while the task runs); <= 0: 30 (Go sends 0, which the service refuses).
    visibility_timeout: float = 0.0
    #: ``MaxReceives``: a message received more often than this goes to the dead-letter queue
    #: (<= 0: 10, Go's default).
    max_receives: int = 0
    #: ``DLQTTL``: time-to-live of dead-lettered messages, seconds (<= 0: 30 days, Go's default).
    dlq_ttl: float = 0.0
    #: Python only: the dead-letter queue's name (Go: a client object); empty:
    #: ``<default_queue>-dead``, created when missing.
    dlq_queue: str = ""
    #: Python only: the longest publish delay (visibility timeout) sent, seconds; <= 0: 420
    #: (the fork's 7 minutes).  A Python worker re-delays a message received before it is due.
    max_delay_seconds: int = 0


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


@dataclass(kw_only=True, repr=False)
class Config:
    """Go Machinery's ``config.Config``, with the defaults of ``NewFromYaml``/``NewFromEnvironment``.

    See the package documentation (:mod:`machinery_compat.config`) for every field's YAML key, environment variable and default.
    ``repr()`` masks the passwords in URLs and the Sentinel password.
    """

    #: ``broker`` / ``BROKER``: broker URL (``amqp://``, ``redis://``, ``https://sqs...``, ...).
    broker: str = DEFAULT_BROKER
    #: ``default_queue`` / ``DEFAULT_QUEUE``: queue (Redis list, SQS queue name, AMQP queue)
    #: used when a task has no routing key. Default ``machinery_tasks``.
    default_queue: str = DEFAULT_QUEUE
    #: ``result_backend`` / ``RESULT_BACKEND``: result-backend URL.
    result_backend: str = DEFAULT_RESULT_BACKEND
    #: ``results_expire_in`` / ``RESULTS_EXPIRE_IN``: seconds results are kept; 0 means 3600
    #: (see :attr:`effective_results_expire_in`), except for MongoDB under Go v2, where 0
    #: deletes them at once.
    results_expire_in: int = DEFAULT_RESULTS_EXPIRE_IN
    #: ``lock`` / ``LOCK``: lock URL for periodic tasks (``redis://...``); anything else, the
    #: default ``""`` included, means an in-process lock. See :func:`parse_redis_lock_url`.
    lock: str = ""
    #: ``multiple_broker_separator`` / ``MULTIPLE_BROKEN_SEPARATOR`` (sic): splits ``broker``
    #: into several AMQP URLs (AMQP only). Default ``""``.
    multiple_broker_separator: str = ""
    #: ``no_unix_signals`` / ``NO_UNIX_SIGNALS``: do not install signal handlers in workers.
    no_unix_signals: bool = False
    #: ``wire_dialect`` / ``WIRE_DIALECT`` (Python only): the task-message layout this app
    #: writes, ``"upstream"`` (Go Machinery v1/v2, default) or ``"sublime"`` (the
    #: sublime-security fork, v1.12.12+: ``Delay`` instead of ``ETA``, 29 keys); both are read
    #: either way. See :mod:`machinery_compat.protocol.sublime`.
    wire_dialect: str = "upstream"
    #: YAML section ``amqp``; ``None`` when a YAML file has no ``amqp:`` section.
    amqp: AMQPConfig | None = field(default_factory=AMQPConfig)
    #: YAML section ``sqs``; ``None`` by default.
    sqs: SQSConfig | None = None
    #: YAML section ``redis``; ``None`` only if set so (then Go uses
    #: :meth:`RedisConfig.nil_fallback`, see :attr:`effective_redis`).
    redis: RedisConfig | None = field(default_factory=RedisConfig)
    #: YAML section ``dynamodb``.
    dynamodb: DynamoDBConfig | None = field(default_factory=DynamoDBConfig)
    #: Code only; ``None`` means database ``machinery``.
    mongodb: MongoDBConfig | None = None
    #: Code only.
    gcppubsub: GCPPubSubConfig | None = field(default_factory=GCPPubSubConfig)
    #: Code only (the sublime-security fork's ``azure`` section): the Azure Storage Queues
    #: broker's settings; ``None``: the defaults.
    azure: AzureConfig | None = None
    #: Code only (Go ``TLSConfig``): the :class:`ssl.SSLContext` of ``amqps://`` and
    #: ``rediss://`` connections (``None``: the system's default context; ``rediss://`` URLs may
    #: instead carry ``ssl_*`` query options, see :mod:`machinery_compat.config.redis_url`).
    tls_config: ssl.SSLContext | None = field(default=None, repr=False, compare=False)

    # -- derived values ------------------------------------------------------------------------

    @property
    def effective_results_expire_in(self) -> int:
        """Seconds results are kept as Go's backends compute it: 0 means 3600."""
        return self.results_expire_in or DEFAULT_RESULTS_EXPIRE_IN

    @property
    def effective_redis(self) -> RedisConfig:
        """``redis``, or what Go uses when it is ``None`` (:meth:`RedisConfig.nil_fallback`)."""
        return self.redis if self.redis is not None else RedisConfig.nil_fallback()

    @property
    def effective_mongodb_database(self) -> str:
        """MongoDB database name Go uses: ``machinery`` when ``mongodb`` is ``None``."""
        return self.mongodb.database if self.mongodb is not None else DEFAULT_MONGODB_DATABASE

    def __repr__(self) -> str:
        return _masked_repr(
            self, {"broker": mask_url, "result_backend": mask_url, "lock": mask_url}
        )

    # -- constructors --------------------------------------------------------------------------

    @classmethod
    def default(cls) -> Config:
        """Machinery's default configuration (what ``NewFromYaml`` starts from)."""
        return cls()

    @classmethod
    def from_url(cls, broker: str, result_backend: str | None = None, **overrides: Any) -> Config:
        """Defaults, with ``broker``, ``result_backend`` and any other field set.

        ``result_backend=None`` reuses the broker URL when that scheme can also store results
        (``amqp``, ``amqps``, ``redis``, ``rediss``, ``redis+socket``), else sets ``""`` (no
        result backend). ``overrides`` are :class:`Config` field names, e.g.
        ``default_queue="emails"`` or ``redis=RedisConfig(master_name="mymaster")``.
        """
        if result_backend is None:
            reusable = ("amqp://", "amqps://", "redis://", "rediss://", "redis+socket://")
            result_backend = broker if broker.startswith(reusable) else ""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ConfigError(f"unknown Config field(s): {', '.join(unknown)}")
        return cls(broker=broker, result_backend=result_backend, **overrides)

    @classmethod
    def from_yaml(cls, source: str | os.PathLike[str] | IO[str] | IO[bytes]) -> Config:
        """Read a Go Machinery YAML config file (a path, or an open text/binary stream).

        Defaults are applied first, as Go's ``NewFromYaml`` does. Unknown keys are logged and
        ignored; wrong types raise :class:`ConfigError` naming the key and the file. Unlike
        Go, the whole file is read (Go stops after 1000 bytes; a warning is logged).
        """
        from .yaml_io import read_yaml

        return read_yaml(source)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        """Read Machinery's environment variables (``os.environ`` by default).

        Defaults are applied first, as Go's ``NewFromEnvironment`` does; see the package
        documentation (:mod:`machinery_compat.config`) for the names and the parsing rules.
        """
        from .env_io import read_env

        return read_env(cls, environ)

    # -- writers -------------------------------------------------------------------------------

    def to_yaml_dict(self, *, full: bool = False) -> dict[str, Any]:
        """The configuration as Go's YAML keys (for a file a Go worker can read).

        With ``full=False`` (default) only values that differ from Go's defaults are written,
        which keeps the file under Go's 1000-byte read limit; ``amqp``/``sqs`` sections are
        written whenever they are not ``None`` (``None`` means "no section"), ``redis`` and
        ``dynamodb`` as ``null`` when ``None``. Code-only fields are never written.
        """
        from .yaml_io import to_yaml_dict

        return to_yaml_dict(self, full=full)

    def to_yaml(self, *, full: bool = False) -> str:
        """:meth:`to_yaml_dict` as YAML text; logs a warning if Go would truncate it."""
        from .yaml_io import to_yaml

        return to_yaml(self, full=full)

    def to_env(self, *, full: bool = False) -> dict[str, str]:
        """The configuration as Machinery's environment variables (plain names).

        With ``full=False`` (default) only values that differ from the defaults are given.
        ``None`` sections cannot be expressed (Go's environment loader always creates them)
        and are left out. Map values must not contain ``,`` or ``:``; Go drops the values of
        ``AMQP_QUEUE_DECLARE_ARGS`` anyway.
        """
        from .env_io import to_env

        return to_env(self, full=full)
