"""Tests for machinery_compat.config: defaults, YAML, environment, Redis URLs, masking."""

from __future__ import annotations

import dataclasses
import io
import logging
from pathlib import Path
from typing import Any

import pytest

from machinery_compat.config import (
    DEFAULT_REDIS_DELAYED_TASKS_KEY,
    DEFAULT_SQS_MAX_DELAY_SECONDS,
    GO_YAML_READ_LIMIT,
    AMQPConfig,
    Config,
    DynamoDBConfig,
    GCPPubSubConfig,
    MongoDBConfig,
    RedisConfig,
    RedisURL,
    SQSConfig,
    mask_url,
    parse_go_bool,
    parse_go_int,
    parse_redis_lock_url,
    parse_redis_url,
)
from machinery_compat.config.redis_url import _parse_redis_url_cached
from machinery_compat.exceptions import ConfigError

LOGGER = "machinery_compat.config"

# A config in the format of Machinery's config/testconfig.yml (our own values), covering every
# YAML key Go reads.
FULL_YAML = """\
---
broker: redis://s3cret@rex:6379/1
default_queue: emails
result_backend: redis://s3cret@rex:6379/2
results_expire_in: 7200
lock: redis://lockpw@rex:6379
multiple_broker_separator: "|"
no_unix_signals: true
amqp:
  exchange: my_exchange
  exchange_type: topic
  binding_key: my_key
  prefetch_count: 10
  queue_declare_args:
    x-max-priority: 9
  queue_binding_args:
    image-type: jpg
    x-match: all
  auto_delete: true
  delayed_queue: my_delayed
sqs:
  receive_wait_time_seconds: 20
  receive_visibility_timeout: 45
  visibility_hearth_beat: true
redis:
  max_idle: 5
  max_active: 50
  max_idle_timeout: 60
  wait: true
  read_timeout: 7
  write_timeout: 8
  connect_timeout: 9
  normal_tasks_poll_period: 2000
  delayed_tasks_poll_period: 250
  delayed_tasks_key: my_delayed_tasks
  client_name: py-worker
  master_name: mymaster
  cluster_enabled: false
  sentinel_password: sentinelpw
dynamodb:
  task_states_table: my_states
  group_metas_table: my_groups
"""


@pytest.fixture(autouse=True)
def _fresh_url_cache() -> None:
    # parse_redis_url caches results (and so logs once per URL); start each test afresh
    _parse_redis_url_cached.cache_clear()


def load(text: str) -> Config:
    return Config.from_yaml(io.StringIO(text))


# ------------------------------------------------------------------------------------------
# Defaults
# ------------------------------------------------------------------------------------------


def test_defaults_equal_machinery_defaults() -> None:
    cnf = Config()
    assert cnf == Config.default()
    assert cnf.broker == "amqp://guest:guest@localhost:5672/"
    assert cnf.result_backend == "amqp://guest:guest@localhost:5672/"
    assert cnf.default_queue == "machinery_tasks"
    assert cnf.results_expire_in == 3600
    assert cnf.lock == ""
    assert cnf.multiple_broker_separator == ""
    assert cnf.no_unix_signals is False
    assert cnf.amqp == AMQPConfig(
        exchange="machinery_exchange",
        exchange_type="direct",
        binding_key="machinery_task",
        prefetch_count=3,
        queue_declare_args={},
        queue_binding_args={},
        auto_delete=False,
        delayed_queue="",
    )
    assert cnf.sqs is None
    assert cnf.redis == RedisConfig(
        max_idle=3,
        max_active=0,
        idle_timeout=240,
        wait=False,
        read_timeout=15,
        write_timeout=15,
        connect_timeout=15,
        normal_tasks_poll_period=1000,
        delayed_tasks_poll_period=500,
        delayed_tasks_key="",
        client_name="",
        master_name="",
        cluster_enabled=False,
        sentinel_password="",
    )
    assert cnf.dynamodb == DynamoDBConfig(
        task_states_table="task_states", group_metas_table="group_metas"
    )
    assert cnf.mongodb is None
    assert cnf.gcppubsub == GCPPubSubConfig(max_extension=0.0)
    assert cnf.tls_config is None


def test_section_defaults() -> None:
    assert SQSConfig() == SQSConfig(
        wait_time_seconds=0, visibility_timeout=None, visibility_heartbeat=False
    )
    assert MongoDBConfig().database == "machinery"
    assert SQSConfig().client is None


def test_sections_are_not_shared_between_instances() -> None:
    a, b = Config(), Config()
    assert a.amqp is not None and b.amqp is not None
    a.amqp.queue_declare_args["x"] = 1
    assert b.amqp.queue_declare_args == {}
    assert a.redis is not b.redis


def test_effective_values() -> None:
    cnf = Config()
    assert cnf.effective_results_expire_in == 3600
    cnf.results_expire_in = 0
    assert cnf.effective_results_expire_in == 3600
    cnf.results_expire_in = 5
    assert cnf.effective_results_expire_in == 5

    redis = RedisConfig()
    assert redis.effective_delayed_tasks_key == "delayed_tasks" == DEFAULT_REDIS_DELAYED_TASKS_KEY
    redis.delayed_tasks_key = "mine"
    assert redis.effective_delayed_tasks_key == "mine"
    redis.normal_tasks_poll_period = 0
    redis.delayed_tasks_poll_period = -5
    assert redis.effective_normal_tasks_poll_period == 1000
    assert redis.effective_delayed_tasks_poll_period == 500
    redis.normal_tasks_poll_period = 300
    redis.delayed_tasks_poll_period = 20
    assert redis.effective_normal_tasks_poll_period == 300
    assert redis.effective_delayed_tasks_poll_period == 20


def test_effective_redis_uses_go_nil_fallback() -> None:
    cnf = Config(redis=None)
    fallback = cnf.effective_redis
    assert (fallback.max_idle, fallback.max_active, fallback.idle_timeout, fallback.wait) == (
        10,
        100,
        300,
        True,
    )
    assert fallback.effective_delayed_tasks_key == "delayed_tasks"
    assert fallback.delayed_tasks_poll_period == 500
    own = RedisConfig(max_idle=1)
    assert Config(redis=own).effective_redis is own


def test_effective_mongodb_database() -> None:
    assert Config().effective_mongodb_database == "machinery"
    assert Config(mongodb=MongoDBConfig(database="other")).effective_mongodb_database == "other"


def test_clients_are_not_in_repr_or_equality() -> None:
    a = Config(sqs=SQSConfig(client=object()))
    b = Config(sqs=SQSConfig(client=object()))
    assert a == b
    assert "client=" not in repr(a)


def test_keyword_only() -> None:
    with pytest.raises(TypeError):
        Config("redis://localhost")  # type: ignore[misc]


# ------------------------------------------------------------------------------------------
# YAML
# ------------------------------------------------------------------------------------------


def test_from_yaml_full_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text(FULL_YAML)
    for source in (path, str(path)):
        cnf = Config.from_yaml(source)
        assert cnf.broker == "redis://s3cret@rex:6379/1"
        assert cnf.default_queue == "emails"
        assert cnf.result_backend == "redis://s3cret@rex:6379/2"
        assert cnf.results_expire_in == 7200
        assert cnf.lock == "redis://lockpw@rex:6379"
        assert cnf.multiple_broker_separator == "|"
        assert cnf.no_unix_signals is True
        assert cnf.amqp == AMQPConfig(
            exchange="my_exchange",
            exchange_type="topic",
            binding_key="my_key",
            prefetch_count=10,
            queue_declare_args={"x-max-priority": 9},
            queue_binding_args={"image-type": "jpg", "x-match": "all"},
            auto_delete=True,
            delayed_queue="my_delayed",
        )
        assert cnf.sqs == SQSConfig(
            wait_time_seconds=20, visibility_timeout=45, visibility_heartbeat=True
        )
        assert cnf.redis == RedisConfig(
            max_idle=5,
            max_active=50,
            idle_timeout=60,
            wait=True,
            read_timeout=7,
            write_timeout=8,
            connect_timeout=9,
            normal_tasks_poll_period=2000,
            delayed_tasks_poll_period=250,
            delayed_tasks_key="my_delayed_tasks",
            client_name="py-worker",
            master_name="mymaster",
            cluster_enabled=False,
            sentinel_password="sentinelpw",
        )
        assert cnf.dynamodb == DynamoDBConfig(
            task_states_table="my_states", group_metas_table="my_groups"
        )
        # code-only sections keep their defaults
        assert cnf.mongodb is None
        assert cnf.gcppubsub == GCPPubSubConfig()


def test_from_yaml_binary_and_text_streams() -> None:
    text = "default_queue: q\namqp:\n  prefetch_count: 1\n"
    a = Config.from_yaml(io.StringIO(text))
    b = Config.from_yaml(io.BytesIO(text.encode()))
    assert a == b
    assert a.default_queue == "q"
    assert a.amqp is not None and a.amqp.prefetch_count == 1


def test_partial_sections_keep_defaults() -> None:
    cnf = load("amqp:\n  prefetch_count: 5\nredis:\n  max_idle: 7\n")
    assert cnf.amqp == AMQPConfig(prefetch_count=5)
    assert cnf.redis == RedisConfig(max_idle=7)
    assert cnf.dynamodb == DynamoDBConfig()
    assert cnf.broker == "amqp://guest:guest@localhost:5672/"
    assert cnf.sqs is None


def test_missing_amqp_section_means_none() -> None:
    cnf = load("broker: redis://localhost:6379\n")
    assert cnf.amqp is None
    assert cnf.redis == RedisConfig()
    assert cnf.dynamodb == DynamoDBConfig()


def test_comment_only_file_gives_defaults_without_amqp() -> None:
    for text in ("---\n", "# only a comment\n", "\n"):
        cnf = load(text)
        assert cnf == Config(amqp=None)


def test_zero_byte_file_is_an_error_as_in_go(tmp_path: Path) -> None:
    path = tmp_path / "empty.yml"
    path.write_bytes(b"")
    with pytest.raises(ConfigError, match="empty"):
        Config.from_yaml(path)
    with pytest.raises(ConfigError, match="empty"):
        load("")


def test_empty_amqp_mapping_gives_amqp_defaults() -> None:
    assert load("amqp: {}\n").amqp == AMQPConfig()


def test_sqs_max_delay_seconds_python_only() -> None:
    """``sqs.max_delay_seconds`` / ``SQS_MAX_DELAY_SECONDS``: default 900 (SQS's limit),
    <= 0 (a YAML null too) means 900, above 900 is refused when used."""
    assert DEFAULT_SQS_MAX_DELAY_SECONDS == 900
    assert SQSConfig().max_delay_seconds == 900
    assert load("sqs:\n  max_delay_seconds: 2\n").sqs == SQSConfig(max_delay_seconds=2)
    assert Config.from_env({"SQS_MAX_DELAY_SECONDS": "5"}).sqs == SQSConfig(max_delay_seconds=5)
    assert Config.from_env({"SQS_SQS_MAX_DELAY_SECONDS": "7",
                            "SQS_MAX_DELAY_SECONDS": "5"}).sqs == SQSConfig(max_delay_seconds=7)
    nulled = load("sqs:\n  max_delay_seconds: null\n").sqs
    assert nulled is not None and nulled.max_delay_seconds == 0
    assert nulled.effective_max_delay_seconds == 900
    assert SQSConfig(max_delay_seconds=-1).effective_max_delay_seconds == 900
    assert SQSConfig(max_delay_seconds=900).effective_max_delay_seconds == 900
    with pytest.raises(ConfigError, match="SQS_MAX_DELAY_SECONDS"):
        _ = SQSConfig(max_delay_seconds=901).effective_max_delay_seconds
    with pytest.raises(ConfigError, match="SQS_MAX_DELAY_SECONDS"):
        Config.from_env({"SQS_MAX_DELAY_SECONDS": "soon"})
    with pytest.raises(ConfigError, match="max_delay_seconds"):
        load("sqs:\n  max_delay_seconds: soon\n")
    cnf = Config(sqs=SQSConfig(max_delay_seconds=2))
    assert cnf.to_env() == {"SQS_MAX_DELAY_SECONDS": "2"}
    assert cnf.to_yaml_dict()["sqs"] == {"max_delay_seconds": 2}
    assert load(cnf.to_yaml()) == cnf


def test_sqs_section_created_from_zero_values() -> None:
    cnf = load("sqs:\n  receive_wait_time_seconds: 3\n")
    assert cnf.sqs == SQSConfig(wait_time_seconds=3)
    assert load("sqs: {}\n").sqs == SQSConfig()


def test_null_values_become_go_zero_values() -> None:
    cnf = load(
        "broker:\nresults_expire_in: ~\nno_unix_signals: null\n"
        "amqp:\n  queue_declare_args: ~\n  prefetch_count: ~\n"
        "sqs:\n  receive_visibility_timeout: ~\n"
        "redis: ~\ndynamodb: null\n"
    )
    assert cnf.broker == ""
    assert cnf.results_expire_in == 0
    assert cnf.effective_results_expire_in == 3600
    assert cnf.no_unix_signals is False
    assert cnf.amqp is not None
    assert cnf.amqp.queue_declare_args == {}
    assert cnf.amqp.prefetch_count == 0
    assert cnf.sqs == SQSConfig(visibility_timeout=None)
    assert cnf.redis is None
    assert cnf.dynamodb is None
    assert load("amqp:\n").amqp is None


def test_cluster_mode_and_cluster_enabled() -> None:
    assert load("redis:\n  cluster_mode: true\n").redis == RedisConfig(cluster_enabled=True)
    assert load("redis:\n  cluster_enabled: true\n").redis == RedisConfig(cluster_enabled=True)
    both = load("redis:\n  cluster_mode: true\n  cluster_enabled: false\n").redis
    assert both is not None and both.cluster_enabled is True
    neither = load("redis:\n  cluster_mode: false\n  cluster_enabled: false\n").redis
    assert neither is not None and neither.cluster_enabled is False


def test_scalars_are_accepted_for_string_keys_like_go() -> None:
    cnf = load("default_queue: 123\nbroker: true\nlock: 1.5\namqp:\n  exchange: false\n")
    assert cnf.default_queue == "123"
    assert cnf.broker == "true"
    assert cnf.lock == "1.5"
    assert cnf.amqp is not None and cnf.amqp.exchange == "false"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("10", 10), ("010", 8), ("0x10", 16), ("1_000", 1000), ("-3", -3), ("3.0", 3)],
)
def test_yaml_integers(text: str, expected: int) -> None:
    assert load(f"results_expire_in: {text}\n").results_expire_in == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("false", False),
        ("yes", True),
        ("no", False),
        ("on", True),
        ("off", False),
        ("y", True),
        ("N", False),
        ("True", True),
    ],
)
def test_yaml_booleans(text: str, expected: bool) -> None:
    assert load(f"no_unix_signals: {text}\n").no_unix_signals is expected


def test_yaml_map_keys_become_strings() -> None:
    cnf = load("amqp:\n  queue_declare_args:\n    10: 20\n    x-list: [1, 2]\n")
    assert cnf.amqp is not None
    assert cnf.amqp.queue_declare_args == {"10": 20, "x-list": [1, 2]}


def test_unknown_keys_are_logged_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    cnf = load("brokerr: x\namqp:\n  exchang: y\n  exchange: z\nmongodb:\n  database: d\n")
    assert cnf.amqp is not None and cnf.amqp.exchange == "z"
    assert cnf.mongodb is None  # code only in Go
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "'brokerr'" in messages
    assert "'amqp.exchang'" in messages
    assert "'mongodb'" in messages
    assert all(r.levelno == logging.WARNING for r in caplog.records)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("amqp:\n  prefetch_count: abc\n", "amqp.prefetch_count"),
        ("amqp:\n  prefetch_count: '12'\n", "amqp.prefetch_count"),
        ("results_expire_in: true\n", "results_expire_in"),
        ("results_expire_in: 3.7\n", "results_expire_in"),
        ("results_expire_in: .inf\n", "results_expire_in"),
        ("results_expire_in: 99999999999999999999\n", "results_expire_in"),
        ("no_unix_signals: 'yes'\n", "no_unix_signals"),
        ("no_unix_signals: 1\n", "no_unix_signals"),
        ("broker: [a, b]\n", "broker"),
        ("default_queue: {a: b}\n", "default_queue"),
        ("amqp: 5\n", "amqp"),
        ("redis: [1]\n", "redis"),
        ("amqp:\n  queue_binding_args: [a]\n", "amqp.queue_binding_args"),
        ("sqs:\n  receive_visibility_timeout: soon\n", "sqs.receive_visibility_timeout"),
        ("redis:\n  cluster_mode: maybe\n", "redis.cluster_mode"),
    ],
)
def test_wrong_types_raise_config_error_naming_key_and_file(
    tmp_path: Path, text: str, key: str
) -> None:
    path = tmp_path / "bad.yml"
    path.write_text(text)
    with pytest.raises(ConfigError) as excinfo:
        Config.from_yaml(path)
    message = str(excinfo.value)
    assert repr(key) in message
    assert str(path) in message


def test_wrong_type_errors_do_not_leak_secrets() -> None:
    with pytest.raises(ConfigError) as excinfo:
        load("redis:\n  sentinel_password: [topsecret]\n")
    assert "topsecret" not in str(excinfo.value)
    assert "***" in str(excinfo.value)


def test_stream_name_in_errors() -> None:
    with pytest.raises(ConfigError, match="<stream>"):
        load("amqp:\n  prefetch_count: abc\n")


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(text: str) -> None:
    with pytest.raises(ConfigError, match="mapping"):
        load(text)


def test_invalid_yaml_syntax() -> None:
    with pytest.raises(ConfigError, match="invalid YAML"):
        load("broker: [unclosed\n")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        Config.from_yaml(tmp_path / "nope.yml")


def test_unsafe_yaml_tags_are_refused() -> None:
    with pytest.raises(ConfigError):
        load("broker: !!python/object/apply:os.system ['true']\n")


def test_long_file_warns_about_go_truncation(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    path = tmp_path / "long.yml"
    path.write_text("# padding\n" * 120 + "default_queue: late\n")
    assert path.stat().st_size > GO_YAML_READ_LIMIT
    cnf = Config.from_yaml(path)
    assert cnf.default_queue == "late"  # read in full, unlike Go
    assert any("1000 bytes" in r.getMessage() for r in caplog.records)


def test_short_file_does_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    load(FULL_YAML)
    assert len(FULL_YAML.encode()) <= GO_YAML_READ_LIMIT
    assert caplog.records == []


# ------------------------------------------------------------------------------------------
# Environment
# ------------------------------------------------------------------------------------------

FULL_ENV = {
    "BROKER": "amqp://user:pw@rabbit:5672/",
    "DEFAULT_QUEUE": "env_queue",
    "RESULT_BACKEND": "redis://pw@localhost:6379/3",
    "RESULTS_EXPIRE_IN": "123456",
    "LOCK": "redis://lockpw@localhost:6379",
    "MULTIPLE_BROKEN_SEPARATOR": ";",
    "NO_UNIX_SIGNALS": "true",
    "AMQP_EXCHANGE": "exchange",
    "AMQP_EXCHANGE_TYPE": "exchange_type",
    "AMQP_BINDING_KEY": "binding_key",
    "AMQP_PREFETCH_COUNT": "123",
    "AMQP_AUTO_DELETE": "1",
    "AMQP_DELAYED_QUEUE": "delayed",
    "AMQP_QUEUE_BINDING_ARGS": "image-type:png,x-match:any",
    "SQS_WAIT_TIME_SECONDS": "10",
    "SQS_VISIBILITY_TIMEOUT": "30",
    "SQS_VISIBILITY_HEARTBEAT": "T",
    "REDIS_MAX_IDLE": "12",
    "REDIS_MAX_ACTIVE": "123",
    "REDIS_IDLE_TIMEOUT": "456",
    "REDIS_WAIT": "true",
    "REDIS_READ_TIMEOUT": "17",
    "REDIS_WRITE_TIMEOUT": "19",
    "REDIS_CONNECT_TIMEOUT": "21",
    "REDIS_NORMAL_TASKS_POLL_PERIOD": "1001",
    "REDIS_DELAYED_TASKS_POLL_PERIOD": "23",
    "REDIS_DELAYED_TASKS_KEY": "delayed_tasks_key",
    "REDIS_CLIENT_NAME": "client",
    "REDIS_MASTER_NAME": "master_name",
    "REDIS_CLUSTER_ENABLED": "false",
    "REDIS_SENTINEL_PASSWORD": "spw",
    "TASK_STATES_TABLE": "states",
    "GROUP_METAS_TABLE": "metas",
}


def test_from_env_full() -> None:
    cnf = Config.from_env(FULL_ENV)
    assert cnf.broker == "amqp://user:pw@rabbit:5672/"
    assert cnf.default_queue == "env_queue"
    assert cnf.result_backend == "redis://pw@localhost:6379/3"
    assert cnf.results_expire_in == 123456
    assert cnf.lock == "redis://lockpw@localhost:6379"
    assert cnf.multiple_broker_separator == ";"
    assert cnf.no_unix_signals is True
    assert cnf.amqp == AMQPConfig(
        exchange="exchange",
        exchange_type="exchange_type",
        binding_key="binding_key",
        prefetch_count=123,
        auto_delete=True,
        delayed_queue="delayed",
        queue_binding_args={"image-type": "png", "x-match": "any"},
    )
    assert cnf.sqs == SQSConfig(
        wait_time_seconds=10, visibility_timeout=30, visibility_heartbeat=True
    )
    assert cnf.redis == RedisConfig(
        max_idle=12,
        max_active=123,
        idle_timeout=456,
        wait=True,
        read_timeout=17,
        write_timeout=19,
        connect_timeout=21,
        normal_tasks_poll_period=1001,
        delayed_tasks_poll_period=23,
        delayed_tasks_key="delayed_tasks_key",
        client_name="client",
        master_name="master_name",
        cluster_enabled=False,
        sentinel_password="spw",
    )
    assert cnf.dynamodb == DynamoDBConfig(task_states_table="states", group_metas_table="metas")


def test_from_env_empty_gives_defaults_with_all_sections() -> None:
    cnf = Config.from_env({})
    assert cnf == Config(sqs=SQSConfig())
    assert cnf.amqp == AMQPConfig()


def test_from_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEFAULT_QUEUE", "from_os_environ")
    assert Config.from_env().default_queue == "from_os_environ"


def test_from_env_prefixed_forms_win() -> None:
    cnf = Config.from_env(
        {
            "AMQP_EXCHANGE": "plain",
            "AMQP_AMQP_EXCHANGE": "prefixed",
            "REDIS_REDIS_MAX_IDLE": "9",
            "SQS_SQS_VISIBILITY_TIMEOUT": "3",
            "DYNAMODB_TASK_STATES_TABLE": "pref_states",
            "TASK_STATES_TABLE": "plain_states",
        }
    )
    assert cnf.amqp is not None and cnf.amqp.exchange == "prefixed"
    assert cnf.redis is not None and cnf.redis.max_idle == 9
    assert cnf.sqs is not None and cnf.sqs.visibility_timeout == 3
    assert cnf.dynamodb is not None and cnf.dynamodb.task_states_table == "pref_states"


def test_from_env_cluster_mode_v1_name() -> None:
    cnf = Config.from_env({"REDIS_CLUSTER_MODE": "true"})
    assert cnf.redis is not None and cnf.redis.cluster_enabled is True
    cnf = Config.from_env({"REDIS_CLUSTER_MODE": "false", "REDIS_CLUSTER_ENABLED": "1"})
    assert cnf.redis is not None and cnf.redis.cluster_enabled is True


def test_from_env_empty_string_is_set() -> None:
    cnf = Config.from_env({"DEFAULT_QUEUE": "", "BROKER": ""})
    assert cnf.default_queue == ""
    assert cnf.broker == ""


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("AMQP_PREFETCH_COUNT", ""),
        ("AMQP_PREFETCH_COUNT", "abc"),
        ("AMQP_PREFETCH_COUNT", " 5"),
        ("RESULTS_EXPIRE_IN", "1.5"),
        ("REDIS_MAX_IDLE", "08"),
        ("SQS_VISIBILITY_TIMEOUT", ""),
        ("NO_UNIX_SIGNALS", "yes"),
        ("NO_UNIX_SIGNALS", ""),
        ("REDIS_WAIT", "on"),
        ("AMQP_QUEUE_BINDING_ARGS", ""),
        ("AMQP_QUEUE_BINDING_ARGS", "a"),
        ("AMQP_QUEUE_BINDING_ARGS", "a:1:2"),
        ("AMQP_QUEUE_DECLARE_ARGS", "a:1,b"),
        ("AMQP_AMQP_PREFETCH_COUNT", "x"),
    ],
)
def test_from_env_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        Config.from_env({name: value})
    assert name in str(excinfo.value)


def test_from_env_queue_declare_args_keep_keys_only(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    cnf = Config.from_env({"AMQP_QUEUE_DECLARE_ARGS": "x-max-priority:10,x-queue-mode:lazy"})
    assert cnf.amqp is not None
    assert cnf.amqp.queue_declare_args == {"x-max-priority": None, "x-queue-mode": None}
    assert any("AMQP_QUEUE_DECLARE_ARGS" in r.getMessage() for r in caplog.records)
    blank = Config.from_env({"AMQP_QUEUE_DECLARE_ARGS": "  "})
    assert blank.amqp is not None and blank.amqp.queue_declare_args == {}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("42", 42),
        ("+5", 5),
        ("-3", -3),
        ("0x1F", 31),
        ("0X_1f", 31),
        ("010", 8),
        ("0_10", 8),
        ("0o17", 15),
        ("0b101", 5),
        ("1_000", 1000),
        ("-0x10", -16),
        ("9223372036854775807", 2**63 - 1),
        ("-9223372036854775808", -(2**63)),
    ],
)
def test_parse_go_int(text: str, expected: int) -> None:
    assert parse_go_int(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", " 1", "1 ", "08", "1__0", "_1", "1_", "0x", "abc", "1.0", "9223372036854775808", "٣"],
)
def test_parse_go_int_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_go_int(text)


@pytest.mark.parametrize("text", ["1", "t", "T", "TRUE", "true", "True"])
def test_parse_go_bool_true(text: str) -> None:
    assert parse_go_bool(text) is True


@pytest.mark.parametrize("text", ["0", "f", "F", "FALSE", "false", "False"])
def test_parse_go_bool_false(text: str) -> None:
    assert parse_go_bool(text) is False


@pytest.mark.parametrize("text", ["", "yes", "no", "tRUE", "2", " true"])
def test_parse_go_bool_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_go_bool(text)


# ------------------------------------------------------------------------------------------
# from_url
# ------------------------------------------------------------------------------------------


def test_from_url_reuses_broker_for_result_backend() -> None:
    cnf = Config.from_url("redis://localhost:6379/0")
    assert cnf.broker == cnf.result_backend == "redis://localhost:6379/0"
    assert Config.from_url("amqp://guest:guest@localhost:5672/").result_backend.startswith("amqp")
    assert Config.from_url("https://sqs.us-east-1.amazonaws.com/123").result_backend == ""
    assert Config.from_url("eager").result_backend == ""


def test_from_url_explicit_backend_and_overrides() -> None:
    cnf = Config.from_url(
        "amqp://localhost",
        "redis://localhost/1",
        default_queue="emails",
        redis=RedisConfig(master_name="m"),
    )
    assert cnf.result_backend == "redis://localhost/1"
    assert cnf.default_queue == "emails"
    assert cnf.redis == RedisConfig(master_name="m")
    assert cnf.amqp == AMQPConfig()


def test_from_url_unknown_override() -> None:
    with pytest.raises(ConfigError, match="nope"):
        Config.from_url("redis://localhost", nope=1)


# ------------------------------------------------------------------------------------------
# Redis URLs
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://localhost:6379", RedisURL(host="localhost", port=6379)),
        ("redis://localhost", RedisURL(host="localhost", port=6379)),
        ("redis://localhost:6380/5", RedisURL(host="localhost", port=6380, db=5)),
        ("redis://localhost:6379/", RedisURL(host="localhost")),
        ("redis://localhost:6379/3/extra", RedisURL(host="localhost", db=3)),
        ("redis://localhost:6379/+4", RedisURL(host="localhost", db=4)),
        ("redis://localhost:6379/2?db=7#frag", RedisURL(host="localhost", db=2)),
        # a lone userinfo is the password (Go), not the user name (redis-py)
        ("redis://secret@host:6379/1", RedisURL(host="host", password="secret", db=1)),
        ("redis://user:pw@host:6379", RedisURL(host="host", username="user", password="pw")),
        ("redis://:pw@host", RedisURL(host="host", password="pw")),
        ("redis://user:@host", RedisURL(host="host", username="user", password="")),
        ("redis://@host", RedisURL(host="host", password="")),
        # percent-decoding of userinfo and path, "+" kept
        (
            "redis://us%3Aer:p%40ss%2Fw+rd@host/1",
            RedisURL(host="host", username="us:er", password="p@ss/w+rd", db=1),
        ),
        ("redis://%C3%A9t%C3%A9@host", RedisURL(host="host", password="été")),
        ("redis://host/%32", RedisURL(host="host", db=2)),
        # the last "@" separates userinfo from host, like net/url
        ("redis://p@ss@host", RedisURL(host="host", password="p@ss")),
        ("redis://:6379", RedisURL(host="localhost")),
        ("redis://", RedisURL(host="localhost")),
        ("redis://[::1]:7000/1", RedisURL(host="::1", port=7000, db=1)),
        ("redis://[::1]", RedisURL(host="::1")),
        (
            "rediss://pw@host:6380/2",
            RedisURL(host="host", port=6380, password="pw", db=2, tls=True),
        ),
    ],
)
def test_parse_single_host(url: str, expected: RedisURL) -> None:
    expected = dataclasses.replace(expected, hosts=((expected.host, expected.port),))
    assert parse_redis_url(url) == expected


def test_invalid_db_is_zero_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    assert parse_redis_url("redis://pw@localhost:6379/abc").db == 0
    assert parse_redis_url("redis://pw@localhost:6379/abc").db == 0  # cached: logged once
    assert parse_redis_url("redis://localhost:6379/99999999999999999999").db == 0
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert all("db 0" in m for m in messages)
    assert not any("pw@" in m for m in messages)


def test_query_string_ignored_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    url = parse_redis_url("redis://localhost:6379/1?password=x")
    assert url.password is None and url.db == 1
    assert any("query string is ignored" in r.getMessage() for r in caplog.records)
    assert not any("password=x" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/-1",
        "redis://localhost:abc",
        "redis://localhost:99999",
        "redis://pa ss@localhost",
        "redis://p%zzw@localhost",
        "redis://pw%@localhost",
        "redis://%ff@localhost",
        "redis://[::1:6379",
        "redis://::1",
        "redis://h1:6379,",
        "redis://h1:6379/1,h2:6379",
        "redis+socket://pw@",
        "redis+socket://pw@:/1",
        "amqp://localhost",
        "REDIS://localhost",
        "localhost:6379",
        "",
        "memcache://localhost",
    ],
)
def test_parse_redis_url_errors(url: str) -> None:
    with pytest.raises(ConfigError):
        parse_redis_url(url)


def test_parse_error_messages_mask_password() -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_redis_url("redis://topsecret@localhost:notaport")
    assert "topsecret" not in str(excinfo.value)
    with pytest.raises(ConfigError) as excinfo:
        parse_redis_url("http://user:topsecret@localhost")
    assert "topsecret" not in str(excinfo.value)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "redis://h1:7000,h2:7001",
            RedisURL(host="h1", port=7000, hosts=(("h1", 7000), ("h2", 7001))),
        ),
        (
            "redis://pw@h1:7000,h2:7001,h3:7002/3",
            RedisURL(
                host="h1",
                port=7000,
                password="pw",
                db=3,
                hosts=(("h1", 7000), ("h2", 7001), ("h3", 7002)),
            ),
        ),
        (
            "redis://user:pw@h1:7000,h2:7001/2",
            RedisURL(
                host="h1",
                port=7000,
                username="user",
                password="pw",
                db=2,
                hosts=(("h1", 7000), ("h2", 7001)),
            ),
        ),
        (
            # no percent-decoding; credentials end at the last "@" of the first address
            "redis://u:p%40s@s@h1:7000,h2:7001/",
            RedisURL(
                host="h1",
                port=7000,
                username="u",
                password="p%40s@s",
                hosts=(("h1", 7000), ("h2", 7001)),
            ),
        ),
        (
            "redis://:pw@h1,h2",
            RedisURL(host="h1", password="pw", hosts=(("h1", 6379), ("h2", 6379))),
        ),
        (
            "rediss://pw@h1:7000,h2:7001/1",
            RedisURL(
                host="h1",
                port=7000,
                password="pw",
                db=1,
                tls=True,
                hosts=(("h1", 7000), ("h2", 7001)),
            ),
        ),
    ],
)
def test_parse_multi_host(url: str, expected: RedisURL) -> None:
    parsed = parse_redis_url(url)
    assert parsed == expected
    assert parsed.multi_host


def test_multi_host_invalid_db_is_zero(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    assert parse_redis_url("redis://h1:1,h2:2/x").db == 0
    assert caplog.records


def test_cluster_flag_uses_go_redis_parsing_for_one_address() -> None:
    # Go's go-redis path: no percent-decoding, db from the "/N" suffix
    parsed = parse_redis_url("redis://u:p%21@h1:7000/4", cluster=True)
    assert parsed == RedisURL(
        host="h1", port=7000, username="u", password="p%21", db=4, hosts=(("h1", 7000),)
    )
    assert not parsed.multi_host
    assert parse_redis_url("redis://u:p%21@h1:7000/4").password == "p!"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis+socket:///tmp/redis.sock", RedisURL(host="", socket_path="/tmp/redis.sock")),
        (
            "redis+socket://pw@/tmp/redis.sock",
            RedisURL(host="", socket_path="/tmp/redis.sock", password="pw"),
        ),
        (
            "redis+socket://pw@/tmp/redis.sock:/3",
            RedisURL(host="", socket_path="/tmp/redis.sock", password="pw", db=3),
        ),
        (
            "redis+socket://user:password@/var/run/redis.sock:/1",
            RedisURL(
                host="",
                socket_path="/var/run/redis.sock",
                username="user",
                password="password",
                db=1,
            ),
        ),
        ("redis+socket://:pw@/r.sock", RedisURL(host="", socket_path="/r.sock", password="pw")),
        # not percent-decoded; the first "@" ends the password
        ("redis+socket://p%21@/r.sock", RedisURL(host="", socket_path="/r.sock", password="p%21")),
        ("redis+socket://a@b@/r.sock", RedisURL(host="", socket_path="b@/r.sock", password="a")),
        ("redis+socket://relative.sock:/2", RedisURL(host="", socket_path="relative.sock", db=2)),
        # Go quirk: without ":" the text after the path's first "/" is read as the db
        ("redis+socket:///5", RedisURL(host="", socket_path="/5", db=5)),
    ],
)
def test_parse_socket_url(url: str, expected: RedisURL) -> None:
    assert parse_redis_url(url) == expected


def test_socket_bad_db_is_zero_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    assert parse_redis_url("redis+socket://pw@/tmp/r.sock:/x").db == 0
    assert parse_redis_url("redis+socket://pw@/tmp/r.sock:3").db == 0
    assert len(caplog.records) == 2


@pytest.mark.parametrize(
    ("url", "kwargs"),
    [
        ("redis://localhost:6379/2", {"host": "localhost", "port": 6379, "db": 2}),
        ("redis://pw@h:1/0", {"host": "h", "port": 1, "db": 0, "password": "pw"}),
        ("redis://u:pw@h", {"host": "h", "port": 6379, "db": 0, "username": "u", "password": "pw"}),
        # Go sends no AUTH without a password, even with a user name
        ("redis://u:@h", {"host": "h", "port": 6379, "db": 0}),
        ("rediss://pw@h", {"host": "h", "port": 6379, "db": 0, "password": "pw", "ssl": True}),
        (
            "redis+socket://pw@/tmp/r.sock:/4",
            {"unix_socket_path": "/tmp/r.sock", "db": 4, "password": "pw"},
        ),
    ],
)
def test_to_redis_py_kwargs(url: str, kwargs: dict[str, Any]) -> None:
    assert parse_redis_url(url).to_redis_py_kwargs() == kwargs


def test_to_redis_py_kwargs_refuses_multi_host() -> None:
    with pytest.raises(ConfigError, match="hosts"):
        parse_redis_url("redis://h1:1,h2:2").to_redis_py_kwargs()


@pytest.mark.parametrize(
    "url",
    [
        "redis://u:pw@localhost:6379/2",
        "rediss://pw@localhost/1",
        "redis+socket://pw@/tmp/r.sock:/1",
    ],
)
def test_redis_py_accepts_kwargs(url: str) -> None:
    redis = pytest.importorskip("redis")
    client = redis.Redis(**parse_redis_url(url).to_redis_py_kwargs())  # does not connect
    try:
        kwargs = client.connection_pool.connection_kwargs
        assert kwargs["password"] == "pw"
        assert kwargs["db"] in (1, 2)
    finally:
        client.close()


def test_redis_url_repr_masks_password() -> None:
    url = parse_redis_url("redis://user:topsecret@host/1")
    assert "topsecret" not in repr(url)
    assert "password='***'" in repr(url)
    assert "password=None" in repr(parse_redis_url("redis://host"))


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://localhost:6379", RedisURL(host="localhost", hosts=(("localhost", 6379),))),
        (
            "redis://pw@h1:1,h2:2",
            RedisURL(host="h1", port=1, password="pw", hosts=(("h1", 1), ("h2", 2))),
        ),
        # no user name support: everything before the last "@" is the password
        (
            "redis://user:p@w@h1:1",
            RedisURL(host="h1", port=1, password="user:p@w", hosts=(("h1", 1),)),
        ),
    ],
)
def test_parse_redis_lock_url(url: str, expected: RedisURL) -> None:
    assert parse_redis_lock_url(url) == expected


@pytest.mark.parametrize(
    "url", ["", "eager", "rediss://h:1", "redis+socket:///tmp/r.sock", "memcache://h"]
)
def test_lock_url_in_memory(url: str) -> None:
    assert parse_redis_lock_url(url) is None


@pytest.mark.parametrize("url", ["redis://h:1/2", "redis://h:1?x=1", "redis://h:abc"])
def test_lock_url_errors(url: str) -> None:
    with pytest.raises(ConfigError):
        parse_redis_lock_url(url)


# ------------------------------------------------------------------------------------------
# Masking
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("amqp://guest:guest@localhost:5672/", "amqp://guest:***@localhost:5672/"),
        ("amqps://u:p@h/vhost", "amqps://u:***@h/vhost"),
        ("amqp://user@host/", "amqp://user@host/"),
        ("redis://pass@host:6379/1", "redis://***@host:6379/1"),
        ("redis://user:pass@host", "redis://user:***@host"),
        ("redis://:pass@host", "redis://:***@host"),
        ("redis://user:@host", "redis://user:@host"),
        ("rediss://pass@host", "rediss://***@host"),
        ("redis://p@ss@host/0", "redis://***@host/0"),
        ("redis+socket://pass@/tmp/r.sock:/1", "redis+socket://***@/tmp/r.sock:/1"),
        ("redis+socket://u:pass@/tmp/r.sock", "redis+socket://u:***@/tmp/r.sock"),
        ("redis+socket:///tmp/r.sock", "redis+socket:///tmp/r.sock"),
        ("mongodb://u:p@h1,h2/db?authSource=admin", "mongodb://u:***@h1,h2/db?authSource=admin"),
        ("mongodb+srv://u:p@cluster.example/db", "mongodb+srv://u:***@cluster.example/db"),
        ("redis://pw@h1:1,h2:2/3", "redis://***@h1:1,h2:2/3"),
        ("redis://u:pw@h1:1,h2:2", "redis://u:***@h1:1,h2:2"),
        ("redis://pa/ss@h1,h2", "redis://***@h1,h2"),
        ("redis://pa/ss@host", "redis://***@host"),
        ("amqp://u:p1@h1/,amqp://u:p2@h2/", "amqp://u:***@h1/,amqp://u:***@h2/"),
        ("memcache://h1:11211,h2:11211", "memcache://h1:11211,h2:11211"),
        ("https://sqs.us-east-1.amazonaws.com/123", "https://sqs.us-east-1.amazonaws.com/123"),
        ("redis://host/0?password=x&db=1", "redis://host/0?password=***&db=1"),
        ("eager", "eager"),
        ("", ""),
        ("null", "null"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_config_repr_and_str_hide_secrets() -> None:
    cnf = Config(
        broker="amqp://user:brokerpw@rabbit/",
        result_backend="redis://backendpw@localhost:6379/1",
        lock="redis://lockpw@localhost:6379",
        redis=RedisConfig(sentinel_password="sentinelpw"),
    )
    for text in (repr(cnf), str(cnf), f"{cnf}"):
        for secret in ("brokerpw", "backendpw", "lockpw", "sentinelpw"):
            assert secret not in text
        assert "amqp://user:***@rabbit/" in text
        assert "sentinel_password='***'" in text
    assert "sentinel_password=''" in repr(RedisConfig())
    assert "sentinelpw" not in repr(load(FULL_YAML))
    assert "s3cret" not in repr(load(FULL_YAML))


# ------------------------------------------------------------------------------------------
# Writers (round trips)
# ------------------------------------------------------------------------------------------


def test_to_yaml_round_trip() -> None:
    original = load(FULL_YAML)
    for full in (False, True):
        assert load(original.to_yaml(full=full)) == original


def test_to_yaml_minimal() -> None:
    assert Config().to_yaml_dict() == {"amqp": {}}
    assert Config(amqp=None).to_yaml_dict() == {}
    cnf = Config(redis=None, sqs=SQSConfig(), default_queue="q")
    assert cnf.to_yaml_dict() == {"default_queue": "q", "amqp": {}, "sqs": {}, "redis": None}
    assert load(cnf.to_yaml()) == cnf
    both = Config(redis=RedisConfig(cluster_enabled=True)).to_yaml_dict()
    assert both["redis"] == {"cluster_enabled": True, "cluster_mode": True}


def test_to_yaml_full_has_every_go_key() -> None:
    data = Config(sqs=SQSConfig(visibility_timeout=5)).to_yaml_dict(full=True)
    assert set(data) == {
        "broker",
        "lock",
        "multiple_broker_separator",
        "default_queue",
        "result_backend",
        "results_expire_in",
        "no_unix_signals",
        "amqp",
        "sqs",
        "redis",
        "dynamodb",
    }
    assert set(data["sqs"]) == {
        "receive_wait_time_seconds",
        "receive_visibility_timeout",
        "visibility_hearth_beat",
        "endpoint_url",  # Python only: Go's yaml.v2 ignores unknown keys
        "region",
        "max_delay_seconds",
    }
    assert "max_idle_timeout" in data["redis"]
    assert {"endpoint_url", "region"} <= set(data["dynamodb"])


def test_to_yaml_warns_when_go_would_truncate(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    Config(default_queue="q" * 1200).to_yaml()
    assert any("1000 bytes" in r.getMessage() for r in caplog.records)


def test_to_env_round_trip() -> None:
    original = Config.from_env(FULL_ENV)
    for full in (False, True):
        env = original.to_env(full=full)
        assert all(isinstance(v, str) for v in env.values())
        assert Config.from_env(env) == original
    assert Config().to_env() == {}


def test_to_env_names() -> None:
    env = Config(
        multiple_broker_separator=";", redis=RedisConfig(cluster_enabled=True, idle_timeout=1)
    ).to_env()
    assert env == {
        "MULTIPLE_BROKEN_SEPARATOR": ";",
        "REDIS_IDLE_TIMEOUT": "1",
        "REDIS_CLUSTER_ENABLED": "true",
        "REDIS_CLUSTER_MODE": "true",
    }


def test_to_env_refuses_unwritable_maps() -> None:
    cnf = Config(amqp=AMQPConfig(queue_binding_args={"a": "x:y"}))
    with pytest.raises(ConfigError, match="AMQP_QUEUE_BINDING_ARGS"):
        cnf.to_env()
