"""Real services for tests, started as subprocesses on free loopback ports.

Reusable from any conftest (``tests/``, ``interop/tests/``), benchmarks or
examples run from the repository root::

    from tests.services import RedisServer, free_port

    with RedisServer() as server:
        client = server.client()
        ...

    with RabbitMQServer() as node:           # its own Erlang node, port, data dir
        url = node.url                       # amqp://guest:guest@127.0.0.1:PORT/
        node.ctl("list_queues", "name", "arguments")

One module per service (``redis_svc``, ``rabbitmq_svc``, ``moto_svc``, ...) holds its server
class, its pytest fixtures (``redis_server``, ``redis_url``, ``redis_client``,
``redis_server_factory``; ``rabbitmq_server``, ``rabbitmq_url``, ``rabbitmq_vhost_url``,
``rabbitmq_restart``, ``rabbitmq_server_factory``; ``moto_server``, ``moto_endpoint``) and
the hook marking the tests that use them.  Every public module of this package is a pytest
plugin (:data:`PLUGINS`): the repository's root ``conftest.py`` registers them, so every
test tree (``tests/``, ``interop/tests/``) of a session gets the same session servers: ONE
redis-server (:data:`SESSION_REDIS_DATABASES` DBs: ``tests/`` use 0..15, interop/tests the
rest), ONE RabbitMQ node (``tests/`` use fresh vhosts, interop/tests its own traced vhost,
:meth:`RabbitMQServer.ensure_vhost`) and ONE moto server (unique queue/table names).  Do not
import the fixtures into a conftest: that would define them a second time, and start a
second server of each for the tests below it.

AWS: :class:`MotoServer` runs ``moto[server]`` (SQS, DynamoDB, ...) on a free port; every
client pointed at :attr:`MotoServer.endpoint_url` with dummy credentials talks to it::

    with MotoServer() as moto:
        sqs = moto.client("sqs")             # boto3, region us-east-1, keys "testing"
        moto.reset()                         # POST /moto-api/reset: forget every resource

TLS: :func:`make_tls_files` writes a throwaway CA with a server certificate for
127.0.0.1/localhost and a client certificate; :class:`RedisTLSServer` speaks TLS only
(``rediss://``), ``RabbitMQServer(tls=files)`` adds an ``amqps://`` listener on a second port::

    files = make_tls_files(tmp_path)
    with RedisTLSServer(files, auth_clients=True) as server:
        url = server.url                     # rediss://127.0.0.1:PORT/0?ssl_ca_certs=...

Missing services: :class:`ServiceUnavailable` is raised by the classes; the
fixtures turn it into ``pytest.skip`` locally and ``pytest.fail`` when the
``CI`` environment variable is ``true`` (a missing service is a failure
under CI, never a silent skip).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

#: Where each public name lives (imported on first use, so that pytest imports every service
#: module itself, as a plugin, and rewrites its asserts).
_EXPORTS = {
    "AWS_TEST_ENV": "moto_svc",
    "LOOPBACK": "_base",
    "MotoServer": "moto_svc",
    "RABBITMQ_STARTUP_TIMEOUT": "rabbitmq_svc",
    "RabbitMQServer": "rabbitmq_svc",
    "RedisServer": "redis_svc",
    "RedisTLSServer": "redis_svc",
    "SESSION_REDIS_DATABASES": "redis_svc",
    "SHARED_REDIS_DBS": "redis_svc",
    "STARTUP_TIMEOUT": "_base",
    "ServiceError": "_base",
    "ServiceUnavailable": "_base",
    "TLSFiles": "_base",
    "die_with_parent_prefix": "_base",
    "free_port": "_base",
    "in_ci": "_base",
    "make_tls_files": "_base",
    "missing_service": "_base",
    "session_servers": "_base",
    "session_starts": "_base",
    "start_or_report": "_base",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


__all__ = [
    "AWS_TEST_ENV",
    "LOOPBACK",
    "PLUGINS",
    "RABBITMQ_STARTUP_TIMEOUT",
    "SESSION_REDIS_DATABASES",
    "SHARED_REDIS_DBS",
    "STARTUP_TIMEOUT",
    "MotoServer",
    "RabbitMQServer",
    "RedisServer",
    "RedisTLSServer",
    "ServiceError",
    "ServiceUnavailable",
    "TLSFiles",
    "die_with_parent_prefix",
    "free_port",
    "in_ci",
    "make_tls_files",
    "missing_service",
    "session_servers",
    "session_starts",
    "start_or_report",
]

#: The service modules, each a pytest plugin (fixtures + marker hook): every module of this
#: package whose name does not start with ``_``.  A new service is one new module here.
PLUGINS: tuple[str, ...] = tuple(
    f"{__name__}.{path.stem}" for path in sorted(Path(__file__).parent.glob("[!_]*.py")))
