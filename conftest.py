"""Session-wide pytest setup for every test tree of the repository (tests/, interop/tests/).

It registers :mod:`tests.services` as a plugin: its session fixtures (``redis_server``,
``rabbitmq_server``, ``moto_server`` and the ones built on them) are defined once for the
whole session, so ``python -m pytest tests interop/tests`` starts ONE redis-server, ONE
RabbitMQ node and ONE moto server, on free ports, and both trees use them (interop/tests
keeps its own Redis DBs and its own vhost on them).  ``pytest tests`` or ``pytest
interop/tests`` alone start only what they use.
"""

from __future__ import annotations

import sys
from pathlib import Path

# `pytest` (unlike `python -m pytest`) may not have the repository root on sys.path yet.
_ROOT = str(Path(__file__).resolve().parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.services import PLUGINS  # noqa: E402  (imports no service module itself)

pytest_plugins = PLUGINS
