"""The fastest Python peers in ``bench.redis_bench``: dramatiq and taskiq, how each is started
and how its queue and results look in Redis.

Their producers run as ``python -m bench.<peer>_app produce N``
(:func:`bench._common.time_peer_producer`); their workers as one process with C threads
(dramatiq, :mod:`bench.dramatiq_app`) or C concurrent coroutines (taskiq, ``taskiq worker
--workers 1 --max-async-tasks C``).  Each stores the no-op ``add(1)``'s result in the same
Redis, which :class:`bench._common.DoneWatcher` reads: dramatiq's under a result key (an MD5
hex digest; its producer pushes the keys) as a one-item list holding the JSON ``1``, taskiq's
under the task id as a pickled ``TaskiqResult`` (which names its ``return_value`` field).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from bench._common import spawn

#: dramatiq's Redis broker: the list of message ids of queue ``default`` (bodies in a hash)
DRAMATIQ_QUEUE = "dramatiq:default"
#: every dramatiq broker command updates its sender's score here; the benchmark deletes it
#: after the producer, so a member means the worker has polled
DRAMATIQ_HEARTBEATS = "dramatiq:__heartbeats__"
DRAMATIQ_DONE = "1"  # the stored result of add(1)
TASKIQ_QUEUE = "taskiq"
TASKIQ_DONE = "return_value"  # a field name in the pickled result


def start_dramatiq_worker(threads: int, env: dict[str, str],
                          logfile: Path) -> subprocess.Popen[bytes]:
    return spawn([sys.executable, "-m", "bench.dramatiq_app", "worker", str(threads)],
                 stdout=logfile.open("wb"), env=env)


def start_taskiq_worker(concurrency: int, env: dict[str, str],
                        logfile: Path) -> subprocess.Popen[bytes]:
    taskiq = shutil.which("taskiq") or "taskiq"
    return spawn([taskiq, "worker", "bench.taskiq_app:broker", "--workers", "1",
                  "--max-async-tasks", str(concurrency), "--log-level", "WARNING"],
                 stdout=logfile.open("wb"), env=env)
