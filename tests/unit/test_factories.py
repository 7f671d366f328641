"""Broker and backend resolution by URL scheme, and what a refused URL's error says."""

from __future__ import annotations

import io

import pytest

from machinery_compat import ConfigError, Machinery
from machinery_compat.backends import create_backend
from machinery_compat.backends.memory import MemoryBackend
from machinery_compat.brokers import create_broker
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
def test_default_result_backend_refused_saying_it_is_the_default(source: str) -> None:
    if source == "yaml":
        cfg = Config.from_yaml(io.StringIO("broker: redis://localhost:6379/0\n"))
    else:
        cfg = Config.from_env({"BROKER": "redis://localhost:6379/0"})
    assert cfg.result_backend == DEFAULT_RESULT_BACKEND
    with pytest.raises(ConfigError) as info:
        create_backend(cfg)
    text = str(info.value)
    assert text.startswith("the AMQP result backend is not implemented yet (amqp://)")
    assert "amqp://guest:guest@localhost:5672/ is Machinery's default result_backend" in text
    assert "the configuration does not set one" in text
    assert text.endswith(HOW_BACKEND)


def test_default_broker_refused_saying_it_is_the_default() -> None:
    cfg = Config.from_yaml(io.StringIO("default_queue: q\n"))
    with pytest.raises(ConfigError) as info:
        create_broker(cfg)
    text = str(info.value)
    assert "amqp://guest:guest@localhost:5672/ is Machinery's default broker" in text
    assert text.endswith(HOW_BROKER)


def test_app_from_yaml_without_result_backend() -> None:
    app = Machinery(config=Config.from_yaml(io.StringIO("broker: memory://unit-f\n")))
    assert isinstance(app.broker, MemoryBroker)
    with pytest.raises(ConfigError, match="Machinery's default result_backend"):
        _ = app.backend


def test_an_explicit_amqp_url_gets_no_default_hint() -> None:
    cfg = Config.from_env({"BROKER": "redis://h/0", "RESULT_BACKEND": "amqp://me:pw@rabbit:5672/"})
    with pytest.raises(ConfigError) as info:
        create_backend(cfg)
    assert str(info.value) == "the AMQP result backend is not implemented yet (amqp://)"


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
