"""The key table: one row per Go struct field, with its YAML keys and environment names
(plus the Python-only ``redis.crash_safe``, ``redis.heartbeat_ttl``, the ``endpoint_url`` and
``region`` of ``sqs`` and ``dynamodb``, and ``sqs.max_delay_seconds``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

from .model import AMQPConfig, AzureConfig, Config, DynamoDBConfig, RedisConfig, SQSConfig

_Kind: TypeAlias = Literal[
    "str", "int", "bool", "bool_or", "opt_int", "map", "binding_map", "declare_map", "dialect",
    "duration",
]
_Section: TypeAlias = Literal["amqp", "sqs", "redis", "dynamodb", "azure"] | None


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
    # Python only (Go ignores it): which Signature layout to write, see protocol.sublime
    _Key(None, "wire_dialect", ("wire_dialect",), ("WIRE_DIALECT",), "dialect"),
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
    # Python only (Go ignores both): where boto3 sends SQS calls
    _Key("sqs", "endpoint_url", ("endpoint_url",), ("SQS_ENDPOINT_URL",), "str"),
    _Key("sqs", "region", ("region",), ("SQS_REGION",), "str"),
    # Python only: the longest DelaySeconds sent (SQS's 900 s; shorter in tests)
    _Key("sqs", "max_delay_seconds", ("max_delay_seconds",), ("SQS_MAX_DELAY_SECONDS",), "int"),
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
    # Python workers only (Go ignores both): crash-safe consumption
    _Key("redis", "crash_safe", ("crash_safe",), ("REDIS_CRASH_SAFE",), "bool"),
    _Key("redis", "heartbeat_ttl", ("heartbeat_ttl",), ("REDIS_HEARTBEAT_TTL",), "int"),
    # Python only (Go ignores both): WAIT for replicas after each hot-path batch
    _Key("redis", "wait_replicas", ("wait_replicas",), ("REDIS_WAIT_REPLICAS",), "int"),
    _Key("redis", "wait_timeout", ("wait_timeout",), ("REDIS_WAIT_TIMEOUT",), "int"),
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
    # Python only (Go ignores both): where boto3 sends DynamoDB calls
    _Key("dynamodb", "endpoint_url", ("endpoint_url",), ("DYNAMODB_ENDPOINT_URL",), "str"),
    _Key("dynamodb", "region", ("region",), ("DYNAMODB_REGION",), "str"),
    # the sublime-security fork's azure section (Go fields without tags: lowercased names;
    # durations as Go writes them, kept here in seconds); Client and DLQ are code only
    _Key("azure", "ttl", ("ttl",), ("AZURE_TTL",), "duration"),
    _Key("azure", "visibility_timeout", ("visibilitytimeout",), ("AZURE_VISIBILITYTIMEOUT",),
         "duration"),
    _Key("azure", "max_receives", ("maxreceives",), ("AZURE_MAXRECEIVES",), "int"),
    _Key("azure", "dlq_ttl", ("dlqttl",), ("AZURE_DLQTTL",), "duration"),
    # Python only: the dead-letter queue's name (Go: a client object), the publish-delay cap
    _Key("azure", "dlq_queue", ("dlq_queue",), ("AZURE_DLQ_QUEUE",), "str"),
    _Key("azure", "max_delay_seconds", ("max_delay_seconds",), ("AZURE_MAX_DELAY_SECONDS",),
         "int"),
)

# envconfig's prefix for the fields of each nested struct: the Go field name, upper-cased.
_ENV_PREFIX: Final[dict[_Section, str]] = {
    None: "",
    "amqp": "AMQP",
    "sqs": "SQS",
    "redis": "REDIS",
    "dynamodb": "DYNAMODB",
    "azure": "AZURE",
}

_SECTION_TYPES: Final[dict[str, Callable[[], Any]]] = {
    "amqp": AMQPConfig,
    "sqs": SQSConfig,
    "redis": RedisConfig,
    "dynamodb": DynamoDBConfig,
    "azure": AzureConfig,
}


def _section_for_env(cnf: Config, section: _Section) -> Any:
    if section is None:
        return cnf
    obj = getattr(cnf, section)
    if obj is None:  # cannot happen from from_env's start value, but keep it total
        obj = _SECTION_TYPES[section]()
        setattr(cnf, section, obj)
    return obj

