"""Session-wide pytest setup for every test tree of the repository (tests/, interop/tests/).

It registers :mod:`tests.services` as a plugin: its session fixtures (``redis_server``,
``rabbitmq_server``, ``moto_server`` and the ones built on them) are defined once for the
whole session, so ``python -m pytest tests interop/tests`` starts ONE redis-server, ONE
RabbitMQ node and ONE moto server, on free ports, and both trees use them (interop/tests
keeps its own Redis DBs and its own vhost on them).  ``pytest tests`` or ``pytest
interop/tests`` alone start only what they use.

Worker task events are off in the test session unless the environment says otherwise (see
below).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Python workers emit task events by default; in the suites they would write into the shared
# servers from every test's workers (and from one test's stopping worker into the next
# test's freshly flushed database).  Tests of events turn them on with EventsConfig, as a
# user would; tests/unit/test_events_model.py checks the default itself.
os.environ.setdefault("MACHINERY_COMPAT_WORKER_EVENTS", "0")

# `pytest` (unlike `python -m pytest`) may not have the repository root on sys.path yet.
_ROOT = str(Path(__file__).resolve().parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.services import PLUGINS  # noqa: E402  (imports no service module itself)

pytest_plugins = PLUGINS
