"""Command line: ``machinery-compat worker -A package.module:app -c 4 -Q a,b``.

Also ``python -m machinery_compat``.  ``machinery-compat COMMAND --help`` lists every option::

    machinery-compat --version
    machinery-compat worker -A mypkg.tasks:app            # default queue, 2 x CPUs threads
    machinery-compat worker -A mypkg.tasks:app -Q a,b -Q c -c 8 -l INFO -n w1@%h
    machinery-compat worker -A mypkg.tasks:app --config config.yml --logfile worker.log
    machinery-compat worker -A mypkg.tasks:app -P solo    # one task at a time
    machinery-compat worker -A mypkg.tasks:app -B         # and fire its periodic tasks
    machinery-compat beat -A mypkg.tasks:app              # only fire its periodic tasks
    machinery-compat beat -A mypkg.tasks:app --lock redis://h:6379/0 --lock-program mygoworker
    machinery-compat periodic list -A mypkg.tasks:app [--json]
    machinery-compat worker -A mypkg.tasks:app --max-memory 512M   # restart past 512 MiB
    machinery-compat create-dynamodb-tables --config config.yml [--endpoint-url URL]
    machinery-compat status -A mypkg.tasks:app [--json]   # queues, delayed, live workers
    machinery-compat inspect pending|delayed|state ID|group ID ...   (see cli_ops)
    machinery-compat purge QUEUE [--force] · dead list|requeue|purge QUEUE · stuck [--resend]

Errors in the options, the app reference or the config file are one line on stderr and exit
status 2.  This is the only module that configures logging (stderr, or ``--logfile``).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import os
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from . import __version__
from .app import Machinery
from .config import Config, mask_url
from .exceptions import BackendError, ConfigError

if TYPE_CHECKING:
    from .periodic import Scheduler

logger = logging.getLogger("machinery_compat.cli")

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
POOLS = ("threads", "solo", "processes", "asyncio")
LOG_FORMAT = "[%(asctime)s: %(levelname)s/%(threadName)s] %(message)s"


class UsageError(Exception):
    """A command-line option that cannot be honoured (exit status 2)."""


@dataclass(frozen=True, slots=True)
class WorkerArgs:
    app: str
    concurrency: int = 0
    queues: tuple[str, ...] = ()  # empty: the app's default queue
    config: str | None = None
    loglevel: str = "info"
    hostname: str | None = None
    logfile: str | None = None
    pool: str = "threads"
    max_message_size: int | None = None  # None: the worker's default
    max_memory: int | None = None  # KiB; past it the worker stops and this process restarts
    beat: bool = False  # -B: fire the app's periodic tasks too
    lock: str | None = None
    lock_program: str | None = None
    processes: int = 1  # worker processes sharing -c (--processes; -P processes: one per -c)
    metrics_port: int | None = None  # Prometheus /metrics (process i of --processes: port + i)
    metrics_address: str = "0.0.0.0"
    cpu_affinity: str | None = None  # --cpu-affinity: CPUs, one per process with --processes

    @classmethod
    def from_namespace(cls, ns: argparse.Namespace) -> WorkerArgs:
        return cls(app=ns.app, concurrency=ns.concurrency,
                   queues=tuple(q for group in ns.queues or () for q in group),
                   config=ns.config, loglevel=ns.loglevel, hostname=ns.hostname,
                   logfile=ns.logfile, pool=ns.pool, max_message_size=ns.max_message_size,
                   max_memory=ns.max_memory, beat=ns.beat, lock=ns.lock, lock_program=ns.lock_program,
                   processes=ns.processes, metrics_port=ns.metrics_port,
                   metrics_address=ns.metrics_address, cpu_affinity=ns.cpu_affinity)


@dataclass(frozen=True, slots=True)
class BeatArgs:
    app: str
    config: str | None = None
    loglevel: str = "info"
    logfile: str | None = None
    lock: str | None = None
    lock_program: str | None = None

    @classmethod
    def from_namespace(cls, ns: argparse.Namespace) -> BeatArgs:
        return cls(app=ns.app, config=ns.config, loglevel=ns.loglevel, logfile=ns.logfile,
                   lock=ns.lock, lock_program=ns.lock_program)


@dataclass(frozen=True, slots=True)
class PeriodicListArgs:
    app: str
    config: str | None = None
    lock: str | None = None
    lock_program: str | None = None
    json: bool = False

    @classmethod
    def from_namespace(cls, ns: argparse.Namespace) -> PeriodicListArgs:
        return cls(app=ns.app, config=ns.config, lock=ns.lock, lock_program=ns.lock_program,
                   json=ns.json)


# -- parsing ---------------------------------------------------------------------------------
def _queue_names(value: str) -> list[str]:
    """One ``-Q`` value: ``a`` or ``a,b`` (an empty name is an error)."""
    names = [q.strip() for q in value.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"empty queue name in {value!r}")
    return names


def _kib(value: str) -> int:
    """A memory limit in KiB: ``500000`` (KiB, as Celery's ``--max-memory-per-child``),
    ``512M``, ``2G``."""
    text = value.strip().lower().removesuffix("b")
    if text[-1:] in ("k", "m", "g"):
        return -(-_size(value) // 1024)
    return _size(value + "k") // 1024


def _size(value: str) -> int:
    """A byte count: ``4194304``, ``512k``, ``4M`` (powers of 1024)."""
    text = value.strip().lower().removesuffix("b")
    scale = {"k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}.get(text[-1:], 1)
    try:
        n = int(text[:-1] if scale > 1 else text) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {value!r} (e.g. 4M, 512k)") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {value!r}")
    return n


def _concurrency(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (the default) or more, not {n}")
    return n


def _app_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-A", "--app", required=True, metavar="MODULE[:ATTR]",
                   help="the app to load, as package.module:attribute (attribute defaults to 'app')")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="Machinery YAML config file (the one Go workers read); overrides the app's")


def _log_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-l", "--loglevel", default="info", type=str.lower, choices=LOG_LEVELS,
                   metavar="LEVEL",
                   help="log level, any case: " + ", ".join(LOG_LEVELS) + " (default: info)")
    p.add_argument("--logfile", default=None, metavar="FILE",
                   help="append logs to FILE instead of writing them to stderr")


def _lock_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lock", default=None, metavar="URL",
                   help="Redis URL of the periodic-task lock (redis://host:port/db), or 'local' "
                        "(this process only); default: the config's lock, else the broker's "
                        "or the result backend's Redis")
    p.add_argument("--lock-program", default=None, metavar="NAME",
                   help="the executable name in lock keys (machinery_lock_<NAME><name><spec>); "
                        "give a Go binary's name to share its schedule's lock (default: the "
                        "app's periodic_tasks.program, machinery-compat)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="machinery-compat",
                                description="Python workers for Go Machinery queues")
    p.add_argument("--version", action="version", version=f"machinery-compat {__version__}",
                   help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    w = sub.add_parser("worker", help="run a worker",
                       description="Consume Machinery queues and run the app's tasks. The first "
                                   "SIGINT/SIGTERM finishes running tasks; a second quits at once.")
    _app_options(w)
    w.add_argument("-c", "--concurrency", type=_concurrency, default=0, metavar="N",
                   help="worker threads (default 0: 2 x CPUs, as Go's Redis worker)")
    w.add_argument("-Q", "--queues", "--queue", dest="queues", type=_queue_names,
                   action="append", metavar="QUEUE[,QUEUE...]",
                   help="queue(s) to consume, comma-separated and/or repeated (-Q a,b -Q c); "
                        "served round-robin (default: the config's default_queue)")
    _log_options(w)
    w.add_argument("-n", "--hostname", default=None, metavar="NAME",
                   help="this worker's name in logs; %%h expands to the host name, %%n to its "
                        "first label, %%d to the domain (default: <pid>@<host>)")
    w.add_argument("-P", "--pool", default="threads", type=str.lower, choices=POOLS,
                   help="threads (default): -c tasks at once in threads (split across "
                        "--processes); solo: one task at a time; processes: -c worker "
                        "processes of one task at a time each (Celery's prefork: the same as "
                        "--processes N -c N); asyncio: async def tasks on one event loop, "
                        "-c (default 64) at once (machinery_compat.aio.worker)")
    w.add_argument("--processes", type=_concurrency, default=1, metavar="N",
                   help="N worker processes (default 1), forked and supervised by this one, "
                        "each running a thread pool: -c is the total number of tasks at once, "
                        "split across them (-c 8 --processes 2: 4 threads each), as Go's "
                        "concurrency is for one worker. The first SIGINT/SIGTERM stops every "
                        "process gracefully, a second at once; a process that dies is logged "
                        "and started again (with back-off); --max-memory applies to each")
    w.add_argument("--max-message-size", type=_size, default=None, metavar="BYTES",
                   help="dead-letter larger messages without parsing them (e.g. 4M, 512k; "
                        "default 4M)")
    w.add_argument("--max-memory", type=_kib, default=None, metavar="SIZE",
                   help="once the worker's resident memory is past SIZE (a bare number is "
                        "KiB, as Celery's --max-memory-per-child; or 512M, 2G) it finishes "
                        "running tasks, stops and starts afresh in this process (exec)")
    w.add_argument("--cpu-affinity", default=None, metavar="CPUS",
                   help="pin the worker to these CPUs (Linux): 1, 0-3, 0,2 or all; with "
                        "--processes N, process i runs only on the i-th of them. A GIL-bound "
                        "worker process often drains faster pinned to one CPU (README, "
                        "Performance); a pinned process uses only its CPUs, even for tasks that "
                        "release the GIL")
    w.add_argument("-B", "--beat", action="store_true",
                   help="also fire the app's periodic tasks in this process, as a Go worker does")
    _lock_options(w)
    w.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                   help="serve Prometheus metrics at http://ADDRESS:PORT/metrics (needs "
                        "machinery-compat[metrics]); with --processes N, process i serves "
                        "PORT+i")
    w.add_argument("--metrics-address", default="0.0.0.0", metavar="ADDRESS",
                   help="the address --metrics-port listens on (default 0.0.0.0)")

    b = sub.add_parser("beat", help="fire the app's periodic tasks",
                       description="Send the app's periodic tasks on their schedules (what "
                                   "Go's RegisterPeriodicTask does), de-duplicated with every "
                                   "other scheduler sharing the lock. SIGINT/SIGTERM stops.")
    _app_options(b)
    _log_options(b)
    _lock_options(b)

    t = sub.add_parser(
        "create-dynamodb-tables", help="create the DynamoDB result backend's two tables",
        description="Create the tables Go Machinery's DynamoDB result backend expects: "
                    "task_states (hash key TaskUUID, S) and group_metas (hash key GroupUUID, "
                    "S), on-demand capacity, DynamoDB TTL on the attribute TTL. Existing "
                    "tables are kept (their key is checked; TTL enabled if it is not).")
    t.add_argument("--config", default=None, metavar="FILE",
                   help="Machinery YAML config file (its dynamodb section); without one the "
                        "environment is read (TASK_STATES_TABLE, DYNAMODB_ENDPOINT_URL, ...)")
    t.add_argument("--endpoint-url", default=None, metavar="URL",
                   help="DynamoDB endpoint (emulator, VPC endpoint); overrides the config's")
    t.add_argument("--region", default=None, help="AWS region; overrides the config's")
    t.add_argument("--task-states-table", default=None, metavar="NAME",
                   help="default: the config's dynamodb.task_states_table (task_states)")
    t.add_argument("--group-metas-table", default=None, metavar="NAME",
                   help="default: the config's dynamodb.group_metas_table (group_metas)")
    t.add_argument("--no-ttl", action="store_true",
                   help="do not enable DynamoDB TTL on the attribute TTL")

    per = sub.add_parser("periodic", help="inspect the app's periodic tasks")
    per_sub = per.add_subparsers(dest="periodic_command", required=True, metavar="COMMAND")
    pl = per_sub.add_parser("list", help="each periodic task, its next fire time and lock holder",
                            description="List the app's periodic tasks with their next fire "
                                        "time and who holds their lock now.")
    _app_options(pl)
    _lock_options(pl)
    pl.add_argument("--json", action="store_true", help="print JSON instead of a table")

    from .cli_ops import add_commands

    add_commands(sub)
    from .cli_events import add_commands as add_event_commands

    add_event_commands(sub)
    from .conformance.command import add_command as add_conformance

    add_conformance(sub)
    from .cli_dashboard import add_command as add_dashboard

    add_dashboard(sub)
    return p


# -- running ---------------------------------------------------------------------------------
def load_app(spec: str) -> Machinery:
    """Import ``package.module:attr`` (``attr`` defaults to ``app``)."""
    module_name, _, attr = spec.partition(":")
    if not module_name:
        raise ConfigError(f"-A {spec!r}: give the app as package.module:attribute")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"cannot import {module_name!r}: {e}") from e
    attr = attr or "app"
    if not hasattr(module, attr):
        raise ConfigError(f"module {module_name!r} has no attribute {attr!r}")
    obj = getattr(module, attr)
    if not isinstance(obj, Machinery):
        raise ConfigError(f"{spec!r} is not a machinery_compat.Machinery app (got {obj!r})")
    return obj


def expand_hostname(name: str) -> str:
    """Celery's hostname placeholders: ``%h`` host name, ``%n`` its first label, ``%d`` the
    rest (domain), ``%%`` a percent sign."""
    host = socket.gethostname()
    short, _, domain = host.partition(".")
    out: list[str] = []
    i = 0
    while i < len(name):
        c = name[i]
        if c == "%" and i + 1 < len(name) and name[i + 1] in "hnd%":
            out.append({"h": host, "n": short, "d": domain, "%": "%"}[name[i + 1]])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def configure_logging(loglevel: str, logfile: str | None) -> None:
    """Log to stderr, or append to ``logfile``."""
    if logfile is not None:
        try:
            handler: logging.Handler = logging.FileHandler(logfile, encoding="utf-8")
        except OSError as e:
            raise UsageError(f"--logfile {logfile}: {e.strerror or e}") from e
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.basicConfig(level=loglevel.upper(), handlers=[handler], force=True)


def banner(args: WorkerArgs, app: Machinery, hostname: str, queues: Sequence[str],
           concurrency: int) -> str:
    """The startup summary (passwords in URLs masked)."""
    pool = f"{concurrency} (solo: one task at a time)" if args.pool == "solo" else \
        f"{concurrency} ({args.pool})"
    if args.processes > 1 or args.pool == "processes":
        from .worker.processes import split

        shares = split(concurrency, max(args.processes, 1) if args.pool != "processes"
                       else concurrency)
        pool = (f"{concurrency} in {len(shares)} processes "
                f"({' + '.join(map(str, shares))} threads)")

    tasks = sorted(app.tasks)
    rows = [
        ("app", args.app),
        ("hostname", hostname),
        ("broker", mask_url(app.config.broker)),
        ("results", mask_url(app.config.result_backend) or "(none)"),
        ("queues", ", ".join(queues)),
        ("concurrency", pool),
    ]
    lines = [f"machinery-compat {__version__} worker"]
    lines += [f"  {key + ':':<13}{value}" for key, value in rows]
    lines.append(f"  {'tasks:':<13}({len(tasks)})")
    lines += [f"    . {name}" for name in tasks]
    if args.beat:
        periodic = list(app.periodic_tasks)
        lines.append(f"  {'periodic:':<13}({len(periodic)}, fired here: -B)")
        lines += [f"    . {t.name} [{t.spec}] {t.describe()}" for t in periodic]
    return "\n".join(lines)


def run_worker(args: WorkerArgs) -> int:
    """Load the app and run a worker until SIGINT/SIGTERM; returns the exit status."""
    concurrency = args.concurrency
    processes = args.processes
    if args.pool == "solo":
        if concurrency > 1:
            raise UsageError(f"-P solo runs one task at a time; drop -c {concurrency}")
        if processes > 1:
            raise UsageError("-P solo is one process running one task at a time; use "
                             f"--processes {processes} -c {processes} for {processes} "
                             "processes of one task each")
        concurrency = 1
    if args.pool == "processes":  # Celery's prefork: -c processes, one task at a time each
        if processes > 1:
            raise UsageError("-P processes starts one process per -c; give -c (or use "
                             "--processes N with -P threads), not both")
        concurrency = concurrency or 2 * (os.cpu_count() or 1)
        processes = concurrency
    if args.pool == "asyncio" and processes > 1:
        raise UsageError("-P asyncio runs one event loop in one process; drop --processes")
    if processes > 1:
        concurrency = concurrency or 2 * (os.cpu_count() or 1)
        if concurrency < processes:
            raise UsageError(f"-c {concurrency} is less than --processes {processes}: -c is "
                             "the total number of tasks at once, split across the processes")
    configure_logging(args.loglevel, args.logfile)
    app = load_app(args.app)
    if args.config:
        app.config = Config.from_yaml(args.config)
    hostname = expand_hostname(args.hostname) if args.hostname is not None else None
    options: dict[str, Any] = {}
    if hostname is not None and _worker_takes_hostname():
        options["hostname"] = hostname
    if args.max_message_size is not None:
        options["max_message_size"] = args.max_message_size
    if args.max_memory is not None:
        options["max_memory"] = args.max_memory
    if args.pool == "asyncio":
        options["pool"] = "asyncio"
    if args.cpu_affinity is not None:
        from .worker.affinity import parse_cpus

        try:
            options["cpu_affinity"] = parse_cpus(args.cpu_affinity)
        except ConfigError as e:
            raise UsageError(f"--cpu-affinity: {e}") from e
    if processes > 1:
        return _run_processes(args, app, processes, concurrency, hostname, options)
    try:
        worker = app.worker(concurrency=concurrency, queues=list(args.queues) or None, **options)
    except ValueError as e:  # e.g. an empty queue name in the config's default_queue
        raise UsageError(str(e)) from e
    if hostname is not None and getattr(worker, "hostname", None) is None:
        setattr(worker, "hostname", hostname)  # noqa: B010 - its heartbeat shows the name
    _ = app.broker, app.backend  # a bad URL fails here, before the banner
    if args.metrics_port is not None:
        from .events.metrics import serve_metrics

        serve_metrics(app, args.metrics_port, args.metrics_address)
    scheduler = _scheduler(app, args.lock, args.lock_program) if args.beat else None
    shown = getattr(worker, "hostname", None) or hostname or f"{os.getpid()}@{socket.gethostname()}"
    logger.info("%s", banner(args, app, shown, worker.queues, worker.concurrency))
    if scheduler is None:
        worker.run()
    else:
        scheduler.start()
        try:
            worker.run()
        finally:
            scheduler.stop()
    if getattr(worker, "memory_exceeded", False):
        _restart(args.max_memory)
    return 0


def _run_processes(args: WorkerArgs, app: Machinery, processes: int, concurrency: int,
                   hostname: str | None, options: dict[str, Any]) -> int:
    """``--processes N``: N forked workers sharing ``concurrency``, supervised here (-B fires
    the periodic tasks in the first one only)."""
    from .worker.processes import EXIT_MEMORY, WorkerProcesses

    queues = list(args.queues) or None
    _ = app.broker, app.backend  # a bad URL fails here, before the banner
    scheduler = _scheduler(app, args.lock, args.lock_program) if args.beat else None

    def child_main(index: int, share: int) -> int:
        if args.metrics_port is not None:
            from .events.metrics import serve_metrics

            serve_metrics(app, args.metrics_port + index, args.metrics_address)
        worker = app.worker(concurrency=share, queues=queues, **supervisor.options_for(index))
        if hostname is not None and getattr(worker, "hostname", None) is None:
            setattr(worker, "hostname", hostname)  # noqa: B010 - its heartbeat shows the name
        if scheduler is None or index != 0:
            worker.run()
        else:
            scheduler.start()
            try:
                worker.run()
            finally:
                scheduler.stop()
        return EXIT_MEMORY if worker.memory_exceeded else 0

    try:
        supervisor = WorkerProcesses(app, processes, concurrency=concurrency, queues=queues,
                                     child_main=child_main, **options)
    except ValueError as e:
        raise UsageError(str(e)) from e
    shown = hostname or f"{os.getpid()}@{socket.gethostname()}"
    logger.info("%s", banner(args, app, shown, supervisor.queues, supervisor.concurrency))
    supervisor.run()
    return 0


def _restart(limit: int | None) -> NoReturn:
    """Start this command afresh in this process (``--max-memory``)."""
    argv = [sys.executable, "-m", "machinery_compat", *sys.argv[1:]]
    logger.warning("worker stopped past --max-memory %s KiB: restarting (%s)", limit,
                   " ".join(argv[1:]))
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.execv(sys.executable, argv)


def _scheduler(app: Machinery, lock: str | None, program: str | None) -> Scheduler:
    from .periodic import Scheduler

    return Scheduler(app, lock=lock, program=program)


def _load(spec: str, config: str | None) -> Machinery:
    app = load_app(spec)
    if config:
        app.config = Config.from_yaml(config)
    return app


def run_beat(args: BeatArgs) -> int:
    """Load the app and fire its periodic tasks until SIGINT/SIGTERM."""
    from .periodic.commands import run_beat as beat

    configure_logging(args.loglevel, args.logfile)
    app = _load(args.app, args.config)
    logger.info("machinery-compat %s beat: app %s, %d periodic task(s): %s", __version__,
                args.app, len(app.periodic_tasks),
                ", ".join(f"{t.name} [{t.spec}]" for t in app.periodic_tasks) or "-")
    return beat(app, lock=args.lock, program=args.lock_program)


def run_periodic_list(args: PeriodicListArgs) -> int:
    """Print the app's periodic tasks (table or JSON)."""
    from .periodic.commands import format_json, format_table, periodic_rows

    logging.basicConfig(level="WARNING", stream=sys.stderr, format=LOG_FORMAT)
    app = _load(args.app, args.config)
    rows = periodic_rows(app, lock=args.lock, program=args.lock_program)
    print(format_json(rows) if args.json else format_table(rows))
    return 0


def create_dynamodb_tables(ns: argparse.Namespace) -> int:
    """Create (or check) the DynamoDB result backend's tables; prints one line per table."""
    from .backends.dynamodb import create_tables
    from .config import DynamoDBConfig

    cfg = Config.from_yaml(ns.config) if ns.config else Config.from_env()
    dynamodb = cfg.dynamodb or DynamoDBConfig()
    if ns.endpoint_url is not None:
        dynamodb.endpoint_url = ns.endpoint_url
    if ns.region is not None:
        dynamodb.region = ns.region
    for r in create_tables(dynamodb, task_states_table=ns.task_states_table,
                           group_metas_table=ns.group_metas_table, ttl=not ns.no_ttl):
        print(f"{r.name}: {'created' if r.created else 'exists'}, hash key {r.key} (S)"
              + (", TTL on attribute TTL" if r.ttl_enabled else ""))
    return 0


def _worker_takes_hostname() -> bool:
    """Whether this Worker has the ``hostname=`` parameter (being added alongside this CLI);
    until it has, ``-n`` names the worker in the banner only."""
    from .worker import Worker

    return "hostname" in inspect.signature(Worker).parameters


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    try:
        if ns.command == "worker":
            return run_worker(WorkerArgs.from_namespace(ns))
        if ns.command == "beat":
            return run_beat(BeatArgs.from_namespace(ns))
        if ns.command == "periodic" and ns.periodic_command == "list":
            return run_periodic_list(PeriodicListArgs.from_namespace(ns))
        if ns.command == "create-dynamodb-tables":
            return create_dynamodb_tables(ns)
        if ns.command == "conformance":
            from .conformance.command import run as run_conformance

            logging.basicConfig(level="WARNING", stream=sys.stderr, format=LOG_FORMAT)
            return run_conformance(ns)
        from .cli_ops import COMMANDS, run

        if ns.command in COMMANDS:
            logging.basicConfig(level="WARNING", stream=sys.stderr, format=LOG_FORMAT)
            return run(ns)
        if ns.command == "dashboard":
            from . import cli_dashboard

            logging.basicConfig(level="WARNING", stream=sys.stderr, format=LOG_FORMAT)
            return cli_dashboard.run(ns)
        from . import cli_events

        if ns.command in cli_events.COMMANDS:
            logging.basicConfig(level="WARNING", stream=sys.stderr, format=LOG_FORMAT)
            return cli_events.run(ns)
    except (ConfigError, UsageError, BackendError) as e:
        print(f"machinery-compat: error: {_one_line(str(e))}", file=sys.stderr)
        return 2
    return 2
