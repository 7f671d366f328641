"""The chunked py-amqp transport of plain AMQP connections (``machinery_compat._amqp``), on a
socket pair: frames split anywhere, several in one ``recv``, partial frames kept over a
timeout, a bad frame end, the peer going away."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest
from amqp.exceptions import UnexpectedFrame

from machinery_compat._amqp import Endpoint


def frame(kind: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + b"\xce"


@pytest.fixture
def pair() -> Iterator[tuple[Any, socket.socket]]:
    """(transport reading one end, the other end)."""
    conn = Endpoint.from_url("amqp://guest:guest@127.0.0.1:1/").connection()
    connection_cls = conn.transport.Connection
    transport = connection_cls.Transport(None, "127.0.0.1:1", 1)  # not connected
    a, b = socket.socketpair()
    transport.sock = a
    transport._setup_transport()
    transport.connected = True
    try:
        yield transport, b
    finally:
        a.close()
        b.close()


def test_plain_connections_use_the_chunked_transport(pair: tuple[Any, socket.socket]) -> None:
    transport, _ = pair
    assert type(transport).__name__ == "_BufferedTCPTransport"
    assert transport.can_wait_itself()


def test_frames_in_one_recv_are_parsed_from_the_buffer(pair: tuple[Any, socket.socket]) -> None:
    transport, peer = pair
    frames = [frame(1, 1, b"method"), frame(2, 1, b"header"), frame(3, 1, b"x" * 5000)]
    peer.sendall(b"".join(frames))
    got = [transport.read_frame_within(1.0) for _ in frames]
    assert got == [(1, 1, b"method"), (2, 1, b"header"), (3, 1, b"x" * 5000)]
    assert not transport._read_buffer


def test_partial_frame_survives_a_timeout(pair: tuple[Any, socket.socket]) -> None:
    transport, peer = pair
    data = frame(1, 2, b"first") + frame(3, 2, b"second body")
    cut = len(frame(1, 2, b"first")) + 5  # inside the second frame's header
    peer.sendall(data[:cut])
    assert transport.read_frame_within(1.0) == (1, 2, b"first")
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        transport.read_frame_within(0.05)
    assert 0.04 <= time.monotonic() - t0 < 1.0
    assert bytes(transport._read_buffer) == data[len(frame(1, 2, b"first")):cut]
    with pytest.raises(TimeoutError):
        transport.read_frame_within(0)  # nothing more: at once
    peer.sendall(data[cut:])
    assert transport.read_frame_within(1.0) == (3, 2, b"second body")


def test_blocking_read_frame_collects_pieces(pair: tuple[Any, socket.socket]) -> None:
    """py-amqp's own read_frame (no timeout) over the chunked ``_read``."""
    transport, peer = pair
    data = frame(1, 0, b"a" * 300) + frame(8, 0, b"")
    for i in range(0, len(data), 7):
        peer.sendall(data[i:i + 7])
    assert transport.read_frame() == (1, 0, b"a" * 300)
    assert transport.read_frame() == (8, 0, b"")


def test_bytes_put_back_by_py_amqp_are_used(pair: tuple[Any, socket.socket]) -> None:
    """After a timeout py-amqp assigns ``bytes`` to ``_read_buffer``."""
    transport, peer = pair
    data = frame(1, 1, b"put back")
    transport._read_buffer = data[:4]
    peer.sendall(data[4:])
    assert transport.read_frame_within(1.0) == (1, 1, b"put back")


def test_bad_frame_end(pair: tuple[Any, socket.socket]) -> None:
    transport, peer = pair
    peer.sendall(frame(1, 1, b"x")[:-1] + b"\x00")
    with pytest.raises(UnexpectedFrame):
        transport.read_frame_within(1.0)


def test_peer_gone(pair: tuple[Any, socket.socket]) -> None:
    transport, peer = pair
    peer.sendall(frame(1, 1, b"last"))
    peer.close()
    assert transport.read_frame_within(1.0) == (1, 1, b"last")
    with pytest.raises(OSError, match="unexpectedly closed"):
        transport.read_frame_within(1.0)
    assert transport.connected is False
