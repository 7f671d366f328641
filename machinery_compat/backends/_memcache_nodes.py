"""Which memcached server holds a key: gomemcache's ``ServerList`` (pure, stdlib only).

Go Machinery's Memcache backend (v1.10.8 and v2.0.16) calls ``gomemcache.New(servers...)``
(github.com/bradfitz/gomemcache v0.0.0-20190913173617-a41fca850d0b), whose ``PickServer``
hashes the key with CRC-32 (IEEE, ``crc32.ChecksumIEEE``) over at most its first 256 bytes and
takes the server at index ``checksum % len(servers)`` of the list as given: no sorting, no
de-duplication (a server listed twice gets twice the weight), no consistent hashing.  One
server: always that one.  A Python client must pick the same index, or Go and Python read
different servers and never see each other's states.

Addresses, as ``ServerList.SetServers`` resolves them: one containing ``/`` is a unix socket
path; any other must be ``host:port`` (``[v6]:port``).  Go refuses a whole list when one
address has no port (``missing port in address``: its client is then left without servers and
every call fails with ``memcache: no servers configured or available``); here such an address
gets memcached's port 11211 and :func:`parse_servers` reports it in ``missing_ports``, so the
caller can warn that Go cannot share that URL.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

SCHEME = "memcache://"
DEFAULT_PORT = 11211
#: gomemcache copies the key into a 256-byte buffer before hashing it
HASHED_KEY_BYTES = 256


@dataclass(frozen=True, slots=True)
class Server:
    """One memcached address: ``host``/``port``, or a unix socket ``path``."""

    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.path:
            return self.path
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ServerList:
    """The servers of a ``memcache://`` URL, in Go's order."""

    servers: tuple[Server, ...]
    #: the addresses given without a port (Go Machinery cannot use such a URL)
    missing_ports: tuple[str, ...] = ()

    def pick(self, key: str | bytes) -> int:
        """Index of the server gomemcache's ``PickServer`` picks for ``key``."""
        return pick_index(key, len(self.servers))


def pick_index(key: str | bytes, n: int) -> int:
    """gomemcache's ``PickServer``: ``crc32.ChecksumIEEE(key[:256]) % n`` (0 when ``n`` is 1)."""
    if n <= 0:
        raise ValueError("memcache: no servers configured or available")
    if n == 1:
        return 0
    raw = key.encode("utf-8", "surrogateescape") if isinstance(key, str) else key
    return zlib.crc32(raw[:HASHED_KEY_BYTES]) % n


def parse_servers(url: str) -> ServerList:
    """The servers of ``memcache://host1:port1[,host2:port2,...]`` (Go v1's ``BackendFactory``:
    the text after ``memcache://`` split on ``,``).  :class:`ValueError` names a bad address."""
    if not url.startswith(SCHEME) or url.count(SCHEME) != 1:
        raise ValueError("Memcache result backend connection string should be in format "
                         f"memcache://server1:port,server2:port, instead got {url}")
    servers: list[Server] = []
    missing: list[str] = []
    for addr in url[len(SCHEME):].split(","):
        server, had_port = parse_address(addr)
        servers.append(server)
        if not had_port:
            missing.append(addr)
    return ServerList(tuple(servers), tuple(missing))


def parse_address(addr: str) -> tuple[Server, bool]:
    """One address of the list; the bool says whether it had a port."""
    if not addr:
        raise ValueError("memcache: empty server address in the list")
    if "/" in addr:
        return Server(path=addr), True
    if addr.startswith("["):
        end = addr.find("]")
        if end < 0:
            raise ValueError(f"memcache: address {addr}: missing ']' in address")
        host, rest = addr[1:end], addr[end + 1:]
        if rest and not rest.startswith(":"):
            raise ValueError(f"memcache: address {addr}: unexpected text after ']'")
        port_text = rest[1:] if rest else None
    elif addr.count(":") > 1:
        raise ValueError(f"memcache: address {addr}: too many colons in address "
                         "(write an IPv6 address as [addr]:port)")
    else:
        host, sep, port_text_ = addr.partition(":")
        port_text = port_text_ if sep else None
    if port_text is None:
        return Server(host or "localhost", DEFAULT_PORT), False
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"memcache: address {addr}: invalid port {port_text!r}")
    return Server(host or "localhost", int(port_text)), True
