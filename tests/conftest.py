"""Shared pytest setup for tests/.

The service fixtures are defined in tests/services.py, a pytest plugin the repository's root
``conftest.py`` registers for every test tree, so tests/ and interop/tests/ share one server
of each kind per session (do not re-import them here: a second definition would start a
second server for the tests below this directory):

* ``redis_server``  session-scoped :class:`tests.services.RedisServer`
  (``.url``, ``.port``, ``.client()``, ``.stop()``, ``.start()``, ``.kill()``), 128 DBs
* ``redis_url``     function-scoped; flushes DBs 0..15, returns ``redis://127.0.0.1:PORT/0``
  (tests here may use DBs 0..15; the others belong to interop/tests)
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

# Make `import tests.services` work however pytest was started (`pytest`
# does not put the repo root on sys.path; `python -m pytest` does).
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
