"""``machinery-compat dashboard`` (see ``docs/dashboard.md``).

``dashboard -A mod:app [--config FILE] [--host 127.0.0.1] [--port 5555] [--auth USER:PASS]
[-Q QUEUE[,QUEUE...]] [--refresh SECONDS]``: serve :mod:`machinery_compat.dashboard` with
uvicorn until Ctrl-C.  Needs ``machinery-compat[dashboard]``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

COMMAND = "dashboard"
DEFAULT_PORT = 5555


def _queues(value: str) -> list[str]:
    names = [q.strip() for q in value.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"empty queue name in {value!r}")
    return names


def _refresh(value: str) -> float:
    try:
        n = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not 0.2 <= n <= 3600:
        raise argparse.ArgumentTypeError(f"must be 0.2 to 3600 seconds, not {n}")
    return n


def _port(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 0 < n < 65536:
        raise argparse.ArgumentTypeError(f"a port is 1 to 65535, not {n}")
    return n


def add_command(sub: Any) -> None:
    """Add ``dashboard`` to the ``machinery-compat`` subparsers ``sub``."""
    p = sub.add_parser(
        COMMAND, help="serve the web dashboard (queues, workers, tasks, dead letters)",
        description="Serve the web dashboard: queue depths and dead letters (requeue, purge), "
                    "the delayed count, live Python workers (Go workers publish nothing: not "
                    "listed), recent tasks, a task's detail, periodic tasks, charts. Needs "
                    "machinery-compat[dashboard]. Listens on 127.0.0.1 unless --host says "
                    "otherwise; use --auth (and TLS in front) beyond it.")
    p.add_argument("-A", "--app", default=None, metavar="MODULE[:ATTR]",
                   help="the app to load, as package.module:attribute (attribute defaults to "
                        "'app'); optional with --config")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="Machinery YAML config file (the one Go workers read); overrides the app's")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_port, default=DEFAULT_PORT,
                   help=f"port to listen on (default {DEFAULT_PORT})")
    p.add_argument("--auth", default=None, metavar="USER:PASSWORD",
                   help="require HTTP basic auth with these credentials")
    p.add_argument("-Q", "--queues", dest="queues", type=_queues, action="append",
                   metavar="QUEUE[,QUEUE...]",
                   help="queues to show besides the default queue and those Python workers "
                        "and events name (give Go workers' queues here)")
    p.add_argument("--refresh", type=_refresh, default=2.0, metavar="SECONDS",
                   help="seconds between two live updates (default 2)")


def run(ns: argparse.Namespace) -> int:
    """Serve the dashboard until Ctrl-C; the exit status."""
    from .cli_ops import load
    from .dashboard import create_app
    from .dashboard.security import parse_auth

    auth = parse_auth(ns.auth) if ns.auth is not None else None
    try:
        import uvicorn
    except ImportError:
        from .exceptions import ConfigError

        raise ConfigError("the dashboard needs its extra: pip install "
                          "'machinery-compat[dashboard]' (uvicorn is missing)") from None
    app = load(ns)
    try:
        queues = [q for group in ns.queues or () for q in group]
        asgi = create_app(app, queues=queues, auth=auth, refresh=ns.refresh)
        if ns.host not in ("127.0.0.1", "localhost", "::1") and auth is None:
            logging.getLogger(__name__).warning(
                "the dashboard listens on %s without --auth: anyone who reaches it can "
                "requeue and purge dead letters", ns.host)
        print(f"machinery-compat dashboard on http://{ns.host}:{ns.port}/", file=sys.stderr,
              flush=True)
        uvicorn.run(asgi, host=ns.host, port=ns.port, log_level="warning",
                    timeout_graceful_shutdown=2)
        return 0
    finally:
        app.close()
