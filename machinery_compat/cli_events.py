"""``machinery-compat events`` and ``machinery-compat stats`` (see ``docs/events.md``).

* ``events -A mod:app [--json] [--follow] [--limit N] [--since SECONDS] [--timeout S]``:
  the newest events kept (default 100), oldest first, one line each (``--json``: one JSON
  object a line, the event's own keys); ``--follow`` then prints new ones as they come until
  Ctrl-C (or ``--timeout`` seconds without one);
* ``stats -A mod:app [--json] [--limit N]``: :func:`machinery_compat.events.stats`, as tables
  (queues, task names, workers, task states) or JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime
from typing import Any

COMMANDS = ("events", "stats")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-A", "--app", default=None, metavar="MODULE[:ATTR]",
                   help="the app to load, as package.module:attribute (attribute defaults to "
                        "'app'); optional with --config")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="Machinery YAML config file (the one Go workers read); overrides the app's")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {n}")
    return n


def add_commands(sub: Any) -> None:
    """Add ``events`` and ``stats`` to the ``machinery-compat`` subparsers ``sub``."""
    p = sub.add_parser(
        "events", help="task and worker events (Python workers and producers)",
        description="Print the task and worker events kept (Python workers always emit them, "
                    "producers with MACHINERY_COMPAT_SEND_EVENTS=1; Go workers emit none), "
                    "oldest first; --follow keeps printing new ones.")
    _common(p)
    p.add_argument("--follow", "-f", action="store_true",
                   help="after the kept events, print new ones as they come (Ctrl-C stops)")
    p.add_argument("--limit", type=_positive, default=100, metavar="N",
                   help="the newest N events kept (default 100)")
    p.add_argument("--since", type=float, default=None, metavar="SECONDS",
                   help="only events of the last SECONDS seconds")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="with --follow: stop after SECONDS without an event")
    s = sub.add_parser(
        "stats", help="counts per queue and task, queue depths, runtimes, workers",
        description="Counts per queue and task name from the events kept (Python workers and "
                    "producers), queue depths and the delayed count from the broker and task "
                    "states from a Redis result backend (Go's traffic included), runtime "
                    "percentiles, live Python workers.")
    _common(s)
    s.add_argument("--limit", type=_positive, default=None, metavar="N",
                   help="count only the newest N events (default: all kept)")


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def event_line(e: Any) -> str:
    """One event as a text line."""
    parts = [_when(e.timestamp), e.type]
    if e.type.startswith("worker-"):
        parts.append(e.hostname)
        extra = e.extra or {}
        parts += [f"{k}={extra[k]}" for k in ("pid", "processed", "active", "dropped")
                  if k in extra]
        return "  ".join(str(p) for p in parts)
    parts += [e.name or "-", e.uuid or "-", e.queue or "-", e.hostname or "-"]
    if e.runtime is not None:
        parts.append(f"runtime={e.runtime:.6f}s")
    if e.retries is not None:
        parts.append(f"retries={e.retries}")
    if e.eta:
        parts.append(f"eta={e.eta}")
    if e.exception:
        parts.append(f"error={e.exception!r}")
    if e.reason:
        parts.append(f"reason={e.reason!r}")
    return "  ".join(parts)


def _print_event(e: Any, as_json: bool) -> None:
    print(e.to_json() if as_json else event_line(e), flush=True)


def run_events(app: Any, ns: argparse.Namespace) -> int:
    from .events import events, history

    since = time.time() - ns.since if ns.since is not None else None
    kept = history(app, since=since, limit=ns.limit)
    if not ns.follow:
        for e in kept:
            _print_event(e, ns.json)
        return 0
    # from the oldest event shown on, history then new ones through one tail (no gap)
    start = kept[0].timestamp if kept else (since if since is not None else time.time())
    for e in events(app, since=start, timeout=ns.timeout):
        _print_event(e, ns.json)
    return 0


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    from .ops.render import table

    return table(headers, rows)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


COUNT_KEYS = ("enqueued", "received", "started", "succeeded", "failed", "retried",
              "dead_lettered")


def run_stats(app: Any, ns: argparse.Namespace) -> int:
    from .events import stats

    info = stats(app, limit=ns.limit)
    if ns.json:
        print(json.dumps(info, indent=2, sort_keys=False, default=str))
        return 0
    ev = info["events"]
    if ev.get("store") is None:
        print(f"events: none kept ({ev.get('note')})")
    else:
        span = (f", {_when(ev['first'])} to {_when(ev['last'])}" if ev["count"] else "")
        print(f"events: {ev['count']} kept in {ev['store']}{span} (Python workers and "
              "producers only: Go sends none)")
    print(f"broker: {info['broker']}; delayed: {_fmt(info['delayed'])}\n")
    print(_table(["queue", "depth", *COUNT_KEYS],
                 [[q, _fmt(c.get("depth")), *(c.get(k, 0) for k in COUNT_KEYS)]
                  for q, c in info["queues"].items()]))
    print()
    rows = []
    for name, c in info["tasks"].items():
        rt = c.get("runtime") or {}
        rows.append([name, *(c.get(k, 0) for k in COUNT_KEYS),
                     *(_fmt(rt.get(k)) for k in ("p50", "p90", "p99"))])
    print(_table(["task", *COUNT_KEYS, "p50 s", "p90 s", "p99 s"], rows))
    print()
    workers = info["workers"]
    if workers:
        print(_table(["worker", "pid", "queues", "concurrency", "processed", "last event"],
                     [[w["hostname"], w.get("pid"), ",".join(w.get("queues") or ()),
                       w.get("concurrency"), w.get("processed"), _when(w["timestamp"])]
                      for w in workers]))
    else:
        print("workers: none seen in the events (Python workers only)")
    states = info.get("states")
    if states is not None:
        counts = ", ".join(f"{k} {v}" for k, v in states["counts"].items()) or "none"
        more = "" if states["complete"] else f" (first {states['scanned']} keys only)"
        print(f"\ntask states in the result backend (everyone's, Go's included): {counts}{more}")
    return 0


def run(ns: argparse.Namespace) -> int:
    """Run ``events`` or ``stats``; returns the exit status."""
    from .cli_ops import load

    app = load(ns)
    try:
        handler = run_events if ns.command == "events" else run_stats
        try:
            return handler(app, ns)
        except KeyboardInterrupt:
            return 0
    finally:
        app.close()
