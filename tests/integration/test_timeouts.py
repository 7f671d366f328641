"""``redis.read_timeout`` / ``write_timeout`` / ``connect_timeout`` bound every Redis call.

A stalled Redis is simulated with ``CLIENT PAUSE <ms> ALL`` sent from a separate connection
to a private server: every command (and every new connection's handshake) waits until the
pause ends.  The time bounds asserted here prove "does not block as long as Redis does", not
speed: with 1 s timeouts a call must give up well before a 6 s pause is over.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest

from machinery_compat import Machinery, PublishError
from machinery_compat.config import Config, RedisConfig
from machinery_compat.exceptions import BackendError
from tests.services import RedisServer

from .conftest import wait_for

PAUSE_MS = 6000
#: a hang bound, far above the 1 s timeouts and far below the 6 s pause
BOUND = 4.0

ServerFactory = Callable[..., RedisServer]


def _app(url: str, **redis_options: Any) -> Machinery:
    redis_options = {"read_timeout": 1, "write_timeout": 1, "connect_timeout": 1,
                     **redis_options}
    cfg = Config.from_url(url, default_queue="timeout_tasks", redis=RedisConfig(**redis_options))
    app = Machinery(config=cfg)

    @app.task(name="add")
    def add(*nums: int) -> int:
        return sum(nums)

    return app


def _pause(server: RedisServer) -> float:
    """Stall ``server`` for PAUSE_MS from its own connection; returns when the pause ends."""
    admin = server.client()
    admin.execute_command("CLIENT", "PAUSE", PAUSE_MS, "ALL")
    admin.close()
    return time.monotonic() + PAUSE_MS / 1000


def _try_send(app: Machinery) -> Any:
    try:
        return app.send_task("add", args=[2, 3])
    except PublishError:
        return None


def _timed(fn: Callable[[], Any]) -> float:
    start = time.monotonic()
    fn()
    return time.monotonic() - start


# -- configuration reaches redis-py ------------------------------------------------------------


def test_configured_timeouts_reach_redis_py_connection_kwargs() -> None:
    url = "redis://127.0.0.1:1/0"  # nothing is sent: building pools does not connect
    app = Machinery(config=Config.from_url(url, redis=RedisConfig(
        read_timeout=2, write_timeout=3, connect_timeout=4)))
    for client in (app.broker.client, app.backend.client):  # type: ignore[attr-defined]
        kw = client.connection_pool.connection_kwargs
        assert kw["socket_timeout"] == 3  # redis-py has one for both: the larger
        assert kw["socket_connect_timeout"] == 4
        assert kw["retry"].get_retries() == 0  # one attempt per call: the bound holds
    # broker and backend still share one pool (PENDING + publish in one write)
    assert app.broker.fast.pool is app.backend.fast.pool  # type: ignore[attr-defined]


def test_machinery_defaults_and_zero_means_no_timeout() -> None:
    url = "redis://127.0.0.1:1/1"
    kw = Machinery(broker=url).broker.client.connection_pool.connection_kwargs  # type: ignore[attr-defined]
    assert (kw["socket_timeout"], kw["socket_connect_timeout"]) == (15, 15)
    app = Machinery(config=Config.from_url(url, redis=RedisConfig(
        read_timeout=0, write_timeout=5, connect_timeout=0)))
    kw = app.backend.client.connection_pool.connection_kwargs  # type: ignore[attr-defined]
    assert (kw["socket_timeout"], kw["socket_connect_timeout"]) == (None, None)
    # Go's nil redis section has 15 s timeouts too
    app = Machinery(config=Config.from_url(url, redis=None))
    kw = app.broker.client.connection_pool.connection_kwargs  # type: ignore[attr-defined]
    assert (kw["socket_timeout"], kw["socket_connect_timeout"]) == (15, 15)


def test_timeouts_from_yaml() -> None:
    cfg = Config.from_yaml(io.StringIO(
        "broker: redis://127.0.0.1:1/2\nredis:\n  read_timeout: 2\n  write_timeout: 2\n"))
    kw = Machinery(config=cfg).broker.client.connection_pool.connection_kwargs  # type: ignore[attr-defined]
    assert (kw["socket_timeout"], kw["socket_connect_timeout"]) == (2, 15)


# -- blocking fetch --------------------------------------------------------------------------


def test_blpop_waits_its_poll_period_plus_the_read_timeout(
    redis_server_factory: ServerFactory,
) -> None:
    server = redis_server_factory()
    broker = _app(server.url).broker
    # BLPOP for 2 s with a 1 s read timeout: the read waits 2 + 1 s, no spurious timeout
    assert broker.fetch(["timeout_tasks"], 1, 2.0) == []
    conn = broker.fast._conn()  # type: ignore[attr-defined]
    assert conn._sock.gettimeout() == 1.0  # back to the read timeout afterwards


# -- a stalled Redis -----------------------------------------------------------------------------


def test_send_task_raises_publish_error_while_redis_stalls(
    redis_server_factory: ServerFactory,
) -> None:
    server = redis_server_factory()
    warm = _app(server.url)
    warm.send_task("add", args=[1, 1])  # this thread's connection exists
    cold = _app(server.url, connect_timeout=2)  # its own pool: connects during the pause
    end = _pause(server)

    for app in (warm, cold):
        def send(app: Machinery = app) -> None:
            with pytest.raises(PublishError, match="may not have been stored") as info:
                app.send_task("add", args=[1, 2])
            assert "task_" in str(info.value)

        assert _timed(send) < BOUND
    assert time.monotonic() < end  # both gave up while Redis was still stalled

    res = wait_for(lambda: _try_send(warm), timeout=PAUSE_MS / 1000 + 10, what="Redis back")
    assert res.state == "PENDING"
    assert _try_send(cold) is not None


def test_async_result_get_does_not_block_past_its_timeout(
    redis_server_factory: ServerFactory,
) -> None:
    server = redis_server_factory()
    app = _app(server.url)
    res = app.send_task("add", args=[1, 1])
    end = _pause(server)

    def get() -> None:
        with pytest.raises(BackendError):  # the read timed out (or ResultTimeout, a subclass)
            res.get(timeout=1)

    assert _timed(get) < BOUND
    assert time.monotonic() < end
    wait_for(lambda: _try_send(app), timeout=PAUSE_MS / 1000 + 10, what="Redis back")
    assert res.state == "PENDING"


def test_worker_logs_the_stall_and_recovers(
    redis_server_factory: ServerFactory, caplog: pytest.LogCaptureFixture,
) -> None:
    server = redis_server_factory()
    # a 2 s BLPOP with a 1 s read timeout: fetching must not time out while idle
    app = _app(server.url, normal_tasks_poll_period=2000)
    w = app.worker(concurrency=2).start()
    try:
        assert app.send_task("add", args=[1, 1]).get(timeout=10) == 2
        time.sleep(2.5)  # idle through a full BLPOP
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
        end = _pause(server)
        wait_for(lambda: any("broker unreachable" in r.getMessage() for r in caplog.records),
                 timeout=BOUND, what="the worker to log the broker error")
        assert time.monotonic() < end
        res = wait_for(lambda: _try_send(app), timeout=PAUSE_MS / 1000 + 10, what="Redis back")
        assert res.get(timeout=15) == 5
    finally:
        w.stop(timeout=10)


def test_a_connection_the_server_closed_while_idle_is_replaced(redis_url: str,
                                                               redis_client: Any) -> None:
    """A thread's connection that Redis closed while it sat idle (a restart, its ``timeout``,
    CLIENT KILL) is noticed before the next send, which goes on a new connection: the send
    succeeds instead of failing with 'Connection closed by server'."""
    from machinery_compat import _redis

    app = Machinery(redis_url, default_queue="idle_q")
    try:
        app.send_task("add", args=[1])
        killed = redis_client.client_kill_filter(_type="normal", skipme=True)
        assert killed >= 1
        time.sleep(_redis.IDLE_CHECK + 0.2)
        app.send_task("add", args=[2])
        assert redis_client.llen("idle_q") == 2
    finally:
        app.close()
