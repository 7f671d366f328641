"""Periodic tasks, as Go Machinery's ``RegisterPeriodicTask/Chain/Group/Chord`` run them.

.. code-block:: python

    from machinery_compat import Machinery, chain, group

    app = Machinery(broker="redis://127.0.0.1:6379/0")

    app.periodic("*/5 * * * *", "report", app.signature("report", args=["daily"]))
    app.periodic("@every 1h30m", "cleanup-chain", chain(a.s(), b.s()))
    app.periodic("CRON_TZ=Europe/Paris 0 9 * * MON-FRI", "digest", group(c.s(), d.s()),
                 send_concurrency=2)

    @app.periodic("@hourly")           # a task (or plain function) sent with no arguments
    @app.task
    def heartbeat() -> None: ...

    app.unregister_periodic("report")

Run them with ``machinery-compat beat -A mymodule:app``, or inside a worker with
``machinery-compat worker -A mymodule:app -B`` (as every Go Machinery server does), or from
Python: ``Scheduler(app).start()`` / ``.run()``.  Any number of schedulers, Python and Go,
may run: a lock on Redis lets exactly one of them send each period.

Specs: robfig/cron v3's ``ParseStandard`` exactly (:mod:`machinery_compat.periodic.cron`),
next fire times identical to Go's (daylight-saving quirks included).

Lock (:mod:`machinery_compat.periodic.lock`): Machinery's key
``machinery_lock_<program><name><spec>`` and value (the period's end in Unix ns, minus one)
on Redis.  Which Redis: ``Scheduler(app, lock="redis://host:port/db")`` /
``--lock``, else the config's ``lock`` (Machinery's ``LOCK``), else the broker's or the result
backend's Redis; with none, an in-process lock (every process fires, as Go's eager lock).
``program`` is the executable's base name in Go (``os.Args[0]``): Python schedulers use
``machinery-compat``; to share the lock with Go schedulers give them the Go binary's name
(``app.periodic_tasks.program = "myworker"``, ``--lock-program myworker`` or
``lock_program=`` per task) and the same Redis database.
"""

from .cron import EverySchedule, Schedule, SpecError, SpecSchedule, parse_spec
from .lock import (
    DEFAULT_PROGRAM,
    LocalLock,
    LockState,
    PeriodicLock,
    RedisLock,
    lock_key,
)
from .registry import PeriodicRegistry, PeriodicTask
from .scheduler import Firing, Scheduler, create_lock

__all__ = [
    "DEFAULT_PROGRAM",
    "EverySchedule",
    "Firing",
    "LocalLock",
    "LockState",
    "PeriodicLock",
    "PeriodicRegistry",
    "PeriodicTask",
    "RedisLock",
    "Schedule",
    "Scheduler",
    "SpecError",
    "SpecSchedule",
    "create_lock",
    "lock_key",
    "parse_spec",
]
