"""Shared pytest setup for tests/ (interop/tests/ reuses it via tests.services).

Fixtures (defined in tests/services.py, re-exported here):

* ``redis_server``  session-scoped :class:`tests.services.RedisServer`
  (``.url``, ``.port``, ``.client()``, ``.stop()``, ``.start()``, ``.kill()``)
* ``redis_url``     function-scoped; FLUSHALLs, returns ``redis://127.0.0.1:PORT/0``
* ``redis_client``  function-scoped redis-py client (decode_responses=False)
* ``redis_server_factory``  private servers for outage tests

* ``rabbitmq_server``  session-scoped :class:`tests.services.RabbitMQServer` (its own
  Erlang node: ``.url``, ``.node``, ``.ctl(...)``, ``.queues(vhost)``, ``.new_vhost()``)
* ``rabbitmq_url``     session-scoped ``amqp://guest:guest@127.0.0.1:PORT/`` (vhost ``/``)
* ``rabbitmq_vhost_url``  function-scoped URL of a fresh, empty vhost on that node
* ``rabbitmq_restart``  ``rabbitmq_restart(down_for=0, kill=False)`` restarts the session node
* ``rabbitmq_server_factory``  private nodes for outage tests

* ``moto_server``   session-scoped :class:`tests.services.MotoServer` (``.endpoint_url``,
  ``.client("sqs")``, ``.reset()``); sets dummy AWS credentials/region in os.environ
* ``moto_endpoint`` function-scoped ``http://127.0.0.1:PORT`` of that server

Tests using them are marked ``redis`` / ``rabbitmq`` / ``aws`` automatically. A missing
redis-server, rabbitmq-server or moto[server] skips them locally and fails them when CI=true.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# Make `import tests.services` work however pytest was started (`pytest`
# does not put the repo root on sys.path; `python -m pytest` does).
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.services import (  # noqa: E402
    MOTO_FIXTURES,
    RABBITMQ_FIXTURES,
    REDIS_FIXTURES,
    free_port,
    moto_endpoint,
    moto_server,
    rabbitmq_restart,
    rabbitmq_server,
    rabbitmq_server_factory,
    rabbitmq_url,
    rabbitmq_vhost_url,
    redis_client,
    redis_server,
    redis_server_factory,
    redis_url,
)

__all__ = [
    "free_port",
    "moto_endpoint",
    "moto_server",
    "rabbitmq_restart",
    "rabbitmq_server",
    "rabbitmq_server_factory",
    "rabbitmq_url",
    "rabbitmq_vhost_url",
    "redis_client",
    "redis_server",
    "redis_server_factory",
    "redis_url",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if REDIS_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.redis)
        if RABBITMQ_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.rabbitmq)
        if MOTO_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.aws)
