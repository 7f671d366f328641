"""Broker and backend resolution by URL scheme, and what a refused URL's error says."""

from __future__ import annotations

import io

import pytest

from machinery_compat import ConfigError, Machinery
from machinery_compat.backends import create_backend
from machinery_compat.backends.amqp import AMQPBackend
from machinery_compat.backends.memory import MemoryBackend
from machinery_compat.brokers import create_broker
from machinery_compat.brokers.amqp import AMQPBroker
from machinery_compat.brokers.eager import EagerBroker
from machinery_compat.brokers.memory import MemoryBroker
from machinery_compat.config import DEFAULT_BROKER, DEFAULT_RESULT_BACKEND, Config

HOW_BACKEND = ("`result_backend: redis://localhost:6379/0` in the YAML file, the RESULT_BACKEND "
               "environment variable, or Machinery(result_backend=...)")
HOW_BROKER = ("`broker: redis://localhost:6379/0` in the YAML file, the BROKER environment "
              "variable, or Machinery(broker=...)")


def test_machinery_defaults_are_amqp() -> None:
    assert DEFAULT_RESULT_BACKEND == DEFAULT_BROKER == "amqp://guest:guest@localhost:5672/"


@pytest.mark.parametrize("source", ["yaml", "env"])
def test_default_result_backend_is_machinery_amqp(source: str) -> None:
    """As in Go, a configuration without result_backend uses Machinery's default AMQP URL
    (resolving it connects to nothing yet)."""
    if source == "yaml":
        cfg = Config.from_yaml(io.StringIO("broker: redis://localhost:6379/0\n"))
    else:
        cfg = Config.from_env({"BROKER": "redis://localhost:6379/0"})
    assert cfg.result_backend == DEFAULT_RESULT_BACKEND
    backend = create_backend(cfg)
    assert isinstance(backend, AMQPBackend)
    assert backend.endpoint.urls == (DEFAULT_RESULT_BACKEND,)
    assert backend.queue_args == {"x-message-ttl": 3_600_000, "x-expires": 3_600_000}


def test_machinery_default_amqp_urls_are_pointed_out(caplog: pytest.LogCaptureFixture) -> None:
    create_backend(Config.from_yaml(io.StringIO("broker: redis://localhost:6379/0\n")))
    create_broker(Config.from_yaml(io.StringIO("default_queue: q\n")))
    lines = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert lines == [
        "result_backend: amqp://guest:***@localhost:5672/ is Machinery's default result_backend, "
        f"used because the configuration does not set one: set it with {HOW_BACKEND}",
        "broker: amqp://guest:***@localhost:5672/ is Machinery's default broker, used because "
        f"the configuration does not set one: set it with {HOW_BROKER}",
    ]
    caplog.clear()
    create_backend(Config.from_url("redis://localhost:6379/0", "amqp://me:pw@rabbit:5672/"))
    assert not caplog.records  # a URL someone chose is not pointed out


def test_default_broker_is_machinery_amqp() -> None:
    cfg = Config.from_yaml(io.StringIO("default_queue: q\n"))
    broker = create_broker(cfg)
    assert isinstance(broker, AMQPBroker)
    assert broker.default_queue == "q" and broker.endpoint.urls == (DEFAULT_BROKER,)


def test_app_from_yaml_without_result_backend() -> None:
    app = Machinery(config=Config.from_yaml(io.StringIO("broker: memory://unit-f\n")))
    assert isinstance(app.broker, MemoryBroker)
    assert isinstance(app.backend, AMQPBackend)


def test_amqp_urls_and_separator() -> None:
    cfg = Config.from_env({"BROKER": "amqp://a:1@h1:5672/|amqps://a:1@h2:5671/v",
                           "MULTIPLE_BROKEN_SEPARATOR": "|",
                           "RESULT_BACKEND": "amqp://me:pw@rabbit:5672/"})
    broker = create_broker(cfg)
    assert isinstance(broker, AMQPBroker)
    assert broker.endpoint.urls == ("amqp://a:1@h1:5672/", "amqps://a:1@h2:5671/v")
    backend = create_backend(cfg)
    assert isinstance(backend, AMQPBackend)
    assert backend.endpoint.urls == ("amqp://me:pw@rabbit:5672/",)
    assert backend.endpoint.tls_context is None
    tls = create_backend(Config(broker="memory://", result_backend="amqps://me:pw@rabbit/"))
    assert isinstance(tls, AMQPBackend) and tls.endpoint.tls_context is not None


def test_empty_and_unknown_urls() -> None:
    with pytest.raises(ConfigError) as info:
        create_backend(Config(broker="memory://", result_backend=""))
    assert "no result_backend is configured: set it with " + HOW_BACKEND in str(info.value)
    with pytest.raises(ConfigError, match=r"^Factory failed with broker URL: nats://… \(unknown scheme\)$"):
        create_broker(Config(broker="nats://x"))


@pytest.mark.parametrize("url", ["memory://", "memory://a", "memory://a/"])
def test_memory_urls(url: str) -> None:
    cfg = Config(broker=url, result_backend=url, default_queue="q")
    broker, backend = create_broker(cfg), create_backend(cfg)
    assert isinstance(broker, MemoryBroker) and broker.default_queue == "q"
    assert isinstance(backend, MemoryBackend)
    assert broker.name == backend.name == url.removeprefix("memory://").strip("/")


@pytest.mark.parametrize("url", ["eager", "eager://", "EAGER://t"])
def test_eager_urls(url: str) -> None:
    app = Machinery(broker=url)
    assert isinstance(app.broker, EagerBroker) and app.broker.app is app
    assert isinstance(app.backend, MemoryBackend)
    with pytest.raises(ConfigError, match="eager broker runs tasks through an app's worker"):
        create_broker(Config(broker=url))
