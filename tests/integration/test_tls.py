"""TLS: ``rediss://`` against a TLS-only redis-server and ``amqps://`` against RabbitMQ, both
with a throwaway CA made here (tests.services.make_tls_files).

What is checked: a producer + worker round trip over TLS (with and without client
certificates), that the connection really is TLS (plain TCP to the port fails), that a wrong
CA, a missing client certificate or plain TCP fail fast with a clear error instead of
hanging, and that no password (URL password, key passphrase) shows up in reprs, logs or
errors.  URL option parsing is checked without a server at the top.
"""

from __future__ import annotations

import logging
import re
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from machinery_compat import Machinery
from machinery_compat._redis import client_for
from machinery_compat.brokers.redis import RedisBroker
from machinery_compat.config import AMQPConfig, Config, mask_url, parse_redis_url
from machinery_compat.config.redis_url import TLS_QUERY_OPTIONS, RedisTLSOptions
from machinery_compat.exceptions import (
    BackendError,
    BrokerConnectionError,
    ConfigError,
    MachineryCompatError,
    PublishError,
)
from machinery_compat.protocol import Signature
from tests.services import (
    RabbitMQServer,
    RedisTLSServer,
    TLSFiles,
    make_tls_files,
    start_or_report,
)

SECRET = "S3cr3t-Pw"
KEY_SECRET = "K3y-Pa55"


# -- URL options (no server) ------------------------------------------------------------


def test_rediss_query_options_are_read() -> None:
    url = (f"rediss://me:{SECRET}@redis.example:6380/2?ssl_ca_certs=/etc/ca%20dir/ca.pem"
           f"&ssl_certfile=/me.pem&ssl_keyfile=/me.key&ssl_password={KEY_SECRET}"
           "&ssl_cert_reqs=optional&ssl_check_hostname=false")
    parsed = parse_redis_url(url)
    assert (parsed.host, parsed.port, parsed.db, parsed.username, parsed.password, parsed.tls) == (
        "redis.example", 6380, 2, "me", SECRET, True)
    assert parsed.tls_options == RedisTLSOptions(
        ca_certs="/etc/ca dir/ca.pem", certfile="/me.pem", keyfile="/me.key",
        password=KEY_SECRET, cert_reqs="optional", check_hostname=False)
    assert parsed.to_redis_py_kwargs() == {
        "host": "redis.example", "port": 6380, "db": 2, "username": "me", "password": SECRET,
        "ssl": True, "ssl_ca_certs": "/etc/ca dir/ca.pem", "ssl_certfile": "/me.pem",
        "ssl_keyfile": "/me.key", "ssl_password": KEY_SECRET, "ssl_cert_reqs": "optional",
        "ssl_check_hostname": False,
    }
    for shown in (repr(parsed), repr(parsed.tls_options), mask_url(url),
                  repr(Config.from_url(url)), repr(Machinery(url))):
        assert SECRET not in shown and KEY_SECRET not in shown, shown
    assert "ssl_password=***" in mask_url(url)
    assert set(TLS_QUERY_OPTIONS) == {
        "ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile", "ssl_password",
        "ssl_cert_reqs", "ssl_check_hostname"}


def test_rediss_defaults_verify_everything() -> None:
    parsed = parse_redis_url("rediss://h:6380/0?ssl_ca_certs=/ca.pem")
    assert parsed.tls_options is not None
    assert parsed.tls_options.cert_reqs == "required" and parsed.tls_options.check_hostname
    assert parse_redis_url("rediss://h:6380/0").tls_options is None  # system CAs, verified


def test_cert_reqs_none_disables_the_host_check_and_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="machinery_compat")
    kwargs = parse_redis_url(f"rediss://{SECRET}@h/0?ssl_cert_reqs=NONE").to_redis_py_kwargs()
    assert kwargs["ssl_cert_reqs"] == "none" and kwargs["ssl_check_hostname"] is False
    messages = [r.getMessage() for r in caplog.records]
    assert any("not verified" in m for m in messages)
    assert not any(SECRET in m for m in messages)


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("ssl_ca_cert=/ca.pem", "unknown TLS option 'ssl_ca_cert'"),  # misspelt
        ("ssl=true", "unknown TLS option 'ssl'"),
        ("ssl_ca_certs=/a&ssl_ca_certs=/b", "given twice"),
        ("ssl_cert_reqs=maybe", "ssl_cert_reqs must be one of required, optional, none"),
        ("ssl_check_hostname=perhaps", "ssl_check_hostname must be true or false"),
        ("ssl_ca_certs=", "ssl_ca_certs is empty"),
        (f"ssl_keyfile=/k.pem&ssl_password={KEY_SECRET}", "need ssl_certfile"),
        ("ssl_ca_certs=%ff", "unreadable query string"),
    ],
)
def test_bad_tls_options_are_refused(query: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error) as info:
        parse_redis_url(f"rediss://:{SECRET}@h:6380/0?{query}")
    assert SECRET not in str(info.value) and KEY_SECRET not in str(info.value)


def test_tls_options_on_a_plain_url_are_refused() -> None:
    """A redis:// URL carrying TLS options is a mistake that would send data in clear text."""
    with pytest.raises(ConfigError, match="TLS options need a rediss:// URL"):
        parse_redis_url("redis://h:6379/0?ssl_ca_certs=/ca.pem")


def test_other_query_parameters_are_still_ignored(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="machinery_compat")
    parsed = parse_redis_url("rediss://h/3?timeout=5&password=zz&ssl_ca_certs=/ca.pem")
    assert parsed.db == 3 and parsed.password is None
    assert parsed.tls_options == RedisTLSOptions(ca_certs="/ca.pem")
    [message] = [r.getMessage() for r in caplog.records]
    assert "ignored: password, timeout" in message and "zz" not in message


def test_ssl_context_and_url_options_are_exclusive() -> None:
    with pytest.raises(ConfigError, match="not both"):
        client_for("rediss://127.0.0.1:1/0?ssl_ca_certs=/ca.pem",
                   ssl_context=ssl.create_default_context())


# -- a TLS-only redis-server ------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    """A second CA that signed nothing the servers use."""
    return make_tls_files(tmp_path_factory.mktemp("tls-other"), name="mc-other")


@pytest.fixture(scope="module")
def redis_tls(tls_files: TLSFiles) -> Iterator[RedisTLSServer]:
    server = start_or_report(lambda: RedisTLSServer(tls_files))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def redis_mtls(tls_files: TLSFiles) -> Iterator[RedisTLSServer]:
    """Requires a client certificate signed by the CA (``tls-auth-clients yes``) and
    the password ``SECRET``."""
    server = start_or_report(lambda: RedisTLSServer(tls_files, auth_clients=True))
    with server.client() as admin:
        admin.config_set("requirepass", SECRET)
    try:
        yield server
    finally:
        with server.client(password=SECRET) as admin:  # teardown's SHUTDOWN needs none
            admin.config_set("requirepass", "")
        server.close()


def _with_password(url: str) -> str:
    return url.replace("rediss://", f"rediss://:{SECRET}@", 1)


def _round_trip(url: str, tls_config: ssl.SSLContext | None = None) -> None:
    """Send ``add`` over ``url`` and have a worker on the same URL run it."""
    queue = f"tls_{time.monotonic_ns()}"
    # AMQP: a direct exchange routes default-routed tasks by the binding key, so the queue's
    # binding must be its name, or what is sent before the worker has bound its queue goes
    # only to the producer's own queue named by the key (Go's AdjustRoutingKey)
    amqp = {"amqp": AMQPConfig(binding_key=queue)} if url.startswith("amqp") else {}
    config = Config.from_url(url, default_queue=queue, tls_config=tls_config, **amqp)
    producer = Machinery(config=config)
    worker_app = Machinery(config=config)

    @worker_app.task(name="add")
    def add(*nums: int) -> int:
        return sum(nums)

    worker = worker_app.worker(concurrency=2, poll_timeout=0.1, delayed_poll_interval=0.05)
    worker.start()
    try:
        results = [producer.send_task("add", args=[i, i]) for i in range(20)]
        assert [r.get(timeout=20) for r in results] == [2 * i for i in range(20)]
    finally:
        worker.stop(timeout=10)
        producer.close()
        worker_app.close()
    assert worker.outcomes == {"run": 20}


def test_redis_round_trip_over_tls(redis_tls: RedisTLSServer) -> None:
    _round_trip(redis_tls.url)
    with redis_tls.client() as admin:  # the states really are on that server
        assert admin.dbsize() >= 20


def test_the_redis_server_speaks_tls_only(redis_tls: RedisTLSServer) -> None:
    """Plain TCP to the TLS port is refused at once (the client is not left hanging)."""
    app = Machinery(broker=redis_tls.bare_url.replace("rediss://", "redis://"))
    started = time.monotonic()
    with pytest.raises(PublishError, match=r"(?i)connection|closed|reset"):
        app.send_task("add", args=[1])
    assert time.monotonic() - started < 5


def test_redis_round_trip_with_client_certificate(redis_mtls: RedisTLSServer) -> None:
    _round_trip(_with_password(redis_mtls.url))


def test_missing_client_certificate_fails_clearly(
    redis_mtls: RedisTLSServer, caplog: pytest.LogCaptureFixture
) -> None:
    url = _with_password(f"{redis_mtls.bare_url}?ssl_ca_certs={redis_mtls.tls.ca}")
    app = Machinery(broker=url)
    started = time.monotonic()
    with pytest.raises(PublishError) as info:
        app.send_task("add", args=[1])
    assert time.monotonic() - started < 5
    text = f"{info.value} {info.value!r} {info.value.__cause__!r}"
    # the server's TLS 1.3 alert, passed on; or, when the server closes before the client's
    # first write has read the alert, OpenSSL's EOF
    assert re.search(r"CERTIFICATE_REQUIRED|EOF occurred in violation of protocol", text), text
    assert SECRET not in text
    assert not any(SECRET in r.getMessage() for r in caplog.records)


def test_wrong_ca_fails_fast_with_a_clear_error(
    redis_tls: RedisTLSServer, other_ca: TLSFiles, caplog: pytest.LogCaptureFixture
) -> None:
    url = _with_password(f"{redis_tls.bare_url}?ssl_ca_certs={other_ca.ca}")
    app = Machinery(broker=url)
    started = time.monotonic()
    with pytest.raises(PublishError, match="CERTIFICATE_VERIFY_FAILED") as info:
        app.send_task("add", args=[1])
    assert time.monotonic() - started < 5
    with pytest.raises(BackendError, match="CERTIFICATE_VERIFY_FAILED"):
        app.AsyncResult("task_x").get(timeout=1)
    # a worker says why it cannot fetch, keeps trying, and stops when asked
    worker = app.worker(concurrency=1, poll_timeout=0.1)
    worker.start()
    try:
        deadline = time.monotonic() + 10
        while not any("CERTIFICATE_VERIFY_FAILED" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "no log line about the certificate"
            time.sleep(0.05)
    finally:
        stopping = time.monotonic()
        worker.stop(timeout=10)
        assert time.monotonic() - stopping < 10
    shown = [str(info.value), repr(info.value), *(r.getMessage() for r in caplog.records)]
    assert not any(SECRET in s for s in shown)


def test_system_trust_store_does_not_trust_a_private_ca(redis_tls: RedisTLSServer) -> None:
    """``rediss://`` without options verifies against the system's CAs (no silent
    'accept anything')."""
    with pytest.raises(PublishError, match="CERTIFICATE_VERIFY_FAILED"):
        Machinery(broker=redis_tls.bare_url).send_task("add", args=[1])


def test_redis_with_an_ssl_context(redis_mtls: RedisTLSServer, tls_files: TLSFiles) -> None:
    """``client_for(url, ssl_context=...)``: Go's ``TLSConfig`` counterpart."""
    ctx = ssl.create_default_context(cafile=str(tls_files.ca))
    ctx.load_cert_chain(str(tls_files.client_cert), str(tls_files.client_key))
    url = _with_password(redis_mtls.bare_url)
    client = client_for(url, ssl_context=ctx)
    broker = RedisBroker(url, "ctx_queue", client=client)
    broker.publish(Signature(uuid="task_ctx", name="add"))
    [delivery] = broker.fetch(["ctx_queue"], 1, 1.0)
    assert Signature.from_json(delivery.body).uuid == "task_ctx"
    # an SSLContext is used only for rediss:// (like AMQP's tls_config for amqps://)
    bad = ssl.create_default_context()  # trusts the system CAs only
    with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
        client_for(url, ssl_context=bad).ping()


def test_config_tls_config_applies_to_rediss(redis_mtls: RedisTLSServer, tls_files: TLSFiles) -> None:
    """``Config(tls_config=ctx)`` (Go's ``TLSConfig``) reaches the Redis broker and backend."""
    ctx = ssl.create_default_context(cafile=str(tls_files.ca))
    ctx.load_cert_chain(str(tls_files.client_cert), str(tls_files.client_key))
    _round_trip(_with_password(redis_mtls.bare_url), tls_config=ctx)


# -- RabbitMQ with TLS --------------------------------------------------------------------


@pytest.fixture(scope="module")
def rabbitmq_tls(tls_files: TLSFiles) -> Iterator[RabbitMQServer]:
    """A private node with an amqps listener that requires a client certificate."""
    node = start_or_report(lambda: RabbitMQServer(tls=tls_files, tls_client_certs=True))
    try:
        yield node
    finally:
        node.close()


def _client_context(files: TLSFiles, ca: Path | None = None,
                    client_cert: bool = True) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca or files.ca))
    if client_cert:
        ctx.load_cert_chain(str(files.client_cert), str(files.client_key))
    return ctx


@pytest.mark.rabbitmq
def test_amqp_round_trip_over_tls(rabbitmq_tls: RabbitMQServer, tls_files: TLSFiles) -> None:
    url = rabbitmq_tls.tls_url_for(rabbitmq_tls.new_vhost())
    _round_trip(url, tls_config=_client_context(tls_files))


@pytest.mark.rabbitmq
@pytest.mark.parametrize("problem", ["wrong CA", "no client certificate"])
def test_amqp_tls_failures_are_clear(
    rabbitmq_tls: RabbitMQServer, tls_files: TLSFiles, other_ca: TLSFiles, problem: str
) -> None:
    ctx = (_client_context(tls_files, ca=other_ca.ca) if problem == "wrong CA"
           else _client_context(tls_files, client_cert=False))
    url = rabbitmq_tls.tls_url_for("/")
    config = Config.from_url(url, tls_config=ctx)
    app = Machinery(config=config)
    started = time.monotonic()
    with pytest.raises((PublishError, BrokerConnectionError, BackendError)) as info:
        app.send_task("add", args=[1])
    elapsed = time.monotonic() - started
    assert isinstance(info.value, MachineryCompatError)
    text = f"{info.value} {info.value.__cause__!r}"
    assert "guest:guest" not in text
    if problem == "wrong CA":
        assert "CERTIFICATE_VERIFY_FAILED" in text
    # bounded by the publish retry budget (20 s), never a hang
    assert elapsed < 40, elapsed
