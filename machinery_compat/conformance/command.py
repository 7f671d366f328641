"""``machinery-compat conformance``: argv -> :class:`~.runner.Options` -> :func:`run`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..config import Config
from ..exceptions import ConfigError
from .probes import PINNED, ConformanceError

DESCRIPTION = (
    "Check that Go Machinery (the version you pin) and machinery-compat interoperate on your "
    "broker and result backend: builds Go probe programs against that version (cached under "
    "~/.cache/machinery_compat), then runs every echo type both ways, a mixed worker pool, "
    "retries, ETAs, chains, groups and chords with Go and Python members, on queues and keys "
    "named mcconf-<random>.* only, which it deletes afterwards. Exit status 0 when every "
    "check passed, 1 when one failed, 2 for bad options.")


def add_command(sub: Any) -> None:
    """Register the subcommand on the CLI's subparsers."""
    p = sub.add_parser("conformance", help="check Go Machinery <-> machinery-compat on your "
                                           "broker (Go probes built against your version)",
                       description=DESCRIPTION)
    p.add_argument("--broker", default=None, metavar="URL",
                   help="broker URL (redis://..., amqp://...); default: the config's")
    p.add_argument("--backend", default=None, metavar="URL",
                   help="result backend URL; default: the config's, else the broker")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="Machinery YAML config (broker, result_backend, redis and amqp "
                        "settings); the queue and exchange names are the run's own")
    p.add_argument("--machinery", action="append", default=None, metavar="VERSION",
                   help="Go Machinery version to check, repeatable (default: "
                        + " and ".join(PINNED) + ", the tested pins); any version your "
                        "GOPROXY serves, e.g. v2.0.15")
    p.add_argument("--go-bin", default=None, metavar="DIR",
                   help="use prebuilt mcworker and mcproducer from DIR (e.g. interop/bin) "
                        "instead of building; their Machinery must be the version asked for")
    p.add_argument("--only", action="append", default=None, metavar="PATTERN",
                   help="run only the checks whose name matches PATTERN (shell-style, "
                        "repeatable), e.g. 'echo/*/int64' or 'chord/*'; names as in --json")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="how long to wait for any one result (default 30)")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    p.add_argument("--junit-xml", default=None, metavar="FILE", help="write a JUnit XML report")
    p.add_argument("--markdown", default=None, metavar="FILE", help="write a Markdown report")


def _progress(tty: bool) -> Any:
    def show(done: int, total: int, name: str, status: str) -> None:
        if tty:
            bar = "#" * (24 * done // total)
            sys.stderr.write(f"\r[{bar:<24}] {done}/{total} {name[:50]:<50}")
            if done == total:
                sys.stderr.write("\n")
        elif status == "fail" or done == total or done % 10 == 0:
            sys.stderr.write(f"[{done}/{total}] {name}: {status}\n")
        sys.stderr.flush()
    return show


def run(ns: argparse.Namespace) -> int:
    """Run the matrix; 0 all passed, 1 a check failed or a version could not run."""
    from . import report
    from .runner import Options, Plan, check_urls, run_all

    cfg = Config.from_yaml(ns.config) if ns.config else Config.default()
    broker = ns.broker or (cfg.broker if ns.config else None)
    if not broker:
        raise ConfigError("give --broker URL (or --config FILE with a broker)")
    backend = ns.backend or (cfg.result_backend if ns.config and cfg.result_backend else broker)
    versions = tuple(dict.fromkeys(ns.machinery or PINNED))
    try:
        check_urls(broker, backend, versions)
    except ConformanceError as e:  # bad options: exit status 2, like every other command
        raise ConfigError(str(e)) from e
    only = tuple(ns.only or ())
    if Plan.select(only).total == 0:
        raise ConfigError(f"--only {' '.join(only)}: no check has such a name")
    if ns.timeout <= 0:
        raise ConfigError("--timeout must be positive")
    opts = Options(broker=broker, backend=backend, config=cfg, versions=versions,
                   go_bin=ns.go_bin, only=only, timeout=ns.timeout)

    def log(msg: str) -> None:
        sys.stderr.write(f"conformance: {msg}\n")

    tty = sys.stderr.isatty()
    reports = run_all(opts, progress=_progress(tty), log=log)
    if ns.json:
        print(report.as_json(reports, broker, backend))
    else:
        report.table(reports)
    if ns.junit_xml:
        Path(ns.junit_xml).write_text(report.junit_xml(reports))
    if ns.markdown:
        Path(ns.markdown).write_text(report.markdown(reports, broker, backend))
    return 0 if report.summary(reports)["failed"] == 0 else 1


__all__ = ["ConformanceError", "add_command", "run"]
