"""The ``machinery-compat worker`` command line, run as a real subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis

from machinery_compat import Machinery

from .conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]


def _worker(url: str, *extra: str) -> subprocess.Popen[str]:
    env = dict(os.environ, MC_TEST_BROKER=url, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "machinery_compat", "worker", "-A",
         "tests.integration.apps.cli_app:app", "-c", "2", "-l", "info", *extra],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def test_cli_worker_runs_tasks_and_stops_gracefully_on_sigterm(
    redis_url: str, redis_client: redis.Redis
) -> None:
    app = Machinery(broker=redis_url)
    proc = _worker(redis_url)
    try:
        assert app.send_task("add", args=[20, 22]).get(timeout=20) == 42
        slow = app.send_task("slow", args=[1.0])
        wait_for(lambda: b"STARTED" in (redis_client.get(slow.id) or b""), what="slow started")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert slow.get(timeout=1) == 1.0  # the running task was finished, not abandoned
    assert "SIGTERM received: finishing running tasks" in out
    assert "Task add[" in out and "succeeded in" in out
    assert "worker ready: queue=machinery_tasks concurrency=2" in out


def test_cli_config_file_and_queue(redis_url: str, tmp_path: Path) -> None:
    cfg = tmp_path / "config.yml"
    cfg.write_text(f"broker: '{redis_url}'\nresult_backend: '{redis_url}'\n"
                   "default_queue: from_yaml\nresults_expire_in: 60\n")
    proc = _worker("redis://127.0.0.1:1/0", "--config", str(cfg), "-Q", "custom")
    try:
        app = Machinery.from_yaml(str(cfg))
        assert app.config.default_queue == "from_yaml"
        res = app.send_task("add", args=[1, 2], queue="custom")
        assert res.get(timeout=20) == 3
        assert 0 < redis.Redis.from_url(redis_url).ttl(res.id) <= 60
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    assert "queue=custom" in out


def test_cli_bad_app_reference_is_a_clear_error() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "machinery_compat", "worker", "-A", "no_such_module:app"],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 2
    assert "cannot import 'no_such_module'" in proc.stderr


def test_second_signal_quits_at_once(redis_url: str) -> None:
    app = Machinery(broker=redis_url)
    proc = _worker(redis_url)
    try:
        res = app.send_task("slow", args=[30.0])
        wait_for(lambda: app.AsyncResult(res.id).state == "STARTED", timeout=20, what="started")
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
        assert time.monotonic() - start < 5
        assert "second signal: quitting at once" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
