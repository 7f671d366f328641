"""The ``machinery-compat worker`` command line, run as a real subprocess."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

import machinery_compat
from machinery_compat import Machinery
from machinery_compat.cli import WorkerArgs, build_parser, expand_hostname
from tests.services import RedisServer

from .conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.integration.apps.cli_app:app"


def _env(url: str) -> dict[str, str]:
    return dict(os.environ, MC_TEST_BROKER=url, PYTHONPATH=str(ROOT))


def _worker(url: str, *extra: str, concurrency: str = "2") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "machinery_compat", "worker", "-A", APP,
         "-c", concurrency, "-l", "INFO", *extra],
        cwd=ROOT, env=_env(url), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _stop(proc: subprocess.Popen[str]) -> str:
    """SIGTERM the worker, return everything it wrote; it must exit 0."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"worker did not stop on SIGTERM; output:\n{out}") from None
    assert proc.returncode == 0, out
    return out


def _run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "machinery_compat", *args], cwd=ROOT,
                          env=_env("redis://127.0.0.1:1/0"), capture_output=True, text=True,
                          timeout=timeout)


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
    assert "worker ready: queues=machinery_tasks concurrency=2" in out


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
    assert "queues=custom" in out


def test_cli_bad_app_reference_is_a_clear_error() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "machinery_compat", "worker", "-A", "no_such_module:app"],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 2
    assert "cannot import 'no_such_module'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_second_signal_quits_at_once(redis_url: str) -> None:
    app = Machinery(broker=redis_url)
    proc = _worker(redis_url, "-l", "WARNING")  # the last -l wins
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
        assert "worker ready" not in out and "  broker:" not in out  # INFO lines hidden
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


# -- parsing (in-process) --------------------------------------------------------------------
def _worker_args(*argv: str) -> WorkerArgs:
    return WorkerArgs.from_namespace(build_parser().parse_args(["worker", "-A", APP, *argv]))


def test_every_option_has_help_text() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    worker = sub.choices["worker"]  # type: ignore[index]
    for p in (parser, worker):
        for action in p._actions:
            if action.option_strings:
                assert action.help and action.help.strip(), action.option_strings


def _subparsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _subparsers(child)


def test_every_operator_command_argument_has_help_text() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name in ("inspect", "purge", "dead", "stuck", "status"):
        for p in _subparsers(sub.choices[name]):  # type: ignore[index]
            for action in p._actions:
                if not isinstance(action, argparse._SubParsersAction):
                    assert action.help and action.help.strip(), (p.prog, action.dest)


def test_queues_comma_separated_repeated_and_mixed() -> None:
    assert _worker_args().queues == ()
    assert _worker_args("-Q", "a,b").queues == ("a", "b")
    assert _worker_args("-Q", "a", "-Q", "b").queues == ("a", "b")
    assert _worker_args("-Q", "a, b", "--queues", "c", "--queue", "a").queues == ("a", "b", "c", "a")


def test_loglevel_pool_any_case_and_defaults() -> None:
    assert _worker_args("-l", "INFO").loglevel == "info"
    assert _worker_args("--loglevel", "Debug").loglevel == "debug"
    args = _worker_args()
    assert (args.loglevel, args.pool, args.hostname, args.logfile, args.concurrency) == (
        "info", "threads", None, None, 0)
    assert _worker_args("-P", "SOLO", "-n", "w1", "--logfile", "x.log").pool == "solo"


def test_max_message_size_takes_sizes() -> None:
    assert _worker_args().max_message_size is None
    assert _worker_args("--max-message-size", "4M").max_message_size == 4 * 1024 * 1024
    assert _worker_args("--max-message-size", "512k").max_message_size == 512 * 1024
    assert _worker_args("--max-message-size", "1000").max_message_size == 1000


def test_hostname_placeholders() -> None:
    host = socket.gethostname()
    assert expand_hostname("w1@%h") == f"w1@{host}"
    assert expand_hostname("%n.%d") == f"{host.partition('.')[0]}.{host.partition('.')[2]}"
    assert expand_hostname("100%%-%x") == "100%-%x"


# -- the command (subprocess) ----------------------------------------------------------------
def test_version() -> None:
    want = f"machinery-compat {machinery_compat.__version__}"
    proc = _run_cli("--version")
    assert (proc.returncode, proc.stdout.strip()) == (0, want), proc.stderr
    # the script of this interpreter's installation (a venv's bin/ need not be on PATH)
    beside = Path(sys.executable).with_name("machinery-compat")
    script = str(beside) if beside.exists() else shutil.which("machinery-compat")
    assert script is not None, "console script not installed (pip install -e '.[dev]')"
    proc = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=30)
    assert (proc.returncode, proc.stdout.strip()) == (0, want), proc.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-A", APP, "-P", "processes", "--processes", "2"],
         "-P processes starts one process per -c; give -c (or use --processes N"),
        (["-A", APP, "-c", "1", "--processes", "2"],
         "-c 1 is less than --processes 2: -c is the total number of tasks at once"),
        (["-A", APP, "-P", "solo", "--processes", "2"],
         "-P solo is one process running one task at a time; use --processes 2 -c 2"),
        (["-A", APP, "-Q", "a,,b"], "empty queue name in 'a,,b'"),
        (["-A", APP, "-Q", "a", "-Q", ""], "empty queue name in ''"),
        (["-A", APP, "-P", "solo", "-c", "4"], "-P solo runs one task at a time; drop -c 4"),
        (["-A", APP, "-c", "-1"], "must be 0 (the default) or more, not -1"),
        (["-A", APP, "-l", "loud"], "invalid choice: 'loud'"),
        (["-A", APP, "--max-message-size", "lots"], "not a size: 'lots' (e.g. 4M, 512k)"),
        (["-A", APP, "--max-message-size", "0"], "must be more than 0, not '0'"),
        (["-A", "tests.integration.apps.cli_app:nope"],
         "module 'tests.integration.apps.cli_app' has no attribute 'nope'"),
        (["-A", "os:sep"], "'os:sep' is not a machinery_compat.Machinery app"),
        (["-A", APP, "--config", "/nonexistent/config.yml"],
         "/nonexistent/config.yml: cannot read config file"),
        (["-A", APP, "--logfile", "/nonexistent/dir/w.log"],
         "--logfile /nonexistent/dir/w.log: No such file or directory"),
    ],
)
def test_refused_options_are_one_clear_error_exit_2(argv: list[str], message: str) -> None:
    proc = _run_cli("worker", *argv)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_bad_config_file_is_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yml"
    cfg.write_text("broker: [\n")
    proc = _run_cli("worker", "-A", APP, "--config", str(cfg))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"machinery-compat: error: {cfg}: invalid YAML")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


@pytest.fixture
def password_redis(redis_server_factory: Callable[..., RedisServer]) -> Iterator[RedisServer]:
    """A private redis-server that wants the password ``secret``."""
    server = redis_server_factory()
    with server.client() as admin:
        admin.config_set("requirepass", "secret")
    yield server
    with server.client(password="secret") as admin:  # so teardown's SHUTDOWN needs no password
        admin.config_set("requirepass", "")


def test_banner_masks_password_and_several_queues_are_consumed(password_redis: RedisServer) -> None:
    url = f"redis://:secret@127.0.0.1:{password_redis.port}/0"
    app = Machinery(broker=url)
    proc = _worker(url, "-Q", "a,b", "-Q", "c", "-Q", "a", "-n", "w1@%h", concurrency="3")
    try:
        results = [app.send_task("add", args=[i, 1], queue=q) for i, q in enumerate("abc")]
        assert [r.get(timeout=20) for r in results] == [1, 2, 3]
        with password_redis.client(password="secret") as client:
            assert [client.llen(q) for q in "abc"] == [0, 0, 0]
    finally:
        out = _stop(proc)
    assert "secret" not in out
    banner = out[out.index(f"machinery-compat {machinery_compat.__version__} worker"):]
    for line in (
        f"  app:         {APP}",
        f"  hostname:    w1@{socket.gethostname()}",
        f"  broker:      redis://:***@127.0.0.1:{password_redis.port}/0",
        f"  results:     redis://:***@127.0.0.1:{password_redis.port}/0",
        "  queues:      a, b, c",
        "  concurrency: 3 (threads)",
        "  tasks:       (2)",
        "    . add",
        "    . slow",
    ):
        assert line in banner.splitlines(), (line, out)
    assert "worker ready: queues=a,b,c concurrency=3" in out


def test_logfile_and_solo_pool(redis_url: str, tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    app = Machinery(broker=redis_url)
    proc = subprocess.Popen(
        [sys.executable, "-m", "machinery_compat", "worker", "-A", APP, "-P", "solo",
         "-l", "Info", "--logfile", str(log)],
        cwd=ROOT, env=_env(redis_url), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        assert app.send_task("add", args=[2, 3]).get(timeout=20) == 5
    finally:
        out = _stop(proc)
    assert out == ""  # everything went to the file
    text = log.read_text()
    assert "  concurrency: 1 (solo: one task at a time)" in text
    assert "worker ready: queues=machinery_tasks concurrency=1" in text
    assert "Task add[" in text and "succeeded in" in text
    assert "SIGTERM received" in text


def test_max_memory_takes_sizes() -> None:
    assert _worker_args().max_memory is None
    assert _worker_args("--max-memory", "500000").max_memory == 500_000  # KiB, as Celery
    assert _worker_args("--max-memory", "512M").max_memory == 512 * 1024
    assert _worker_args("--max-memory", "1G").max_memory == 1024 * 1024


def test_max_memory_restarts_the_worker_in_place(redis_url: str) -> None:
    app = Machinery(broker=redis_url)
    proc = _worker(redis_url, "--max-memory", "1")  # 1 KiB: past it after every task
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        ready = "worker ready: queues=machinery_tasks"
        wait_for(lambda: sum(ready in x for x in lines) == 1, timeout=30, what="worker ready")
        assert app.send_task("add", args=[1, 2]).get(timeout=20) == 3
        wait_for(lambda: sum(ready in x for x in lines) == 2, timeout=30,
                 what="the worker started afresh")
        assert any("restarting" in x and "--max-memory 1 KiB" in x for x in lines), lines
        assert app.send_task("add", args=[2, 2]).get(timeout=20) == 4  # same process, again
        wait_for(lambda: sum(ready in x for x in lines) == 3, timeout=30, what="third start")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()


def test_create_dynamodb_tables(moto_endpoint: str) -> None:
    args = ("create-dynamodb-tables", "--endpoint-url", moto_endpoint, "--region", "us-east-1",
            "--task-states-table", "cli_states", "--group-metas-table", "cli_groups")
    first = _run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [
        "cli_states: created, hash key TaskUUID (S), TTL on attribute TTL",
        "cli_groups: created, hash key GroupUUID (S), TTL on attribute TTL"]
    again = _run_cli(*args)
    assert again.returncode == 0, again.stderr
    assert [x.split(",")[0] for x in again.stdout.splitlines()] == [
        "cli_states: exists", "cli_groups: exists"]
    bad = _run_cli("create-dynamodb-tables", "--endpoint-url", "http://127.0.0.1:1",
                   "--region", "us-east-1", timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("machinery-compat: error: ")
    assert "Traceback" not in bad.stderr
