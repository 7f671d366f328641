"""The claims of SECURITY.md, each checked here (or by the test SECURITY.md names).

* nothing in the package deserialises anything but JSON (and YAML through ``safe_load``):
  no pickle/marshal/shelve, no eval/exec, no unsafe YAML loader; YAML tags are refused;
* task names resolve only through the app's registry: a message naming a module, a
  builtin or a dotted path imports and runs nothing;
* an exception record (``<uuid>.exc``) imports nothing and runs no module code;
* passwords never show in the repr of a Config, Machinery, broker, backend or parsed URL,
  nor in the text of an error or a log line, for every URL form;
* anyone who can write to the queue runs any registered task with any arguments (a
  property of Machinery's protocol, shown here so nobody assumes otherwise);
* messages over ``max_message_size`` are not parsed.
"""

from __future__ import annotations

import ast
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from machinery_compat import Machinery, Signature, TaskFailed
from machinery_compat.backends.base import ExceptionRecord
from machinery_compat.brokers.base import Delivery
from machinery_compat.config import Config, RedisConfig, mask_url, parse_redis_url
from machinery_compat.exceptions import ConfigError
from machinery_compat.worker.worker import DEFAULT_MAX_MESSAGE_SIZE
from tests.services import RedisServer, free_port

PACKAGE = Path(__file__).resolve().parents[2] / "machinery_compat"
SECRET = "Pa55-w0rd-Xq"


# -- what the package can deserialise -----------------------------------------------------


def _package_modules() -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, ast.parse(path.read_text(), str(path))


def test_no_unsafe_deserialisation_in_the_package() -> None:
    """A grep, by syntax tree: no pickle-like module, no eval/exec/compile, no YAML loader
    but ``safe_load``, and ``importlib`` only in the CLI (for ``-A module``, given by the
    operator on the command line)."""
    forbidden_modules = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill",
                         "cloudpickle", "jsonpickle", "copyreg"}
    found: list[str] = []
    yaml_calls: list[str] = []
    for path, tree in _package_modules():
        rel = path.relative_to(PACKAGE.parent)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""])
                for name in names:
                    if name.split(".")[0] in forbidden_modules:
                        found.append(f"{rel}:{node.lineno} imports {name}")
                    if name.split(".")[0] == "importlib" and rel.name != "cli.py":
                        found.append(f"{rel}:{node.lineno} imports {name}")
            elif isinstance(node, ast.Call):
                func = node.func
                if isinstance(func, ast.Name) and func.id in {"eval", "exec", "compile",
                                                              "__import__"}:
                    found.append(f"{rel}:{node.lineno} calls {func.id}")
                if (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                        and func.value.id == "yaml"):
                    yaml_calls.append(f"{rel}:{node.lineno} yaml.{func.attr}")
            elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                  and node.value.id == "yaml" and node.attr.endswith("Loader")
                  and node.attr not in {"SafeLoader", "CSafeLoader"}):
                found.append(f"{rel}:{node.lineno} uses yaml.{node.attr}")
    assert not found, found
    loads = [c for c in yaml_calls if c.split("yaml.")[1].startswith("load")
             or c.endswith(("unsafe_load", "full_load", "load_all"))]
    assert not loads, loads
    assert any(c.endswith("yaml.safe_load") for c in yaml_calls), yaml_calls


@pytest.mark.parametrize("tag", [
    "!!python/object/apply:os.system ['touch {marker}']",
    "!!python/name:os.system",
    "!!python/object/new:subprocess.Popen [['touch', '{marker}']]",
])
def test_yaml_tags_are_refused(tmp_path: Path, tag: str) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "config.yml"
    path.write_text(f"broker: redis://localhost:6379/0\ndefault_queue: {tag.format(marker=marker)}\n")
    with pytest.raises(ConfigError):
        Config.from_yaml(path)
    assert not marker.exists()


# -- names and records never import anything ------------------------------------------------


@pytest.fixture
def evil_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An importable module ``mc_evil_probe`` whose import creates a marker file."""
    marker = tmp_path / "imported"
    (tmp_path / "mc_evil_probe.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "class Boom(Exception):\n    pass\n"
        "def run(*args):\n    open({!r}, 'w').close()\n".format(str(marker) + ".run"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "mc_evil_probe", raising=False)
    yield marker
    assert "mc_evil_probe" not in sys.modules
    assert not marker.exists() and not Path(str(marker) + ".run").exists()


def _memory_app(name: str) -> Machinery:
    from machinery_compat.backends import memory as memory_backend
    from machinery_compat.brokers import memory as memory_broker

    memory_broker.reset(name)
    memory_backend.reset(name)
    app = Machinery(f"memory://{name}", f"memory://{name}")

    @app.task(name="add")
    def add(*nums: int) -> int:
        return sum(nums)

    return app


@pytest.mark.parametrize("name", [
    "mc_evil_probe", "mc_evil_probe.run", "mc_evil_probe:run", "os.system", "builtins.eval",
    "__import__", "subprocess.Popen", "add.__globals__", "../../mc_evil_probe",
])
def test_task_names_resolve_only_through_the_registry(evil_module: Path, name: str) -> None:
    app = _memory_app("sec-names")
    worker = app.worker(concurrency=1)
    body = json.dumps({"UUID": "task_evil", "Name": name,
                       "Args": [{"Type": "string", "Value": "id"}]}).encode()
    worker.handle(Delivery(body, "machinery_tasks"))
    worker.stop(timeout=5)
    assert worker.outcomes == {"handed_back": 1}  # for a worker that has such a task


def test_exception_records_never_import(evil_module: Path) -> None:
    app = _memory_app("sec-records")
    backend: Any = app.backend
    backend.store_raw("task_rec", json.dumps({
        "TaskUUID": "task_rec", "TaskName": "x", "State": "FAILURE", "Results": None,
        "Error": "nag", "CreatedAt": "0001-01-01T00:00:00Z", "TTL": 0}).encode())
    app.backend.set_exception_record("task_rec", ExceptionRecord(
        "Boom", "mc_evil_probe", "Boom", "Traceback (most recent call last):\n", "nag"))
    with pytest.raises(TaskFailed) as info:
        app.AsyncResult("task_rec").get(timeout=1)
    assert type(info.value) is TaskFailed and info.value.exc_module == "mc_evil_probe"


# -- anyone who can write to the queue ---------------------------------------------------------


def test_anyone_who_can_write_the_queue_runs_any_registered_task() -> None:
    """Not a bug: Machinery messages carry no signature or sender.  A raw message runs a
    registered task with the arguments it names, re-runs it through RetryCount, and chains
    further registered tasks through OnSuccess."""
    app = _memory_app("sec-anyone")
    calls: list[tuple[int, ...]] = []

    @app.task(name="transfer")
    def transfer(*amounts: int) -> int:
        calls.append(amounts)
        return sum(amounts)

    body = json.dumps({"UUID": "task_forged", "Name": "transfer",
                       "Args": [{"Type": "int64", "Value": 1_000_000}],
                       "OnSuccess": [{"UUID": "task_forged2", "Name": "transfer",
                                      "Args": [{"Type": "int64", "Value": 5}]}]}).encode()
    worker = app.worker(concurrency=1)
    worker.handle(Delivery(body, "machinery_tasks"))
    [callback] = app.broker.fetch(["machinery_tasks"], 1, 0.1)
    worker.handle(callback)
    worker.stop(timeout=5)
    assert calls == [(1_000_000,), (5, 1_000_000)]


def test_messages_over_the_size_limit_are_not_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    assert DEFAULT_MAX_MESSAGE_SIZE == 4 * 1024 * 1024
    app = _memory_app("sec-size")
    worker = app.worker(concurrency=1, max_message_size=1000)

    def never(raw: Any) -> Signature:
        raise AssertionError("parsed")

    monkeypatch.setattr(Signature, "from_json", staticmethod(never))
    worker.handle(Delivery(b'{"Name":"add","UUID":"' + b"x" * 1000 + b'"}', "machinery_tasks"))
    worker.stop(timeout=5)
    assert worker.outcomes == {"dead_lettered": 1}


# -- passwords ------------------------------------------------------------------------------


def _closed_port() -> int:
    return free_port()


def _urls() -> dict[str, str]:
    port = _closed_port()
    return {
        "redis": f"redis://{SECRET}@127.0.0.1:{port}/0",
        "redis user": f"redis://me:{SECRET}@127.0.0.1:{port}/1",
        "rediss": (f"rediss://:{SECRET}@127.0.0.1:{port}/0?ssl_ca_certs=/nonexistent/ca.pem"
                   f"&ssl_certfile=/c.pem&ssl_keyfile=/k.pem&ssl_password={SECRET}"),
        "redis socket": f"redis+socket://{SECRET}@/nonexistent/redis.sock:/0",
        "amqp": f"amqp://guest:{SECRET}@127.0.0.1:{port}/",
        "amqps": f"amqps://guest:{SECRET}@127.0.0.1:{port}/vh",
    }


def _shown(*objects: object) -> str:
    return "\n".join(f"{o!r}\n{o!s}" for o in objects)


def _error_text(e: BaseException) -> str:
    parts = []
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        parts.append(f"{cur!r} {cur!s} {cur.args!r}")
        cur = cur.__cause__ or cur.__context__
    return "\n".join(parts)


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> Callable[[], str]:
    """Every log record of every logger (third-party ones too), at DEBUG."""
    caplog.set_level(logging.DEBUG)
    return lambda: "\n".join(
        f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)


@pytest.mark.parametrize("kind", list(_urls()))
def test_passwords_are_masked_in_reprs(kind: str, all_logs: Callable[[], str]) -> None:
    url = _urls()[kind]
    config = Config.from_url(url, redis=RedisConfig(sentinel_password=SECRET), lock=url)
    app = Machinery(config=config)
    objects: list[object] = [config, config.redis, app, mask_url(url)]
    if kind.startswith("redis") and kind != "redis socket":
        objects.append(parse_redis_url(url))
    objects += [app.broker, app.backend]  # built, not connected
    text = _shown(*objects)
    assert SECRET not in text, text
    assert SECRET not in all_logs()
    app.close()


@pytest.mark.parametrize("kind", list(_urls()))
def test_passwords_are_masked_in_errors_and_logs(kind: str, all_logs: Callable[[], str]) -> None:
    """Every way a producer, a result reader and a worker can fail on an unreachable or
    misconfigured server: the error texts and every log line are free of the password."""
    url = _urls()[kind]
    errors: list[str] = []
    app = Machinery(url)
    if kind.startswith("amqp"):  # the same classes with a short retry budget (20 s each)
        from machinery_compat.backends.amqp import AMQPBackend
        from machinery_compat.brokers.amqp import AMQPBroker

        app._broker = AMQPBroker(url, publish_budget=0.5)
        app._backend = AMQPBackend(url, budget=0.5)
    try:
        app.send_task("add", args=[1])
    except Exception as e:
        errors.append(_error_text(e))
    try:
        app.AsyncResult("task_x").get(timeout=0.5)
    except Exception as e:
        errors.append(_error_text(e))
    worker = app.worker(concurrency=1, poll_timeout=0.1)
    worker.start()
    time.sleep(1.0)
    worker.stop(timeout=10)
    app.close()
    assert len(errors) == 2, errors
    text = "\n".join(errors) + all_logs()
    assert SECRET not in text, [line for line in text.splitlines() if SECRET in line][:5]


def test_wrong_redis_password_is_not_echoed(redis_server_factory: Callable[..., RedisServer],
                                            all_logs: Callable[[], str]) -> None:
    server = redis_server_factory()
    with server.client() as admin:
        admin.config_set("requirepass", "the-right-one")
    try:
        app = Machinery(f"redis://{SECRET}@127.0.0.1:{server.port}/0")
        with pytest.raises(Exception) as info:
            app.send_task("add", args=[1])
        text = _error_text(info.value) + all_logs()
        assert "WRONGPASS" in text or "invalid" in text.lower()
        assert SECRET not in text
        app.close()
    finally:
        with server.client(password="the-right-one") as admin:
            admin.config_set("requirepass", "")


def test_bad_urls_are_reported_masked() -> None:
    for url in (f"redis://{SECRET}@host:notaport/0", f"redis://{SECRET}@host/0?ssl_ca_certs=/x",
                f"rediss://{SECRET}@host/0?ssl_bogus=1", f"ftp://u:{SECRET}@host/"):
        with pytest.raises(ConfigError) as info:
            Machinery(url).broker  # noqa: B018 - building it is the test
        assert SECRET not in _error_text(info.value), url
