"""What the dashboard shows, gathered from what the library already reads: the broker's
operator commands (:mod:`machinery_compat.ops`: depths, delayed count, dead letters), the
worker heartbeats (:mod:`machinery_compat.ops.heartbeat`), the events kept
(:mod:`machinery_compat.events`), the result backend (task states, group metas, stored
signatures) and the periodic schedule (:mod:`machinery_compat.periodic.commands`).

Every part is read on its own: a part that fails (a broker without operator commands, a
stack that keeps no events) becomes a line in ``notes`` and the rest is still shown.
Blocking I/O: the ASGI app calls these in a thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from .._redis import mget_all
from ..events.model import DEAD_LETTERED, FAILED, RETRIED, STARTED, SUCCEEDED, Event
from ..exceptions import MachineryCompatError
from ..protocol import Signature, TaskState
from . import charts

logger = logging.getLogger(__name__)

#: task-state keys a Redis result backend is scanned for at most, per refresh
STATE_SCAN_LIMIT: Final = 5_000
#: the keys of task states (Machinery's and this library's task and chord-callback ids)
STATE_KEY_PATTERNS: Final = ("task_*", "chord_*")
#: dead letters listed per queue
DEAD_LIMIT: Final = 50
#: the newest events read per refresh
EVENTS_LIMIT: Final = 5_000
#: longest argument / result / error text shown in a table cell
CELL_TEXT: Final = 200

_T = TypeVar("_T")


@dataclass
class Settings:
    """What one dashboard watches."""

    #: queues to show besides the app's default queue and those seen in events/heartbeats
    #: (Go workers' queues: they publish nothing, name them here)
    queues: Sequence[str] = ()
    #: recent tasks shown
    tasks_limit: int = 50
    #: chart buckets and their width in seconds
    buckets: int = 20
    bucket_seconds: float = 30.0
    #: extra delay queues to count (SQS), as ``inspect delayed --delay-queue``
    delay_queues: Sequence[str] = field(default_factory=tuple)


def _kinds(obj: Any) -> set[str]:
    return {c.__name__ for c in type(obj).__mro__}


def clip(text: str, n: int = CELL_TEXT) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def value_text(value: Any) -> str:
    """A decoded argument or result as text: strings quoted, numbers as the JSON had them."""
    return repr(value) if isinstance(value, (str, bytes)) else str(value)


def args_text(sig: Signature | None) -> str | None:
    """``int64:1, string:'a'`` (None: the arguments are not known)."""
    if sig is None:
        return None
    return clip(", ".join(f"{a.type}:{value_text(a.value)}" for a in sig.args or ()))


def results_text(state: TaskState | None) -> str:
    if state is None or not state.results:
        return ""
    return clip(", ".join(f"{r.type}:{value_text(r.value)}" for r in state.results))


def _try(notes: list[str], what: str, fn: Callable[[], _T]) -> _T | None:
    """``fn()``, or None with a note saying what failed."""
    try:
        return fn()
    except (MachineryCompatError, OSError) as e:
        notes.append(f"{what}: {e}")
    except Exception as e:  # a client error no broker/backend translated
        logger.warning("dashboard: %s failed", what, exc_info=True)
        notes.append(f"{what}: {type(e).__name__}: {e}")
    return None


# -- the parts -------------------------------------------------------------------------------
def read_events(app: Any, limit: int = EVENTS_LIMIT) -> list[Event]:
    from ..events import history

    return history(app, limit=limit)


def read_workers(app: Any) -> list[dict[str, Any]] | None:
    from ..ops.heartbeat import list_workers

    return list_workers(app)


def queue_names(app: Any, settings: Settings, events: Iterable[Event] = (),
                workers: Iterable[dict[str, Any]] = ()) -> list[str]:
    names = {app.config.default_queue, *settings.queues}
    names.update(e.queue for e in events if e.queue)
    for w in workers:
        names.update(str(q) for q in w.get("queues") or ())
    return sorted(n for n in names if n)


def read_queues(app: Any, names: Sequence[str], settings: Settings
                ) -> tuple[list[dict[str, Any]], int | None, str, dict[str, list[dict[str, Any]]]]:
    """Rows (queue, depth, dead, dead_place), the delayed count, the broker kind and each
    queue's dead letters (summaries, newest :data:`DEAD_LIMIT`)."""
    from ..ops import Unsupported, broker_ops

    ops = broker_ops(app.broker)
    try:
        rows: list[dict[str, Any]] = []
        dead: dict[str, list[dict[str, Any]]] = {}
        for q in names:
            place = ops.dead_place(q)
            row = {"queue": q, "depth": ops.depth(q).messages, "dead_place": place,
                   "dead": ops.depth(place).messages}
            rows.append(row)
            if row["dead"]:
                dead[q] = [m.summary() for m in ops.dead_list(q, DEAD_LIMIT)]
        try:
            delayed = ops.delayed_count(settings.delay_queues or
                                        (names if ops.kind == "sqs" else ()))
        except Unsupported:
            delayed = None
        return rows, delayed, ops.kind, dead
    finally:
        ops.close()


def _scan_states(backend: Any, limit: int) -> list[TaskState]:
    """The task states a Redis result backend keeps under the ids Machinery and this library
    make (``task_…``, chord callbacks' ``chord_…``); at most ``limit`` keys."""
    client = backend.client
    keys: list[Any] = []
    for pattern in STATE_KEY_PATTERNS:
        for key in client.scan_iter(match=pattern, count=1000, _type="string"):
            k = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
            if "." in k:  # <uuid>.sig, <uuid>.exc: not states
                continue
            keys.append(key)
            if len(keys) >= limit:
                break
    out: list[TaskState] = []
    for i in range(0, len(keys), 500):
        for raw in mget_all(client, keys[i:i + 500]):
            if raw is None:
                continue
            try:
                out.append(TaskState.from_json(raw))
            except (MachineryCompatError, ValueError):
                continue
    return out


def recent_tasks(app: Any, events: Sequence[Event], limit: int) -> list[dict[str, Any]]:
    """The newest tasks: those of the events (Python's) and, on a Redis result backend,
    every state kept (everyone's, Go's included), newest first."""
    backend = app.backend
    seen: dict[str, dict[str, Any]] = {}
    for e in events:  # oldest first: the last event of a task wins
        if not e.uuid or not e.type.startswith("task-"):
            continue
        row = seen.setdefault(e.uuid, {"uuid": e.uuid, "name": e.name, "state": None,
                                       "when": e.timestamp, "error": "", "runtime": None,
                                       "queue": e.queue, "last_event": e.type})
        row["when"] = max(row["when"], e.timestamp)
        row["last_event"] = e.type
        row["name"] = row["name"] or e.name
        if e.runtime is not None:
            row["runtime"] = e.runtime
        if e.exception or e.reason:
            row["error"] = clip(e.exception or e.reason)
    states: dict[str, TaskState] = {}
    if "RedisBackend" in _kinds(backend):
        for kept in _scan_states(backend, STATE_SCAN_LIMIT):
            states[kept.task_uuid] = kept
            if kept.task_uuid not in seen:
                when = kept.created_at.timestamp() if not kept.created_at.is_zero() else 0.0
                seen[kept.task_uuid] = {"uuid": kept.task_uuid, "name": kept.task_name,
                                      "state": None, "when": when, "error": "",
                                      "runtime": None, "queue": "", "last_event": ""}
    rows = sorted(seen.values(), key=lambda r: r["when"], reverse=True)[:limit]
    missing = [r["uuid"] for r in rows if r["uuid"] not in states]
    if missing:
        for uuid, got in zip(missing, backend.get_states(missing), strict=True):
            if got is not None:
                states[uuid] = got
    for r in rows:
        st = states.get(r["uuid"])
        if st is not None:
            r["state"] = st.state
            r["name"] = r["name"] or st.task_name
            r["result"] = results_text(st)
            r["error"] = clip(st.error) if st.error else r["error"]
        else:
            r["state"] = _state_of_event(r["last_event"])
            r["result"] = ""
    _add_args(app, rows)
    return rows


def _state_of_event(kind: str) -> str:
    return {STARTED: "STARTED", SUCCEEDED: "SUCCESS", FAILED: "FAILURE", RETRIED: "RETRY",
            DEAD_LETTERED: "DEAD"}.get(kind, "PENDING" if kind else "")


def _add_args(app: Any, rows: list[dict[str, Any]]) -> None:
    """``args`` of each row from its stored signature (``store_signatures``), if any."""
    from ..ops.signatures import load_raw, supported

    if not rows or not supported(app.backend):
        for r in rows:
            r["args"] = None
        return
    for r in rows:
        try:
            raw = load_raw(app.backend, r["uuid"])
            r["args"] = args_text(Signature.from_json(raw)) if raw is not None else None
        except (MachineryCompatError, ValueError):
            r["args"] = None


def read_periodic(app: Any) -> list[dict[str, Any]]:
    if not len(app.periodic_tasks):
        return []
    from ..periodic.commands import periodic_rows

    return periodic_rows(app)


# -- everything ------------------------------------------------------------------------------
def overview(app: Any, settings: Settings, now: float | None = None) -> dict[str, Any]:
    """Everything the main page shows (JSON-able): ``queues``, ``delayed``, ``broker``,
    ``dead`` (per queue), ``workers`` (``None``: this stack keeps no heartbeats), ``tasks``,
    ``charts``, ``periodic``, ``events`` (count kept, ``None``: none kept), ``notes``."""
    notes: list[str] = []
    clock = time.time() if now is None else now
    events = _try(notes, "events", lambda: read_events(app))
    workers = _try(notes, "workers", lambda: read_workers(app))
    names = queue_names(app, settings, events or (), workers or ())
    got = _try(notes, "queues", lambda: read_queues(app, names, settings))
    queues, delayed, broker, dead = got if got is not None else ([], None, "", {})
    tasks = _try(notes, "tasks", lambda: recent_tasks(app, events or [], settings.tasks_limit))
    periodic = _try(notes, "periodic tasks", lambda: read_periodic(app))
    series = charts.series(events or (), clock, settings.buckets, settings.bucket_seconds)
    return {"generated": clock, "broker": broker, "queues": queues, "delayed": delayed,
            "dead": dead, "workers": workers, "tasks": tasks or [], "periodic": periodic or [],
            "charts": series, "events": None if events is None else len(events),
            "notes": notes}


def known_queues(app: Any, settings: Settings) -> list[str]:
    """The queues the dashboard may requeue or purge dead letters of."""
    notes: list[str] = []
    events = _try(notes, "events", lambda: read_events(app))
    workers = _try(notes, "workers", lambda: read_workers(app))
    return queue_names(app, settings, events or (), workers or ())


def task_detail(app: Any, task_id: str) -> dict[str, Any] | None:
    """One task: its state, result or error, signature (when stored), callbacks, group and
    chord, and its events; ``None`` when nothing at all is known of it."""
    from ..ops.signatures import load_raw, supported

    notes: list[str] = []
    backend = app.backend
    state: TaskState | None = _try(notes, "state", lambda: backend.get_state(task_id))
    sig: Signature | None = None
    if supported(backend):
        raw = _try(notes, "signature", lambda: load_raw(backend, task_id))
        if raw is not None:
            sig = _try(notes, "signature", lambda: Signature.from_json(raw))
    kept = _try(notes, "events", lambda: read_events(app)) or []
    events = [e for e in kept if e.uuid == task_id]
    if state is None and sig is None and not events:
        return None
    out: dict[str, Any] = {
        "uuid": task_id, "name": (state.task_name if state else "") or (sig.name if sig else "")
        or next((e.name for e in events if e.name), ""),
        "state": state.state if state else None,
        "created_at": state.created_at.isoformat() if state and not state.created_at.is_zero()
        else None,
        "results": [{"type": r.type, "value": value_text(r.value)} for r in state.results or ()]
        if state else [],
        "error": state.error if state else "",
        "signature": _signature_dict(sig) if sig else None,
        "events": [e.to_dict() for e in events],
        "group": None, "notes": notes,
    }
    group_uuid = sig.group_uuid if sig else ""
    if group_uuid:
        out["group"] = _try(notes, "group", lambda: _group(backend, group_uuid))
    return out


def _signature_dict(sig: Signature) -> dict[str, Any]:
    def brief(s: Signature) -> dict[str, Any]:
        return {"uuid": s.uuid, "name": s.name, "args": args_text(s)}

    return {"args": args_text(sig), "routing_key": sig.routing_key,
            "eta": sig.eta.isoformat() if sig.eta is not None else None,
            "retry_count": sig.retry_count, "group_uuid": sig.group_uuid,
            "group_task_count": sig.group_task_count,
            "on_success": [brief(s) for s in sig.on_success or ()],
            "on_error": [brief(s) for s in sig.on_error or ()],
            "chord_callback": brief(sig.chord_callback) if sig.chord_callback else None}


def _group(backend: Any, group_uuid: str) -> dict[str, Any] | None:
    meta = backend.get_group_meta(group_uuid)
    if meta is None:
        return {"uuid": group_uuid, "members": [], "chord_triggered": None}
    states = backend.get_states(meta.task_uuids)
    return {"uuid": group_uuid, "chord_triggered": meta.chord_triggered,
            "members": [{"uuid": u, "state": st.state if st else None,
                         "name": st.task_name if st else ""}
                        for u, st in zip(meta.task_uuids, states, strict=True)]}
