"""Running the matrix once per Machinery version: set up, check, clean up."""

from __future__ import annotations

import fnmatch
import secrets
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config, mask_url
from . import cleanup
from .checks import (
    Check,
    CheckResult,
    Context,
    echo_checks,
    echo_go_to_py,
    go_to_py_echo_lines,
    other_checks,
    run_check,
)
from .probes import (
    ConformanceError,
    GoSettings,
    GoWorker,
    build_probes,
    flavour,
    major,
    prebuilt,
    run_producer,
)
from .pyside import ECHO_TYPES, Runs, make_app

Progress = Callable[[int, int, str, str], None]  # (done, total, check name, status)


@dataclass(frozen=True, slots=True)
class Options:
    broker: str
    backend: str
    config: Config
    versions: tuple[str, ...]
    go_bin: str | None = None
    cache: Path | None = None
    only: tuple[str, ...] = ()
    timeout: float = 30.0


@dataclass
class VersionReport:
    version: str  # as asked for
    flavour: str
    machinery_version: str = ""  # what the Go worker reports it runs
    prefix: str = ""
    checks: list[CheckResult] = field(default_factory=list)
    error: str = ""  # set when the run could not start
    cleanup: str = ""
    cleanup_ok: bool = True  # False: something of the run's could not be removed
    seconds: float = 0.0

    @property
    def failed(self) -> int:
        return (sum(c.status == "fail" for c in self.checks) + (1 if self.error else 0)
                + (0 if self.cleanup_ok else 1))

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.version, "flavour": self.flavour,
                "machinery_version": self.machinery_version, "prefix": self.prefix,
                "error": self.error, "cleanup": self.cleanup, "cleanup_ok": self.cleanup_ok,
                "seconds": self.seconds,
                "passed": sum(c.status == "pass" for c in self.checks),
                "failed": self.failed, "skipped": sum(c.status == "skip" for c in self.checks),
                "checks": [{"name": c.name, "status": c.status, "detail": c.detail,
                            "seconds": c.seconds} for c in self.checks]}


@dataclass(frozen=True, slots=True)
class Plan:
    """The checks a run makes (``--only`` patterns, fnmatch on the check names)."""

    echo_py_to_go: list[Check]
    echo_go_to_py: list[str]  # types
    others: list[Check]

    @classmethod
    def select(cls, only: Sequence[str] = ()) -> Plan:
        def wanted(name: str) -> bool:
            return not only or any(fnmatch.fnmatchcase(name, p) for p in only)

        return cls([c for c in echo_checks() if wanted(c[0])],
                   [t for t in ECHO_TYPES if wanted(f"echo/go->py/{t}")],
                   [c for c in other_checks() if wanted(c[0])])

    @property
    def total(self) -> int:
        return len(self.echo_py_to_go) + len(self.echo_go_to_py) + len(self.others)


def bin_dir(opts: Options, version: str, log: Callable[[str], None]) -> Path:
    if opts.go_bin:
        return prebuilt(opts.go_bin)
    return build_probes(version, cache=opts.cache, log=log)


def run_version(opts: Options, version: str, *, progress: Progress,
                log: Callable[[str], None]) -> VersionReport:
    major(version)
    report = VersionReport(version, flavour(version), prefix=f"mcconf-{secrets.token_hex(4)}")
    t0 = time.monotonic()
    try:
        bins = bin_dir(opts, version, log)
    except ConformanceError as e:
        report.error = str(e)
        return report
    prefix = report.prefix
    redis_for_counters = cleanup.redis_urls([opts.broker, opts.backend])
    go = GoSettings(bins, report.flavour, opts.broker, opts.backend, f"{prefix}.exchange")
    runs = Runs()
    log_dir = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    apps = [make_app(opts.config, broker=opts.broker, backend=opts.backend,
                     queue=f"{prefix}.{role}", exchange=go.exchange, runs=runs)
            for role in ("py", "mix")]
    mix_workers: list[GoWorker] = []

    def start_mix_worker() -> GoWorker:
        w = GoWorker(go, f"{prefix}.mix", concurrency=2, tag=f"{prefix}-go-mix", log_dir=log_dir)
        mix_workers.append(w)
        w.start()
        return w

    go_worker = GoWorker(go, f"{prefix}.go", tag=f"{prefix}-go", log_dir=log_dir)
    py_worker: Any = None
    ctx = Context(prefix, go, apps[0], apps[1], runs, go_worker, start_mix_worker,
                  counters_ok=bool(redis_for_counters), timeout=opts.timeout)
    plan = Plan.select(opts.only)
    done = 0
    try:
        try:
            ready = go_worker.start()
            report.machinery_version = str(ready.get("machinery_version") or "")
            if opts.go_bin and report.machinery_version != version:
                raise ConformanceError(
                    f"--go-bin {opts.go_bin}: its {report.flavour} flavour runs Machinery "
                    f"{report.machinery_version or '(unknown)'}, not {version}")
            py_worker = apps[0].worker(concurrency=4, queue=f"{prefix}.py",
                                       crash_safe=False).start()
        except ConformanceError as e:
            report.error = str(e)
            return report
        total = plan.total

        def record(result: CheckResult) -> None:
            nonlocal done
            done += 1
            report.checks.append(result)
            progress(done, total, f"{version} {result.name}", result.status)

        for name, fn in plan.echo_py_to_go:
            record(run_check(ctx, name, fn))
        t = time.monotonic()
        outs: dict[Any, dict[str, Any]] = {}
        producer_error = ""
        if plan.echo_go_to_py:
            try:
                outs = run_producer(go, f"{prefix}.py", go_to_py_echo_lines(
                    ctx, plan.echo_go_to_py), timeout=ctx.timeout + 60)
            except ConformanceError as e:
                producer_error = str(e)
        for go_type in plan.echo_go_to_py:
            name = f"echo/go->py/{go_type}"
            out = outs.get(go_type)
            if out is None:
                record(CheckResult(name, "fail", producer_error or "no answer from mcproducer",
                                   round(time.monotonic() - t, 3)))
                continue

            def one(c: Context, _t: str = go_type, _o: dict[str, Any] = out) -> str:
                return echo_go_to_py(c, _t, _o)

            record(run_check(ctx, name, one))
        for name, fn in plan.others:
            record(run_check(ctx, name, fn))
    finally:
        if py_worker is not None:
            py_worker.stop(timeout=20)
        for w in (go_worker, *mix_workers):
            w.stop()
        for app in apps:
            app.close()
        report.cleanup, report.cleanup_ok = _clean(opts, ctx)
        report.seconds = round(time.monotonic() - t0, 1)
    return report


def _clean(opts: Options, ctx: Context) -> tuple[str, bool]:
    """Remove the run's names; (what was done, whether nothing of the run is left)."""
    said: list[str] = []
    ok = True
    try:
        for url in cleanup.redis_urls([opts.broker, opts.backend]):
            n = cleanup.clean_redis(url, ctx.prefix)
            said.append(f"{n} Redis key(s) removed from {mask_url(url)}")
            left = cleanup.redis_leftovers(url, ctx.prefix)
            if left:
                ok = False
                said.append(f"still there: {', '.join(left[:5])}")
        if opts.broker.lower().startswith("amqp"):
            queues = [ctx.q(r) for r in ("go", "py", "mix")]
            if opts.backend.lower().startswith("amqp"):
                queues += ctx.uuids
            n = cleanup.clean_amqp(opts.broker, queues=queues, exchange=ctx.go.exchange,
                                   wait_until=ctx.delay_queues_gone)
            said.append(f"{n} RabbitMQ queue(s) and exchange {ctx.go.exchange} deleted")
    except Exception as e:  # reported, and counted as a failure
        said.append(f"cleanup failed: {type(e).__name__}: {e}")
        ok = False
    return "; ".join(said), ok


def run_all(opts: Options, *, progress: Progress,
            log: Callable[[str], None]) -> list[VersionReport]:
    return [run_version(opts, v, progress=progress, log=log) for v in opts.versions]


def check_urls(broker: str, backend: str, versions: Sequence[str]) -> None:
    """Reject what the matrix does not cover yet (Redis and AMQP brokers this release)."""
    for v in versions:
        major(v)
    if not broker.lower().startswith(("redis://", "rediss://", "amqp://", "amqps://")):
        raise ConformanceError(f"broker {mask_url(broker)}: conformance runs on Redis "
                               "(redis://) and RabbitMQ (amqp://) brokers for now")
    if not backend.lower().startswith(("redis://", "rediss://", "amqp://", "amqps://")):
        raise ConformanceError(f"result backend {mask_url(backend)}: conformance runs on "
                               "Redis and AMQP result backends for now")
