"""Periodic tasks on a real Redis: Machinery's lock semantics, the scheduler, unregistering.

Timing: periods are 1 s (``@every 1s``); assertions count lock values, not seconds, and
leave wide margins for a loaded machine.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from typing import Any

import pytest
import redis

from machinery_compat import Machinery, Signature, chain, chord, group
from machinery_compat._redis import client_for
from machinery_compat.periodic import RedisLock, Scheduler, create_lock, lock_key
from machinery_compat.periodic.commands import periodic_rows
from machinery_compat.periodic.lock import HOLDER_KEY_PREFIX, LocalLock

from .conftest import wait_for

S = 10**9
KEY = "machinery_lock_machinery-compattick@every 1s"


@pytest.fixture
def lock(redis_url: str) -> RedisLock:
    return RedisLock(client_for(redis_url))


# -- the lock ---------------------------------------------------------------------------------
def test_lock_sets_gos_value_with_an_expiry_at_the_period_end(
        lock: RedisLock, redis_client: redis.Redis) -> None:
    value = time.time_ns() + 3 * S - 1
    assert lock.acquire(KEY, value)
    assert redis_client.get(KEY) == str(value).encode()
    assert 1500 < redis_client.pttl(KEY) <= 3000
    holder = json.loads(redis_client.get(HOLDER_KEY_PREFIX + KEY) or b"{}")
    assert holder["value"] == str(value) and holder["pid"] > 0
    assert not lock.acquire(KEY, value)           # this period is taken
    assert not lock.acquire(KEY, value + S)       # and stays taken until its value passes
    st = lock.state(KEY)
    assert st.value == value and st.held and st.holder is not None
    assert st.describe().startswith("python ")


def test_lock_takes_over_a_past_value_and_heals_keys_without_expiry(
        lock: RedisLock, redis_client: redis.Redis) -> None:
    # what Go's GETSET race leaves behind: a past value and no TTL
    redis_client.set(KEY, str(time.time_ns() - S))
    value = time.time_ns() + 2 * S - 1
    assert lock.acquire(KEY, value)
    assert redis_client.get(KEY) == str(value).encode()
    assert 0 < redis_client.pttl(KEY) <= 2000
    # a live value without TTL (Go won and its EXPIRE was undone by a losing GETSET)
    future = time.time_ns() + 5 * S - 1
    redis_client.set(KEY, str(future))
    assert not lock.acquire(KEY, future)
    assert 3000 < redis_client.pttl(KEY) <= 5001  # expires when its own value says
    assert lock.state(KEY).describe() == "another scheduler (Go?)"


@pytest.mark.parametrize(("stored", "taken"), [
    ("0", False),                   # Go: timeout != 0 is required
    ("-5", True),                   # a negative value is in the past
    ("+000123", True),              # Atoi reads signs and leading zeros
    ("not a number", False),        # Atoi fails: Go's lock errors, nobody fires
    ("1.5", False),
    ("99999999999999999999", False),  # out of int64
])
def test_lock_reads_values_as_gos_atoi(lock: RedisLock, redis_client: redis.Redis,
                                       stored: str, taken: bool) -> None:
    redis_client.set(KEY, stored)
    assert lock.acquire(KEY, time.time_ns() + S) is taken
    assert redis_client.pttl(KEY) > 0  # whatever it holds, the key expires


def test_lock_compares_nanoseconds_exactly(lock: RedisLock, redis_client: redis.Redis,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Lua numbers are doubles (256 ns apart at today's Unix ns): the script compares the
    decimal strings instead.  The scheduler's clock is pinned to 1 ns either side of the
    stored value, where doubles cannot tell them apart."""
    import types

    from machinery_compat.periodic import lock as lock_module

    stored = (time.time_ns() + 2 * S) & ~0x3FF  # a multiple of 1024: exact as a double
    assert float(stored) == float(stored + 1)   # so a double compare sees now == stored
    redis_client.set(KEY, str(stored), px=5000)
    clock = types.SimpleNamespace(time_ns=lambda: stored)
    monkeypatch.setattr(lock_module, "time", clock)
    assert not lock.acquire(KEY, stored + 3 * S)  # Go: taken only when now > stored
    assert redis_client.get(KEY) == str(stored).encode()
    clock.time_ns = lambda: stored + 1
    assert lock.acquire(KEY, stored + 3 * S)      # 1 ns later it has passed
    assert redis_client.get(KEY) == str(stored + 3 * S).encode()


def _go_lock_once(client: redis.Redis, key: str, value: int) -> bool:
    """Go's ``locks/redis.Lock`` step by step (not atomic), as go-redis sends it."""
    now = time.time_ns()
    expiration = value + 1 - now
    if client.set(key, value, px=max(expiration // 1_000_000, 1), nx=True):
        return True
    v = client.get(key)
    timeout = int(v) if v is not None else 0
    if timeout != 0 and now > timeout:
        old = client.getset(key, value)
        if old is not None and now > int(old):
            client.expire(key, max(expiration // S, 1))
            return True
    return False


def _contend(redis_url: str, python_locks: list[RedisLock], key: str, value: int) -> list[str]:
    """Three Go-style lockers and the Python ones, released at once: who took ``key``."""
    winners: list[str] = []
    barrier = threading.Barrier(3 + len(python_locks))

    def go(i: int) -> None:
        c = redis.Redis.from_url(redis_url)
        barrier.wait()
        if _go_lock_once(c, key, value):
            winners.append(f"go{i}")
        c.close()

    def py(i: int) -> None:
        barrier.wait()
        if python_locks[i].acquire(key, value):
            winners.append(f"py{i}")

    threads = [threading.Thread(target=go, args=(i,)) for i in range(3)]
    threads += [threading.Thread(target=py, args=(i,)) for i in range(len(python_locks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return winners


def test_exactly_one_winner_among_go_style_and_python_lockers(
        redis_url: str, redis_client: redis.Redis) -> None:
    """Go's four commands interleaved with the Python script, many rounds: one winner each."""
    rng = random.Random(7)
    python_locks = [RedisLock(client_for(redis_url)) for _ in range(3)]
    for round_ in range(40):
        key = f"machinery_lock_mixed{round_ % 4}"
        if rng.random() < 0.5:  # sometimes a past value without TTL, as Go leaves it
            redis_client.set(key, str(time.time_ns() - S))
        winners = _contend(redis_url, python_locks, key, time.time_ns() + S // 2)
        assert len(winners) == 1, (round_, winners)
        time.sleep(0.6)  # let this period end
        # Python keeps every key expiring even after Go's GETSET dropped the TTL
        python_locks[0].acquire(key, time.time_ns() + S // 4)
        assert redis_client.pttl(key) != -1


# -- where the lock lives ---------------------------------------------------------------------
def test_create_lock_prefers_explicit_then_config_then_broker(redis_url: str) -> None:
    app = Machinery(broker=redis_url)
    assert isinstance(create_lock(app.config), RedisLock)
    assert isinstance(create_lock(app.config, "local"), LocalLock)
    mem = Machinery(broker="memory://", result_backend="memory://")
    assert isinstance(create_lock(mem.config), LocalLock)
    mem.config.lock = redis_url.rsplit("/", 1)[0]  # Go v1's form: redis://host:port, db 0
    assert isinstance(create_lock(mem.config), RedisLock)
    mem.config.lock = "eager"
    assert isinstance(create_lock(mem.config), LocalLock)


# -- the scheduler ----------------------------------------------------------------------------
def _queue(client: redis.Redis, name: str = "machinery_tasks") -> list[dict[str, Any]]:
    return [json.loads(m) for m in client.lrange(name, 0, -1)]


def test_scheduler_sends_each_period_with_fresh_ids_and_pending_states(
        app: Machinery, redis_client: redis.Redis) -> None:
    app.periodic("@every 1s", "tick", app.signature("add", args=[1, 2]))
    with Scheduler(app) as s:
        wait_for(lambda: s.sent["tick"] >= 3, timeout=30, what="three firings")
    msgs = _queue(redis_client)
    assert len(msgs) == s.sent["tick"]
    ids = [m["UUID"] for m in msgs]
    assert len(set(ids)) == len(ids) and all(i.startswith("task_") for i in ids)
    assert all(m["Name"] == "add" and m["Args"][0]["Value"] == 1 for m in msgs)
    assert all(b"PENDING" in (redis_client.get(i) or b"") for i in ids)


def test_three_schedulers_send_exactly_once_per_period(
        redis_url: str, redis_client: redis.Redis) -> None:
    schedulers = []
    for i in range(3):  # three apps, as three processes would have
        a = Machinery(broker=redis_url)
        a.periodic("@every 1s", "tick", a.signature("tick", args=[f"py{i}"]))
        schedulers.append(Scheduler(a).start())
    try:
        wait_for(lambda: sum(s.sent["tick"] for s in schedulers) >= 6, timeout=60,
                 what="six periods")
    finally:
        for s in schedulers:
            s.stop()
    sent = [f.value for s in schedulers for f in s.history if f.sent]
    assert len(sent) == len(set(sent)), Counter(sent).most_common(3)
    assert len(_queue(redis_client)) == len(sent)
    tried = {f.value for s in schedulers for f in s.history}
    # every period some scheduler tried was sent by one of them (under heavy load a
    # period may be skipped by all: then nobody tried it either)
    assert tried == set(sent)


def test_targets_fire_as_chain_group_chord_and_raw_signature(
        app: Machinery, redis_client: redis.Redis) -> None:
    a, b = app.signature("a"), app.signature("b")
    app.periodic("@every 1s", "ch", chain(a, b))
    app.periodic("@every 1s", "gr", group(a, b))
    app.periodic("@every 1s", "cd", chord([a, b], app.signature("cb")))
    app.periodic("@every 1s", "raw", Signature(uuid="task_fixed", name="raw"))
    with Scheduler(app) as s:
        wait_for(lambda: all(s.sent[n] >= 2 for n in ("ch", "gr", "cd", "raw")), timeout=60,
                 what="two firings of each")
    msgs = _queue(redis_client)
    chains = [m for m in msgs if m["Name"] == "a" and m["OnSuccess"]]
    assert chains and chains[0]["OnSuccess"][0]["Name"] == "b"
    groups = Counter(m["GroupUUID"] for m in msgs if m["GroupUUID"] and not m["ChordCallback"])
    assert len(groups) >= 2 and set(groups.values()) == {2}
    chords = [m for m in msgs if m["ChordCallback"]]
    assert len({m["ChordCallback"]["UUID"] for m in chords}) >= 2  # fresh chord ids
    raws = [m for m in msgs if m["Name"] == "raw"]
    assert len(raws) >= 2 and {m["UUID"] for m in raws} == {"task_fixed"}  # Go reuses it


def test_register_and_unregister_while_running(
        app: Machinery, redis_client: redis.Redis) -> None:
    with Scheduler(app) as s:
        time.sleep(0.2)
        app.periodic("@every 1s", "late", app.signature("late"))
        wait_for(lambda: s.sent["late"] >= 1, timeout=30, what="the late task fired")
        assert app.unregister_periodic("late")
        wait_for(lambda: "late" not in s.next_fire_times(), timeout=10, what="dropped")
        n = s.sent["late"]
        time.sleep(2.5)
        assert s.sent["late"] == n
        # a lock key left without expiry (as Go can leave it) gets one on unregistering
        app.periodic("@hourly", "rare", app.signature("rare"))
        wait_for(lambda: "rare" in s.next_fire_times(), timeout=10, what="rare registered")
        key = lock_key("machinery-compat", "rare", "@hourly")
        redis_client.set(key, str(time.time_ns() + 30 * S))
        assert redis_client.pttl(key) == -1
        app.unregister_periodic("rare")
        wait_for(lambda: redis_client.pttl(key) != -1, timeout=10,
                 what="the unregistered task's lock key got an expiry")
        assert 20_000 < redis_client.pttl(key) <= 30_001


def test_periodic_rows_show_the_python_holder(app: Machinery) -> None:
    app.periodic("@every 1s", "tick", app.signature("tick"))
    with Scheduler(app) as s:
        wait_for(lambda: s.sent["tick"] >= 1, timeout=30, what="a firing")
        rows = periodic_rows(app)
    assert rows[0]["lock_key"] == KEY
    assert rows[0]["lock"]["state"].startswith("python ") or rows[0]["lock"]["state"] == "free"
