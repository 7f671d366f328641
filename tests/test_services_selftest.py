"""Self-test of the real-service fixtures in tests/services.py."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests import services
from tests.services import RedisServer, ServiceUnavailable, free_port


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert 0 < port < 65536
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_redis_url_is_flushed_and_client_is_bytes(
    redis_server: RedisServer, redis_url: str, redis_client: redis.Redis
) -> None:
    assert redis_url == f"redis://127.0.0.1:{redis_server.port}/0"
    assert redis_client.dbsize() == 0
    redis_client.set("k", "v")
    assert redis_client.get("k") == b"v"


def test_redis_url_flushes_between_tests(redis_client: redis.Redis) -> None:
    assert redis_client.get("k") is None


def test_session_server_has_dbs_for_other_suites(redis_server: RedisServer) -> None:
    # DBs 0..15 are tests/' (redis_url flushes them), the rest another suite's (interop/tests)
    assert services.SESSION_REDIS_DATABASES > services.SHARED_REDIS_DBS == 16
    with redis_server.client() as client:
        databases = int(client.config_get("databases")["databases"])
    assert databases == services.SESSION_REDIS_DATABASES
    with redis_server.client(db=3) as mine, \
            redis_server.client(db=services.SHARED_REDIS_DBS) as theirs:
        mine.set("selftest:mine", "1")
        theirs.set("selftest:theirs", "1")


def test_redis_url_flushes_only_the_shared_dbs(redis_server: RedisServer, redis_url: str) -> None:
    # (after the test above)
    with redis_server.client(db=3) as mine, \
            redis_server.client(db=services.SHARED_REDIS_DBS) as theirs:
        assert mine.get("selftest:mine") is None
        assert theirs.get("selftest:theirs") == b"1"
        theirs.delete("selftest:theirs")


def test_marked_redis(request: pytest.FixtureRequest, redis_url: str) -> None:
    assert request.node.get_closest_marker("redis") is not None


def test_stop_and_restart_on_same_port(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    server = redis_server_factory()
    port, url = server.port, server.url
    retry = Retry(NoBackoff(), 0)  # fail fast while the server is down
    with server.client(socket_connect_timeout=1, retry=retry) as client:
        client.set("k", "v")
        server.stop()
        assert not server.running
        with pytest.raises(redis.ConnectionError):
            client.ping()
        server.start()
        assert server.running
        assert (server.port, server.url) == (port, url)
        assert client.ping()  # the same client reconnects
        assert client.get("k") is None  # nothing persisted


def test_kill_then_start(redis_server_factory: Callable[..., RedisServer]) -> None:
    server = redis_server_factory()
    server.kill()
    assert not server.running
    server.start()
    with server.client() as client:
        assert client.ping()


def test_context_manager_cleans_up() -> None:
    try:
        server = RedisServer()
    except ServiceUnavailable as exc:
        services.missing_service(str(exc))
    with server:
        workdir = server.dir
        assert workdir.is_dir()
        assert server.pid is not None
    assert not server.running
    assert not workdir.exists()


def test_session_server_restarted_by_redis_url(redis_server: RedisServer) -> None:
    # Simulates a test that stopped the shared server and did not restart it.
    redis_server.stop()
    assert not redis_server.running


def test_session_server_back_after_outage(redis_server: RedisServer, redis_url: str) -> None:
    assert redis_server.running
    with redis_server.client() as client:
        assert client.ping()


# -- missing service: skip locally, fail under CI ---------------------------


@pytest.fixture
def no_redis_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_SERVER_BIN", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)


def test_missing_binary_raises(no_redis_binary: None) -> None:
    with pytest.raises(ServiceUnavailable, match="redis-server not found"):
        RedisServer()


@pytest.mark.parametrize("ci", [None, "", "false"])
def test_missing_binary_skips_locally(
    no_redis_binary: None, monkeypatch: pytest.MonkeyPatch, ci: str | None
) -> None:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception, match="redis-server not found"):
        services.start_or_report(RedisServer)


@pytest.mark.parametrize("ci", ["true", "TRUE", "1"])
def test_missing_binary_fails_under_ci(
    no_redis_binary: None, monkeypatch: pytest.MonkeyPatch, ci: str
) -> None:
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match=r"redis-server not found.*CI=true"):
        services.start_or_report(RedisServer)


def test_bad_binary_reports_log(tmp_path: Path) -> None:
    # A "redis-server" that exits at once: start() must fail with a clear error.
    fake = tmp_path / "fake-redis-server"
    fake.write_text("#!/bin/sh\necho 'boom: cannot start' >&2\nexit 3\n")
    fake.chmod(0o755)
    server = RedisServer(binary=str(fake))
    try:
        with pytest.raises(
            services.ServiceError, match=r"(?s)exited with status 3.*boom: cannot start"
        ):
            server.start()
        assert not server.running
    finally:
        server.close()


# -- moto server (AWS) ---------------------------------------------------------


def test_moto_endpoint_serves_sqs_and_dynamodb(
    request: pytest.FixtureRequest, moto_server: services.MotoServer, moto_endpoint: str
) -> None:
    import os

    assert request.node.get_closest_marker("aws") is not None
    assert moto_endpoint == f"http://127.0.0.1:{moto_server.port}"
    # The default credential chain sees only the dummy credentials while the fixture runs.
    assert os.environ["AWS_ACCESS_KEY_ID"] == "testing"
    assert os.environ["AWS_DEFAULT_REGION"] == "us-east-1"
    sqs = moto_server.client("sqs")
    url = sqs.create_queue(QueueName="selftest_q")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="hello")
    got = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1)["Messages"]
    assert [m["Body"] for m in got] == ["hello"]
    dynamodb = moto_server.client("dynamodb")
    dynamodb.create_table(
        TableName="selftest_t",
        KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    assert "selftest_t" in dynamodb.list_tables()["TableNames"]


def test_moto_reset_forgets_everything(moto_server: services.MotoServer) -> None:
    sqs = moto_server.client("sqs")
    sqs.create_queue(QueueName="selftest_reset")
    moto_server.reset()
    assert "QueueUrls" not in sqs.list_queues(QueueNamePrefix="selftest_reset")


def test_moto_private_server_restarts_on_same_port() -> None:
    try:
        server = services.MotoServer()
    except ServiceUnavailable as exc:
        services.missing_service(str(exc))
    with server:
        workdir, endpoint = server.dir, server.endpoint_url
        assert server.pid is not None
        server.stop()
        assert not server.running
        server.start()
        assert server.endpoint_url == endpoint
        assert server.client("sqs").list_queues().get("QueueUrls", []) == []
        assert server.log_path.is_file()
    assert not server.running
    assert not workdir.exists()


@pytest.fixture
def no_moto(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def fake_import(name: str, *args: object, **kwargs: object) -> object:
        if name == "moto.server" or name.startswith("moto"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", fake_import)


def test_missing_moto_skips_locally(no_moto: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"moto\[server\] or boto3 is not installed"):
        services.start_or_report(services.MotoServer)


def test_missing_moto_fails_under_ci(no_moto: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"moto\[server\].*CI=true"):
        services.start_or_report(services.MotoServer)


# -- RabbitMQ ------------------------------------------------------------------------------


def test_kept_vhost_survives_the_fresh_vhost_pool(
    request: pytest.FixtureRequest, rabbitmq_server: services.RabbitMQServer,
) -> None:
    assert request.node.get_closest_marker("rabbitmq") is not None
    name = "selftest-kept"
    assert rabbitmq_server.ensure_vhost(name) == name
    assert rabbitmq_server.ensure_vhost(name) == name  # idempotent
    try:
        for _ in range(30):  # past a refill (25), which deletes the vhosts handed out before
            rabbitmq_server.new_vhost()
        assert name in rabbitmq_server.ctl("list_vhosts", "name").split()
        rabbitmq_server.connection(name).close()  # guest may use it
    finally:
        rabbitmq_server.ctl("delete_vhost", name)
    with pytest.raises(ValueError, match="vhost name"):
        rabbitmq_server.ensure_vhost('bad"name')


def test_session_fixtures_started_once(
    redis_server: RedisServer, rabbitmq_server: services.RabbitMQServer,
    moto_server: services.MotoServer,
) -> None:
    # (interop/tests/test_interop_services.py checks the same from the other tree)
    # (other session services, e.g. memcached or FerretDB, are there when tests used them)
    mine = {"redis_server": redis_server, "rabbitmq_server": rabbitmq_server,
            "moto_server": moto_server}
    assert {k: services.session_servers.get(k) for k in mine} == mine
    assert set(services.session_starts) == set(services.session_servers)
    assert set(services.session_starts.values()) == {1}, services.session_starts
