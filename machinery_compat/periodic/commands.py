"""What ``machinery-compat beat`` and ``machinery-compat periodic list`` do, as plain functions
(:mod:`machinery_compat.cli` parses the command line and calls them).

``periodic list`` shows, for each periodic task of the app: its name, spec, target, next fire
time, lock key and who holds the lock now:

* ``free``: nobody holds this period (the next scheduler to fire takes it);
* ``python host:pid``: a Python scheduler (its holder key matches the lock value);
* ``another scheduler (Go?)``: a lock value no Python scheduler wrote: a Go scheduler with
  the same program name, or an older Python one.

The next fire time is the lock's (the holder's next activation) while it is held, else what
the spec gives from now; for ``@every`` specs, whose periods count from each scheduler's
start, it is marked approximate (``~``) when no lock says better.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from . import _go
from .cron import EverySchedule
from .lock import PeriodicLock
from .scheduler import Scheduler, create_lock

if TYPE_CHECKING:
    from ..app import Machinery

_COLUMNS = (("name", "NAME"), ("spec", "SPEC"), ("target", "TARGET"), ("next", "NEXT FIRE"),
            ("in", "IN"), ("holder", "LOCK HOLDER"))


def run_beat(app: Machinery, *, lock: str | None = None, program: str | None = None) -> int:
    """Fire ``app``'s periodic tasks until SIGINT/SIGTERM; the exit status."""
    scheduler = Scheduler(app, lock=lock, program=program)
    if not len(app.periodic_tasks):
        import logging

        logging.getLogger(__name__).warning(
            "the app has no periodic tasks (app.periodic(...)); waiting for some")
    scheduler.run()
    return 0


def _rfc3339(ns: int) -> str:
    return _go.unix_to_datetime(ns, _go.local()).isoformat(timespec="seconds")


def _in(ns: int, now: int) -> str:
    secs = max(0, (ns - now) // 1_000_000_000)
    days, secs = divmod(secs, 86400)
    hours, secs = divmod(secs, 3600)
    minutes, secs = divmod(secs, 60)
    parts = [f"{days}d"] if days else []
    parts += [f"{hours}h"] if hours or days else []
    parts += [f"{minutes}m"] if minutes or hours or days else []
    return "".join(parts) + f"{secs}s"


def periodic_rows(app: Machinery, *, lock: PeriodicLock | str | None = None,
                  program: str | None = None, now_ns: int | None = None) -> list[dict[str, Any]]:
    """One dict per periodic task (sorted by name): ``name``, ``spec``, ``kind``,
    ``target``, ``next_fire`` (RFC 3339, local time; None: never), ``next_fire_ns``,
    ``next_fire_approximate``, ``lock_key``, ``lock`` (``state``, ``value``, ``ttl_ms``,
    ``holder``)."""
    program = program or app.periodic_tasks.program
    lk = lock if isinstance(lock, PeriodicLock) else create_lock(app.config, lock,
                                                                 program=program)
    now = now_ns if now_ns is not None else time.time_ns()
    rows: list[dict[str, Any]] = []
    try:
        for task in sorted(app.periodic_tasks, key=lambda t: t.name):
            key = task.key(program)
            try:
                state = lk.state(key)
                lock_error = None
            except Exception as e:  # Redis down: still list the schedule
                state, lock_error = None, str(e)
            nxt = task.schedule.next(now)
            approximate = isinstance(task.schedule, EverySchedule)
            if state is not None and state.held and state.value is not None:
                nxt, approximate = state.value + 1, False
            rows.append({
                "name": task.name,
                "spec": task.spec,
                "kind": task.kind,
                "target": task.describe(),
                "next_fire": _rfc3339(nxt) if nxt is not None else None,
                "next_fire_ns": nxt,
                "next_fire_approximate": approximate,
                "lock_key": key,
                "lock": {
                    "state": (state.describe() if state is not None
                              else f"unknown ({lock_error})"),
                    "value": state.value if state is not None else None,
                    "ttl_ms": state.ttl_ms if state is not None else None,
                    "holder": state.holder if state is not None else None,
                },
            })
    finally:
        if lk is not lock:
            lk.close()
    return rows


def format_table(rows: Sequence[dict[str, Any]], now_ns: int | None = None) -> str:
    """``periodic list``'s table."""
    if not rows:
        return "no periodic tasks (register some with app.periodic(...))"
    now = now_ns if now_ns is not None else time.time_ns()
    cells: list[dict[str, str]] = []
    for r in rows:
        nxt = r["next_fire_ns"]
        mark = "~" if r["next_fire_approximate"] else ""
        cells.append({
            "name": r["name"],
            "spec": r["spec"],
            "target": r["target"] if len(r["target"]) <= 40 else r["target"][:39] + "…",
            "next": (mark + r["next_fire"]) if nxt is not None else "never",
            "in": (mark + _in(nxt, now)) if nxt is not None else "-",
            "holder": r["lock"]["state"],
        })
    widths = {k: max(len(title), *(len(c[k]) for c in cells)) for k, title in _COLUMNS}
    lines = ["  ".join(title.ljust(widths[k]) for k, title in _COLUMNS).rstrip()]
    lines += ["  ".join(c[k].ljust(widths[k]) for k, _ in _COLUMNS).rstrip() for c in cells]
    return "\n".join(lines)


def format_json(rows: Sequence[dict[str, Any]]) -> str:
    """``periodic list --json``: the rows, with the time they were computed."""
    return json.dumps({"now": datetime.now().astimezone().isoformat(timespec="seconds"),
                       "periodic_tasks": list(rows)}, indent=2, ensure_ascii=False)


__all__ = ["format_json", "format_table", "periodic_rows", "run_beat"]
