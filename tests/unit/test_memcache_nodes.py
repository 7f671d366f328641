"""gomemcache's server selection and Machinery's ``memcache://`` address list (no network).

The expected servers were printed by gomemcache v0.0.0-20190913173617-a41fca850d0b (the version
Machinery v1.10.8/v2.0.16 pin) ``ServerList.PickServer`` for the lists
``127.0.0.1:1,127.0.0.1:2,127.0.0.1:3`` and ``127.0.0.1:1,127.0.0.1:2``; the interop test
``interop/tests/test_interop_memcache.py`` checks the same on three live memcached servers.
"""

from __future__ import annotations

import zlib

import pytest

from machinery_compat.backends._memcache_nodes import (
    Server,
    parse_servers,
    pick_index,
)

# key -> (index among 3 servers, index among 2 servers), as gomemcache picked them
GO_PICKS = {
    "task_7e0b3c2a-1f4e-4a55-9d62-5c2c1f0f5a11": (1, 1),
    "group_0d1c9f5e-8f5a-4c3b-a2a8-7a1f0c1e9b22": (0, 1),
    "a": (0, 1),
    "ab": (2, 1),
    "task_00000000-0000-0000-0000-000000000000": (1, 0),
    "x.exc": (1, 1),
    "k" * 300: (1, 1),
    "k" * 256 + "zzz": (1, 1),
}


@pytest.mark.parametrize("key", list(GO_PICKS))
def test_pick_matches_gomemcache(key: str) -> None:
    three, two = GO_PICKS[key]
    assert pick_index(key, 3) == three
    assert pick_index(key, 2) == two
    assert pick_index(key.encode(), 3) == three
    assert pick_index(key, 1) == 0


def test_only_the_first_256_bytes_are_hashed() -> None:
    key = "k" * 300
    assert zlib.crc32(key.encode()) % 3 != GO_PICKS[key][0]  # the whole key would pick another
    assert pick_index(key, 3) == pick_index("k" * 256, 3)


def test_no_servers() -> None:
    with pytest.raises(ValueError, match="no servers"):
        pick_index("a", 0)


def test_list_order_is_kept_and_duplicates_weigh() -> None:
    sl = parse_servers("memcache://127.0.0.1:3,127.0.0.1:1,127.0.0.1:3")
    assert [str(s) for s in sl.servers] == ["127.0.0.1:3", "127.0.0.1:1", "127.0.0.1:3"]
    assert sl.pick("ab") == 2 and sl.missing_ports == ()


@pytest.mark.parametrize(("url", "servers"), [
    ("memcache://localhost:11211", [Server("localhost", 11211)]),
    ("memcache://[::1]:11212,10.0.0.1:1", [Server("::1", 11212), Server("10.0.0.1", 1)]),
    ("memcache://:11213", [Server("localhost", 11213)]),
    ("memcache:///run/memcached.sock", [Server(path="/run/memcached.sock")]),
])
def test_parse(url: str, servers: list[Server]) -> None:
    assert list(parse_servers(url).servers) == servers


def test_missing_port_defaults_and_is_reported() -> None:
    sl = parse_servers("memcache://a:1,b,[::2]")
    assert list(sl.servers) == [Server("a", 1), Server("b", 11211), Server("::2", 11211)]
    assert sl.missing_ports == ("b", "[::2]")
    assert str(sl.servers[2]) == "[::2]:11211"


@pytest.mark.parametrize(("url", "message"), [
    ("redis://a:1", "should be in format"),
    ("memcache://a:1,memcache://b:2", "should be in format"),
    ("memcache://", "empty server address"),
    ("memcache://a:1,,b:2", "empty server address"),
    ("memcache://a:x", "invalid port"),
    ("memcache://a:70000", "invalid port"),
    ("memcache://::1:5", "too many colons"),
    ("memcache://[::1:5", "missing ']'"),
    ("memcache://[::1]x", "unexpected text"),
])
def test_bad_urls(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_servers(url)
