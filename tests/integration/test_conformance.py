"""``machinery-compat conformance`` end to end, as a user runs it (a subprocess).

The Go probes are interop/build.sh's (``--go-bin interop/bin``: the same sources the command
ships, already built for the interop suite; building them per version is ``make
conformance-versions``).  Both pinned versions run in one command (the default), on:

* the session Redis (broker and backend in DB 2);
* the session RabbitMQ (a fresh vhost) as broker with the session Redis (DB 3) as backend.

Each run must pass every check, say which Machinery the Go worker ran, write the JUnit and
Markdown reports, and leave nothing behind: no key holding its prefix and no key that was not
there before (Redis), no queue and no exchange holding it (RabbitMQ).  A deliberately broken
setup — Go workers writing their results to another Redis DB than the one the Python side
reads — must report the failing checks and exit 1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from tests.services._base import missing_service

ROOT = Path(__file__).resolve().parents[2]
GO_BIN = ROOT / "interop" / "bin"
PINS = ["v2.0.16", "v1.10.8"]
CHECKS_PER_VERSION = 68  # 29 echo types x 2 directions + 10 (mixed pool, retries, ETAs, workflows)

pytestmark = [pytest.mark.interop, pytest.mark.slow]

_built: list[str] = []


@pytest.fixture(scope="module")
def go_bin() -> Path:
    """interop/bin with mcworker and mcproducer (interop/build.sh, cached by Go)."""
    if not _built:
        try:
            done = subprocess.run(["bash", str(ROOT / "interop" / "build.sh")],
                                  capture_output=True, text=True, timeout=900)
        except OSError as e:
            missing_service(f"interop/build.sh could not run: {e}")
        if done.returncode != 0:
            if "go not found" in done.stderr:
                missing_service("Go is not installed (interop/build.sh)")
            pytest.fail(f"interop/build.sh failed:\n{done.stderr[-3000:]}")
        _built.append("ok")
    return GO_BIN


def conformance(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "machinery_compat", "conformance", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def _failures(done: subprocess.CompletedProcess[str]) -> str:
    """What failed, from the JSON on stdout (else stderr's tail), for assertion messages."""
    try:
        out = json.loads(done.stdout)
    except ValueError:
        return done.stderr[-3000:]
    return json.dumps([{"version": r["version"], "error": r["error"], "cleanup": r["cleanup"],
                        "failed": [c for c in r["checks"] if c["status"] != "pass"]}
                       for r in out["runs"]], indent=1)[:4000]


def _passed_everything(out: dict[str, Any]) -> None:
    assert out["ok"] is True, json.dumps(out, indent=1)[:4000]
    assert [r["version"] for r in out["runs"]] == PINS
    for run in out["runs"]:
        assert run["machinery_version"] == run["version"]
        assert run["flavour"] == ("v1" if run["version"].startswith("v1") else "v2-redigo")
        assert (run["passed"], run["failed"], run["skipped"]) == (CHECKS_PER_VERSION, 0, 0), run
        names = {c["name"] for c in run["checks"]}
        assert {"echo/py->go/uint64", "echo/go->py/[]byte", "mixed-pool", "retry/go-worker",
                "retry/py-worker", "eta/py->go", "eta/go->py", "chord/go-producer",
                "chord/py-producer", "chain/go-producer", "group/py-producer"} <= names
        assert run["prefix"].startswith("mcconf-") and not run["error"]


def _reports_written(tmp_path: Path) -> None:
    suites = ET.parse(tmp_path / "junit.xml").getroot()
    assert [(s.get("name"), s.get("tests"), s.get("failures")) for s in suites] == [
        (f"machinery-{v}", str(CHECKS_PER_VERSION), "0") for v in PINS]
    md = (tmp_path / "report.md").read_text()
    assert "**All passed**" in md and "| echo/go->py | ok (29 types) |" in md


def _redis_keys(client: Any) -> set[bytes]:
    return set(client.scan_iter(count=1000))


@pytest.mark.redis
def test_on_redis_both_pins(go_bin: Path, redis_server: Any, redis_url: str,
                            tmp_path: Path) -> None:
    url = redis_server.url_for_db(2)
    client = redis_server.client(db=2)
    before = _redis_keys(client)
    done = conformance("--broker", url, "--go-bin", str(go_bin), "--json",
                       "--junit-xml", str(tmp_path / "junit.xml"),
                       "--markdown", str(tmp_path / "report.md"))
    assert done.returncode == 0, _failures(done)
    out = json.loads(done.stdout)
    _passed_everything(out)
    _reports_written(tmp_path)
    assert _redis_keys(client) - before == set()
    for run in out["runs"]:
        assert not list(client.scan_iter(match=f"*{run['prefix']}*"))
        assert "Redis key(s) removed" in run["cleanup"] and run["cleanup_ok"]
    client.close()


@pytest.mark.redis
@pytest.mark.rabbitmq
def test_on_rabbitmq_with_redis_results(go_bin: Path, redis_server: Any, redis_url: str,
                                        rabbitmq_server: Any, rabbitmq_vhost_url: str,
                                        tmp_path: Path) -> None:
    backend = redis_server.url_for_db(3)
    client = redis_server.client(db=3)
    vhost = unquote(rabbitmq_vhost_url.rsplit("/", 1)[1]) or "/"
    done = conformance("--broker", rabbitmq_vhost_url, "--backend", backend,
                       "--go-bin", str(go_bin), "--json",
                       "--junit-xml", str(tmp_path / "junit.xml"),
                       "--markdown", str(tmp_path / "report.md"))
    assert done.returncode == 0, _failures(done)
    out = json.loads(done.stdout)
    _passed_everything(out)
    _reports_written(tmp_path)
    assert _redis_keys(client) == set()
    queues = [q["name"] for q in rabbitmq_server.queues(vhost, columns=("name",))]
    exchanges = rabbitmq_server.ctl("list_exchanges", "-p", vhost, "name")
    for run in out["runs"]:
        assert [q for q in queues if run["prefix"] in q] == []
        assert run["prefix"] not in exchanges
        assert "RabbitMQ queue(s) and exchange" in run["cleanup"] and run["cleanup_ok"]
    client.close()


@pytest.mark.redis
def test_broken_setup_fails(go_bin: Path, redis_server: Any, redis_url: str,
                            tmp_path: Path) -> None:
    """Go workers whose result backend is not the Python side's (a wrapper adds ``-backend``
    DB 5 after the command's own flags: Go's last flag wins): what the Go worker runs never
    reaches the Python reader, so those checks fail; Go->Python still passes (mcproducer and
    the Python worker share DB 4)."""
    wrapped = tmp_path / "bin"
    wrapped.mkdir()
    (wrapped / "mcworker").write_text(
        f'#!/bin/sh\nexec "{go_bin / "mcworker"}" "$@" -backend "{redis_server.url_for_db(5)}"\n')
    (wrapped / "mcworker").chmod(0o755)
    (wrapped / "mcproducer").symlink_to(go_bin / "mcproducer")
    t0 = time.monotonic()
    done = conformance("--broker", redis_server.url_for_db(4), "--go-bin", str(wrapped),
                       "--machinery", "v2.0.16", "--only", "echo/*/int64",
                       "--only", "chain/py-producer", "--timeout", "3", "--json")
    assert done.returncode == 1, done.stderr[-3000:]
    out = json.loads(done.stdout)
    assert out["ok"] is False and out["failed"] == 2 and out["passed"] == 1
    status = {c["name"]: (c["status"], c["detail"]) for c in out["runs"][0]["checks"]}
    assert status["echo/go->py/int64"] == ("pass", "")
    assert status["echo/py->go/int64"][0] == "fail"
    assert status["echo/py->go/int64"][1].startswith("ResultTimeout: ")
    assert status["chain/py-producer"][0] == "fail"
    assert time.monotonic() - t0 < 60
    client = redis_server.client(db=4)
    assert not list(client.scan_iter(match=f"*{out['runs'][0]['prefix']}*"))
    client.close()


def test_bad_options_exit_2() -> None:
    done = conformance("--broker", "sqs://nowhere", "--machinery", "v2.0.16")
    assert done.returncode == 2 and "Redis" in done.stderr
    done = conformance("--broker", "redis://127.0.0.1:1/0", "--machinery", "2.0.16")
    assert done.returncode == 2 and "leading v" in done.stderr
    done = conformance("--broker", "redis://127.0.0.1:1/0", "--only", "nothing/*")
    assert done.returncode == 2 and "no check" in done.stderr


OLDER_V2 = "v2.0.15"  # one older v2 line release beside the pins (v2.0.16 and v1.10.8 are the newest the proxy serves)


@pytest.mark.redis
def test_installed_wheel_builds_an_older_v2(redis_server: Any, redis_url: str,
                                             tmp_path: Path) -> None:
    """What a Go team does: ``pip install 'machinery-compat[conformance,redis]'`` into a fresh
    virtualenv (the wheel built from this checkout, nothing else of the checkout on the path),
    then ``machinery-compat conformance --machinery v2.0.15``: the command builds the probes
    from the sources the wheel ships (a cache of its own, Go's build cache kept warm) and every
    check passes against the Go worker that reports running v2.0.15."""
    go = subprocess.run(["go", "env", "GOCACHE", "GOMODCACHE"], capture_output=True, text=True)
    if go.returncode != 0:
        missing_service("Go is not installed (the conformance command builds its probes)")
    gocache, gomodcache = go.stdout.split()
    dist, venv = tmp_path / "dist", tmp_path / "venv"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                            str(dist), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = dist.glob("machinery_compat-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    installed = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                                f"{wheel}[conformance,redis]"],
                               capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(XDG_CACHE_HOME=str(tmp_path / "cache"), GOCACHE=gocache, GOMODCACHE=gomodcache)
    client = redis_server.client(db=6)
    before = _redis_keys(client)
    done = subprocess.run([str(venv / "bin" / "machinery-compat"), "conformance", "--broker",
                           redis_server.url_for_db(6), "--machinery", OLDER_V2, "--json"],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path, env=env)
    assert done.returncode == 0, _failures(done)
    (run,) = json.loads(done.stdout)["runs"]
    assert (run["version"], run["machinery_version"], run["flavour"]) == (
        OLDER_V2, OLDER_V2, "v2-redigo"), run
    assert (run["passed"], run["failed"], run["skipped"]) == (CHECKS_PER_VERSION, 0, 0), run
    assert list((tmp_path / "cache" / "machinery_compat" / "conformance").glob(f"{OLDER_V2}-*"))
    assert _redis_keys(client) - before == set()
    client.close()
