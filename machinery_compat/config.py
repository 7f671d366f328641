"""Configuration that Go Machinery understands: same fields, same YAML file, same variables.

:class:`Config` mirrors Go Machinery's ``config.Config`` (``v2/config/config.go``; v1 is the
same file) field for field, with Machinery's built-in defaults. Three ways to build one::

    from machinery_compat.config import Config

    cnf = Config.from_yaml("config.yml")     # the very file a Go worker reads
    cnf = Config.from_env()                  # Machinery's own variable names
    cnf = Config.from_url("redis://localhost:6379/0", default_queue="emails")

``Config()`` (and :meth:`Config.default`) hold the values Go's ``NewFromYaml`` and
``NewFromEnvironment`` start from. Go code that builds a ``config.Config`` literal starts
from Go zero values instead; each field's note says what Go does with a zero value.

Fields, YAML keys, environment variables and defaults
-----------------------------------------------------

===================================  ===================================  ======================================
YAML key                             Environment variable                 Default
===================================  ===================================  ======================================
``broker``                           ``BROKER``                           ``amqp://guest:guest@localhost:5672/``
``lock``                             ``LOCK``                             ``""`` (in-process lock)
``multiple_broker_separator``        ``MULTIPLE_BROKEN_SEPARATOR``        ``""`` (AMQP only)
``default_queue``                    ``DEFAULT_QUEUE``                    ``machinery_tasks``
``result_backend``                   ``RESULT_BACKEND``                   ``amqp://guest:guest@localhost:5672/``
``results_expire_in``                ``RESULTS_EXPIRE_IN``                3600 s (0 means 3600)
``no_unix_signals``                  ``NO_UNIX_SIGNALS``                  false
``amqp.exchange``                    ``AMQP_EXCHANGE``                    ``machinery_exchange``
``amqp.exchange_type``               ``AMQP_EXCHANGE_TYPE``               ``direct``
``amqp.queue_declare_args``          ``AMQP_QUEUE_DECLARE_ARGS``          ``{}``
``amqp.queue_binding_args``          ``AMQP_QUEUE_BINDING_ARGS``          ``{}``
``amqp.binding_key``                 ``AMQP_BINDING_KEY``                 ``machinery_task``
``amqp.prefetch_count``              ``AMQP_PREFETCH_COUNT``              3 (0 = unlimited)
``amqp.auto_delete``                 ``AMQP_AUTO_DELETE``                 false
``amqp.delayed_queue``               ``AMQP_DELAYED_QUEUE``               ``""``
``sqs.receive_wait_time_seconds``    ``SQS_WAIT_TIME_SECONDS``            0
``sqs.receive_visibility_timeout``   ``SQS_VISIBILITY_TIMEOUT``           None (the queue's)
``sqs.visibility_hearth_beat``       ``SQS_VISIBILITY_HEARTBEAT``         false (Go v2 only)
``redis.max_idle``                   ``REDIS_MAX_IDLE``                   3
``redis.max_active``                 ``REDIS_MAX_ACTIVE``                 0 (unlimited)
``redis.max_idle_timeout``           ``REDIS_IDLE_TIMEOUT``               240 s
``redis.wait``                       ``REDIS_WAIT``                       false
``redis.read_timeout``               ``REDIS_READ_TIMEOUT``               15 s
``redis.write_timeout``              ``REDIS_WRITE_TIMEOUT``              15 s
``redis.connect_timeout``            ``REDIS_CONNECT_TIMEOUT``            15 s
``redis.normal_tasks_poll_period``   ``REDIS_NORMAL_TASKS_POLL_PERIOD``   1000 ms (<= 0: 1000)
``redis.delayed_tasks_poll_period``  ``REDIS_DELAYED_TASKS_POLL_PERIOD``  500 ms (<= 0: 500)
``redis.delayed_tasks_key``          ``REDIS_DELAYED_TASKS_KEY``          ``""`` (``delayed_tasks``)
``redis.client_name``                ``REDIS_CLIENT_NAME``                ``""`` (Go v2 only)
``redis.master_name``                ``REDIS_MASTER_NAME``                ``""`` (Sentinel master)
``redis.cluster_enabled``            ``REDIS_CLUSTER_ENABLED``            false (Go v2 name)
``redis.cluster_mode``               ``REDIS_CLUSTER_MODE``               false (Go v1 name)
``redis.sentinel_password``          ``REDIS_SENTINEL_PASSWORD``          ``""`` (Go v2 only)
``dynamodb.task_states_table``       ``TASK_STATES_TABLE``                ``task_states``
``dynamodb.group_metas_table``       ``GROUP_METAS_TABLE``                ``group_metas``
===================================  ===================================  ======================================

The Python attribute is the YAML key's name except ``sqs.wait_time_seconds``,
``sqs.visibility_timeout``, ``sqs.visibility_heartbeat``, ``redis.idle_timeout`` and
``redis.cluster_enabled`` (for both ``cluster_enabled`` and ``cluster_mode``). Code-only
fields, as in Go: ``mongodb.database`` (default ``machinery``), ``gcppubsub.max_extension``
(seconds, 0 = client default), the ``client`` of the SQS, DynamoDB, MongoDB and Pub/Sub
sections and ``tls_config``.

Either of ``cluster_mode`` (v1) and ``cluster_enabled`` (v2) being true turns
:attr:`RedisConfig.cluster_enabled` on, so one file can serve v1 and v2 workers.

Loading from YAML (:meth:`Config.from_yaml`)
--------------------------------------------

Like Go's ``NewFromYaml``: start from the defaults above, then overlay the file; keys missing
from a section keep their defaults. An explicit ``null`` sets a value to its Go zero value
(``""``, ``0``, ``false``; a whole section becomes ``None``). Unknown keys are logged as
warnings and ignored (Go ignores them silently). A value of the wrong type, e.g.
``prefetch_count: abc``, raises :class:`~machinery_compat.exceptions.ConfigError` naming the
key and the file. Go quirks to know about when sharing a file with Go workers:

* **Go reads only the first 1000 bytes of the file** (one fixed-size read), so a longer file is
  silently cut short for Go workers. This loader reads the whole file and logs a warning when
  the file is longer than 1000 bytes. Keep shared files short (drop comments, or use
  :meth:`Config.to_yaml`, which writes only the non-default values).
* A file **without an** ``amqp:`` **section** gives ``amqp = None`` (a file holding only
  comments too); every other section keeps its defaults when absent. A zero-byte file is an
  error, in Go as here.
* Go accepts any scalar for a string key (``default_queue: 123`` is ``"123"``), and so does this
  loader, but Go keeps the text as written where this loader re-renders the parsed value
  (``lock: 0x10`` is ``"0x10"`` in Go, ``"16"`` here; ``yes`` becomes ``"true"``): quote such
  strings. Go truncates fractional numbers for integer keys (``3.7`` is ``3``), which this
  loader refuses.
* Go can re-read the file every 10 s (``keepReloading``); this library does not.

Loading from the environment (:meth:`Config.from_env`)
------------------------------------------------------

Like Go's ``NewFromEnvironment`` (kelseyhightower/envconfig): start from the defaults, then
apply each variable that is set, even to an empty string. Integers are parsed like Go's
``strconv.ParseInt(s, 0, 64)`` (``0x10``, ``0o17``, ``0b11``, ``010`` is octal, ``1_000``);
booleans like ``strconv.ParseBool`` (``1 t T TRUE true True 0 f F FALSE false False``). An
unparsable value, including an empty string for a number or boolean, raises ``ConfigError``
naming the variable. As in envconfig, a section variable may also be given with its section
name as prefix, which wins over the plain name: ``AMQP_AMQP_EXCHANGE``, ``SQS_SQS_...``,
``REDIS_REDIS_...``, ``DYNAMODB_TASK_STATES_TABLE``. Environment-loaded configs always have
``amqp``, ``sqs``, ``redis`` and ``dynamodb`` sections. Go quirks:

* ``AMQP_QUEUE_BINDING_ARGS=k:v,k2:v2`` gives string values, but
  ``AMQP_QUEUE_DECLARE_ARGS=k:v`` gives ``{k: None}`` in Go (the values are dropped); this
  loader does the same, so Python and Go declare identical queues, and logs a warning. Put
  declare arguments in the YAML file or in code instead.
* envconfig also allocates Go's ``TLSConfig``, so **Go workers configured from the environment
  dial Redis with TLS** even for ``redis://`` URLs. This library does not copy that.

Redis URLs (:func:`parse_redis_url`)
------------------------------------

The forms Go Machinery's URL factories (``v1/factories.go``) accept, with the same meaning:

* ``redis://[password@]host[:port][/db]`` -- a lone userinfo is the **password** (redis-py
  would take it as a user name); ``redis://user:password@host``, ``redis://:password@host``,
  ``redis://user:@host`` (empty password) also work. Parsed like Go's ``net/url``:
  percent-decoded, query string ignored, ``db`` is the first path segment.
* ``redis://[[user:]password@]host1:port1,host2:port2[/db]`` -- several addresses (cluster or
  Sentinel, see ``master_name``/``cluster_enabled``): credentials come from the first address
  (everything before its last ``@``), the db from a ``/N`` suffix of the last one; nothing is
  percent-decoded.
* ``redis+socket://[[user:]password@]/path/to/redis.sock[:/db]`` -- a unix socket; not
  percent-decoded.
* ``rediss://...`` -- as ``redis://``, with :attr:`RedisURL.tls` set. Go only uses TLS when
  ``Config.TLSConfig`` is set; this library turns TLS on for ``rediss``.

A db that is not an integer counts as db 0, as in Go (a warning is logged). The periodic-task
lock URL has different rules in Go; see :func:`parse_redis_lock_url`.

Secrets
-------

``repr()``/``str()`` of a config replace passwords in ``broker``, ``result_backend`` and
``lock`` and the Sentinel password with ``***``. Use :func:`mask_url` for any URL you log.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, Final, Literal, TypeAlias, cast
from urllib.parse import unquote_to_bytes, urlsplit

import yaml

from machinery_compat.exceptions import ConfigError

logger = logging.getLogger(__name__)

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
#: Port assumed when a Redis URL names none (Go itself would fail to dial).
DEFAULT_REDIS_PORT: Final = 6379
#: Go's ``NewFromYaml`` reads at most this many bytes of the file.
GO_YAML_READ_LIMIT: Final = 1000

MASK: Final = "***"

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


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


@dataclass(kw_only=True, repr=False)
class Config:
    """Go Machinery's ``config.Config``, with the defaults of ``NewFromYaml``/``NewFromEnvironment``.

    See the module documentation for every field's YAML key, environment variable and default.
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
    #: Code only (Go ``TLSConfig``): TLS settings for Redis and AMQP connections.
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
        if isinstance(source, str | os.PathLike):
            name = os.fspath(source)
            try:
                with open(name, "rb") as fh:
                    data: str | bytes = fh.read()
            except OSError as e:
                raise ConfigError(f"{name}: cannot read config file: {e}") from e
        else:
            name = str(getattr(source, "name", "<stream>"))
            data = source.read()
        size = len(data.encode("utf-8")) if isinstance(data, str) else len(data)
        if size == 0:
            raise ConfigError(f"{name}: empty config file (Go Machinery refuses it: EOF)")
        if size > GO_YAML_READ_LIMIT:
            logger.warning(
                "%s is %d bytes long; Go Machinery reads only the first %d bytes of a YAML "
                "config file, so Go workers would see it truncated",
                name,
                size,
                GO_YAML_READ_LIMIT,
            )
        try:
            doc = yaml.safe_load(data)
        except yaml.YAMLError as e:
            raise ConfigError(f"{name}: invalid YAML: {e}") from e
        return _config_from_yaml_doc(doc, name)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        """Read Machinery's environment variables (``os.environ`` by default).

        Defaults are applied first, as Go's ``NewFromEnvironment`` does; see the module
        documentation for the names and the parsing rules.
        """
        env: Mapping[str, str] = os.environ if environ is None else environ
        cnf = cls(sqs=SQSConfig())  # envconfig allocates every section
        for spec in _KEYS:
            target = _section_for_env(cnf, spec.section)
            for alt in spec.env:
                name = f"{_ENV_PREFIX[spec.section]}_{alt}" if spec.section else alt
                if name not in env:
                    name = alt
                    if name not in env:
                        continue
                value = _parse_env_value(spec, name, env[name])
                if spec.kind == "bool_or":
                    value = bool(getattr(target, spec.attr)) or value
                setattr(target, spec.attr, value)
        return cnf

    # -- writers -------------------------------------------------------------------------------

    def to_yaml_dict(self, *, full: bool = False) -> dict[str, Any]:
        """The configuration as Go's YAML keys (for a file a Go worker can read).

        With ``full=False`` (default) only values that differ from Go's defaults are written,
        which keeps the file under Go's 1000-byte read limit; ``amqp``/``sqs`` sections are
        written whenever they are not ``None`` (``None`` means "no section"), ``redis`` and
        ``dynamodb`` as ``null`` when ``None``. Code-only fields are never written.
        """
        default = Config(sqs=SQSConfig())
        out: dict[str, Any] = {}
        for section in (None, "amqp", "sqs", "redis", "dynamodb"):
            specs = [s for s in _KEYS if s.section == section]
            if section is None:
                for spec in specs:
                    value = getattr(self, spec.attr)
                    if full or value != getattr(default, spec.attr):
                        out[spec.yaml[0]] = _yaml_out(value)
                continue
            obj = getattr(self, section)
            if obj is None:
                if section in ("redis", "dynamodb"):
                    out[section] = None
                continue
            ref = getattr(default, section)
            body: dict[str, Any] = {}
            for spec in specs:
                value = getattr(obj, spec.attr)
                if value is None or not (full or value != getattr(ref, spec.attr)):
                    continue
                for key in spec.yaml:
                    body[key] = _yaml_out(value)
            if body or full or section in ("amqp", "sqs"):
                out[section] = body
        return out

    def to_yaml(self, *, full: bool = False) -> str:
        """:meth:`to_yaml_dict` as YAML text; logs a warning if Go would truncate it."""
        text = yaml.safe_dump(
            self.to_yaml_dict(full=full), sort_keys=False, default_flow_style=False
        )
        if len(text.encode("utf-8")) > GO_YAML_READ_LIMIT:
            logger.warning(
                "YAML config is %d bytes; Go Machinery reads only the first %d bytes",
                len(text.encode("utf-8")),
                GO_YAML_READ_LIMIT,
            )
        return text

    def to_env(self, *, full: bool = False) -> dict[str, str]:
        """The configuration as Machinery's environment variables (plain names).

        With ``full=False`` (default) only values that differ from the defaults are given.
        ``None`` sections cannot be expressed (Go's environment loader always creates them)
        and are left out. Map values must not contain ``,`` or ``:``; Go drops the values of
        ``AMQP_QUEUE_DECLARE_ARGS`` anyway.
        """
        default = Config(sqs=SQSConfig())
        out: dict[str, str] = {}
        for spec in _KEYS:
            obj = self if spec.section is None else getattr(self, spec.section)
            if obj is None:
                continue
            ref = default if spec.section is None else getattr(default, spec.section)
            value = getattr(obj, spec.attr)
            if value is None or value == {} or not (full or value != getattr(ref, spec.attr)):
                continue  # an empty map cannot be written (Go refuses AMQP_QUEUE_BINDING_ARGS=)
            for name in spec.env:
                out[name] = _env_out(name, value)
        return out


# --------------------------------------------------------------------------------------------
# Key table: one row per Go struct field, in Go's order
# --------------------------------------------------------------------------------------------

_Kind: TypeAlias = Literal[
    "str", "int", "bool", "bool_or", "opt_int", "map", "binding_map", "declare_map"
]
_Section: TypeAlias = Literal["amqp", "sqs", "redis", "dynamodb"] | None


@dataclass(frozen=True)
class _Key:
    section: _Section
    attr: str
    yaml: tuple[str, ...]
    env: tuple[str, ...]
    kind: _Kind
    secret: Literal["", "url", "text"] = ""


_KEYS: Final[tuple[_Key, ...]] = (
    _Key(None, "broker", ("broker",), ("BROKER",), "str", "url"),
    _Key(None, "lock", ("lock",), ("LOCK",), "str", "url"),
    _Key(
        None,
        "multiple_broker_separator",
        ("multiple_broker_separator",),
        ("MULTIPLE_BROKEN_SEPARATOR",),
        "str",
    ),
    _Key(None, "default_queue", ("default_queue",), ("DEFAULT_QUEUE",), "str"),
    _Key(None, "result_backend", ("result_backend",), ("RESULT_BACKEND",), "str", "url"),
    _Key(None, "results_expire_in", ("results_expire_in",), ("RESULTS_EXPIRE_IN",), "int"),
    _Key(None, "no_unix_signals", ("no_unix_signals",), ("NO_UNIX_SIGNALS",), "bool"),
    _Key("amqp", "exchange", ("exchange",), ("AMQP_EXCHANGE",), "str"),
    _Key("amqp", "exchange_type", ("exchange_type",), ("AMQP_EXCHANGE_TYPE",), "str"),
    _Key(
        "amqp",
        "queue_declare_args",
        ("queue_declare_args",),
        ("AMQP_QUEUE_DECLARE_ARGS",),
        "declare_map",
    ),
    _Key(
        "amqp",
        "queue_binding_args",
        ("queue_binding_args",),
        ("AMQP_QUEUE_BINDING_ARGS",),
        "binding_map",
    ),
    _Key("amqp", "binding_key", ("binding_key",), ("AMQP_BINDING_KEY",), "str"),
    _Key("amqp", "prefetch_count", ("prefetch_count",), ("AMQP_PREFETCH_COUNT",), "int"),
    _Key("amqp", "auto_delete", ("auto_delete",), ("AMQP_AUTO_DELETE",), "bool"),
    _Key("amqp", "delayed_queue", ("delayed_queue",), ("AMQP_DELAYED_QUEUE",), "str"),
    _Key(
        "sqs",
        "wait_time_seconds",
        ("receive_wait_time_seconds",),
        ("SQS_WAIT_TIME_SECONDS",),
        "int",
    ),
    _Key(
        "sqs",
        "visibility_timeout",
        ("receive_visibility_timeout",),
        ("SQS_VISIBILITY_TIMEOUT",),
        "opt_int",
    ),
    _Key(
        "sqs",
        "visibility_heartbeat",
        ("visibility_hearth_beat",),
        ("SQS_VISIBILITY_HEARTBEAT",),
        "bool",
    ),
    _Key("redis", "max_idle", ("max_idle",), ("REDIS_MAX_IDLE",), "int"),
    _Key("redis", "max_active", ("max_active",), ("REDIS_MAX_ACTIVE",), "int"),
    _Key("redis", "idle_timeout", ("max_idle_timeout",), ("REDIS_IDLE_TIMEOUT",), "int"),
    _Key("redis", "wait", ("wait",), ("REDIS_WAIT",), "bool"),
    _Key("redis", "read_timeout", ("read_timeout",), ("REDIS_READ_TIMEOUT",), "int"),
    _Key("redis", "write_timeout", ("write_timeout",), ("REDIS_WRITE_TIMEOUT",), "int"),
    _Key("redis", "connect_timeout", ("connect_timeout",), ("REDIS_CONNECT_TIMEOUT",), "int"),
    _Key(
        "redis",
        "normal_tasks_poll_period",
        ("normal_tasks_poll_period",),
        ("REDIS_NORMAL_TASKS_POLL_PERIOD",),
        "int",
    ),
    _Key(
        "redis",
        "delayed_tasks_poll_period",
        ("delayed_tasks_poll_period",),
        ("REDIS_DELAYED_TASKS_POLL_PERIOD",),
        "int",
    ),
    _Key(
        "redis",
        "delayed_tasks_key",
        ("delayed_tasks_key",),
        ("REDIS_DELAYED_TASKS_KEY",),
        "str",
    ),
    _Key("redis", "client_name", ("client_name",), ("REDIS_CLIENT_NAME",), "str"),
    _Key("redis", "master_name", ("master_name",), ("REDIS_MASTER_NAME",), "str"),
    _Key(
        "redis",
        "cluster_enabled",
        ("cluster_enabled", "cluster_mode"),
        ("REDIS_CLUSTER_ENABLED", "REDIS_CLUSTER_MODE"),
        "bool_or",
    ),
    _Key(
        "redis",
        "sentinel_password",
        ("sentinel_password",),
        ("REDIS_SENTINEL_PASSWORD",),
        "str",
        "text",
    ),
    _Key(
        "dynamodb",
        "task_states_table",
        ("task_states_table",),
        ("TASK_STATES_TABLE",),
        "str",
    ),
    _Key(
        "dynamodb",
        "group_metas_table",
        ("group_metas_table",),
        ("GROUP_METAS_TABLE",),
        "str",
    ),
)

# envconfig's prefix for the fields of each nested struct: the Go field name, upper-cased.
_ENV_PREFIX: Final[dict[_Section, str]] = {
    None: "",
    "amqp": "AMQP",
    "sqs": "SQS",
    "redis": "REDIS",
    "dynamodb": "DYNAMODB",
}

_SECTION_TYPES: Final[dict[str, Callable[[], Any]]] = {
    "amqp": AMQPConfig,
    "sqs": SQSConfig,
    "redis": RedisConfig,
    "dynamodb": DynamoDBConfig,
}


def _section_for_env(cnf: Config, section: _Section) -> Any:
    if section is None:
        return cnf
    obj = getattr(cnf, section)
    if obj is None:  # cannot happen from from_env's start value, but keep it total
        obj = _SECTION_TYPES[section]()
        setattr(cnf, section, obj)
    return obj


# --------------------------------------------------------------------------------------------
# YAML
# --------------------------------------------------------------------------------------------

# yaml.v2 reads unquoted y/Y/n/N as booleans; PyYAML keeps them as strings.
_YAML_EXTRA_BOOLS: Final = {"y": True, "Y": True, "n": False, "N": False}


def _config_from_yaml_doc(doc: Any, source: str) -> Config:
    cnf = Config()
    if doc is None:  # empty file: Go keeps the defaults but drops the AMQP section
        cnf.amqp = None
        return cnf
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: expected a mapping of config keys, got {type(doc).__name__}")
    by_key = {(s.section, k): s for s in _KEYS for k in s.yaml}
    for raw_key, value in doc.items():
        key = str(raw_key)
        if key in _SECTION_TYPES:
            section = cast(_Section, key)
            if value is None:
                setattr(cnf, key, None)
                continue
            if not isinstance(value, dict):
                raise ConfigError(
                    f"{source}: key {key!r}: expected a mapping, got {type(value).__name__}"
                )
            obj = getattr(cnf, key)
            if obj is None:
                obj = _SECTION_TYPES[key]()
                setattr(cnf, key, obj)
            for raw_sub, sub_value in value.items():
                sub = str(raw_sub)
                spec = by_key.get((section, sub))
                if spec is None:
                    logger.warning(
                        "%s: ignoring unknown config key %r (Go Machinery ignores it too)",
                        source,
                        f"{key}.{sub}",
                    )
                    continue
                _apply_yaml(obj, spec, sub_value, f"{key}.{sub}", source)
            continue
        spec = by_key.get((None, key)) if isinstance(raw_key, str) else None
        if spec is None:
            logger.warning(
                "%s: ignoring unknown config key %r (Go Machinery ignores it too)", source, key
            )
            continue
        _apply_yaml(cnf, spec, value, key, source)
    if "amqp" not in doc:
        cnf.amqp = None  # Go: a file without an amqp section gives a nil AMQP config
    return cnf


def _apply_yaml(target: Any, spec: _Key, value: Any, dotted: str, source: str) -> None:
    try:
        converted = _convert_yaml(spec.kind, value)
    except (TypeError, ValueError) as e:
        shown = _show_secret(spec, value)
        raise ConfigError(f"{source}: key {dotted!r}: {e}, got {shown}") from None
    if spec.kind == "bool_or":
        converted = bool(getattr(target, spec.attr)) or converted
    setattr(target, spec.attr, converted)


def _convert_yaml(kind: _Kind, value: Any) -> Any:
    if kind == "str":
        return _yaml_scalar_text(value)
    if kind == "int":
        return 0 if value is None else _yaml_int(value)
    if kind == "opt_int":
        return None if value is None else _yaml_int(value)
    if kind in ("bool", "bool_or"):
        if value is None:
            return False
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value in _YAML_EXTRA_BOOLS:
            return _YAML_EXTRA_BOOLS[value]
        raise TypeError("expected a boolean (true/false)")
    # maps
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TypeError("expected a mapping")
    return {_yaml_scalar_text(k): v for k, v in value.items()}


def _yaml_scalar_text(value: Any) -> str:
    """A YAML scalar as Go's yaml.v2 stores it into a string (any scalar is accepted)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | dict):
        raise TypeError("expected a string")
    return str(value)  # dates and times: their ISO text, as written


def _yaml_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError("expected an integer")
    if isinstance(value, float) and (not math.isfinite(value) or not value.is_integer()):
        raise ValueError("expected an integer")  # Go would truncate 3.7 to 3
    result = int(value)
    if not _INT64_MIN <= result <= _INT64_MAX:
        raise ValueError("integer out of range for Go's int")
    return result


def _show_secret(spec: _Key, value: Any) -> str:
    if spec.secret == "text":
        return MASK
    if spec.secret == "url" and isinstance(value, str):
        return repr(mask_url(value))
    return repr(value)


def _yaml_out(value: Any) -> Any:
    return dict(value) if isinstance(value, dict) else value


# --------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------

# strconv.ParseInt(s, 0, 64) syntax: sign, base prefix, digits with single underscores.
_GO_INT_RE: Final = re.compile(
    r"[+-]?(?:0[xX](?:_?[0-9a-fA-F])+|0[bB](?:_?[01])+|0[oO](?:_?[0-7])+"
    r"|0(?:_?[0-7])*|[1-9](?:_?[0-9])*)\Z"
)
_GO_TRUE: Final = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_GO_FALSE: Final = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def parse_go_int(text: str) -> int:
    """Parse ``text`` like Go's ``strconv.ParseInt(text, 0, 64)``; ``ValueError`` if invalid."""
    if not _GO_INT_RE.match(text):
        raise ValueError(f"invalid syntax for a Go integer: {text!r}")
    sign = -1 if text[0] == "-" else 1
    body = text.lstrip("+-").replace("_", "")
    prefix = body[:2].lower()
    if prefix in ("0x", "0b", "0o"):
        result = sign * int(body[2:], {"0x": 16, "0b": 2, "0o": 8}[prefix])
    elif len(body) > 1 and body[0] == "0":
        result = sign * int(body, 8)  # Go: a leading 0 means octal
    else:
        result = sign * int(body, 10)
    if not _INT64_MIN <= result <= _INT64_MAX:
        raise ValueError(f"value out of range for a 64-bit Go integer: {text!r}")
    return result


def parse_go_bool(text: str) -> bool:
    """Parse ``text`` like Go's ``strconv.ParseBool``; ``ValueError`` if invalid."""
    if text in _GO_TRUE:
        return True
    if text in _GO_FALSE:
        return False
    raise ValueError(f"invalid syntax for a Go boolean: {text!r}")


def _parse_env_value(spec: _Key, name: str, text: str) -> Any:
    try:
        if spec.kind == "str":
            return text
        if spec.kind in ("int", "opt_int"):
            return parse_go_int(text)
        if spec.kind in ("bool", "bool_or"):
            return parse_go_bool(text)
        if spec.kind == "declare_map":
            if not text.strip():
                return {}
            keys = _split_env_map(text)
            logger.warning(
                "%s: Go Machinery keeps only the keys of this variable (values become nil); "
                "declaring queues with %s",
                name,
                dict.fromkeys(keys),
            )
            return dict.fromkeys(keys)
        return dict(_split_env_pairs(text))  # binding_map: Go's QueueBindingArgs.Decode
    except ValueError as e:
        raise ConfigError(f"environment variable {name}: {e}") from None


def _split_env_pairs(text: str) -> list[tuple[str, str]]:
    pairs = []
    for item in text.split(","):
        parts = item.split(":")
        if len(parts) != 2:
            raise ValueError(f"invalid map item {item!r} (expected key:value,key:value)")
        pairs.append((parts[0], parts[1]))
    return pairs


def _split_env_map(text: str) -> list[str]:
    return [k for k, _ in _split_env_pairs(text)]


def _env_out(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | str):
        return str(value)
    pairs = []
    for k, v in dict(value).items():
        item = f"{k}:{'' if v is None else v}"
        if item.count(":") != 1 or "," in item:
            raise ConfigError(f"{name}: {k!r}: {v!r} cannot be written as key:value")
        pairs.append(item)
    return ",".join(pairs)


# --------------------------------------------------------------------------------------------
# Redis URLs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class RedisURL:
    """A Redis URL parsed the way Go Machinery parses it (see :func:`parse_redis_url`).

    ``host``/``port`` are those of the first address; ``hosts`` lists every address (empty
    for a unix socket). ``password`` is ``None`` when the URL has no userinfo.
    """

    host: str
    port: int = DEFAULT_REDIS_PORT
    password: str | None = None
    username: str | None = None
    db: int = 0
    socket_path: str | None = None
    tls: bool = False
    hosts: tuple[tuple[str, int], ...] = ()

    @property
    def multi_host(self) -> bool:
        """True when the URL lists several addresses (Go uses a cluster/Sentinel client)."""
        return len(self.hosts) > 1

    def to_redis_py_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``redis.Redis(**kwargs)`` reaching the same server as Go.

        Credentials are sent the way Go sends them: nothing without a (non-empty) password,
        ``AUTH password`` without a user name, ``AUTH user password`` with one. For several
        addresses use :attr:`hosts` with a cluster or Sentinel client instead.
        """
        if self.multi_host:
            raise ConfigError(
                "a URL with several addresses needs a cluster or Sentinel client; use .hosts"
            )
        kwargs: dict[str, Any] = {"db": self.db}
        if self.socket_path is not None:
            kwargs["unix_socket_path"] = self.socket_path
        else:
            kwargs["host"] = self.host
            kwargs["port"] = self.port
            if self.tls:
                kwargs["ssl"] = True
        if self.password:
            if self.username:
                kwargs["username"] = self.username
            kwargs["password"] = self.password
        return kwargs

    def __repr__(self) -> str:
        return _masked_repr(self, {"password": _mask_secret})


_REDIS_SCHEMES: Final = ("redis://", "rediss://")
_SOCKET_SCHEME: Final = "redis+socket://"
# Characters Go's net/url accepts in userinfo (validUserinfo).
_USERINFO_RE: Final = re.compile(r"[A-Za-z0-9\-._:~!$&'()*+,;=%@]*\Z")
_BAD_ESCAPE_RE: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")
_GO_ATOI_RE: Final = re.compile(r"[+-]?[0-9]+\Z")


def parse_redis_url(url: str, *, cluster: bool = False) -> RedisURL:
    """Parse a ``redis://``, ``rediss://`` or ``redis+socket://`` URL like Go Machinery.

    Forms (see the module documentation for details):

    * ``redis://[password@]host[:port][/db]``, ``redis://user:password@host``,
      ``redis://:password@host``, ``redis://user:@host`` -- percent-decoded like Go's
      ``net/url``; the query string is ignored (a warning is logged).
    * ``redis://[[user:]password@]h1:p1,h2:p2[/db]`` -- credentials from the first address,
      db from the last; not percent-decoded. ``cluster=True`` (Go's ``cluster_enabled`` /
      ``cluster_mode``) parses a single address this way too, as Go does.
    * ``redis+socket://[[user:]password@]/path/to/redis.sock[:/db]``.
    * ``rediss://`` sets :attr:`RedisURL.tls` (Go needs ``TLSConfig`` for TLS).

    A missing port means 6379 and a missing host ``localhost``. A db that is not an integer
    means 0 (logged); a negative db raises :class:`ConfigError`, as does any other scheme.
    Results are cached, so warnings are logged once per URL.
    """
    return _parse_redis_url_cached(url, cluster)


@functools.lru_cache(maxsize=256)
def _parse_redis_url_cached(url: str, cluster: bool) -> RedisURL:
    if url.startswith(_SOCKET_SCHEME):
        return _parse_socket_url(url)
    for scheme in _REDIS_SCHEMES:
        if url.startswith(scheme):
            rest = url[len(scheme) :]
            tls = scheme == "rediss://"
            if cluster or "," in rest:
                return _parse_multi_host(url, rest.split(","), tls)
            return _parse_single_host(url, tls)
    raise ConfigError(f"not a Redis URL (redis://, rediss://, redis+socket://): {mask_url(url)}")


def parse_redis_lock_url(url: str) -> RedisURL | None:
    """Parse ``Config.lock`` as Go's ``LockFactory`` does; ``None`` means an in-process lock.

    Only ``redis://`` selects the Redis lock (``rediss://`` and everything else, ``""``
    included, give Go's in-memory lock: ``None``). Addresses are comma-separated; the password
    is everything before the last ``@`` of the first address (no user name, no decoding); the
    db is always 0 and a ``/db`` suffix is an error (Go would fail to dial it).
    """
    if not url.startswith("redis://"):
        if url.startswith(("rediss://", "redis+socket://")):
            logger.warning(
                "lock URL %s is not redis://; Go Machinery uses an in-process lock for it",
                mask_url(url),
            )
        return None
    addrs = url[len("redis://") :].split(",")
    password: str | None = None
    userinfo, sep, first = addrs[0].rpartition("@")
    if sep:
        password = userinfo
        addrs[0] = first
    hosts = []
    for addr in addrs:
        if "/" in addr or "?" in addr:
            raise ConfigError(
                f"lock URL {mask_url(url)}: Go's lock takes host:port addresses only "
                "(always db 0, no path or query)"
            )
        hosts.append(_split_host_port(addr, url))
    return RedisURL(host=hosts[0][0], port=hosts[0][1], password=password, hosts=tuple(hosts))


def _parse_single_host(url: str, tls: bool) -> RedisURL:
    try:
        parts = urlsplit(url)
    except ValueError as e:
        raise ConfigError(f"invalid Redis URL {mask_url(url)}: {e}") from None
    userinfo, sep, hostport = parts.netloc.rpartition("@")
    username: str | None = None
    password: str | None = None
    if sep:
        if not _USERINFO_RE.match(userinfo):
            raise ConfigError(
                f"invalid Redis URL {mask_url(url)}: invalid character in user name or "
                "password (percent-encode it)"
            )
        user_raw, colon, pw_raw = userinfo.partition(":")
        user = _go_unescape(user_raw, url)
        if colon:
            username = user or None
            password = _go_unescape(pw_raw, url)
        else:
            password = user  # Go: a lone userinfo is the password
    if parts.query:
        logger.warning(
            "Redis URL %s: the query string is ignored (as by Go Machinery)", mask_url(url)
        )
    host, port = _split_host_port(hostport, url)
    path = _go_unescape(parts.path, url)
    segments = path.split("/")
    db = _parse_db(segments[1], url) if len(segments) > 1 else 0
    return RedisURL(
        host=host,
        port=port,
        password=password,
        username=username,
        db=db,
        tls=tls,
        hosts=((host, port),),
    )


def _parse_multi_host(url: str, addrs: list[str], tls: bool) -> RedisURL:
    # Go v1 ParseBrokers: the db comes from a "/N" suffix of the last address ...
    db = 0
    last, slash, db_text = addrs[-1].partition("/")
    if slash:
        addrs[-1] = last
        if db_text:
            db = _parse_db(db_text, url)
    # ... then NewGR: credentials are everything before the last "@" of the first address.
    username: str | None = None
    password: str | None = None
    userinfo, at, first = addrs[0].rpartition("@")
    if at:
        addrs[0] = first
        user, colon, pw = userinfo.partition(":")
        if colon:
            username = user or None
            password = pw
        else:
            password = user
    hosts = []
    for addr in addrs:
        if not addr:
            raise ConfigError(f"Redis URL {mask_url(url)}: empty address in the list")
        if "/" in addr or "@" in addr:
            raise ConfigError(
                f"Redis URL {mask_url(url)}: only the first address may carry credentials "
                "and only the last one a /db"
            )
        hosts.append(_split_host_port(addr, url))
    return RedisURL(
        host=hosts[0][0],
        port=hosts[0][1],
        password=password,
        username=username,
        db=db,
        tls=tls,
        hosts=tuple(hosts),
    )


def _parse_socket_url(url: str) -> RedisURL:
    remainder = url[len(_SOCKET_SCHEME) :]
    username: str | None = None
    password: str | None = None
    userinfo, at, after = remainder.partition("@")  # Go: the first "@"
    if at:
        user, colon, pw = userinfo.partition(":")
        if colon:
            username = user or None
            password = pw
        else:
            password = user
        remainder = after
    path, colon, db_part = remainder.partition(":")
    if not path:
        raise ConfigError(
            f"Redis socket URL should look like redis+socket://password@/path/to/file.sock:/db, "
            f"got {mask_url(url)}"
        )
    db = 0
    if colon:
        _, slash, db_text = db_part.partition("/")
        if slash and _GO_ATOI_RE.match(db_text):
            db = _parse_db(db_text, url)
        else:
            logger.warning(
                "Redis socket URL %s: cannot read a db from %r (expected :/N); using db 0",
                mask_url(url),
                ":" + db_part,
            )
    else:
        # Go quirk: without ":" the db is read from the path after its first "/".
        _, _, tail = path.partition("/")
        if _GO_ATOI_RE.match(tail):
            db = _parse_db(tail, url)
    return RedisURL(host="", password=password, username=username, db=db, socket_path=path)


def _parse_db(text: str, url: str) -> int:
    """Go's ``strconv.Atoi`` with errors mapped to db 0 (as Go does), negatives refused."""
    if not text:
        return 0
    if not _GO_ATOI_RE.match(text) or not _INT64_MIN <= int(text) <= _INT64_MAX:
        logger.warning(
            "Redis URL %s: db %r is not an integer; using db 0 as Go Machinery does",
            mask_url(url),
            text,
        )
        return 0
    db = int(text)
    if db < 0:
        raise ConfigError(f"Redis URL {mask_url(url)}: negative db {db}")
    return db


def _split_host_port(hostport: str, url: str) -> tuple[str, int]:
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise ConfigError(f"Redis URL {mask_url(url)}: missing ']' in host {hostport!r}")
        host, rest = hostport[1:end], hostport[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ConfigError(f"Redis URL {mask_url(url)}: invalid address {hostport!r}")
        port_text = rest[1:]
    else:
        host, _, port_text = hostport.rpartition(":") if ":" in hostport else (hostport, "", "")
    if any(c.isspace() or c in "/@?#[]" for c in host):
        raise ConfigError(f"Redis URL {mask_url(url)}: invalid host {host!r}")
    if ":" in host and not hostport.startswith("["):
        raise ConfigError(f"Redis URL {mask_url(url)}: write IPv6 addresses as [addr]:port")
    if not port_text:
        port = DEFAULT_REDIS_PORT
    elif port_text.isascii() and port_text.isdigit() and int(port_text) <= 65535:
        port = int(port_text)
    else:
        raise ConfigError(f"Redis URL {mask_url(url)}: invalid port {port_text!r}")
    return host or "localhost", port


def _go_unescape(text: str, url: str) -> str:
    """Percent-decode like Go's ``net/url`` (bad escapes are errors, ``+`` stays ``+``)."""
    if "%" not in text:
        return text
    if _BAD_ESCAPE_RE.search(text):
        raise ConfigError(f"Redis URL {mask_url(url)}: invalid percent-escape")
    try:
        return unquote_to_bytes(text).decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(
            f"Redis URL {mask_url(url)}: percent-escapes do not decode to UTF-8"
        ) from None


# --------------------------------------------------------------------------------------------
# Masking
# --------------------------------------------------------------------------------------------

_SCHEME_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
_SECRET_QUERY_RE: Final = re.compile(r"(?i)([?&][^=&#]*(?:pass|pwd|secret|token)[^=&#]*=)[^&#]*")


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, for logs and reprs.

    Knows the Machinery forms: ``amqp://user:***@host``, ``redis://***@host`` (a lone Redis
    userinfo is a password), ``redis://user:***@host``, ``redis+socket://***@/path``,
    ``mongodb://user:***@h1,h2/db``, multi-host Redis URLs, several URLs joined by a
    separator, and password-like query parameters (``?password=***``). When unsure it masks
    more rather than less. Strings without ``scheme://`` are returned unchanged.
    """
    starts = [m.start() for m in _SCHEME_RE.finditer(url)]
    if not starts:
        return url
    pieces = [url[: starts[0]]]
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else len(url)
        pieces.append(_mask_one(url[start:end]))
    return "".join(pieces)


def _mask_one(url: str) -> str:
    scheme, _, rest = url.partition("://")
    redis_like = scheme in ("redis", "rediss", "redis+socket")
    if scheme == "redis+socket":
        at = rest.find("@")
    elif redis_like and "," in rest.split("/", 1)[0]:
        first = rest.split(",", 1)[0]
        at = first.rfind("@")
    else:
        end = len(rest)
        for delim in "/?#":
            pos = rest.find(delim)
            if pos >= 0:
                end = min(end, pos)
        at = rest.rfind("@", 0, end)
        if at < 0 and "@" in rest[end:] and redis_like:
            at = rest.rfind("@")  # a password with "/" or "?" in it: mask generously
    if at > 0:
        userinfo = rest[:at]
        user, colon, password = userinfo.partition(":")
        if colon:
            masked = f"{user}:{MASK if password else ''}"
        elif redis_like:
            masked = MASK
        else:
            masked = userinfo  # a user name only
        rest = masked + rest[at:]
    return f"{scheme}://{_SECRET_QUERY_RE.sub(lambda m: m.group(1) + MASK, rest)}"


def _mask_secret(value: str) -> str:
    return MASK


def _masked_repr(obj: Any, masks: Mapping[str, Callable[[str], str]]) -> str:
    """A dataclass repr where ``masks`` maps field names to a masking function."""
    items = []
    for f in dataclasses.fields(obj):
        if not f.repr:
            continue
        value = getattr(obj, f.name)
        if f.name in masks and isinstance(value, str) and value:
            value = masks[f.name](value)
        items.append(f"{f.name}={value!r}")
    return f"{type(obj).__name__}({', '.join(items)})"


__all__ = [
    "DEFAULT_AMQP_BINDING_KEY",
    "DEFAULT_AMQP_EXCHANGE",
    "DEFAULT_AMQP_EXCHANGE_TYPE",
    "DEFAULT_AMQP_PREFETCH_COUNT",
    "DEFAULT_BROKER",
    "DEFAULT_DYNAMODB_GROUP_METAS_TABLE",
    "DEFAULT_DYNAMODB_TASK_STATES_TABLE",
    "DEFAULT_MONGODB_DATABASE",
    "DEFAULT_QUEUE",
    "DEFAULT_REDIS_DELAYED_TASKS_KEY",
    "DEFAULT_REDIS_DELAYED_TASKS_POLL_PERIOD",
    "DEFAULT_REDIS_NORMAL_TASKS_POLL_PERIOD",
    "DEFAULT_REDIS_PORT",
    "DEFAULT_RESULTS_EXPIRE_IN",
    "DEFAULT_RESULT_BACKEND",
    "GO_YAML_READ_LIMIT",
    "MASK",
    "AMQPConfig",
    "Config",
    "DynamoDBConfig",
    "GCPPubSubConfig",
    "MongoDBConfig",
    "RedisConfig",
    "RedisURL",
    "SQSConfig",
    "mask_url",
    "parse_go_bool",
    "parse_go_int",
    "parse_redis_lock_url",
    "parse_redis_url",
]
