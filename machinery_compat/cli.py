"""Command line: ``machinery-compat worker -A package.module:app -c 4 -Q queue``.

Also ``python -m machinery_compat``.  The only place that configures logging.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from .app import Machinery
from .config import Config
from .exceptions import ConfigError


@dataclass(frozen=True, slots=True)
class WorkerArgs:
    app: str
    concurrency: int
    queue: str | None
    config: str | None
    loglevel: str


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="machinery-compat",
                                description="Python workers for Go Machinery queues")
    sub = p.add_subparsers(dest="command", required=True)
    w = sub.add_parser("worker", help="run a worker")
    w.add_argument("-A", "--app", required=True,
                   help="the app to load, as package.module:attribute (attribute defaults to 'app')")
    w.add_argument("-c", "--concurrency", type=int, default=0,
                   help="worker threads (default: 2 x CPUs, as Go's Redis worker)")
    w.add_argument("-Q", "--queue", default=None, help="queue to consume (default: default_queue)")
    w.add_argument("--config", default=None,
                   help="Machinery YAML config file (the one Go workers read); overrides the app's")
    w.add_argument("-l", "--loglevel", default="info",
                   choices=["debug", "info", "warning", "error", "critical"])
    return p


def load_app(spec: str) -> Machinery:
    """Import ``package.module:attr`` (``attr`` defaults to ``app``)."""
    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"cannot import {module_name!r}: {e}") from e
    obj = getattr(module, attr or "app", None)
    if not isinstance(obj, Machinery):
        raise ConfigError(f"{spec!r} is not a machinery_compat.Machinery app (got {obj!r})")
    return obj


def run_worker(args: WorkerArgs) -> int:
    logging.basicConfig(level=args.loglevel.upper(),
                        format="[%(asctime)s: %(levelname)s/%(threadName)s] %(message)s")
    app = load_app(args.app)
    if args.config:
        app.config = Config.from_yaml(args.config)
    app.worker(concurrency=args.concurrency, queue=args.queue).run()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    if ns.command == "worker":
        try:
            return run_worker(WorkerArgs(ns.app, ns.concurrency, ns.queue, ns.config, ns.loglevel))
        except ConfigError as e:
            print(f"machinery-compat: {e}", file=sys.stderr)
            return 2
    return 2
