"""Fuzzing the real worker path: 10^5 generated bad messages, plus hypothesis-built ones,
through ``Worker.handle`` (tests/fuzz/rig.py, corpora in tests/fuzz/corpus.py).

Checked for every message: nothing escapes ``handle`` (in a running worker that is an
"unexpected worker error" traceback and a dead letter without a state), it takes less
than :data:`~tests.fuzz.rig.PER_MESSAGE_LIMIT`, it ends in exactly one destination
(``Worker.outcomes``: run, handed_back, dead_lettered, dropped, pushed_back, not_stored)
and, for dead letters and hand-backs, really is in that queue; log lines stay short; after
the run the worker holds no more than :data:`RSS_GROWTH_LIMIT` of extra memory.

Sizes (environment):

* ``FUZZ_MESSAGES``  generated messages (default 100,000, about 30 s here);
* ``FUZZ_SEED``      seed of the generated corpus (default fixed; any integer);
* ``FUZZ_HYPOTHESIS_EXAMPLES``  hypothesis examples (default 400).

For a long run: ``FUZZ_MESSAGES=2000000 FUZZ_HYPOTHESIS_EXAMPLES=20000 FUZZ_SEED=$RANDOM
python -m pytest tests/fuzz -p no:cacheprovider -s``.

Known bugs (:data:`KNOWN_BUGS`, none open) are tolerated in the big runs, counted and
printed, each with a strict xfail reproducer; fixed ones keep their reproducer as a test.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import gc
import json
import os
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from machinery_compat.protocol.gotypes import SUPPORTED_TYPES

from .corpus import FIELDS, REGISTERED, corpus
from .rig import LOG_LINE_LIMIT, QUEUE, Rig, rss_bytes

MESSAGES = int(os.environ.get("FUZZ_MESSAGES", "100000"))
SEED = int(os.environ.get("FUZZ_SEED", "20240501"))
HYPOTHESIS_EXAMPLES = int(os.environ.get("FUZZ_HYPOTHESIS_EXAMPLES", "400"))
#: Memory the worker may keep after the whole run (stores emptied, freed memory trimmed).
RSS_GROWTH_LIMIT = 40 * 1024 * 1024
#: Peak growth while handling one message (the largest is just under max_message_size).
PEAK_GROWTH_LIMIT = 400 * 1024 * 1024


@dataclass(frozen=True)
class KnownBug:
    id: str
    what: str
    matches: Callable[[str, str], bool]  # (category, text) -> is it this bug?


#: Bugs tolerated in the big runs while they are open (none now: the five the first runs found
#: — deep argument values, retry ETAs past 9999, long log lines, unbounded memory for distinct
#: unregistered names and for big unregistered messages — are fixed; their reproducers are
#: the tests at the end of this file).
KNOWN_BUGS: tuple[KnownBug, ...] = ()


def _classify(problems: list[tuple[str, str]]) -> tuple[list[str], dict[str, int]]:
    unexplained: list[str] = []
    known: dict[str, int] = {}
    for cat, text in problems:
        bug = next((b for b in KNOWN_BUGS if b.matches(cat, text)), None)
        if bug is None:
            unexplained.append(f"{cat}: {text}")
        else:
            known[bug.id] = known.get(bug.id, 0) + 1
    return unexplained, known


def _problems(rig: Rig, since: tuple[int, int, int, int] = (0, 0, 0, 0)) -> list[tuple[str, str]]:
    """What went wrong (after the counts ``since`` of :func:`_counts`)."""
    out = [("escaped", f"[{p.kind}] {p.what}; body {p.excerpt[:200]!r}")
           for p in rig.escaped[since[0]:]]
    out += [("slow", f"[{p.kind}] {p.what}; body {p.excerpt[:200]!r}")
            for p in rig.slow[since[1]:]]
    out += [("long-log", line) for line in rig.log.too_long[since[2]:]]
    out += [("unexpected-log", line) for line in rig.log.unexpected[since[3]:]]
    return out


def _counts(rig: Rig) -> tuple[int, int, int, int]:
    return (len(rig.escaped), len(rig.slow), len(rig.log.too_long), len(rig.log.unexpected))


def _settled_rss() -> int:
    """RSS after a full collection and giving freed heap memory back to the OS (glibc's
    malloc_trim), so what remains is what is still referenced."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL(None).malloc_trim(0)
    return rss_bytes()


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


class _Destinations:
    """Counts what lands in the fuzz queue (hand-backs) and its dead-letter queue before each
    drain, to check the outcome counters against the queues themselves."""

    def __init__(self, rig: Rig) -> None:
        self.dead = 0
        self.back = 0
        self.rig = rig
        drain = rig.drain

        def counting_drain() -> None:
            broker: Any = rig.app.broker
            self.dead += len(broker.messages(f"{QUEUE}.dead"))
            self.back += len(broker.messages(QUEUE))
            drain()

        rig.drain = counting_drain  # type: ignore[method-assign]


@pytest.fixture
def make_rig(request: pytest.FixtureRequest) -> Iterator[Callable[[], Rig]]:
    """Build the rig inside the test (see :class:`~tests.fuzz.rig._LogWatch`); closed after."""
    rigs: list[Rig] = []

    def make() -> Rig:
        rigs.append(Rig(f"fuzz-{request.node.name}"[:60]))
        return rigs[-1]

    yield make
    for r in rigs:
        r.close()


@pytest.mark.slow
def test_generated_corpus_through_the_worker(
    make_rig: Callable[[], Rig], capsys: pytest.CaptureFixture[str]
) -> None:
    rig = make_rig()
    destinations = _Destinations(rig)
    before = _settled_rss()
    peak_before = _peak_rss()
    started = time.monotonic()
    rig.feed_all(corpus(MESSAGES, seed=SEED, max_size=rig.max_message_size))
    took = time.monotonic() - started
    rig.close()  # hands back what was kept aside: now counted, and drained
    after = _settled_rss()
    peak_growth = max(_peak_rss() - peak_before, 0)
    unexplained, known = _classify(_problems(rig))
    with capsys.disabled():
        print(f"\nfuzz corpus (seed {SEED}) in {took:.1f}s: {rig.summary()}; "
              f"escaped {len(rig.escaped)}; known bugs {known}; RSS {before >> 20} -> "
              f"{after >> 20} MiB, peak +{peak_growth >> 20} MiB")
    assert not unexplained, "\n".join(unexplained[:20])
    assert rig.fed >= MESSAGES
    outcomes = rig.worker.outcomes
    assert set(outcomes) <= {"run", "handed_back", "dead_lettered", "dropped", "pushed_back",
                             "not_stored"}
    # every message ends in exactly one place (the known-bug escapes in none)
    assert rig.accounted() == rig.fed - len(rig.escaped)
    assert destinations.dead == outcomes["dead_lettered"]
    assert destinations.back == (outcomes["handed_back"] + outcomes["pushed_back"]
                                 + outcomes["not_stored"])
    assert after - before < RSS_GROWTH_LIMIT, f"worker kept {(after - before) >> 20} MiB"
    assert peak_growth < PEAK_GROWTH_LIMIT


# -- hypothesis ----------------------------------------------------------------------------

_scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=2**62)
            | st.floats() | st.text(max_size=20) | st.sampled_from(REGISTERED))
#: any JSON value (the wrong type for most fields)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.text(max_size=6) | st.sampled_from(FIELDS), inner, max_size=4),
    max_leaves=10,
)
_ints = st.integers(-(2**63), 2**64)
#: a value of roughly the right JSON shape for each Machinery type (often out of range)
_typed_values: dict[str, st.SearchStrategy[Any]] = {
    "bool": st.booleans(), "string": st.text(max_size=20),
    "float32": st.floats() | _ints, "float64": st.floats() | _ints,
    "[]bool": st.lists(st.booleans(), max_size=4), "[]string": st.lists(st.text(max_size=5), max_size=4),
    "[]float32": st.lists(st.floats(), max_size=4), "[]float64": st.lists(st.floats(), max_size=4),
    "[]byte": st.binary(max_size=12).map(lambda b: base64.b64encode(b).decode()),
    "[]uint8": st.binary(max_size=12).map(lambda b: base64.b64encode(b).decode()),
}


@st.composite
def _arg(draw: st.DrawFn) -> Any:
    type_name = draw(st.sampled_from(sorted(SUPPORTED_TYPES)))
    default = st.lists(_ints, max_size=4) if type_name.startswith("[]") else _ints
    value = draw(_typed_values.get(type_name, default) | _values)
    return {"Name": "", "Type": type_name, "Value": value}


@st.composite
def _message(draw: st.DrawFn, depth: int = 0) -> dict[str, Any]:
    """A mostly well-typed Signature, then one field (or one arg) of the wrong type."""
    msg: dict[str, Any] = {
        "UUID": draw(st.sampled_from(["", "task_h"]) | st.text(max_size=12)),
        "Name": draw(st.sampled_from([*REGISTERED, "unknown", ""])),
        "Args": draw(st.lists(_arg(), max_size=4)),
    }
    if draw(st.booleans()):
        msg.update(RetryCount=draw(st.integers(-1, 3)), RetryTimeout=draw(st.integers(-5, 2**40)),
                   Headers=draw(st.dictionaries(st.sampled_from(["retries", "expires", "x"]),
                                                _values, max_size=2)),
                   IgnoreWhenTaskNotRegistered=draw(st.booleans()),
                   GroupUUID=draw(st.sampled_from(["", "group_h"])),
                   GroupTaskCount=draw(st.integers(-1, 3)),
                   ETA=draw(st.sampled_from([None, "2000-01-01T00:00:00Z",
                                             "2999-01-01T00:00:00.5Z"])))
    if depth < 2 and draw(st.booleans()):
        key = draw(st.sampled_from(["OnSuccess", "OnError", "ChordCallback"]))
        callback = draw(_message(depth + 1))
        msg[key] = callback if key == "ChordCallback" else [callback]
    if draw(st.booleans()):
        msg[draw(st.sampled_from(FIELDS))] = draw(_values)
    return msg


@st.composite
def _bodies(draw: st.DrawFn) -> bytes:
    body = json.dumps(draw(_message())).encode("utf-8", "surrogatepass")
    edit = draw(st.sampled_from(["none", "none", "none", "cut", "insert", "utf8"]))
    if edit == "cut":
        body = body[:draw(st.integers(0, len(body)))]
    elif edit in ("insert", "utf8"):
        at = draw(st.integers(0, len(body)))
        extra = (draw(st.binary(min_size=1, max_size=8)) if edit == "insert"
                 else draw(st.sampled_from([b"\xff", b"\xed\xa0\x80", b"\xc0\x80", b"\xc3"])))
        body = body[:at] + extra + body[at:]
    return body


@pytest.mark.slow
def test_hypothesis_messages_through_the_worker(
    make_rig: Callable[[], Rig], capsys: pytest.CaptureFixture[str]
) -> None:
    rig = make_rig()

    @settings(max_examples=HYPOTHESIS_EXAMPLES, deadline=None, database=None,
              derandomize="FUZZ_SEED" not in os.environ,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(_bodies())
    def one(body: bytes) -> None:
        seen = _counts(rig)
        rig.feed("hypothesis", body)
        unexplained, _ = _classify(_problems(rig, seen))
        assert not unexplained, unexplained

    one()
    rig.close()
    _, known = _classify(_problems(rig))
    with capsys.disabled():
        print(f"\nfuzz hypothesis: {rig.summary()}; known bugs {known}")
    assert rig.accounted() == rig.fed - len(rig.escaped)


# -- once known bugs, now fixed: reproducers ----------------------------------------------------------


def _handle_cleanly(rig: Rig, body: bytes) -> None:
    rig.feed("repro", body)
    rig.close()
    assert not rig.escaped, rig.escaped[0].what
    assert not rig.slow, rig.slow[0].what
    assert rig.accounted() == 1, rig.worker.outcomes


def test_deep_arg_value_fails_the_task(make_rig: Callable[[], Rig]) -> None:
    rig = make_rig()
    _handle_cleanly(rig, b'{"Name":"add","Args":[{"Type":"[]int64","Value":'
                    + b"[" * 900 + b"]" * 900 + b"}]}")


def test_retry_eta_past_9999_fails_the_task(make_rig: Callable[[], Rig]) -> None:
    rig = make_rig()
    _handle_cleanly(rig, b'{"Name":"boom","RetryCount":1,"RetryTimeout":4611686018427387904}')


@pytest.mark.parametrize("body", [
    b'{"Name":"add","UUID":"' + b"u" * 100_000 + b'"}',
    b'{"Name":"unknown_task","UUID":"' + b"u" * 100_000 + b'"}',
    b'{"Name":"echo","Args":[{"Type":"string","Value":"' + b"v" * 100_000 + b'"}]}',
    b'{"Name":"add","GroupTaskCount":0.' + b"3" * 100_000 + b"}",
    b'{"Name":"add","Args":[{"Type":"' + b"t" * 100_000 + b'","Value":1}]}',
], ids=["uuid", "unregistered-uuid", "result", "decode-error", "type-name"])
def test_log_lines_stay_short(make_rig: Callable[[], Rig], body: bytes) -> None:
    rig = make_rig()
    rig.feed("repro", body)
    rig.close()
    assert rig.log.longest <= LOG_LINE_LIMIT, rig.log.too_long[:1]


def test_distinct_unregistered_names_are_not_all_kept(make_rig: Callable[[], Rig]) -> None:
    rig = make_rig()
    before = _settled_rss()
    for i in range(1500):
        rig.feed("names", json.dumps({"UUID": f"t{i}", "Name": f"n{i}-{'x' * 20_000}"}).encode())
    rig.drain()
    grown = _settled_rss() - before
    rig.close()
    assert grown < 10 * 1024 * 1024, f"{grown >> 20} MiB kept for 1,500 names of 20 kB"


def test_handed_back_memory_is_bounded_in_bytes(make_rig: Callable[[], Rig]) -> None:
    rig = make_rig()
    before = _settled_rss()
    for _ in range(2):  # the second sighting keeps each one aside
        for i in range(60):
            rig.feed("uuids", json.dumps({"UUID": f"t{i}-{'u' * 1_000_000}",
                                          "Name": "nobody"}).encode())
    rig.drain()
    grown = _settled_rss() - before
    rig.close()
    assert grown < 40 * 1024 * 1024, f"{grown >> 20} MiB kept for 60 unknown messages"
