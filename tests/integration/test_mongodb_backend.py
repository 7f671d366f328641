"""The MongoDB result backend on a real server (FerretDB v1.24.2, SQLite backend; see
tests/services/ferretdb_svc.py): the commands it sends (seen through pymongo's command
monitoring), the documents it leaves (field names and BSON types, as Go's driver writes and
Go's reflection reads them), both Go document shapes read back, the TTL index, URL parsing and
the chord trigger under races."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("pymongo")

from bson.binary import Binary
from bson.datetime_ms import DatetimeMS
from bson.int64 import Int64
from pymongo import monitoring

from machinery_compat.backends import create_backend
from machinery_compat.backends.base import ExceptionRecord
from machinery_compat.backends.mongodb import (
    MongoDBBackend,
    MongoURL,
    build_client,
    mongo_uri,
)
from machinery_compat.config import Config, MongoDBConfig
from machinery_compat.exceptions import BackendError, ConfigError, DecodeError
from machinery_compat.protocol import (
    FAILURE,
    PENDING,
    SUCCESS,
    GoTime,
    Signature,
    TaskResult,
    TaskState,
)
from machinery_compat.protocol.gojson import Number, loads
from tests.services.ferretdb_svc import FerretDBServer

pytestmark = pytest.mark.mongodb


class Recorder(monitoring.CommandListener):
    """Every command a client sends (name, body), as pymongo hands it to the server."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, dict[str, Any]]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.commands.append((event.command_name, dict(event.command)))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def named(self, name: str) -> list[dict[str, Any]]:
        return [c for n, c in self.commands if n == name]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def backend(ferretdb_server: FerretDBServer, mongodb_database: str,
            recorder: Recorder) -> Iterator[MongoDBBackend]:
    client = ferretdb_server.client(event_listeners=[recorder])
    b = MongoDBBackend(ferretdb_server.url, 3600, database=mongodb_database, client=client)
    yield b
    client.close()


@pytest.fixture
def raw(ferretdb_server: FerretDBServer, mongodb_database: str) -> Iterator[Any]:
    """The test database through a plain client (dates as DatetimeMS, exact BSON types)."""
    from bson.codec_options import CodecOptions, DatetimeConversion

    client = ferretdb_server.client()
    yield client.get_database(mongodb_database, codec_options=CodecOptions(
        datetime_conversion=DatetimeConversion.DATETIME_MS))
    client.close()


def _sig(uuid: str = "task_m1", name: str = "add") -> Signature:
    return Signature(uuid=uuid, name=name)


def _via_json(type_name: str, value: Any) -> Any:
    return TaskResult.from_obj(loads(TaskResult(type_name, value).to_go_json())).python_value


def _updates(recorder: Recorder) -> list[dict[str, Any]]:
    return [u for c in recorder.named("update") for u in c["updates"]]


# --------------------------------------------------------------------------------------
# writes: the commands and documents
# --------------------------------------------------------------------------------------


def test_state_writes_are_gos_upserting_set_updates(backend: MongoDBBackend, raw: Any,
                                                    recorder: Recorder) -> None:
    sig = _sig()
    before = time.time_ns() // 1_000_000
    backend.set_state_pending(sig)
    backend.set_state_received(sig)
    backend.set_state_started(sig)
    backend.set_state_success(sig, [TaskResult("int64", 2)])
    after = time.time_ns() // 1_000_000

    ups = _updates(recorder)
    assert [u["q"] for u in ups] == [{"_id": "task_m1"}] * 4
    assert all(u["upsert"] is True and set(u["u"]) == {"$set"} for u in ups)
    sets = [u["u"]["$set"] for u in ups]
    assert list(sets[0]) == ["state", "task_name", "created_at"]
    assert (sets[0]["state"], sets[0]["task_name"]) == ("PENDING", "add")
    assert sets[1] == {"state": "RECEIVED"} and sets[2] == {"state": "STARTED"}
    assert list(sets[3]) == ["state", "results", "delete_at"]
    assert {c for c, _ in recorder.commands} <= {"update", "createIndexes"}

    doc = raw.tasks.find_one({"_id": "task_m1"})
    assert set(doc) == {"_id", "state", "task_name", "created_at", "results", "delete_at"}
    assert doc["state"] == "SUCCESS" and doc["task_name"] == "add"
    assert isinstance(doc["created_at"], DatetimeMS)
    assert before <= int(doc["created_at"]) <= after
    assert doc["results"] == [{"type": "int64", "value": 2}]
    assert type(doc["results"][0]["value"]) is Int64  # not int32: Go's reflection wants int64
    expires = int(doc["delete_at"]) - 3_600_000
    assert before <= expires <= after


def test_failure_sets_error_and_delete_at_and_keeps_the_rest(backend: MongoDBBackend,
                                                             raw: Any) -> None:
    sig = _sig("task_f1", "fail")
    backend.set_state_pending(sig)
    backend.set_state_started(sig)
    rec = ExceptionRecord("ValueError", "builtins", "ValueError", "Traceback…", "boom")
    backend.set_final_state(TaskState(sig.uuid, FAILURE, error="boom"), None, rec)
    doc = raw.tasks.find_one({"_id": "task_f1"})
    assert set(doc) == {"_id", "state", "task_name", "created_at", "error", "delete_at",
                        "exception_record"}
    assert (doc["state"], doc["error"], doc["task_name"]) == ("FAILURE", "boom", "fail")
    assert backend.get_exception_record("task_f1") == rec
    st = backend.get_state("task_f1")
    assert st is not None and (st.state, st.error, st.results) == (FAILURE, "boom", None)


@pytest.mark.parametrize(("type_name", "value", "stored"), [
    ("int64", 2, Int64(2)),
    ("int", -7, Int64(-7)),
    ("int8", 127, Int64(127)),
    ("int32", -2147483648, Int64(-2147483648)),
    ("uint8", 255, Int64(255)),
    ("uint64", 18446744073709551615, Int64(-1)),  # wrapped; unwrapped when read as uint
    ("uint64", 9223372036854775807, Int64(9223372036854775807)),
    ("float64", 0.1, 0.1),
    ("float32", 0.1, 0.10000000149011612),  # the float32's own value, as Go converts it
    ("bool", True, True),
    ("string", "héllo <&>", "héllo <&>"),
    ("string", '{"a":1}', '{"a":1}'),  # no "json" rewrite (Go readers cannot reflect it)
    ("[]byte", b"hi\x00", "aGkA"),  # base64: what Go's reflection decodes
    ("[]uint8", b"", ""),
    ("[]int64", [1, -2], [Int64(1), Int64(-2)]),
    ("[]uint16", [65535], [Int64(65535)]),
    ("[]float32", [0.5, 1e-45], [0.5, 1.401298464324817e-45]),
    ("[]string", ["a", ""], ["a", ""]),
    ("[]bool", [], []),
])
def test_result_values_are_typed_for_go_readers(backend: MongoDBBackend, raw: Any,
                                                type_name: str, value: Any,
                                                stored: Any) -> None:
    sig = _sig("task_v")
    backend.set_state_success(sig, [TaskResult(type_name, value)])
    got = raw.tasks.find_one({"_id": "task_v"})["results"][0]
    assert got == {"type": type_name, "value": stored}
    if isinstance(stored, list):
        assert [type(v) for v in got["value"]] == [type(v) for v in stored]
    else:
        assert type(got["value"]) is type(stored)
    st = backend.get_state("task_v")
    assert st is not None and st.results is not None
    # what Python reads from Go JSON of the same result (float32 values as float32)
    assert st.python_results() == [_via_json(type_name, value)]


def test_forwarded_results_keep_their_exact_literals(backend: MongoDBBackend) -> None:
    """A result read off the wire (a JSON literal) is stored from that literal: 64-bit values
    stay exact."""
    r = TaskResult.from_obj({"Type": "uint64", "Value": Number("18446744073709551614")})
    backend.set_state_success(_sig("task_w"), [r])
    st = backend.get_state("task_w")
    assert st is not None and st.results is not None
    assert st.results[0].to_go_json() == '{"Type":"uint64","Value":18446744073709551614}'


def test_ttl_index_requested_once_as_go_v2_and_a_refusal_logged(
        backend: MongoDBBackend, recorder: Recorder, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "machinery_compat")
    for i in range(3):
        backend.set_state_received(_sig(f"task_i{i}"))
    created = recorder.named("createIndexes")
    assert len(created) == 1
    assert created[0]["createIndexes"] == "tasks"
    assert created[0]["indexes"] == [{"key": {"delete_at": 1}, "name": "delete_at_1",
                                      "expireAfterSeconds": 0, "background": True}]
    # FerretDB v1 does not implement TTL indexes: logged once, the writes went on
    refused = [r for r in caplog.records if "TTL index" in r.getMessage()]
    assert len(refused) == 1 and "will not expire" in refused[0].getMessage()
    assert backend.get_state("task_i2") is not None


# --------------------------------------------------------------------------------------
# reads: Go's v1 and v2 shapes
# --------------------------------------------------------------------------------------


def test_reads_go_v2_documents(backend: MongoDBBackend, raw: Any) -> None:
    """What Go v2's writer leaves: int32 for Go int, binary for []byte, Type json for a JSON
    object string, a date with milliseconds."""
    raw.tasks.insert_one({
        "_id": "task_go2", "created_at": DatetimeMS(1714566896123), "state": "SUCCESS",
        "task_name": "mixed", "delete_at": DatetimeMS(1714570496123),
        "results": [{"type": "int64", "value": Int64(2)}, {"type": "int", "value": 3},
                    {"type": "[]uint8", "value": Binary(b"hi")},
                    {"type": "float32", "value": 0.10000000149011612},
                    {"type": "json", "value": {"a": 1, "b": [True, None]}},
                    {"type": "uint64", "value": Int64(5)}]})
    st = backend.get_state("task_go2")
    assert st is not None
    assert (st.task_uuid, st.task_name, st.state, st.error) == (
        "task_go2", "mixed", SUCCESS, "")
    assert st.created_at == GoTime(1714566896123 * 1_000_000)
    assert st.python_results() == [2, 3, b"hi", pytest.approx(0.1), {"a": 1, "b": [True, None]},
                                   5]
    assert st.to_json() == (
        b'{"TaskUUID":"task_go2","TaskName":"mixed","State":"SUCCESS","Results":['
        b'{"Type":"int64","Value":2},{"Type":"int","Value":3},{"Type":"[]uint8","Value":"aGk="},'
        b'{"Type":"float32","Value":0.1},{"Type":"json","Value":{"a":1,"b":[true,null]}},'
        b'{"Type":"uint64","Value":5}],"Error":"","CreatedAt":"2024-05-01T12:34:56.123Z",'
        b'"TTL":0}')


def test_reads_go_v1_documents_and_partial_ones(backend: MongoDBBackend, raw: Any) -> None:
    raw.tasks.insert_many([
        # v1: no delete_at
        {"_id": "task_v1", "state": "FAILURE", "task_name": "fail",
         "created_at": DatetimeMS(1714566896000), "error": "boom"},
        # a RECEIVED written without a PENDING: only the state
        {"_id": "task_bare", "state": "RECEIVED"},
    ])
    v1 = backend.get_state("task_v1")
    assert v1 is not None and (v1.state, v1.error, v1.task_name, v1.results) == (
        FAILURE, "boom", "fail", None)
    bare = backend.get_state("task_bare")
    assert bare is not None
    assert bare.to_json() == (b'{"TaskUUID":"task_bare","TaskName":"","State":"RECEIVED",'
                              b'"Results":null,"Error":"","CreatedAt":"0001-01-01T00:00:00Z",'
                              b'"TTL":0}')
    assert backend.get_state("task_missing") is None


def test_a_field_of_the_wrong_bson_type_is_a_decode_error(backend: MongoDBBackend,
                                                          raw: Any) -> None:
    raw.tasks.insert_one({"_id": "task_bad", "state": 3})
    with pytest.raises(DecodeError, match="'state'"):
        backend.get_state("task_bad")


def test_get_states_in_request_order_with_gaps(backend: MongoDBBackend,
                                               recorder: Recorder) -> None:
    for u in ("task_a", "task_b"):
        backend.set_state_pending(_sig(u))
    recorder.commands.clear()
    states = backend.get_states(["task_b", "task_x", "task_a"])
    assert [s.task_uuid if s else None for s in states] == ["task_b", None, "task_a"]
    finds = recorder.named("find")
    assert len(finds) == 1 and finds[0]["filter"] == {
        "_id": {"$in": ["task_b", "task_x", "task_a"]}}


# --------------------------------------------------------------------------------------
# groups and the chord trigger
# --------------------------------------------------------------------------------------


def test_group_meta_document_and_duplicate_insert(backend: MongoDBBackend, raw: Any,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    backend.init_group("group_g1", ["task_1", "task_2"])
    doc = raw.group_metas.find_one({"_id": "group_g1"})
    assert list(doc)[:4] == ["_id", "task_uuids", "chord_triggered", "lock"]
    assert set(doc) == {"_id", "task_uuids", "chord_triggered", "lock", "created_at"}
    assert (doc["task_uuids"], doc["chord_triggered"], doc["lock"]) == (
        ["task_1", "task_2"], False, False)
    assert backend.trigger_chord("group_g1") is True
    caplog.set_level(logging.WARNING, "machinery_compat")
    backend.init_group("group_g1", ["task_3"])  # Go's insert fails; the meta stays
    assert "already stored" in caplog.text
    meta = backend.get_group_meta("group_g1")
    assert meta is not None and (meta.task_uuids, meta.chord_triggered) == (
        ["task_1", "task_2"], True)


def test_group_completed_and_states(backend: MongoDBBackend) -> None:
    backend.init_group("group_g2", ["task_c1", "task_c2"])
    backend.set_state_success(_sig("task_c1"), [TaskResult("int64", 1)])
    assert backend.group_completed("group_g2", 2) is False
    backend.set_state_failure(_sig("task_c2"), "x")
    assert backend.group_completed("group_g2", 2) is True
    assert [s.state for s in backend.group_task_states("group_g2", 2)] == [SUCCESS, FAILURE]


def test_chord_trigger_once_under_races(ferretdb_server: FerretDBServer,
                                        mongodb_database: str) -> None:
    """Eight backends (own clients), 4 threads each, race on 5 groups: one True per group."""
    backends = [MongoDBBackend(ferretdb_server.url, database=mongodb_database)
                for _ in range(8)]
    try:
        groups = [f"group_race{i}" for i in range(5)]
        for g in groups:
            backends[0].init_group(g, ["task_x"])
        wins: list[str] = []
        lock = threading.Lock()
        start = threading.Barrier(32)

        def race(b: MongoDBBackend) -> None:
            start.wait()
            for g in groups:
                if b.trigger_chord(g):
                    with lock:
                        wins.append(g)

        threads = [threading.Thread(target=race, args=(b,)) for b in backends for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(wins) == groups
    finally:
        for b in backends:
            b.close()


def test_concurrent_upserts_of_a_new_task_all_succeed(ferretdb_server: FerretDBServer,
                                                      mongodb_database: str) -> None:
    """Racing first writes of one task document (a Go worker's duplicate chord callback and
    the Python worker's copy both write PENDING): FerretDB, unlike MongoDB 4.2+, reports
    E11000 to the losing upsert instead of retrying it; the backend writes again."""
    backends = [MongoDBBackend(ferretdb_server.url, database=mongodb_database)
                for _ in range(6)]
    try:
        errors: list[BaseException] = []
        for i in range(15):
            uuid = f"task_upsert_race_{i}_{time.monotonic_ns()}"
            start = threading.Barrier(len(backends))

            def write(b: MongoDBBackend, uuid: str = uuid,
                      start: threading.Barrier = start) -> None:
                start.wait()
                try:
                    b.set_state_pending(_sig(uuid))
                except BaseException as e:  # (collected, asserted below)
                    errors.append(e)

            threads = [threading.Thread(target=write, args=(b,)) for b in backends]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            st = backends[0].get_state(uuid)
            assert st is not None and st.state == PENDING, uuid
        assert errors == []
    finally:
        for b in backends:
            b.close()


def test_trigger_chord_without_meta_is_an_error(backend: MongoDBBackend) -> None:
    with pytest.raises(BackendError, match="meta not found"):
        backend.trigger_chord("group_none")


def test_purge(backend: MongoDBBackend) -> None:
    backend.set_state_pending(_sig("task_p"))
    backend.init_group("group_p", ["task_p"])
    backend.purge_state("task_p")
    backend.purge_group_meta("group_p")
    assert backend.get_state("task_p") is None and backend.get_group_meta("group_p") is None


def test_raw_and_store_raw_speak_go_json(backend: MongoDBBackend, raw: Any) -> None:
    body = (b'{"TaskUUID":"task_j","TaskName":"add","State":"SUCCESS","Results":[{"Type":'
            b'"int64","Value":3}],"Error":"","CreatedAt":"2024-05-01T12:34:56.123Z","TTL":0}')
    backend.store_raw("task_j", body)
    assert backend.raw("task_j") == body
    assert type(raw.tasks.find_one({"_id": "task_j"})["results"][0]["value"]) is Int64
    meta = (b'{"GroupUUID":"group_j","TaskUUIDs":["task_j"],"ChordTriggered":false,'
            b'"Lock":false,"CreatedAt":"2024-05-01T12:34:56.123Z","TTL":0}')
    backend.store_raw("group_j", meta)
    assert backend.raw("group_j") == meta
    assert backend.raw("task_none") is None


def test_results_expire_in_sets_delete_at(ferretdb_server: FerretDBServer,
                                          mongodb_database: str, raw: Any) -> None:
    b = MongoDBBackend(ferretdb_server.url, 5, database=mongodb_database)
    try:
        now = time.time_ns() // 1_000_000
        b.set_state_failure(_sig("task_e"), "x")
        delete_at = int(raw.tasks.find_one({"_id": "task_e"})["delete_at"])
        assert 5000 <= delete_at - now <= 7000
    finally:
        b.close()


# --------------------------------------------------------------------------------------
# URLs and configuration
# --------------------------------------------------------------------------------------


def test_create_backend_by_scheme_and_database_from_config(ferretdb_server: FerretDBServer,
                                                           mongodb_database: str) -> None:
    cfg = Config(result_backend=ferretdb_server.url,
                 mongodb=MongoDBConfig(database=mongodb_database))
    b = create_backend(cfg)
    try:
        assert isinstance(b, MongoDBBackend) and b.database == mongodb_database
        b.set_state_pending(_sig("task_cfg"))
        with ferretdb_server.client() as c:
            assert c[mongodb_database].tasks.find_one({"_id": "task_cfg"}) is not None
    finally:
        b.close()
    plain = create_backend(Config(result_backend="mongodb+srv://u:p@cluster0.example.invalid/"))
    assert isinstance(plain, MongoDBBackend) and plain.database == "machinery"
    plain.close()


def test_mongo_uri_prefix_rule_as_go() -> None:
    assert mongo_uri("mongodb://h:1/") == "mongodb://h:1/"
    assert mongo_uri("mongodb+srv://c.example/") == "mongodb+srv://c.example/"
    assert mongo_uri("h1:27017,h2:27017/?replicaSet=rs") == "mongodb://h1:27017,h2:27017/?replicaSet=rs"


def test_url_parsing_without_dns() -> None:
    u = MongoURL.parse("mongodb+srv://us%40er:p%3Aw@cluster0.example.invalid/admin"
                       "?retryWrites=true&w=majority")
    assert (u.srv, u.hosts, u.username, u.password, u.auth_database) == (
        True, (("cluster0.example.invalid", None),), "us@er", "p:w", "admin")
    assert u.options == {"retryWrites": "true", "w": "majority"}
    m = MongoURL.parse("mongodb://h1:27017,[::1]:27018,h3/?replicaSet=rs0&connectTimeoutMS=5")
    assert m.hosts == (("h1", 27017), ("::1", 27018), ("h3", None))
    assert m.has_option("connecttimeoutms") and m.auth_database is None
    for bad, why in (("mongodb+srv://a.example:27017/", "port"),
                     ("mongodb+srv://a.example,b.example/", "exactly one host"),
                     ("mongodb:///db", "no host"),
                     ("mongodb://h:99999/", "bad port")):
        with pytest.raises(ConfigError, match=why):
            MongoURL.parse(bad)


def test_srv_client_is_built_lazily_with_url_options_first() -> None:
    started = time.monotonic()
    c = build_client("mongodb+srv://cluster0.example.invalid/?connectTimeoutMS=1234")
    try:
        assert time.monotonic() - started < 2  # no SRV lookup yet
        assert c.options.pool_options.connect_timeout == pytest.approx(1.234)
        assert c.options.server_selection_timeout == 10
    finally:
        c.close()


def test_unreachable_server_is_a_backend_error() -> None:
    from tests.services import free_port

    b = MongoDBBackend(f"mongodb://127.0.0.1:{free_port()}/?serverSelectionTimeoutMS=300")
    try:
        with pytest.raises(BackendError, match="MongoDB result backend"):
            b.get_state("task_x")
    finally:
        b.close()
