"""The DynamoDB result backend on a moto server: Go Machinery's item shapes attribute by
attribute (protocol notes §6.5, §12.6), Go v1's shapes read, groups larger than one
BatchGetItem, the chord trigger under a race and against Go's ``Lock``, TTL, table creation,
and a worker end to end.

Every test gets its own pair of tables (moto's server is shared by the session).
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from machinery_compat import Machinery, TaskFailed, chord, group
from machinery_compat.backends import create_backend
from machinery_compat.backends.base import ExceptionRecord
from machinery_compat.backends.dynamodb import (
    BATCH_GET_LIMIT,
    EXCEPTION_RECORD_ATTRIBUTE,
    DynamoDBBackend,
    TableReport,
    create_tables,
)
from machinery_compat.config import Config, DynamoDBConfig
from machinery_compat.exceptions import BackendError, ConfigError
from machinery_compat.protocol import (
    FAILURE,
    PENDING,
    SUCCESS,
    GoTime,
    Signature,
    TaskResult,
    TaskState,
)
from tests.helpers import wait_for
from tests.services import MotoServer

ROOT = Path(__file__).resolve().parents[2]
UUID = "task_7e0b7c39-3d0c-4b5e-9e1a-2f7d5c1b8a90"
CREATED = GoTime.parse("2024-05-01T12:34:56.123456789Z")


@pytest.fixture
def dyn_cfg(moto_endpoint: str, moto_server: MotoServer) -> Iterator[DynamoDBConfig]:
    """A DynamoDB section with tables of its own, created as Go expects them."""
    suffix = uuid.uuid4().hex[:10]
    cfg = DynamoDBConfig(task_states_table=f"task_states_{suffix}",
                         group_metas_table=f"group_metas_{suffix}",
                         endpoint_url=moto_endpoint, region=moto_server.region)
    create_tables(cfg)
    yield cfg
    raw = moto_server.client("dynamodb")
    for name in (cfg.task_states_table, cfg.group_metas_table):
        raw.delete_table(TableName=name)


@pytest.fixture
def backend(dyn_cfg: DynamoDBConfig) -> Iterator[DynamoDBBackend]:
    b = DynamoDBBackend(dynamodb=dyn_cfg)
    yield b
    b.close()


@pytest.fixture
def raw(moto_server: MotoServer) -> Any:
    """A plain boto3 client on the same server (what a Go worker's SDK would see)."""
    return moto_server.client("dynamodb")


def _item(raw: Any, table: str, key: str, value: str) -> dict[str, Any]:
    item: dict[str, Any] = raw.get_item(TableName=table, Key={key: {"S": value}},
                                        ConsistentRead=True)["Item"]
    return item


def _ttl_near(attr: dict[str, Any], expire_in: int = 3600) -> bool:
    return abs(int(attr["N"]) - (int(time.time()) + expire_in)) <= 2


# --------------------------------------------------------------------------------------
# item shapes (Go v2)
# --------------------------------------------------------------------------------------


def test_item_of_every_state_is_go_v2s(backend: DynamoDBBackend, raw: Any) -> None:
    table = backend.task_table
    sig = Signature(uuid=UUID, name="add")

    def item() -> dict[str, Any]:
        return _item(raw, table, "TaskUUID", UUID)

    backend.set_state_pending(sig)
    pending = item()
    created = pending["CreatedAt"]["S"]
    assert GoTime.parse(created).isoformat() == created and created.endswith("Z")
    assert abs(GoTime.parse(created).timestamp() - time.time()) < 5
    # PENDING: PutItem of the whole TaskState
    assert pending == {
        "TaskUUID": {"S": UUID}, "TaskName": {"S": "add"}, "State": {"S": "PENDING"},
        "Results": {"NULL": True}, "Error": {"S": ""}, "CreatedAt": {"S": created},
        "TTL": {"N": "0"},
    }
    # RECEIVED / STARTED / RETRY: SET State only, everything else kept
    for write, state in ((backend.set_state_received, "RECEIVED"),
                         (backend.set_state_started, "STARTED"),
                         (backend.set_state_retry, "RETRY")):
        write(sig)
        assert item() == {**pending, "State": {"S": state}}
    backend.mark_received_started(sig)
    assert item() == {**pending, "State": {"S": "STARTED"}}
    # SUCCESS: SET State, TTL (now + results_expire_in), Results (L of M{Type S, Value S})
    backend.set_state_success(sig, [TaskResult("int64", 2), TaskResult("float64", 0.5),
                                     TaskResult("float64", 1e6), TaskResult("bool", True),
                                     TaskResult("[]int64", [1, 2]),
                                     TaskResult("map[string]interface {}", {"a": 1}),
                                     TaskResult("<nil>", None)])
    success = item()
    assert _ttl_near(success["TTL"])
    assert success == {**pending, "State": {"S": "SUCCESS"}, "TTL": success["TTL"],
                       "Results": {"L": [
                           {"M": {"Type": {"S": t}, "Value": {"S": v}}} for t, v in (
                               ("int64", "2"), ("float64", "0.5"), ("float64", "1e+06"),
                               ("bool", "true"), ("[]int64", "[1 2]"),
                               ("map[string]interface {}", "map[a:1]"), ("<nil>", "<nil>"))]}}
    # a SUCCESS without results leaves Results as it was (Go skips #R for an empty list)
    backend.set_state_pending(sig)
    backend.set_state_success(sig, [])
    assert item()["Results"] == {"NULL": True}


def test_success_without_results_reads_as_an_empty_list(backend: DynamoDBBackend,
                                                        raw: Any) -> None:
    """Go writes no ``Results`` for a task without results (its PENDING's NULL stays, or there
    is no attribute at all): read as ``[]``, what Go's ``AsyncResult.Get`` returns (an empty
    slice) and what Redis holds, not ``None``.  Other states keep ``None``."""
    # Go v2: PutItem PENDING (Results NULL), then UpdateItem SET State, TTL
    raw.put_item(TableName=backend.task_table, Item={
        "TaskUUID": {"S": UUID}, "TaskName": {"S": "only_error"}, "State": {"S": "PENDING"},
        "Results": {"NULL": True}, "Error": {"S": ""},
        "CreatedAt": {"S": "2024-05-01T12:34:56.123456789Z"}, "TTL": {"N": "0"}})
    assert backend.get_state(UUID) == TaskState(UUID, PENDING, task_name="only_error",
                                                created_at=CREATED)
    raw.update_item(TableName=backend.task_table, Key={"TaskUUID": {"S": UUID}},
                    UpdateExpression="SET #S = :s, #T = :t",
                    ExpressionAttributeNames={"#S": "State", "#T": "TTL"},
                    ExpressionAttributeValues={":s": {"S": "SUCCESS"}, ":t": {"N": "1714570496"}})
    assert _item(raw, backend.task_table, "TaskUUID", UUID)["Results"] == {"NULL": True}
    state = backend.get_state(UUID)
    assert state is not None and (state.state, state.results) == (SUCCESS, [])
    # no Results attribute at all (a SUCCESS written by UpdateItem alone)
    backend.set_state_success(Signature(uuid="task_bare", name="t"), [])
    assert "Results" not in _item(raw, backend.task_table, "TaskUUID", "task_bare")
    bare = backend.get_state("task_bare")
    assert bare is not None and bare.results == []
    # a FAILURE keeps its PENDING's NULL: no results
    raw.update_item(TableName=backend.task_table, Key={"TaskUUID": {"S": UUID}},
                    UpdateExpression="SET #S = :s, #E = :e",
                    ExpressionAttributeNames={"#S": "State", "#E": "Error"},
                    ExpressionAttributeValues={":s": {"S": FAILURE}, ":e": {"S": "boom"}})
    failed = backend.get_state(UUID)
    assert failed is not None and failed.results is None
    app = Machinery(broker="memory://dyn-no-results", result_backend="https://dynamodb",
                    config=Config(dynamodb=backend.cfg))
    try:
        result = app.AsyncResult("task_bare")
        assert (result.state, result.results, result.get(timeout=5)) == (SUCCESS, [], None)
    finally:
        app.close()


def test_golden_success_item(backend: DynamoDBBackend, raw: Any) -> None:
    """§12.6: the worker's writes after Go's PENDING give exactly the golden item."""
    backend.put_state(TaskState(UUID, PENDING, task_name="add", created_at=CREATED))
    sig = Signature(uuid=UUID, name="add")
    token = backend.mark_received_started(sig)
    backend.set_final_state(TaskState(UUID, SUCCESS, results=[TaskResult("int64", 2)]), token)
    item = _item(raw, backend.task_table, "TaskUUID", UUID)
    assert _ttl_near(item["TTL"])
    assert item == {
        "TaskUUID": {"S": UUID}, "TaskName": {"S": "add"}, "State": {"S": "SUCCESS"},
        "Error": {"S": ""}, "CreatedAt": {"S": "2024-05-01T12:34:56.123456789Z"},
        "Results": {"L": [{"M": {"Type": {"S": "int64"}, "Value": {"S": "2"}}}]},
        "TTL": item["TTL"],
    }
    state = backend.get_state(UUID)
    assert state is not None and state.python_results() == [2]
    assert (state.task_name, state.created_at) == ("add", CREATED)


def test_failure_item_and_exception_record(backend: DynamoDBBackend, raw: Any) -> None:
    sig = Signature(uuid=UUID, name="div")
    backend.set_state_pending(sig)
    pending = _item(raw, backend.task_table, "TaskUUID", UUID)
    backend.set_state_failure(sig, "boom")
    failure = _item(raw, backend.task_table, "TaskUUID", UUID)
    assert _ttl_near(failure["TTL"])
    # FAILURE: SET State, Error, TTL; Results stays the NULL of PENDING
    assert failure == {**pending, "State": {"S": "FAILURE"}, "Error": {"S": "boom"},
                       "TTL": failure["TTL"]}
    assert backend.get_exception_record(UUID) is None
    # a Python worker's FAILURE: the exception record in the same UpdateItem
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError as e:
        record = ExceptionRecord.from_exception(e, "division by zero")
    backend.set_state_pending(sig)
    backend.set_final_state(TaskState(UUID, FAILURE, error="division by zero"), None, record)
    item = _item(raw, backend.task_table, "TaskUUID", UUID)
    assert item[EXCEPTION_RECORD_ATTRIBUTE] == {"S": record.to_json().decode()}
    assert set(item) == set(pending) | {EXCEPTION_RECORD_ATTRIBUTE}
    assert backend.get_exception_record(UUID) == record
    state = backend.get_state(UUID)
    assert state is not None and (state.state, state.error) == (FAILURE, "division by zero")
    # a retry's PENDING replaces the whole item: the record goes with it
    backend.set_state_pending(sig)
    assert backend.get_exception_record(UUID) is None


def test_group_meta_item(backend: DynamoDBBackend, raw: Any) -> None:
    backend.init_group("group_g", ["task_a", "task_b"])
    item = _item(raw, backend.group_table, "GroupUUID", "group_g")
    created = item["CreatedAt"]["S"]
    assert abs(GoTime.parse(created).timestamp() - time.time()) < 5
    assert _ttl_near(item["TTL"])
    assert item == {
        "GroupUUID": {"S": "group_g"}, "TaskUUIDs": {"L": [{"S": "task_a"}, {"S": "task_b"}]},
        "ChordTriggered": {"BOOL": False}, "Lock": {"BOOL": False},
        "CreatedAt": {"S": created}, "TTL": item["TTL"],
    }


def test_ttl_follows_results_expire_in(dyn_cfg: DynamoDBConfig, raw: Any) -> None:
    b = DynamoDBBackend(results_expire_in=60, dynamodb=dyn_cfg)
    sig = Signature(uuid="task_ttl", name="t")
    b.set_state_pending(sig)
    assert _item(raw, b.task_table, "TaskUUID", "task_ttl")["TTL"] == {"N": "0"}
    b.set_state_success(sig, [])
    assert _ttl_near(_item(raw, b.task_table, "TaskUUID", "task_ttl")["TTL"], 60)
    b.init_group("group_ttl", [])
    assert _ttl_near(_item(raw, b.group_table, "GroupUUID", "group_ttl")["TTL"], 60)
    assert DynamoDBBackend(results_expire_in=0, dynamodb=dyn_cfg).expire_in == 3600


# --------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------


def test_go_v1_items_read(backend: DynamoDBBackend, raw: Any) -> None:
    """aws-sdk-go v1 writes "" as NULL (and an empty TaskUUIDs as NULL)."""
    raw.put_item(TableName=backend.task_table, Item={
        "TaskUUID": {"S": "task_v1"}, "TaskName": {"S": "add"}, "State": {"S": "PENDING"},
        "Results": {"NULL": True}, "Error": {"NULL": True},
        "CreatedAt": {"S": "2024-05-01T12:34:56.123456789Z"}, "TTL": {"N": "0"}})
    pending = backend.get_state("task_v1")
    assert pending == TaskState("task_v1", PENDING, task_name="add", created_at=CREATED)
    raw.update_item(TableName=backend.task_table, Key={"TaskUUID": {"S": "task_v1"}},
                    UpdateExpression="SET #S = :s, #T = :t, #R = :r",
                    ExpressionAttributeNames={"#S": "State", "#T": "TTL", "#R": "Results"},
                    ExpressionAttributeValues={
                        ":s": {"S": "SUCCESS"}, ":t": {"N": "1714570496"},
                        ":r": {"L": [{"M": {"Type": {"S": "[]string"},
                                            "Value": {"S": "[a b]"}}}]}})
    done = backend.get_state("task_v1")
    assert done is not None and (done.state, done.error, done.ttl) == (SUCCESS, "", 1714570496)
    assert done.python_results() == [["a", "b"]]
    raw.put_item(TableName=backend.group_table, Item={
        "GroupUUID": {"S": "group_v1"}, "TaskUUIDs": {"NULL": True},
        "ChordTriggered": {"BOOL": False}, "Lock": {"BOOL": False},
        "CreatedAt": {"S": "2024-05-01T12:34:56Z"}, "TTL": {"N": "1714570496"}})
    meta = backend.get_group_meta("group_v1")
    assert meta is not None and meta.task_uuids == [] and not meta.chord_triggered


def test_states_written_by_update_alone_and_missing_items(backend: DynamoDBBackend) -> None:
    """A state update with nothing before it (Go: no PENDING written) leaves an item with only
    the attributes it set: the rest reads as zero values, as Go's SDK decodes them."""
    backend.set_state_started(Signature(uuid="task_lone", name="t"))
    st = backend.get_state("task_lone")
    assert st == TaskState("task_lone", "STARTED")
    assert backend.get_state("task_nothing") is None
    assert backend.get_group_meta("group_nothing") is None
    app = Machinery(broker="memory://dyn-missing", result_backend="https://dynamodb",
                    config=Config(dynamodb=backend.cfg))
    try:
        assert app.AsyncResult("task_nothing").state == PENDING
    finally:
        app.close()


def test_group_larger_than_one_batch_get(backend: DynamoDBBackend) -> None:
    uuids = [f"task_{i:03d}" for i in range(2 * BATCH_GET_LIMIT + 50)]
    backend.init_group("group_big", uuids)
    for i, u in enumerate(uuids):
        if i % 3:
            backend.set_state(TaskState(u, SUCCESS, results=[TaskResult("int64", i)]), merge=True)
        elif i % 2:
            backend.set_state(TaskState(u, FAILURE, error=f"e{i}"), merge=True)
    calls: list[int] = []

    def count(params: dict[str, Any], **_: Any) -> None:
        calls.append(len(params["RequestItems"][backend.task_table]["Keys"]))

    backend.client.meta.events.register("provide-client-params.dynamodb.BatchGetItem", count)
    states = backend.get_states([*uuids, "task_missing"])
    assert calls == [BATCH_GET_LIMIT, BATCH_GET_LIMIT, 51]
    assert states[-1] is None
    assert [s.task_uuid if s else None for s in states[:-1]] == [
        u if (i % 3 or i % 2) else None for i, u in enumerate(uuids)]
    done = sum(1 for i in range(len(uuids)) if i % 3 or i % 2)
    calls.clear()
    assert backend.group_completed("group_big", done)
    assert not backend.group_completed("group_big", len(uuids))
    assert len(calls) == 6


class _Unprocessing:
    """A client whose BatchGetItem leaves the back half of the keys unprocessed, twice (as
    DynamoDB does when throttled or past 16 MB)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.partial = 2
        self.calls: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def batch_get_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:
        (table, request), = RequestItems.items()
        keys = request["Keys"]
        self.calls.append(len(keys))
        if self.partial and len(keys) > 1:
            self.partial -= 1
            half = len(keys) // 2
            reply: dict[str, Any] = self._client.batch_get_item(
                RequestItems={table: {**request, "Keys": keys[:half]}})
            reply["UnprocessedKeys"] = {table: {**request, "Keys": keys[half:]}}
            return reply
        reply = self._client.batch_get_item(RequestItems=RequestItems)
        return reply


def test_unprocessed_keys_are_asked_again(dyn_cfg: DynamoDBConfig, backend: DynamoDBBackend) -> None:
    uuids = [f"task_u{i}" for i in range(8)]
    for u in uuids:
        backend.set_state(TaskState(u, SUCCESS), merge=True)
    flaky = _Unprocessing(backend.client)
    b = DynamoDBBackend(dynamodb=dyn_cfg, client=flaky)
    states = b.get_states(uuids)
    assert [s.task_uuid if s else None for s in states] == uuids
    assert flaky.calls == [8, 4, 2]


def test_purge(backend: DynamoDBBackend, raw: Any) -> None:
    backend.set_state_pending(Signature(uuid="task_p", name="t"))
    backend.init_group("group_p", ["task_p"])
    backend.purge_state("task_p")
    backend.purge_group_meta("group_p")
    assert "Item" not in raw.get_item(TableName=backend.task_table,
                                      Key={"TaskUUID": {"S": "task_p"}})
    assert backend.get_group_meta("group_p") is None
    backend.purge_state("task_p")  # nothing there: no error


# --------------------------------------------------------------------------------------
# chord trigger
# --------------------------------------------------------------------------------------


def _race(backend: DynamoDBBackend, group_uuid: str, n: int) -> list[bool]:
    wins: list[bool] = []
    barrier = threading.Barrier(n)

    def run() -> None:
        barrier.wait()
        wins.append(backend.trigger_chord(group_uuid))

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return wins


class _AtomicConditionalWrites:
    """A client whose conditional writes reach the server one at a time.

    DynamoDB applies a conditional write atomically; moto (5.x) does not: its threaded server
    evaluates the condition and then writes, with no lock between, so two racing conditional
    updates can both succeed there.  This models DynamoDB's guarantee (one lock shared by
    every client of the test, as the item is shared by every process); reads stay concurrent.
    """

    def __init__(self, client: Any, lock: threading.Lock) -> None:
        self._client = client
        self._lock = lock

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def update_item(self, **kwargs: Any) -> Any:
        if "ConditionExpression" not in kwargs:
            return self._client.update_item(**kwargs)
        with self._lock:
            return self._client.update_item(**kwargs)


def test_racing_chord_triggers_exactly_one_wins(dyn_cfg: DynamoDBConfig,
                                                backend: DynamoDBBackend) -> None:
    """8 threads in each of 3 backends (as in 3 worker processes) race for each group."""
    lock = threading.Lock()
    racers = [DynamoDBBackend(dynamodb=dyn_cfg,
                              client=_AtomicConditionalWrites(b.client, lock))
              for b in (backend, *(DynamoDBBackend(dynamodb=dyn_cfg) for _ in range(2)))]
    for round_ in range(5):
        group_uuid = f"group_race{round_}"
        backend.init_group(group_uuid, ["task_1", "task_2"])
        wins: list[bool] = []

        def run(b: DynamoDBBackend, g: str = group_uuid, out: list[bool] = wins) -> None:
            out.extend(_race(b, g, 8))

        threads = [threading.Thread(target=run, args=(b,)) for b in racers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(wins) == [False] * 23 + [True]
        meta = backend.get_group_meta(group_uuid)
        assert meta is not None and meta.chord_triggered and not meta.lock
        assert not backend.trigger_chord(group_uuid)


def test_chord_trigger_waits_for_a_go_workers_lock(backend: DynamoDBBackend, raw: Any) -> None:
    """A Go worker holding Lock is about to set ChordTriggered: the Python worker waits and
    then loses, and never touches Lock."""
    backend.init_group("group_locked", ["task_1"])
    key = {"GroupUUID": {"S": "group_locked"}}

    def go_sets(**attrs: bool) -> None:  # Go's unconditional `SET #L = :l` / `SET #CT = :ct`
        for name, value in attrs.items():
            raw.update_item(TableName=backend.group_table, Key=key,
                            UpdateExpression="SET #A = :v", ExpressionAttributeNames={"#A": name},
                            ExpressionAttributeValues={":v": {"BOOL": value}})

    go_sets(Lock=True)
    result: list[bool] = []
    t = threading.Thread(target=lambda: result.append(backend.trigger_chord("group_locked")))
    t.start()
    time.sleep(0.3)
    assert t.is_alive() and not result  # waiting
    go_sets(ChordTriggered=True)
    go_sets(Lock=False)
    t.join(10)
    assert result == [False]
    # a lock left behind by a Go worker that died between its Lock and ChordTriggered writes
    backend.init_group("group_stale", ["task_1"])
    key = {"GroupUUID": {"S": "group_stale"}}
    go_sets(Lock=True)
    backend.chord_lock_wait = 0.3
    start = time.monotonic()
    assert backend.trigger_chord("group_stale")
    assert 0.3 <= time.monotonic() - start < 5
    assert not backend.trigger_chord("group_stale")
    meta = backend.get_group_meta("group_stale")
    assert meta is not None and meta.chord_triggered and meta.lock  # Lock is Go's to clear


def test_chord_trigger_on_a_missing_group(backend: DynamoDBBackend) -> None:
    with pytest.raises(BackendError, match="group_gone: meta not found"):
        backend.trigger_chord("group_gone")
    assert backend.get_group_meta("group_gone") is None  # not created by the attempt


# --------------------------------------------------------------------------------------
# tables, configuration, errors
# --------------------------------------------------------------------------------------


def test_create_tables_as_go_expects(moto_server: MotoServer, raw: Any) -> None:
    suffix = uuid.uuid4().hex[:10]
    cnf = Config(dynamodb=DynamoDBConfig(task_states_table=f"ts_{suffix}",
                                         group_metas_table=f"gm_{suffix}",
                                         endpoint_url=moto_server.endpoint_url,
                                         region=moto_server.region))
    try:
        assert create_tables(cnf) == [TableReport(f"ts_{suffix}", "TaskUUID", True, True),
                                      TableReport(f"gm_{suffix}", "GroupUUID", True, True)]
        for name, key in ((f"ts_{suffix}", "TaskUUID"), (f"gm_{suffix}", "GroupUUID")):
            table = raw.describe_table(TableName=name)["Table"]
            assert table["KeySchema"] == [{"AttributeName": key, "KeyType": "HASH"}]
            assert table["AttributeDefinitions"] == [{"AttributeName": key, "AttributeType": "S"}]
            assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
            assert table["TableStatus"] == "ACTIVE"
            ttl = raw.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
            assert (ttl["TimeToLiveStatus"], ttl["AttributeName"]) == ("ENABLED", "TTL")
        # again: nothing to do
        assert create_tables(raw, task_states_table=f"ts_{suffix}",
                             group_metas_table=f"gm_{suffix}") == [
            TableReport(f"ts_{suffix}", "TaskUUID", False, True),
            TableReport(f"gm_{suffix}", "GroupUUID", False, True)]
        # a table with another key is refused
        raw.create_table(TableName=f"bad_{suffix}", BillingMode="PAY_PER_REQUEST",
                         AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                         KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}])
        with pytest.raises(ConfigError, match="needs the hash key TaskUUID of type S"):
            create_tables(raw, task_states_table=f"bad_{suffix}", group_metas_table=f"gm_{suffix}")
    finally:
        for name in (f"ts_{suffix}", f"gm_{suffix}", f"bad_{suffix}"):
            with contextlib.suppress(raw.exceptions.ResourceNotFoundException):
                raw.delete_table(TableName=name)


def test_missing_table_error_says_how_to_create_it(moto_server: MotoServer) -> None:
    b = DynamoDBBackend(dynamodb=DynamoDBConfig(task_states_table="no_such_table",
                                                endpoint_url=moto_server.endpoint_url,
                                                region=moto_server.region))
    with pytest.raises(BackendError, match=r"table 'no_such_table' not found.*create_tables"):
        b.get_state("task_x")


def test_result_backend_urls_select_dynamodb(moto_server: MotoServer,
                                             caplog: pytest.LogCaptureFixture) -> None:
    cfg = DynamoDBConfig(endpoint_url=moto_server.endpoint_url, region=moto_server.region)
    b = create_backend(Config(result_backend="https://dynamodb.us-east-1.amazonaws.com",
                              dynamodb=cfg, results_expire_in=120))
    assert isinstance(b, DynamoDBBackend) and b.expire_in == 120
    assert b.client.meta.endpoint_url == moto_server.endpoint_url
    assert b.client.meta.region_name == moto_server.region
    assert b.client.meta.config.retries["mode"] == "standard"
    assert not caplog.records
    # any http(s) URL selects it, but (as in Go) is not where the calls go: said so
    with caplog.at_level(logging.WARNING):
        b = create_backend(Config(result_backend="http://localhost:8000",
                                  dynamodb=DynamoDBConfig(region=moto_server.region)))
    assert isinstance(b, DynamoDBBackend)
    assert "set dynamodb.endpoint_url" in caplog.text
    # a client given in the config is used as it is; Go's defaults without a section
    client = moto_server.client("dynamodb")
    b = create_backend(Config(result_backend="https://dynamodb", dynamodb=DynamoDBConfig(
        client=client)))
    assert isinstance(b, DynamoDBBackend) and b.client is client
    assert (b.task_table, b.group_table) == ("task_states", "group_metas")


def test_missing_boto3_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(ConfigError, match=r"needs boto3: pip install 'machinery-compat\[aws\]'"):
        create_backend(Config(result_backend="https://dynamodb"))


FORK_SCRIPT = r"""
import os, sys
from machinery_compat.backends.dynamodb import DynamoDBBackend
from machinery_compat.config import DynamoDBConfig
from machinery_compat.protocol import Signature
endpoint, region, states, metas = sys.argv[1:5]
b = DynamoDBBackend(dynamodb=DynamoDBConfig(endpoint_url=endpoint, region=region,
                                            task_states_table=states, group_metas_table=metas))
b.set_state_pending(Signature(uuid="task_parent", name="t"))
parent_client = b.client
pids = []
for i in range(3):
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            for j in range(20):
                b.set_state_pending(Signature(uuid=f"task_child{i}_{j}", name="t"))
                assert b.get_state(f"task_child{i}_{j}").state == "PENDING"
            assert b.client is not parent_client
            code = 0
        finally:
            os._exit(code)
    pids.append(pid)
for j in range(20):
    assert b.get_state("task_parent").state == "PENDING"
assert all(os.waitpid(p, 0)[1] == 0 for p in pids)
assert b.client is parent_client
print("ok")
"""


def test_fork_gives_the_child_its_own_client(dyn_cfg: DynamoDBConfig) -> None:
    """Forking happens in a fresh interpreter (never in the pytest process: see test_fork.py)."""
    proc = subprocess.run(
        [sys.executable, "-c", FORK_SCRIPT, dyn_cfg.endpoint_url, dyn_cfg.region,
         dyn_cfg.task_states_table, dyn_cfg.group_metas_table],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


# --------------------------------------------------------------------------------------
# end to end: a Python worker on the DynamoDB backend
# --------------------------------------------------------------------------------------


@pytest.fixture
def app(dyn_cfg: DynamoDBConfig) -> Iterator[Machinery]:
    from machinery_compat.backends import memory as memory_backend
    from machinery_compat.brokers import memory as memory_broker

    name = f"dyn-{uuid.uuid4().hex[:10]}"
    a = Machinery(broker=f"memory://{name}", result_backend="https://dynamodb",
                  default_queue="machinery_tasks", config=Config(dynamodb=dyn_cfg))
    yield a
    a.close()
    memory_broker.reset(name)
    memory_backend.reset(name)


def test_worker_end_to_end(app: Machinery, start_worker: Callable[..., Any]) -> None:
    @app.task(name="pair")
    def pair(a: int, b: float) -> tuple[int, float]:
        return a * 2, b / 2

    @app.task(name="blob")
    def blob(n: int) -> bytes:
        return bytes(range(n))

    @app.task(name="boom")
    def boom() -> None:
        raise KeyError("nope")

    @app.task(name="add")
    def add(*nums: int) -> int:
        return sum(nums)

    @app.task(name="collect")
    def collect(*values: int) -> list[int]:
        return sorted(values)

    @app.task(name="nothing")
    def nothing() -> None:
        return None

    start_worker(concurrency=4)
    assert app.send_task("pair", args=[21, 1.0]).get(timeout=20) == (42, 0.5)
    quiet = app.send_task("nothing")
    assert quiet.get(timeout=20) is None
    assert quiet.results == []  # as Go's Get: an empty slice, not None
    assert app.send_task("blob", args=[3]).get(timeout=20) == b"\x00\x01\x02"
    with pytest.raises(TaskFailed) as info:
        app.send_task("boom").get(timeout=20)
    assert info.value.exc_type == "KeyError"
    assert group(add.s(i, i) for i in range(12)).apply_async().get(timeout=30) == [
        2 * i for i in range(12)]
    res = chord([add.s(i) for i in range(6)], collect.s(100)).apply_async()
    assert res.get(timeout=30) == [0, 1, 2, 3, 4, 5, 100]
    res = app.send_task("add", args=[1, 2])
    assert res.get(timeout=20) == 3
    res.forget()
    wait_for(lambda: app.backend.get_state(res.id) is None, timeout=5)


def test_raw_and_store_raw_speak_go_json(backend: DynamoDBBackend, raw: Any) -> None:
    """The Memory backend's ``raw``/``store_raw``: Go JSON in and out (for probes and tools)."""
    body = (b'{"TaskUUID":"task_j","TaskName":"add","State":"SUCCESS","Results":[{"Type":"int64",'
            b'"Value":2}],"Error":"","CreatedAt":"2024-05-01T12:34:56.123456789Z","TTL":0}')
    backend.store_raw("task_j", body)
    assert backend.raw("task_j") == body
    assert _item(raw, backend.task_table, "TaskUUID", "task_j")["Results"] == {
        "L": [{"M": {"Type": {"S": "int64"}, "Value": {"S": "2"}}}]}
    meta = (b'{"GroupUUID":"group_j","TaskUUIDs":["task_j"],"ChordTriggered":true,"Lock":false,'
            b'"CreatedAt":"2024-05-01T12:34:56Z","TTL":5}')
    backend.store_raw("group_j", meta)
    assert backend.raw("group_j") == meta
    assert backend.raw("task_none") is None


def test_region_comes_from_the_config_the_chain_or_the_url(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(ConfigError, match="needs an AWS region"):
        create_backend(Config(result_backend="https://dynamodb"))
    b = create_backend(Config(result_backend="https://dynamodb.eu-west-3.amazonaws.com"))
    assert isinstance(b, DynamoDBBackend) and b.client.meta.region_name == "eu-west-3"
    b = create_backend(Config(result_backend="https://dynamodb.eu-west-3.amazonaws.com",
                              dynamodb=DynamoDBConfig(region="ap-south-1")))
    assert isinstance(b, DynamoDBBackend) and b.client.meta.region_name == "ap-south-1"
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")  # the chain wins over the URL
    b = create_backend(Config(result_backend="https://dynamodb.eu-west-3.amazonaws.com"))
    assert isinstance(b, DynamoDBBackend) and b.client.meta.region_name == "us-west-2"


def test_states_too_big_for_an_item_still_end_the_task(backend: DynamoDBBackend,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """DynamoDB items hold at most 400 KB: such a write is never retried as it is."""
    sig = Signature(uuid="task_big", name="t")
    backend.set_state_pending(sig)
    backend.set_final_state(TaskState("task_big", SUCCESS,
                                      results=[TaskResult("string", "x" * 500_000)]))
    st = backend.get_state("task_big")
    assert st is not None and st.state == FAILURE and st.task_name == "t"
    assert st.error.startswith("the task's results do not fit a DynamoDB item (at most 400 KB)")
    assert "results do not fit a DynamoDB item" in caplog.text
    # a FAILURE whose exception record is too big: stored without it
    record = ExceptionRecord("E", "m", "E", "t" * 500_000, "boom")
    backend.set_final_state(TaskState("task_big", FAILURE, error="boom"), None, record)
    st = backend.get_state("task_big")
    assert st is not None and (st.state, st.error) == (FAILURE, "boom")
    assert backend.get_exception_record("task_big") is None
    # a FAILURE whose error text is too big: cut
    backend.set_state_failure(sig, "e" * 500_000)
    st = backend.get_state("task_big")
    assert st is not None and st.state == FAILURE
    assert st.error == "e" * 65536 + "… (500000 characters)"
