"""``machinery-compat beat``, ``worker -B`` and ``periodic list`` as real processes on Redis."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import redis

from machinery_compat import Machinery
from machinery_compat.periodic import parse_spec

from .conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

APP = '''
import os
from machinery_compat import Machinery
from machinery_compat.periodic import parse_spec

app = Machinery(broker=os.environ["MC_TEST_BROKER"])


@app.task(name="add")
def add(*nums: int) -> int:
    return sum(nums)


app.periodic("@every 1s", "tick", add.s(1, 2))
app.periodic("0 12 * * *", "noon", app.signature("report", args=["daily"]))
'''

SENT = re.compile(r"periodic task tick sent \(lock value (\d+)\)")


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "periodic_app.py").write_text(APP, encoding="utf-8")
    return tmp_path


def _env(url: str) -> dict[str, str]:
    return dict(os.environ, MC_TEST_BROKER=url, PYTHONPATH=str(ROOT))


def _start(cwd: Path, url: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "machinery_compat", *args], cwd=cwd,
                            env=_env(url), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _stop(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"did not stop on SIGTERM:\n{out}") from None
    assert proc.returncode == 0, out
    return out


def _run(cwd: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "machinery_compat", *args], cwd=cwd,
                          env=_env(url), capture_output=True, text=True, timeout=60)


def test_three_beat_processes_send_once_per_period(
        app_dir: Path, redis_url: str, redis_client: redis.Redis) -> None:
    procs = [_start(app_dir, redis_url, "beat", "-A", "periodic_app") for _ in range(3)]
    try:
        wait_for(lambda: redis_client.llen("machinery_tasks") >= 6, timeout=90,
                 what="six periods sent")
    finally:
        outs = [_stop(p) for p in procs]
    values = [int(v) for out in outs for v in SENT.findall(out)]
    assert len(values) == len(set(values)), Counter(values).most_common(3)
    assert redis_client.llen("machinery_tasks") == len(values)
    assert all("periodic scheduler started: lock RedisLock" in out for out in outs)
    assert all("SIGTERM received: stopping the periodic scheduler" in out for out in outs)


def test_periodic_list_shows_next_fire_and_the_holder(
        app_dir: Path, redis_url: str, redis_client: redis.Redis) -> None:
    beat = _start(app_dir, redis_url, "beat", "-A", "periodic_app:app")
    before = time.time_ns()
    try:
        wait_for(lambda: redis_client.llen("machinery_tasks") >= 1, timeout=60, what="a firing")
        table = _run(app_dir, redis_url, "periodic", "list", "-A", "periodic_app")
        listed = _run(app_dir, redis_url, "periodic", "list", "-A", "periodic_app", "--json")
    finally:
        _stop(beat)
    after = time.time_ns()
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["NAME", "SPEC", "TARGET"]
    noon = next(line for line in lines if line.startswith("noon"))
    assert "report('daily')" in noon and "free" in noon
    assert listed.returncode == 0, listed.stderr
    rows = {r["name"]: r for r in json.loads(listed.stdout)["periodic_tasks"]}
    assert rows["tick"]["lock_key"] == "machinery_lock_machinery-compattick@every 1s"
    assert rows["tick"]["kind"] == "task" and rows["tick"]["target"] == "add(1, 2)"
    # the lock lasts one second: held by the beat, or just between two periods
    assert rows["tick"]["lock"]["state"].startswith(("python ", "free"))
    noon_spec = parse_spec("0 12 * * *")
    assert rows["noon"]["next_fire_ns"] in {noon_spec.next(before), noon_spec.next(after)}
    assert rows["noon"]["next_fire_approximate"] is False


def test_worker_with_beat_fires_and_runs_its_periodic_task(
        app_dir: Path, redis_url: str, redis_client: redis.Redis) -> None:
    worker = _start(app_dir, redis_url, "worker", "-A", "periodic_app", "-B", "-c", "2")
    app = Machinery(broker=redis_url)
    try:
        def done() -> list[bytes]:
            return [k for k in redis_client.keys("task_*")
                    if b'"State":"SUCCESS"' in (redis_client.get(k) or b"")]

        keys = wait_for(lambda: len(done()) >= 2 and done(), timeout=90,
                        what="two periodic firings run")
    finally:
        out = _stop(worker)
    assert app.AsyncResult(keys[0].decode()).get(timeout=5) == 3
    assert "periodic:" in out and "tick [@every 1s] add(1, 2)" in out
    assert "periodic scheduler stopped" in out


def test_beat_refuses_a_bad_spec_in_one_line(tmp_path: Path, redis_url: str) -> None:
    (tmp_path / "bad_app.py").write_text(
        "from machinery_compat import Machinery\n"
        "app = Machinery(broker='memory://')\n"
        "app.periodic('* * * * 7', 'bad', app.signature('x'))\n", encoding="utf-8")
    res = _run(tmp_path, redis_url, "beat", "-A", "bad_app")
    assert res.returncode == 2
    assert res.stderr.strip().endswith("end of range (7) above maximum (6): 7")


def test_beat_lock_options(app_dir: Path, redis_url: str, redis_client: redis.Redis) -> None:
    """--lock-program puts a Go binary's name in the key; --lock picks the lock's Redis db."""
    db3 = redis_url.rsplit("/", 1)[0] + "/3"
    beat = _start(app_dir, redis_url, "beat", "-A", "periodic_app", "--lock", db3,
                  "--lock-program", "/opt/bin/mygoworker")
    other = redis.Redis.from_url(db3)
    try:
        wait_for(lambda: other.exists("machinery_lock_mygoworkertick@every 1s"), timeout=60,
                 what="the lock key in db 3")
    finally:
        _stop(beat)
        other.flushdb()
        other.close()
    assert not redis_client.keys("machinery_lock_*")
    assert redis_client.llen("machinery_tasks") >= 1
