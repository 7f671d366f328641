"""machinery_compat._gil_io: socket writes and reads that keep the GIL when they cannot
block, and fall back to the ordinary calls for whatever they cannot do at once."""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from machinery_compat import _gil_io


@pytest.fixture(autouse=True, params=["other threads", "alone"])
def threads(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test both ways: libc's GIL-keeping calls (another thread might want the GIL),
    and the plain socket calls a lone thread takes."""
    n = 2 if request.param == "other threads" else 1
    monkeypatch.setattr(_gil_io, "_active_count", lambda: n)
    return str(request.param)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_libc_is_used_where_the_platform_has_msg_dontwait() -> None:
    assert (_gil_io._CALLS is not None) == (sys.platform != "win32"
                                           and hasattr(socket, "MSG_DONTWAIT"))


def test_libc_calls_only_when_another_thread_might_want_the_gil(
        threads: str, pair: tuple[socket.socket, socket.socket],
        monkeypatch: pytest.MonkeyPatch) -> None:
    if _gil_io._CALLS is None:
        pytest.skip("no GIL-keeping libc calls on this platform")
    calls: list[str] = []
    send, recv = _gil_io._CALLS

    def counted(name: str, fn: Any) -> Any:
        def call(*args: Any) -> Any:
            calls.append(name)
            return fn(*args)
        return call

    monkeypatch.setattr(_gil_io, "_CALLS", (counted("send", send), counted("recv", recv)))
    a, b = pair
    _gil_io.send_all(a, b"ping")
    buf = bytearray(16)
    assert bytes(buf[:_gil_io.recv_into(b, buf)]) == b"ping"
    assert calls == (["send", "recv"] if threads == "other threads" else [])


def test_a_small_write_and_a_waiting_read(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    _gil_io.send_all(a, b"*1\r\n$4\r\nPING\r\n")
    buf = bytearray(64)
    n = _gil_io.recv_into(b, buf)
    assert bytes(buf[:n]) == b"*1\r\n$4\r\nPING\r\n"


def test_any_bytes_like_is_written(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    for data in (bytearray(b"frame"), memoryview(b"--frame--")[2:7]):
        _gil_io.send_all(a, data)
    buf = bytearray(64)
    got = bytearray()
    while len(got) < 10:
        got += buf[:_gil_io.recv_into(b, buf)]
    assert bytes(got) == b"frameframe"


def test_a_read_with_nothing_waiting_blocks_as_the_socket_does(
        pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    b.settimeout(0.05)
    with pytest.raises(TimeoutError):
        _gil_io.recv_into(b, bytearray(16))
    b.settimeout(None)
    threading.Timer(0.05, lambda: a.sendall(b"late")).start()
    buf = bytearray(16)
    assert bytes(buf[:_gil_io.recv_into(b, buf)]) == b"late"  # it waited for them


def test_a_write_larger_than_the_socket_buffer_arrives_whole_and_in_order(
        pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    data = bytes(range(256)) * 40_000  # ~10 MB: the kernel takes part, sendall the rest
    got = bytearray()

    def read() -> None:
        buf = bytearray(65536)
        while len(got) < len(data):
            n = _gil_io.recv_into(b, buf)
            assert n > 0
            got.extend(buf[:n])

    t = threading.Thread(target=read)
    t.start()
    _gil_io.send_all(a, data)
    t.join(10)
    assert bytes(got) == data


def test_end_of_stream_and_errors_are_the_sockets_own(
        pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    assert _gil_io.recv_nowait(b, bytearray(16)) is None  # nothing there yet
    a.close()
    assert _gil_io.recv_nowait(b, bytearray(16)) == 0
    assert _gil_io.recv_into(b, bytearray(16)) == 0  # the peer closed
    with pytest.raises(OSError):  # EPIPE from the fallback sendall, not a silent loss
        _gil_io.send_all(b, b"x" * 100)
