"""A producer that forks after sending (gunicorn --preload, multiprocessing's fork start
method, Celery's prefork pool): every child sends on its own connection, nothing hangs and
nothing is lost or duplicated.

The forking happens in a fresh interpreter (the script below), never in the pytest process:
forking a process with pytest's threads in it can deadlock (it hung CI once).  That process
is started under ``setpriv --pdeathsig KILL`` so it cannot outlive the test.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis

ROOT = Path(__file__).resolve().parents[2]
QUEUE = "fork_tasks"

#: argv: redis URL, queue, variant ("idle": the parent only forks; "thread": a parent thread
#: keeps sending and reading states while the main thread forks), result directory.
SCRIPT = r"""
import json, os, signal, sys, threading, time, traceback
from machinery_compat import Machinery

url, queue, variant, outdir = sys.argv[1:5]
REPS, CHILDREN, SENDS, JOIN_TIMEOUT = 20, 4, 200, 30.0

app = Machinery(broker=url, result_backend=url, default_queue=queue)
sent = [app.send_task("noop", args=[0]).id]       # the parent's connection is now in use
assert app.AsyncResult(sent[0]).state == "PENDING"

stop = threading.Event()
from_thread = []

def keep_sending():
    while not stop.is_set():
        res = app.send_task("noop", args=[1])
        from_thread.append(res.id)
        res.state                                  # a backend read: a pool checkout each time

sender = threading.Thread(target=keep_sending)
if variant == "thread":
    sender.start()
    while len(from_thread) < 10:
        time.sleep(0.001)

def child(path):
    code = 1
    try:
        ids = [app.send_task("noop", args=[i]).id for i in range(SENDS)]
        state = app.AsyncResult(ids[-1]).state
        if state != "PENDING":
            raise AssertionError(f"child read state {state!r}")
        with open(path, "w") as fh:
            json.dump(ids, fh)
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)

hung, failed = [], []
for rep in range(REPS):
    pids = {}
    for c in range(CHILDREN):
        path = os.path.join(outdir, f"{rep}-{c}.json")
        pid = os.fork()
        if pid == 0:
            child(path)
        pids[pid] = path
    deadline = time.monotonic() + JOIN_TIMEOUT
    while pids and time.monotonic() < deadline:
        for pid in list(pids):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                path = pids.pop(pid)
                if os.waitstatus_to_exitcode(status) != 0:
                    failed.append(path)
                else:
                    with open(path) as fh:
                        sent.extend(json.load(fh))
        time.sleep(0.002)
    for pid, path in pids.items():
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        hung.append(path)
    if hung or failed:
        break

stop.set()
if sender.is_alive():
    sender.join(30)
sent.extend(from_thread)
print(json.dumps({"sent": sent, "hung": hung, "failed": failed, "reps": rep + 1,
                  "from_thread": len(from_thread)}))
"""


def _run(redis_url: str, variant: str, tmp_path: Path) -> dict[str, Any]:
    setpriv = shutil.which("setpriv")
    prefix = [setpriv, "--pdeathsig", "KILL", "--"] if setpriv and sys.platform == "linux" else []
    proc = subprocess.run(
        [*prefix, sys.executable, "-c", SCRIPT, redis_url, QUEUE, variant, str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["stderr"] = proc.stderr
    return result


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["idle", "thread"])
def test_fork_after_send_loses_and_duplicates_nothing(
    redis_url: str, redis_client: redis.Redis, variant: str, tmp_path: Path
) -> None:
    result = _run(redis_url, variant, tmp_path)
    assert result["hung"] == [], f"children hung: {result['hung']}\n{result['stderr'][-4000:]}"
    assert result["failed"] == [], f"children failed:\n{result['stderr'][-4000:]}"
    assert result["reps"] == 20
    if variant == "thread":
        assert result["from_thread"] > 0
    sent: list[str] = result["sent"]
    assert len(sent) >= 1 + 20 * 4 * 200
    assert len(set(sent)) == len(sent)

    # every message is in the queue exactly once
    queued = Counter(json.loads(body)["UUID"] for body in redis_client.lrange(QUEUE, 0, -1))
    assert sum(queued.values()) == len(sent)
    assert set(queued) == set(sent)
    assert max(queued.values()) == 1

    # and each has its PENDING state
    states = []
    for i in range(0, len(sent), 1000):
        states += redis_client.mget(sent[i:i + 1000])
    assert all(s is not None for s in states)
    assert Counter(json.loads(s)["State"] for s in states) == {"PENDING": len(sent)}
