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
``wire_dialect``                     ``WIRE_DIALECT``                     ``upstream`` (Python only; or ``sublime``)
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
``redis.crash_safe``                 ``REDIS_CRASH_SAFE``                 true (Python workers only)
``redis.heartbeat_ttl``              ``REDIS_HEARTBEAT_TTL``              5 s (Python workers only)
``redis.wait_replicas``              ``REDIS_WAIT_REPLICAS``              0: off (Python only; WAIT after each batch)
``redis.wait_timeout``               ``REDIS_WAIT_TIMEOUT``               1000 ms (Python only)
``dynamodb.task_states_table``       ``TASK_STATES_TABLE``                ``task_states``
``dynamodb.group_metas_table``       ``GROUP_METAS_TABLE``                ``group_metas``
``sqs.endpoint_url``                 ``SQS_ENDPOINT_URL``                 ``""`` (Python only: boto3 endpoint)
``sqs.region``                       ``SQS_REGION``                       ``""`` (Python only: boto3 chain)
``sqs.max_delay_seconds``            ``SQS_MAX_DELAY_SECONDS``            900 s (Python only; <= 0: 900)
``dynamodb.endpoint_url``            ``DYNAMODB_ENDPOINT_URL``            ``""`` (Python only: boto3 endpoint)
``dynamodb.region``                  ``DYNAMODB_REGION``                  ``""`` (Python only: boto3 chain)
``azure.ttl``                        ``AZURE_TTL``                        0 (the fork; Go duration; service default)
``azure.visibilitytimeout``          ``AZURE_VISIBILITYTIMEOUT``          0 (the fork; duration; Python: 30 s)
``azure.maxreceives``                ``AZURE_MAXRECEIVES``                0 (the fork; <= 0: 10)
``azure.dlqttl``                     ``AZURE_DLQTTL``                     0 (the fork; duration; 30 days)
``azure.dlq_queue``                  ``AZURE_DLQ_QUEUE``                  ``""`` (Python only: <default_queue>-dead)
``azure.max_delay_seconds``          ``AZURE_MAX_DELAY_SECONDS``          0 (Python only; <= 0: 420 s)
===================================  ===================================  ======================================

The ``azure`` section (the sublime-security fork's; :class:`AzureConfig`, durations kept in
seconds, ``visibility_timeout``/``max_receives``/``dlq_ttl`` in Python) is written by neither
``to_yaml`` nor a file without it; its ``client``, ``credential`` and ``connection_string``
are code only (see :mod:`machinery_compat.brokers.azure`).

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
  percent-decoded, ``db`` is the first path segment; the query string is ignored except for
  the ``ssl_*`` TLS options of ``rediss://`` URLs (:data:`TLS_QUERY_OPTIONS`).
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

from .env_io import parse_go_bool, parse_go_int
from .masking import MASK, mask_url
from .model import (
    DEFAULT_AMQP_BINDING_KEY,
    DEFAULT_AMQP_EXCHANGE,
    DEFAULT_AMQP_EXCHANGE_TYPE,
    DEFAULT_AMQP_PREFETCH_COUNT,
    DEFAULT_BROKER,
    DEFAULT_DYNAMODB_GROUP_METAS_TABLE,
    DEFAULT_DYNAMODB_TASK_STATES_TABLE,
    DEFAULT_MONGODB_DATABASE,
    DEFAULT_QUEUE,
    DEFAULT_REDIS_DELAYED_TASKS_KEY,
    DEFAULT_REDIS_DELAYED_TASKS_POLL_PERIOD,
    DEFAULT_REDIS_NORMAL_TASKS_POLL_PERIOD,
    DEFAULT_REDIS_PORT,
    DEFAULT_RESULT_BACKEND,
    DEFAULT_RESULTS_EXPIRE_IN,
    DEFAULT_SQS_MAX_DELAY_SECONDS,
    GO_YAML_READ_LIMIT,
    AMQPConfig,
    AzureConfig,
    Config,
    DynamoDBConfig,
    GCPPubSubConfig,
    MongoDBConfig,
    RedisConfig,
    SQSConfig,
)
from .redis_url import (
    TLS_QUERY_OPTIONS,
    RedisTLSOptions,
    RedisURL,
    parse_redis_lock_url,
    parse_redis_url,
)

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
    "DEFAULT_SQS_MAX_DELAY_SECONDS",
    "GO_YAML_READ_LIMIT",
    "MASK",
    "TLS_QUERY_OPTIONS",
    "AMQPConfig",
    "AzureConfig",
    "Config",
    "DynamoDBConfig",
    "GCPPubSubConfig",
    "MongoDBConfig",
    "RedisConfig",
    "RedisTLSOptions",
    "RedisURL",
    "SQSConfig",
    "mask_url",
    "parse_go_bool",
    "parse_go_int",
    "parse_redis_lock_url",
    "parse_redis_url",
]
