"""Shared pytest setup for tests/ (interop/tests/ reuses it via tests.services).

Fixtures (defined in tests/services.py, re-exported here):

* ``redis_server``  session-scoped :class:`tests.services.RedisServer`
  (``.url``, ``.port``, ``.client()``, ``.stop()``, ``.start()``, ``.kill()``)
* ``redis_url``     function-scoped; FLUSHALLs, returns ``redis://127.0.0.1:PORT/0``
* ``redis_client``  function-scoped redis-py client (decode_responses=False)
* ``redis_server_factory``  private servers for outage tests

Tests using them are marked ``redis`` automatically. A missing redis-server
skips them locally and fails them when CI=true.
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
    REDIS_FIXTURES,
    free_port,
    redis_client,
    redis_server,
    redis_server_factory,
    redis_url,
)

__all__ = ["free_port", "redis_client", "redis_server", "redis_server_factory", "redis_url"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if REDIS_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.redis)
