"""Generated corpora of bad task messages, derived from the bytes Go Machinery writes.

Every generator is deterministic for a given :class:`random.Random` and yields
``(kind, body)`` pairs; ``kind`` names the family, so a failure says which mutation caused
it.  The seeds are the Go-written signatures of ``tests/data/golden/golden.json`` (v1 and
v2), plus a few messages for the tasks the fuzz app registers.

Families (see :func:`corpus`):

* ``truncated``   every prefix of every seed (a message cut anywhere);
* ``bytes``       1-4 byte-level edits of a seed: flip, insert, delete, duplicate, and
                  splices of JSON punctuation, NUL, invalid UTF-8, overlong and surrogate
                  encodings;
* ``field``       one JSON value anywhere in a seed (top level, an Arg, a nested callback, a
                  header) replaced by a value of the wrong type, an out-of-range or
                  over-long number, a bad string, a huge or deeply nested value; or a key
                  deleted, renamed in another case, or duplicated;
* ``typed``       an Arg of a registered task with every Machinery type name given every
                  kind of wrong value (booleans and objects for slice types: what crashes a
                  Go worker);
* ``deep``        arrays/objects/callbacks nested 10 to 200,000 levels in every place;
* ``huge``        just over / just under the worker's size limit, 100,000 args, 1 MB names,
                  UUIDs and routing keys, a million-digit number;
* ``utf8``        invalid UTF-8 in every string field, UTF-16/32 and BOM-prefixed JSON;
* ``shape``       JSON that is not an object, trailing garbage, two objects, NaN/Infinity;
* ``random``      random bytes and random JSON-ish token soup.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from machinery_compat.protocol.gotypes import SUPPORTED_TYPES

GOLDEN = Path(__file__).resolve().parent.parent / "data" / "golden" / "golden.json"

#: Signature fields in Go's order (tasks.Signature).
FIELDS = (
    "UUID", "Name", "RoutingKey", "ETA", "GroupUUID", "GroupTaskCount", "Args", "Headers",
    "Priority", "Immutable", "RetryCount", "RetryTimeout", "OnSuccess", "OnError",
    "ChordCallback", "BrokerMessageGroupId", "SQSReceiptHandle", "StopTaskDeletionOnError",
    "IgnoreWhenTaskNotRegistered",
)  # fmt: skip

#: Names the fuzz app registers (tests/fuzz/rig.py); the seeds use most of them.
REGISTERED = ("add", "multiply", "concat", "every_type", "edge_values", "boom", "echo")

Mutation = tuple[str, bytes]

# Raw JSON tokens that json.dumps cannot produce, spliced in through placeholders.
_RAW = {
    "@@BIGINT@@": "9" * 5000,  # past Python's int-string digit limit
    "@@NEGBIG@@": "-" + "1" * 4400,
    "@@LONGFLOAT@@": "0." + "3" * 20000,
    "@@EXP@@": "1e999999999",
    "@@NEGEXP@@": "-1e-999999999",
    "@@NAN@@": "NaN",
    "@@INF@@": "-Infinity",
    "@@BADESC@@": '"\\uZZZZ"',
    "@@LONESURR@@": '"\\ud800"',
    "@@SURRPAIR@@": '"\\udbff\\udfff"',
    "@@RAWCTRL@@": '"a\x01\tb"',
    "@@DUPKEY@@": "null",  # see _dup_key
    "@@INT64MAX@@": str(2**63 - 1),
    "@@INT64MIN@@": str(-(2**63)),
    "@@UINT64MAX@@": str(2**64 - 1),
    "@@PAST64@@": str(2**64),
    "@@NEGZERO@@": "-0",
    "@@EXPINT@@": "1e3",
    "@@DOTINT@@": "1.0",
    "@@TINY@@": "5e-324",
    "@@DEEP50@@": "[" * 50 + "1" + "]" * 50,
    "@@DEEP900@@": "[" * 900 + "]" * 900,
    "@@DEEP5000@@": '{"a":' * 5000 + "null" + "}" * 5000,
}


def golden_seeds() -> list[bytes]:
    """The Go-written Signature messages of the golden file."""
    entries = json.loads(GOLDEN.read_text())
    return [e["json"].encode() for e in entries if e["kind"] == "signature"]


def extra_seeds() -> list[bytes]:
    """Messages for the registered tasks that the golden file does not cover."""
    base: dict[str, Any] = {f: None for f in FIELDS}
    base.update(UUID="task_fuzz-seed", RoutingKey="machinery_tasks", GroupTaskCount=0,
                Headers={}, Priority=0, Immutable=False, RetryCount=0, RetryTimeout=0,
                GroupUUID="", BrokerMessageGroupId="", SQSReceiptHandle="",
                StopTaskDeletionOnError=False, IgnoreWhenTaskNotRegistered=False)
    seeds = []
    for name, args, extra in (
        ("boom", [], {"RetryCount": 2, "RetryTimeout": 1}),
        ("echo", [{"Name": "", "Type": "string", "Value": "hello"}], {}),
        ("concat", [{"Name": "", "Type": "[]string", "Value": ["a", "b"]}],
         {"OnSuccess": [{"UUID": "task_cb", "Name": "echo", "Args": []}]}),
        ("add", [{"Name": "", "Type": "int64", "Value": 2}],
         {"GroupUUID": "group_fuzz", "GroupTaskCount": 1,
          "ChordCallback": {"UUID": "chord_fuzz", "Name": "multiply", "Args": None}}),
        ("multiply", [{"Name": "", "Type": "[]float64", "Value": [1.5, 2]}],
         {"Headers": {"expires": "2000-01-01T00:00:00Z", "retries": 1}}),
    ):
        msg = dict(base, Name=name, Args=args, **extra)
        seeds.append(json.dumps(msg, separators=(",", ":")).encode())
    return seeds


def seeds() -> list[bytes]:
    return golden_seeds() + extra_seeds()


# -- helpers ----------------------------------------------------------------------------


def _dumps(obj: Any) -> bytes:
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    for placeholder, raw in _RAW.items():
        if placeholder in text:
            text = text.replace(f'"{placeholder}"', raw)
    return text.encode("utf-8", "surrogatepass")


def _paths(obj: Any, prefix: tuple[Any, ...] = (), depth: int = 0) -> list[tuple[Any, ...]]:
    """Every path to a value inside ``obj`` (dict keys and list indexes)."""
    out = [prefix]
    if depth > 6:
        return out
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k), depth + 1)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i), depth + 1)
    return out


def _set(obj: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    parent = obj
    for p in path[:-1]:
        parent = parent[p]
    parent[path[-1]] = value
    return obj


def _nested_list(depth: int, leaf: Any = 1) -> Any:
    value: Any = leaf
    for _ in range(depth):
        value = [value]
    return value


def _wrong_values(rng: random.Random) -> list[Any]:
    """Values of every wrong shape (a fresh list: callers may mutate what they pick)."""
    return [
        None, True, False, 0, -1, 1, 255, 256, -129, 65536, 2**31, 2**32, 1.5, -0.5, 1e308,
        "", "x", "1", "true", "null", "[]", "{}", "2024-05-01T12:34:56Z", "0001-01-01",
        "9999-12-31T23:59:59.999999999Z", "2024-13-45T99:99:99Z", "task_" + "0" * 36,
        [], {}, [None], [1, "a", None, True], [[1]], {"": None}, {"Type": "int64"},
        {"Name": "add"}, [{"Type": "int64", "Value": 1}], {"a": {"b": {"c": [1]}}},
        "é" * 50, "\u2028\u2029", "\x00", "🎉" * 10, "x" * rng.choice((1000, 100_000)),
        list(range(rng.choice((10, 1000)))), {str(i): i for i in range(100)},
        _nested_list(rng.choice((5, 30))),
        *_RAW.keys(),
    ]


# -- families ---------------------------------------------------------------------------


def truncated(seed_list: list[bytes]) -> Iterator[Mutation]:
    for s in seed_list:
        for n in range(len(s)):
            yield "truncated", s[:n]


_SPLICES = [
    b"\x00", b"\xff", b"\xfe", b"\xc0\x80", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80", b"\xf8\x88\x80\x80\x80", b'"', b"\\", b"\\u", b"\\ud800", b"{", b"}",
    b"[", b"]", b",", b":", b"null", b"true", b"-", b"0", b"1e", b".", b" ", b"\n", b"\t",
    b"\x7f", b"\x1b[31m", b"NaN", b"99999999999999999999999", b'"Name":', b'"Args":[',
]


def byte_edits(rng: random.Random, seed_list: list[bytes], count: int) -> Iterator[Mutation]:
    for _ in range(count):
        body = bytearray(rng.choice(seed_list))
        for _ in range(rng.randint(1, 4)):
            if not body:
                body += rng.choice(_SPLICES)
                continue
            pos = rng.randrange(len(body))
            op = rng.randrange(6)
            if op == 0:
                body[pos] ^= 1 << rng.randrange(8)
            elif op == 1:
                body[pos:pos] = rng.choice(_SPLICES)
            elif op == 2:
                del body[pos:pos + rng.randint(1, 8)]
            elif op == 3:
                body[pos:pos + 1] = rng.choice(_SPLICES)
            elif op == 4:
                end = min(len(body), pos + rng.randint(1, 64))
                body[end:end] = body[pos:end]
            else:
                body[pos] = rng.randrange(256)
        yield "bytes", bytes(body)


def _dup_key(body: bytes, rng: random.Random) -> bytes:
    """The same key twice (Go keeps the last; so does Python's json)."""
    key = rng.choice(FIELDS)
    value = rng.choice(['null', '"x"', '[]', '{}', '1', 'true', '"add"'])
    return body.replace(b"{", b'{"' + key.encode() + b'":' + value.encode() + b",", 1)


def field_edits(rng: random.Random, seed_list: list[bytes], count: int) -> Iterator[Mutation]:
    for _ in range(count):
        obj = json.loads(rng.choice(seed_list))  # a fresh copy to edit
        paths = _paths(obj)[1:]
        action = rng.randrange(10)
        if action <= 5 and paths:
            path = rng.choice(paths)
            obj = _set(obj, path, rng.choice(_wrong_values(rng)))
            yield "field", _dumps(obj)
        elif action == 6 and paths:  # delete a key
            dict_paths = [p for p in paths if isinstance(p[-1], str)]
            if dict_paths:
                path = rng.choice(dict_paths)
                parent = obj
                for p in path[:-1]:
                    parent = parent[p]
                del parent[path[-1]]
            yield "field", _dumps(obj)
        elif action == 7:  # keys in another case (Go matches case-insensitively)
            text = _dumps(obj)
            key = rng.choice(FIELDS).encode()
            recased = bytes(c ^ 0x20 if 65 <= c <= 90 or 97 <= c <= 122 else c
                            for c in key) if rng.random() < 0.5 else key.lower()
            yield "field", text.replace(b'"' + key + b'"', b'"' + recased + b'"')
        elif action == 8:
            yield "field", _dup_key(_dumps(obj), rng)
        else:  # unknown keys, and a registered name on a mutated message
            obj[rng.choice(["Unknown", "name ", "ÑAME", "Args\x00", ""])] = rng.choice(
                _wrong_values(rng))
            obj["Name"] = rng.choice(REGISTERED)
            yield "field", _dumps(obj)


def typed_args(rng: random.Random, count: int) -> Iterator[Mutation]:
    """Every Machinery type name (and some that are not) with wrong values, as args of
    registered tasks and of their callbacks."""
    types = [*sorted(SUPPORTED_TYPES), "", "[]", "[][]int64", "map[string]int", "error",
             "int128", "[]interface {}", "Int64", " int64", "[]int64 "]
    for i in range(count):
        args = []
        for _ in range(rng.randint(1, 4)):
            args.append({"Name": rng.choice(["", "x", None, 1]), "Type": rng.choice(types),
                         "Value": rng.choice(_wrong_values(rng))})
        msg: dict[str, Any] = {"UUID": f"task_typed-{i}", "Name": rng.choice(REGISTERED),
                               "Args": args}
        if rng.random() < 0.2:
            msg["OnSuccess"] = [{"Name": rng.choice(REGISTERED), "Args": args}]
        if rng.random() < 0.1:
            msg["RetryCount"] = rng.choice([1, 3, "@@INT64MAX@@"])
            msg["RetryTimeout"] = rng.choice([0, 1, -5, 10**9])
        yield "typed", _dumps(msg)


def deep(depths: tuple[int, ...] = (10, 100, 500, 1000, 5000, 50_000, 200_000)) -> Iterator[Mutation]:
    for d in depths:
        arr = b"[" * d + b"]" * d
        obj = b'{"a":' * d + b"1" + b"}" * d
        yield "deep", b'{"Name":"add","Args":[{"Type":"[]int64","Value":' + arr + b"}]}"
        yield "deep", b'{"Name":"add","Args":' + arr + b"}"
        yield "deep", b'{"Name":"add","Headers":' + obj + b"}"
        yield "deep", b'{"Name":"add","Args":[{"Type":"string","Value":' + obj + b"}]}"
        yield "deep", b'{"Name":"every_type","OnSuccess":[' + b'{"Name":"add","OnSuccess":[' * d + b"]}" * d + b"]}"
        yield "deep", b'{"Name":"add","ChordCallback":' + b'{"Name":"add","ChordCallback":' * d + b"null" + b"}" * d + b"}"
        yield "deep", b'{"Name":"boom","OnError":[' + b'{"Name":"concat","OnError":[' * d + b"]}" * d + b"]}"
        yield "deep", arr
        yield "deep", b"[" * d  # unterminated
        yield "deep", b'{"Name":' * d


def huge(max_size: int) -> Iterator[Mutation]:
    pad = max_size - 200
    yield "huge", b'{"Name":"echo","Args":[{"Type":"string","Value":"' + b"x" * (max_size + 1) + b'"}]}'
    yield "huge", b'{"Name":"echo","Args":[{"Type":"string","Value":"' + b"y" * pad + b'"}]}'
    yield "huge", b" " * (max_size + 1)
    yield "huge", b"\xff" * (max_size + 10)
    yield "huge", (b'{"Name":"add","Args":[' + b",".join(
        [b'{"Type":"int64","Value":1}'] * 100_000) + b"]}")
    yield "huge", b'{"Name":"add","Args":[{"Type":"[]int64","Value":[' + b"7," * 400_000 + b"1]}]}"
    yield "huge", b'{"Name":"concat","Args":[{"Type":"[]string","Value":[' + b'"ab",' * 200_000 + b'"c"]}]}'
    yield "huge", b'{"Name":"echo","Args":[{"Type":"[]byte","Value":"' + b"QUJD" * 300_000 + b'"}]}'
    yield "huge", b'{"Name":"add","Headers":{' + b",".join(
        b'"h%d":%d' % (i, i) for i in range(100_000)) + b"}}"
    yield "huge", b'{"Name":"' + b"n" * 1_000_000 + b'"}'
    yield "huge", b'{"Name":"' + b"n" * 1_000_000 + b'","IgnoreWhenTaskNotRegistered":true}'
    yield "huge", b'{"Name":"add","UUID":"' + b"u" * 1_000_000 + b'"}'
    yield "huge", b'{"Name":"not_here","UUID":"' + b"u" * 1_000_000 + b'"}'
    yield "huge", b'{"Name":"add","RoutingKey":"' + b"r" * 1_000_000 + b'","OnSuccess":[{"Name":"echo"}]}'
    yield "huge", b'{"Name":"add","Args":[{"Type":"int64","Value":' + b"9" * 1_000_000 + b"}]}"
    yield "huge", b'{"Name":"add","Args":[{"Type":"float64","Value":0.' + b"1" * 1_000_000 + b"}]}"
    yield "huge", b'{"Name":"add","RetryCount":' + b"1" * 1_000_000 + b"}"
    yield "huge", b'{"Name":"boom","Args":[],"OnError":[' + b",".join(
        [b'{"Name":"echo","Args":[]}'] * 20_000) + b"]}"
    yield "huge", b'{"Name":"add","Args":[{"Type":"string","Value":"' + b"\\u00e9" * 600_000 + b'"}]}'


_UTF8_BAD = [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xf4\x90\x80\x80",
             b"\xe2\x28\xa1", b"\x80", b"\xc3", b"\xef\xbb\xbf", b"\xf0\x9f\x98"]


def utf8(rng: random.Random, seed_list: list[bytes], count: int) -> Iterator[Mutation]:
    for _ in range(count):
        s = rng.choice(seed_list)
        quotes = [i for i, c in enumerate(s) if c == 0x22]
        if not quotes:
            continue
        pos = rng.choice(quotes) + 1
        yield "utf8", s[:pos] + rng.choice(_UTF8_BAD) * rng.randint(1, 3) + s[pos:]
    s = seeds()[1]
    text = s.decode()
    for encoded in (text.encode("utf-16"), text.encode("utf-16-le"), text.encode("utf-32"),
                    b"\xef\xbb\xbf" + s, s.decode().encode("latin-1", "replace"),
                    text.replace('"add"', '"a\xe9dd"').encode("latin-1")):
        yield "utf8", encoded


def shape() -> Iterator[Mutation]:
    s = seeds()[1]
    for body in (b"", b" ", b"\n", b"null", b"true", b"0", b"-1", b'"add"', b"[]", b"[{}]",
                 b"{}", b'{"Name":null}', b'{"Name":""}', b'{"Name":1}', b'{"Name":["add"]}',
                 b'{"Name":{"add":1}}', b'{"Name":"add"}', b'{"name":"add"}', b'{"NAME":"add"}',
                 b'{"Name":"add","Args":null}', b'{"Name":"add","Args":{}}',
                 b'{"Name":"add","Args":[null]}', b'{"Name":"add","Args":[1]}',
                 s + b"x", s + s, s + b"\x00", b"\x00" + s, s.replace(b"}", b"", 1),
                 s.replace(b'"Args"', b"'Args'"), s[:-1] + b",}", b"NaN", b"Infinity",
                 b'{"Name":"add","Args":[{"Type":"float64","Value":NaN}]}',
                 b'{"Name":"add","Args":[{"Type":"float64","Value":-Infinity}]}',
                 b'{"Name":"add","Args":[{"Type":"int64","Value":1}],"ETA":"tomorrow"}',
                 b'{"Name":"add","ETA":"9999-12-31T23:59:59Z","RetryCount":1}',
                 b'{"Name":"boom","RetryCount":1,"RetryTimeout":9223372036854775807}',
                 b'{"Name":"boom","RetryCount":9223372036854775807}',
                 b'{"Name":"boom","RetryCount":1,"Headers":{"retries":"many"}}',
                 b'{"Name":"add","Headers":{"expires":"never"}}',
                 b'{"Name":"add","Headers":{"expires":1e300}}',
                 b'{"Name":"add","GroupUUID":"g","GroupTaskCount":-1,"ChordCallback":{"Name":"add"}}',
                 b'{"Name":"add","GroupUUID":"g","GroupTaskCount":9223372036854775807,'
                 b'"ChordCallback":{"Name":"add"}}',
                 b'{"Name":"add","Priority":-1}', b'{"Name":"add","Priority":256}'):
        yield "shape", body


_TOKENS = [b"{", b"}", b"[", b"]", b",", b":", b'"Name"', b'"Args"', b'"Type"', b'"Value"',
           b'"add"', b'"int64"', b'"[]int64"', b"null", b"true", b"false", b"1", b"-0",
           b"1e400", b'"\\u0000"', b'"', b"\\", b" ", b"\xff"]


def random_bytes(rng: random.Random, count: int) -> Iterator[Mutation]:
    for i in range(count):
        if i % 2:
            yield "random", rng.randbytes(rng.randint(0, 600))
        else:
            yield "random", b"".join(rng.choice(_TOKENS) for _ in range(rng.randint(1, 80)))


def corpus(total: int, *, seed: int, max_size: int) -> Iterator[Mutation]:
    """About ``total`` messages (at least every truncation, every deep/huge/shape case)."""
    rng = random.Random(seed)
    seed_list = seeds()
    fixed: list[Callable[[], Iterator[Mutation]]] = [
        lambda: truncated(seed_list), deep, lambda: huge(max_size), shape,
    ]
    n_fixed = 0
    for make in fixed:
        for item in make():
            n_fixed += 1
            yield item
    left = max(total - n_fixed, 0)
    shares = {"bytes": 0.35, "field": 0.35, "typed": 0.15, "utf8": 0.08, "random": 0.07}
    yield from byte_edits(rng, seed_list, int(left * shares["bytes"]))
    yield from field_edits(rng, seed_list, int(left * shares["field"]))
    yield from typed_args(rng, int(left * shares["typed"]))
    yield from utf8(rng, seed_list, int(left * shares["utf8"]))
    yield from random_bytes(rng, left - sum(int(left * v) for k, v in shares.items()
                                            if k != "random"))
