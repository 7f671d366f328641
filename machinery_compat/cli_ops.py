"""The operator commands of ``machinery-compat`` (wired into :mod:`machinery_compat.cli`)::

    machinery-compat inspect pending [QUEUE] [--limit N]
    machinery-compat inspect delayed [--delay-queue NAME ...]
    machinery-compat inspect state TASK_ID
    machinery-compat inspect group GROUP_ID
    machinery-compat purge QUEUE [--force]
    machinery-compat dead list|requeue|purge [QUEUE] [--force]
    machinery-compat stuck [--older-than SECONDS] [--state STATE ...] [--resend [--force]]
    machinery-compat status [-Q QUEUE,...] [--delay-queue NAME ...]

Each takes ``-A module:app`` and/or ``--config FILE`` (the Go worker's YAML) and ``--json``.
Exit status: 0 done; 1 refused (no confirmation), not supported by this broker/backend (one
line says why) or the broker/backend failed; 2 bad options, app or config.  See
``docs/operations.md``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .config import Config, mask_url
from .exceptions import BackendError, BrokerError, ConfigError, MachineryCompatError
from .ops import BrokerOps, Unsupported, broker_ops
from .ops.base import Message, message_json
from .ops.render import table, to_json, when

if TYPE_CHECKING:
    from .app import Machinery
    from .protocol import TaskState

COMMANDS = ("inspect", "purge", "dead", "stuck", "status")
#: the client libraries whose errors are reported in one line (exit status 1)
_CLIENT_MODULES = frozenset({"redis", "botocore", "boto3", "amqp", "kombu"})
DEFAULT_LIMIT = 100


class Refused(MachineryCompatError):
    """The operator did not confirm (exit status 1)."""


# -- parser -----------------------------------------------------------------------------------
def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-A", "--app", default=None, metavar="MODULE[:ATTR]",
                   help="the app to load, as package.module:attribute (attribute defaults to "
                        "'app'); optional with --config")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="Machinery YAML config file (the one Go workers read); overrides the app's")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _limit(p: argparse.ArgumentParser, default: int | None = DEFAULT_LIMIT,
           what: str = "list") -> None:
    p.add_argument("--limit", type=int, default=default if default is not None else 2**62,
                   metavar="N", help=f"{what} at most N messages (default "
                                     f"{default if default is not None else 'all'})")


def _delay_queues(p: argparse.ArgumentParser) -> None:
    p.add_argument("--delay-queue", dest="delay_queues", action="append", default=[],
                   metavar="NAME",
                   help="AMQP only: a delay queue to look into (RabbitMQ cannot list queues "
                        "over AMQP); repeatable")


def _queues(value: str) -> list[str]:
    names = [q.strip() for q in value.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"empty queue name in {value!r}")
    return names


def add_commands(sub: Any) -> None:
    """Add the operator commands to the ``machinery-compat`` subparsers ``sub``."""
    ins = sub.add_parser("inspect", help="list queued or delayed messages, a task's state, a "
                                         "group's states")
    ins_sub = ins.add_subparsers(dest="inspect_command", required=True, metavar="WHAT")
    p = ins_sub.add_parser("pending", help="messages waiting in a queue (left there)",
                           description="List the messages waiting in QUEUE (default: the "
                                       "config's default_queue), head first, without taking them.")
    p.add_argument("queue", nargs="?", default=None, metavar="QUEUE",
                   help="default: the config's default_queue")
    _common(p)
    _limit(p)
    p = ins_sub.add_parser("delayed", help="messages waiting for their ETA (left there)",
                           description="List delayed messages, soonest first: Redis's "
                                       "delayed_tasks set, AMQP delay queues; not on SQS.")
    _common(p)
    _limit(p)
    _delay_queues(p)
    p = ins_sub.add_parser("state", help="a task's stored state",
                           description="Print a task's state as the result backend holds it "
                                       "(on an AMQP backend, browsed: left for its reader).")
    p.add_argument("task_id", metavar="TASK_ID", help="the task's UUID")
    _common(p)
    p = ins_sub.add_parser("group", help="a group's members and their states",
                           description="Print a group's members and each one's state.")
    p.add_argument("group_id", metavar="GROUP_ID", help="the group's UUID")
    _common(p)

    p = sub.add_parser("purge", help="delete every message waiting in a queue",
                       description="Delete every message waiting in QUEUE, after asking "
                                   "'Purge N messages from QUEUE? [y/N]' (--force: no question).")
    p.add_argument("queue", metavar="QUEUE", help="the queue to empty")
    p.add_argument("-f", "--force", action="store_true", help="do not ask for confirmation")
    _common(p)

    dead = sub.add_parser("dead", help="the dead-letter place of a queue: list, requeue, purge")
    dead_sub = dead.add_subparsers(dest="dead_command", required=True, metavar="ACTION")
    for name, text in (("list", "list the dead-lettered messages of QUEUE (left there)"),
                       ("requeue", "put them back on QUEUE, bytes unchanged"),
                       ("purge", "delete them (asks for confirmation; --force: no question)")):
        p = dead_sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ". "
                                "QUEUE's dead-letter place: Redis list and AMQP queue "
                                "<QUEUE>.dead, SQS queue <QUEUE>-dead.")
        p.add_argument("queue", nargs="?", default=None, metavar="QUEUE",
                       help="default: the config's default_queue")
        _common(p)
        if name == "purge":
            p.add_argument("-f", "--force", action="store_true",
                           help="do not ask for confirmation")
        elif name == "requeue":
            _limit(p, None, "requeue")
        else:
            _limit(p)

    p = sub.add_parser("stuck", help="tasks RECEIVED/STARTED for too long whose message is gone",
                       description="List tasks whose state is RECEIVED or STARTED (--state) "
                                   "and was not written for --older-than seconds, and whose "
                                   "message is nowhere in the broker (Redis). --resend "
                                   "re-sends those whose Signature a store_signatures "
                                   "producer kept.")
    p.add_argument("--older-than", type=float, default=300.0, metavar="SECONDS",
                   help="idle at least this long (default 300)")
    p.add_argument("--state", dest="states", action="append", default=None, metavar="STATE",
                   help="states to look for (default RECEIVED and STARTED); repeatable")
    p.add_argument("--resend", action="store_true",
                   help="re-send each stuck task whose signature was stored (same UUID)")
    p.add_argument("-f", "--force", action="store_true",
                   help="with --resend: also where the broker cannot be searched for the "
                        "message (AMQP, SQS)")
    _common(p)

    p = sub.add_parser("status", help="queue depths, delayed count, live Python workers",
                       description="Queue depths (and their dead-letter places), the delayed "
                                   "count and the live Python workers (their heartbeats; Go "
                                   "workers publish none).")
    p.add_argument("-Q", "--queues", dest="queues", type=_queues, action="append",
                   metavar="QUEUE[,QUEUE...]", help="queues to show (default: default_queue)")
    _common(p)
    _delay_queues(p)


# -- running ----------------------------------------------------------------------------------
def load(ns: argparse.Namespace) -> Machinery:
    from .app import Machinery
    from .cli import load_app

    if ns.app is None and ns.config is None:
        raise ConfigError("give the app (-A module:app) and/or the config file (--config FILE)")
    app = load_app(ns.app) if ns.app is not None else None
    if ns.config:  # replaces the app's config: an app of its own (the loaded one is left as is)
        return Machinery(config=Config.from_yaml(ns.config))
    assert app is not None
    return app


def run(ns: argparse.Namespace) -> int:
    """Run the operator command ``ns`` names; returns the exit status."""
    app = load(ns)
    try:
        handler = _handler(ns)
        try:
            return handler(app, ns)
        except Unsupported as e:
            _err(str(e))
            return 1
        except Refused as e:
            _err(str(e))
            return 1
        except (BrokerError, BackendError, OSError) as e:
            _err(str(e))
            return 1
        except Exception as e:
            if type(e).__module__.split(".")[0] not in _CLIENT_MODULES:
                raise
            _err(f"{type(e).__name__}: {e}")  # a client error no broker/backend translated
            return 1
    finally:
        app.close()


def _handler(ns: argparse.Namespace) -> Callable[[Machinery, argparse.Namespace], int]:
    if ns.command == "inspect":
        return {"pending": inspect_pending, "delayed": inspect_delayed, "state": inspect_state,
                "group": inspect_group}[ns.inspect_command]
    if ns.command == "dead":
        return {"list": dead_list, "requeue": dead_requeue, "purge": dead_purge}[ns.dead_command]
    return {"purge": purge, "stuck": stuck, "status": status}[ns.command]


def _err(text: str) -> None:
    print("machinery-compat: " + " ".join(text.split()), file=sys.stderr)


def _ops(app: Machinery) -> BrokerOps:
    return broker_ops(app.broker)


def _print_messages(ns: argparse.Namespace, messages: Sequence[Message], what: str,
                    *, due: bool = False, reason: bool = False) -> None:
    if ns.json:
        print(to_json(message_json(messages)))
        return
    headers = ["uuid", "name", "eta", "retries", "size"]
    if due:
        headers.insert(0, "due")
    if reason:
        headers.append("reason")
    rows = []
    for m in messages:
        s = m.summary()
        row: list[Any] = [s["uuid"] or s.get("error", ""), s["name"], s["eta"], s["retry_count"],
                          s["size"]]
        if due:
            row.insert(0, when(m.due))
        if reason:
            row.append(m.reason)
        rows.append(row)
    print(table(headers, rows, empty=f"no {what}"))


def inspect_pending(app: Machinery, ns: argparse.Namespace) -> int:
    queue = ns.queue or app.config.default_queue
    ops = _ops(app)
    try:
        messages = ops.pending(queue, ns.limit)
        total = ops.depth(queue).messages
    finally:
        ops.close()
    if not ns.json:
        print(f"{queue}: {total} message(s)" + (f", first {len(messages)} shown"
                                                 if total is not None and total > len(messages)
                                                 else ""))
    _print_messages(ns, messages, f"messages in {queue}")
    return 0


def inspect_delayed(app: Machinery, ns: argparse.Namespace) -> int:
    ops = _ops(app)
    try:
        messages = ops.delayed(ns.limit, ns.delay_queues)
    finally:
        ops.close()
    _print_messages(ns, messages, "delayed messages", due=True)
    return 0


def _state_dict(st: TaskState) -> dict[str, Any]:
    return {
        "uuid": st.task_uuid, "name": st.task_name, "state": st.state,
        "created_at": st.created_at.isoformat() if st.created_at is not None else None,
        "results": [{"type": r.type, "value": r.value} for r in st.results or ()]
        if st.results is not None else None,
        "error": st.error,
    }


def _read_state(app: Machinery, task_id: str) -> TaskState | None:
    """The stored state; on an AMQP backend the newest message browsed, not consumed."""
    backend = app.backend
    if "AMQPBackend" in {c.__name__ for c in type(backend).__mro__}:
        from .ops.amqp import backend_state_messages
        from .protocol import TaskState

        newest = None
        for raw in backend_state_messages(backend, task_id):
            try:
                newest = TaskState.from_json(raw)
            except (ValueError, MachineryCompatError):
                continue
        return newest
    return backend.get_state(task_id)


def inspect_state(app: Machinery, ns: argparse.Namespace) -> int:
    from .ops.signatures import load

    st = _read_state(app, ns.task_id)
    if st is None:
        _err(f"no state stored for task {ns.task_id}")
        return 1
    info = _state_dict(st)
    try:
        sig = load(app.backend, ns.task_id)
    except Exception:
        sig = None
    info["signature_stored"] = sig is not None
    if ns.json:
        if sig is not None:
            info["signature"] = sig.to_json().decode("utf-8", "replace")
        print(to_json(info))
        return 0
    results = info["results"]
    rows = [("uuid", info["uuid"]), ("name", info["name"]), ("state", info["state"]),
            ("created at", info["created_at"]),
            ("results", None if results is None else ", ".join(
                f"{r['type']}:{r['value']!r}" for r in results)),
            ("error", info["error"] or None), ("signature stored", info["signature_stored"])]
    print(table(["field", "value"], rows))
    return 0


def inspect_group(app: Machinery, ns: argparse.Namespace) -> int:
    backend = app.backend
    if "AMQPBackend" in {c.__name__ for c in type(backend).__mro__}:
        raise Unsupported("the AMQP result backend keeps no group meta (Go's neither): it "
                          "cannot list a group's members; inspect state TASK_ID per member")
    meta = backend.get_group_meta(ns.group_id)
    if meta is None:
        _err(f"no group meta stored for group {ns.group_id}")
        return 1
    states = backend.get_states(meta.task_uuids)
    members = []
    for uuid, st in zip(meta.task_uuids, states, strict=True):
        members.append(_state_dict(st) if st is not None else
                       {"uuid": uuid, "name": "", "state": None, "created_at": None,
                        "results": None, "error": ""})
    done = sum(1 for st in states if st is not None and st.ready)
    if ns.json:
        print(to_json({"group": ns.group_id, "members": len(meta.task_uuids), "done": done,
                       "chord_triggered": meta.chord_triggered, "tasks": members}))
        return 0
    print(f"group {ns.group_id}: {done}/{len(meta.task_uuids)} done"
          + (", chord triggered" if meta.chord_triggered else ""))
    print(table(["uuid", "name", "state", "error"],
                [(m["uuid"], m["name"], m["state"] or "(no state)", m["error"] or None)
                 for m in members]))
    return 0


def confirm(question: str) -> bool:
    """Ask on stdin (a TTY, or a pipe giving the answer); only y/yes confirms."""
    print(question, end=" ", file=sys.stderr, flush=True)
    try:
        answer = sys.stdin.readline()
    except (OSError, ValueError):
        answer = ""
    return answer.strip().lower() in ("y", "yes")


def _purge(ops: BrokerOps, place: str, ns: argparse.Namespace,
           do: Callable[[], int]) -> int:
    if not ns.force:
        n = ops.depth(place).messages
        if not confirm(f"Purge {'all' if n is None else n} messages from {place}? [y/N]"):
            raise Refused(f"{place} not purged (answer y, or give --force)")
    removed = do()
    if ns.json:
        print(to_json({"queue": place, "purged": removed}))
    else:
        print(f"purged {removed} message(s) from {place}")
    return 0


def purge(app: Machinery, ns: argparse.Namespace) -> int:
    ops = _ops(app)
    try:
        return _purge(ops, ns.queue, ns, lambda: ops.purge(ns.queue))
    finally:
        ops.close()


def dead_list(app: Machinery, ns: argparse.Namespace) -> int:
    queue = ns.queue or app.config.default_queue
    ops = _ops(app)
    try:
        place = ops.dead_place(queue)
        messages = ops.dead_list(queue, ns.limit)
    finally:
        ops.close()
    if not ns.json:
        print(f"{place}: {len(messages)} message(s) shown")
    _print_messages(ns, messages, f"messages in {place}", reason=True)
    return 0


def dead_requeue(app: Machinery, ns: argparse.Namespace) -> int:
    queue = ns.queue or app.config.default_queue
    ops = _ops(app)
    try:
        place = ops.dead_place(queue)
        moved = ops.dead_requeue(queue, ns.limit)
    finally:
        ops.close()
    if ns.json:
        print(to_json({"from": place, "to": queue, "requeued": moved}))
    else:
        print(f"requeued {moved} message(s) from {place} to {queue}")
    return 0


def dead_purge(app: Machinery, ns: argparse.Namespace) -> int:
    queue = ns.queue or app.config.default_queue
    ops = _ops(app)
    try:
        return _purge(ops, ops.dead_place(queue), ns, lambda: ops.dead_purge(queue))
    finally:
        ops.close()


def stuck(app: Machinery, ns: argparse.Namespace) -> int:
    from . import recovery
    from .protocol import RECEIVED, STARTED

    states = [s.upper() for s in ns.states] if ns.states else [RECEIVED, STARTED]
    found = recovery.find_stuck_tasks(app, older_than=ns.older_than, states=states)
    rows: list[dict[str, Any]] = []
    for t in found:
        row: dict[str, Any] = {
            "uuid": t.task_uuid, "name": t.task_name, "state": t.state,
            "idle_for": t.idle_for, "age": t.age, "message_checked": t.message_checked}
        if ns.resend:
            row.update(_resend(app, t, ns.force))
        rows.append(row)
    if ns.json:
        print(to_json(rows))
    else:
        headers = ["uuid", "name", "state", "idle (s)", "age (s)", "message"]
        if ns.resend:
            headers.append("resend")
        lines = []
        for r in rows:
            line: list[Any] = [r["uuid"], r["name"], r["state"], r["idle_for"], r["age"],
                               "gone" if r["message_checked"] else "not checked"]
            if ns.resend:
                line.append("re-sent" if r["resent"] else r["reason"])
            lines.append(line)
        print(table(headers, lines, empty=f"no stuck tasks (older than {ns.older_than:g} s)"))
    return 0


def _resend(app: Machinery, t: Any, force: bool) -> dict[str, Any]:
    from . import recovery

    sig = recovery.stored_signature(app, t.task_uuid)
    if sig is None:
        return {"resent": False, "reason": "cannot re-send: signature not stored"}
    try:
        recovery.resend(app, sig, force=force)
    except recovery.NotStuck as e:
        return {"resent": False, "reason": f"not re-sent: {e}"}
    return {"resent": True, "reason": ""}


def status(app: Machinery, ns: argparse.Namespace) -> int:
    from .ops.heartbeat import list_workers

    queues = [q for group in ns.queues or () for q in group] or [app.config.default_queue]
    ops = _ops(app)
    try:
        rows = []
        for q in queues:
            depth = ops.depth(q)
            dead = ops.depth(ops.dead_place(q))
            rows.append({"queue": q, "messages": depth.messages, **depth.extra,
                         "dead_place": dead.queue, "dead": dead.messages})
        try:
            delayed: int | None = ops.delayed_count(ns.delay_queues or
                                                    (queues if ops.kind == "sqs" else ()))
        except Unsupported:
            delayed = None
    finally:
        ops.close()
    workers = list_workers(app)
    info = {"broker": mask_url(app.config.broker),
            "result_backend": mask_url(app.config.result_backend),
            "queues": rows, "delayed": delayed, "workers": workers}
    if ns.json:
        print(to_json(info))
        return 0
    print(f"broker:  {info['broker']}\nresults: {info['result_backend']}\n")
    extra = ["in_flight", "delayed"] if ops.kind == "sqs" else []
    print(table(["queue", "messages", *extra, "dead"],
                [[r["queue"], r["messages"], *(r.get(k) for k in extra),
                  f"{r['dead']} ({r['dead_place']})"] for r in rows]))
    unknown = {"amqp": "unknown (AMQP: --delay-queue NAME)",
               "pubsub": "unknown (Pub/Sub: early tasks wait in the subscription or a Python worker)"}
    print(f"\ndelayed: {delayed if delayed is not None else unknown.get(ops.kind, 'unknown')}")
    print()
    if workers is None:
        print("workers: unknown (no heartbeat store: Python workers publish heartbeats to Redis "
              "or DynamoDB only)")
    elif not workers:
        print("workers: none alive (Python workers only: Go workers publish no heartbeat)")
    else:
        print(f"workers: {len(workers)} alive (Python workers only: Go workers publish no "
              "heartbeat)")
        print(table(["hostname", "pid", "queues", "concurrency", "done", "started", "last beat"],
                    [[w.get("hostname"), w.get("pid"), w.get("queues"), w.get("concurrency"),
                      w.get("processed"), w.get("started"), w.get("last_beat")]
                     for w in workers]))
    return 0
