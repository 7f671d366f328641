"""MongoDB result backend, document for document what Go Machinery v2 writes (§6.3 of the
protocol notes), reading what v1 and v2 write.

Selecting it
------------

``result_backend`` is a ``mongodb://`` or ``mongodb+srv://`` URL, as Go's driver takes it
(``mongodb://user:pw@h1:27017,h2:27017/?replicaSet=rs0&authSource=admin``,
``mongodb+srv://user:pw@cluster0.example.net/``); as in Go, a URL with neither scheme gets
``mongodb://`` put in front.  The URL's path is *not* the database (it is the driver's default
auth database): the collections live in ``mongodb.database`` (code only, as Go's
``MongoDBConfig.Database``), ``machinery`` when the config has no ``mongodb`` section.
``mongodb.client`` (code only): a pymongo ``MongoClient`` to use instead of connecting.
The client is built lazily (``connect=False``: no DNS lookup of a ``mongodb+srv`` host until the
first call), with 10 s server-selection and connect timeouts and a 15 s socket timeout unless the
URL sets ``serverSelectionTimeoutMS`` / ``connectTimeoutMS`` / ``socketTimeoutMS``.

Documents (database ``machinery``, collections ``tasks`` and ``group_metas``)
------------------------------------------------------------------------------

Every task state is one ``update_one({_id: <task UUID>}, {$set: …}, upsert=True)``, as in Go:

* PENDING: ``$set {state, task_name, created_at}`` (a BSON date: milliseconds, as Go's driver);
* RECEIVED / STARTED / RETRY: ``$set {state}`` (earlier fields survive: Machinery's merge);
* SUCCESS: ``$set {state, results: [{type, value}, …], delete_at}``;
* FAILURE: ``$set {state, error, delete_at}``; a Python worker's FAILURE also sets
  ``exception_record`` (the :class:`~machinery_compat.backends.base.ExceptionRecord` JSON; Go's
  decoder ignores fields it does not know).

``delete_at`` = now + ``results_expire_in`` (0 means 3600 here, as for every other backend; Go v2
takes 0 as "now", so its results vanish at the next TTL sweep).  The TTL index Go v2 creates,
``tasks.delete_at`` with ``expireAfterSeconds: 0`` (background), is created on first use; a server
that refuses it (FerretDB v1 does not implement TTL indexes) is logged once and, as in Go, not an
error: states then never expire.  Go v1 writes no ``delete_at`` (and its TTL indexes on ``state``
and ``lock`` expire nothing); its documents read the same.

Result values are stored so that Go's ``AsyncResult`` and chord callbacks can reflect them
(Go's reflection wants exact Go types from the driver):

* every integer Type (``int``, ``int8`` … ``uint64``, and the elements of their slices) as BSON
  **Int64**.  Go's own writer stores ``int``/``int8``/``int16``/``int32``/``uint8``/``uint16``
  as int32, which Go's readers then refuse (``2 is not int``), and pymongo would write a small
  Python int as int32 too; Go's readers accept int64 for every signed Type.  ``uint64`` values
  above int64's range (which Go's writer refuses: ``… overflows int64``) are stored wrapped into
  int64 (two's complement) and unwrapped when read with an unsigned Type; Go's readers refuse
  unsigned Types from MongoDB whatever is stored;
* ``float32``/``float64`` as doubles (a ``float32`` as the double of its float32 value, as Go
  converts it), ``bool`` and ``string`` as themselves;
* ``[]byte``/``[]uint8`` as the **base64 string** Go's JSON backends store, which Go's
  reflection decodes (Go's writer stores BSON binary, which Go's readers cannot reflect: a
  reading Go process panics); BSON binary reads fine here;
* other slices as arrays, values of other type names as embedded documents/arrays.

Go rewrites a ``string`` result that parses as a JSON object (or ``null``) to
``{type: "json", value: <document>}``; Python does not (Go's readers cannot reflect Type
``json``), and reads such a result as the document, a ``dict`` with Type ``json``.

Group meta: ``insert_one({_id, task_uuids, chord_triggered: false, lock: false, created_at})``,
as Go's ``InitGroup`` (no expiry); a group UUID already stored keeps its meta (logged; Go's
``SendGroup`` ignores the duplicate-key error the same way).

Reading
-------

``find_one({_id})``; groups with ``find({_id: {$in: […]}})``, states returned in group order.
A field that is absent reads as Go's zero value (``""``, the zero time, no results), so v1
documents and states written without a PENDING read too.  A missing document is "no state yet"
(``None``).  A field of the wrong BSON type is a :class:`~machinery_compat.exceptions.DecodeError`
naming it, as Go's decoder fails.

Chord trigger
-------------

Go's ``TriggerChord`` is ``update_one({_id: g, chord_triggered: false}, {$set: {chord_triggered:
true}})`` and returns true whatever it matched (so two Go workers finishing together can both
send the callback).  Here the same update decides only when it did not match (already
triggered, by a Go or a Python worker: false; no meta: an error).  When it matched, the caller
also claims the chord by inserting ``{_id: "<group UUID>_chord_triggered", created_at}`` into
``group_metas``: the one insert that succeeds wins, a duplicate key loses.  On MongoDB the
conditional update alone is atomic, so the claim never loses there; FerretDB v1 (the test
server) runs the filter and the update as two steps, and there the unique ``_id`` is what keeps
concurrent callers to one winner.  ``purge_group_meta`` deletes the claim with the meta.
``lock`` is never used (Go's lock helpers are dead code).

Threads, processes, errors
--------------------------

One ``MongoClient`` per backend, shared by all threads (it is thread-safe).  After ``fork()``
the child builds its own on first use (a client given in the config is kept: give each process
its own).  pymongo errors become :class:`~machinery_compat.exceptions.BackendError`.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from ..exceptions import BackendError, ConfigError, DecodeError
from ..protocol import (
    FAILURE,
    PENDING,
    SUCCESS,
    GoTime,
    GroupMeta,
    Signature,
    TaskResult,
    TaskState,
)
from ..protocol.gojson import Number, encode_float32, encode_float64, loads, round_float32
from ..protocol.gotypes import (
    BYTES_TYPES,
    FLOAT_TYPES,
    INT64_MAX,
    INT_BITS,
    SLICE_TYPES,
    UINT_BITS,
    element_type,
)
from .base import EXCEPTION_RECORD_SUFFIX, Backend, ExceptionRecord, decode_exception_record

if TYPE_CHECKING:
    from ..config import Config

logger = logging.getLogger(__name__)

DEFAULT_DATABASE: Final = "machinery"
TASKS_COLLECTION: Final = "tasks"
GROUP_METAS_COLLECTION: Final = "group_metas"
#: The field Go v2's TTL index is on (``expireAfterSeconds: 0``).
DELETE_AT: Final = "delete_at"
#: Python only: the JSON :class:`ExceptionRecord` of a Python worker's FAILURE.
EXCEPTION_RECORD_FIELD: Final = "exception_record"
#: Python only: appended to a group UUID, the ``_id`` of its chord claim in ``group_metas``.
CHORD_CLAIM_SUFFIX: Final = "_chord_triggered"
#: Client timeouts (ms) unless the URL sets them.
CLIENT_TIMEOUTS_MS: Final = {"serverSelectionTimeoutMS": 10_000, "connectTimeoutMS": 10_000,
                             "socketTimeoutMS": 15_000}
SCHEMES: Final = ("mongodb", "mongodb+srv")
_INSTALL_HINT: Final = "pip install 'machinery-compat[mongodb]'"
_UINT64_SPAN: Final = 1 << 64


# --------------------------------------------------------------------------------------
# URLs
# --------------------------------------------------------------------------------------


def mongo_uri(url: str) -> str:
    """The URI Go's backend dials: ``url`` itself when it starts with ``mongodb://`` or
    ``mongodb+srv://``, else ``mongodb://`` + ``url``."""
    if url.startswith(("mongodb://", "mongodb+srv://")):
        return url
    return "mongodb://" + url


@dataclass(frozen=True, slots=True)
class MongoURL:
    """What a MongoDB URL names, parsed without any network access (no SRV lookup)."""

    uri: str
    srv: bool
    hosts: tuple[tuple[str, int | None], ...]
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    #: the URL's path: the driver's default auth database, *not* where results live
    auth_database: str | None = None
    options: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, url: str) -> MongoURL:
        """Parse ``url`` (Go's ``mongodb://`` prefix rule first).  :class:`ConfigError` for
        what Go's driver refuses too: no host, a ``mongodb+srv`` URL with several hosts or a
        port."""
        uri = mongo_uri(url)
        srv = uri.startswith("mongodb+srv://")
        rest = uri.split("://", 1)[1]
        rest, _, query = rest.partition("?")
        hostpart, _, path = rest.partition("/")
        userinfo, at, hostlist = hostpart.rpartition("@")
        username = password = None
        if at:
            user, colon, pw = userinfo.partition(":")
            username = urllib.parse.unquote(user)
            password = urllib.parse.unquote(pw) if colon else None
        hosts: list[tuple[str, int | None]] = []
        for h in hostlist.split(",") if hostlist else ():
            hosts.append(_host_port(h, uri))
        if not hosts:
            raise ConfigError(f"MongoDB URL {_masked(uri)}: no host")
        if srv and len(hosts) != 1:
            raise ConfigError(f"MongoDB URL {_masked(uri)}: a mongodb+srv URI must have exactly "
                              "one host")
        if srv and hosts[0][1] is not None:
            raise ConfigError(f"MongoDB URL {_masked(uri)}: a mongodb+srv URI must not include "
                              "a port number")
        options = {k: v[-1] for k, v in urllib.parse.parse_qs(query, keep_blank_values=True)
                   .items()}
        return cls(uri, srv, tuple(hosts), username, password,
                   urllib.parse.unquote(path) or None, options)

    def has_option(self, name: str) -> bool:
        return name.lower() in (k.lower() for k in self.options)


def _host_port(text: str, uri: str) -> tuple[str, int | None]:
    if text.startswith("["):  # [ipv6]:port
        host, _, after = text[1:].partition("]")
        port_text = after[1:] if after.startswith(":") else ""
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise ConfigError(f"MongoDB URL {_masked(uri)}: empty host in {text!r}")
    if not port_text:
        return urllib.parse.unquote(host), None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"MongoDB URL {_masked(uri)}: bad port in {text!r}")
    return urllib.parse.unquote(host), int(port_text)


def _masked(uri: str) -> str:
    from ..config import mask_url

    return mask_url(uri)


def build_client(url: str) -> Any:
    """A lazily connecting ``MongoClient`` for ``url`` (Go's prefix rule, this module's default
    timeouts unless the URL sets them)."""
    try:
        import pymongo
    except ImportError as e:
        raise ConfigError(f"the MongoDB result backend needs pymongo: {_INSTALL_HINT}") from e
    parsed = MongoURL.parse(url)
    options: dict[str, Any] = {k: v for k, v in CLIENT_TIMEOUTS_MS.items()
                               if not parsed.has_option(k)}
    try:
        return pymongo.MongoClient(parsed.uri, connect=False, appname="machinery_compat",
                                   **options)
    except pymongo.errors.PyMongoError as e:
        raise ConfigError(f"MongoDB URL {_masked(parsed.uri)}: {e}") from e


# --------------------------------------------------------------------------------------
# values: Machinery results <-> BSON
# --------------------------------------------------------------------------------------


def _scalar_to_bson(type_name: str, value: Any) -> Any:
    if type(value) is Number:
        if type_name in INT_BITS or type_name in UINT_BITS:
            return _int64(int(value.text))
        f = float(value.text)
        return round_float32(f) if type_name == "float32" else f
    return _generic_to_bson(value)


def _int64(n: int) -> Any:
    from bson.int64 import Int64

    if n > INT64_MAX:  # uint64 beyond int64: two's complement (unwrapped when read as uint)
        n -= _UINT64_SPAN
    return Int64(n)


def _generic_to_bson(value: Any) -> Any:
    """A decoded JSON value of a type Go's reflection does not know, as BSON: integer literals
    as Int64, other numbers as doubles, objects as documents."""
    t = type(value)
    if t is Number:
        return _int64(int(value.text)) if value.is_integer_literal() else float(value.text)
    if t is list:
        return [_generic_to_bson(v) for v in value]
    if t is dict:
        return {str(k): _generic_to_bson(v) for k, v in value.items()}
    return value


def result_to_bson(result: TaskResult) -> dict[str, Any]:
    """``{type, value}`` as stored (see the module docs): the value Go's JSON encoding gives,
    typed for Go's readers."""
    obj = loads(result.to_go_json())
    type_name, value = obj["Type"], obj["Value"]
    if type_name in BYTES_TYPES or value is None:
        stored = value  # the base64 text (or null)
    elif type_name in SLICE_TYPES and isinstance(value, list):
        el = element_type(type_name)
        stored = [_scalar_to_bson(el, v) for v in value]
    elif type_name in INT_BITS or type_name in UINT_BITS or type_name in FLOAT_TYPES:
        stored = _scalar_to_bson(type_name, value)
    else:
        stored = _generic_to_bson(value)
    return {"type": type_name, "value": stored}


def _scalar_from_bson(type_name: str, v: Any) -> Any:
    from bson.binary import Binary
    from bson.datetime_ms import DatetimeMS

    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, int):
        if v < 0 and type_name in UINT_BITS:
            v += _UINT64_SPAN
        return Number(str(v))
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            return v
        return Number(encode_float32(v) if type_name == "float32" else encode_float64(v))
    if isinstance(v, (bytes, Binary)):
        return base64.b64encode(bytes(v)).decode("ascii")
    if isinstance(v, list):
        return [_scalar_from_bson("", x) for x in v]
    if isinstance(v, Mapping):
        return {str(k): _scalar_from_bson("", x) for k, x in v.items()}
    if isinstance(v, DatetimeMS):
        return GoTime(v._value * 1_000_000).isoformat()
    return str(v)


def result_from_bson(doc: Any, where: str) -> TaskResult:
    """A stored ``{type, value}`` as the :class:`TaskResult` the Go JSON of it would decode to
    (numbers as their literals, bytes as base64)."""
    if not isinstance(doc, Mapping):
        raise DecodeError(f"{where}: a result is not a document: {doc!r}")
    type_name = doc.get("type", "")
    if not isinstance(type_name, str):
        raise DecodeError(f"{where}: result type is not a string: {type_name!r}")
    v = doc.get("value")
    if type_name in SLICE_TYPES and type_name not in BYTES_TYPES and isinstance(v, list):
        el = element_type(type_name)
        value: Any = [_scalar_from_bson(el, x) for x in v]
    else:
        value = _scalar_from_bson(type_name, v)
    return TaskResult.from_obj({"Type": type_name, "Value": value})


def _field(doc: Mapping[str, Any], name: str, kind: type | tuple[type, ...], zero: Any,
           where: str) -> Any:
    v = doc.get(name)
    if v is None:
        return zero
    if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
        raise DecodeError(f"{where}: field {name!r} has BSON type {type(v).__name__}, "
                          f"not what Go decodes it into")
    return v


def _time_field(doc: Mapping[str, Any], name: str, where: str) -> GoTime:
    from bson.datetime_ms import DatetimeMS

    v = _field(doc, name, DatetimeMS, None, where)
    return GoTime.zero() if v is None else GoTime(int(v) * 1_000_000)


def task_state_from_doc(doc: Mapping[str, Any]) -> TaskState:
    """A ``tasks`` document (v1 or v2 shape, any subset of fields) as a :class:`TaskState`."""
    uuid = doc.get("_id")
    where = f"task state {uuid!r}"
    if not isinstance(uuid, str):
        raise DecodeError(f"{where}: _id is not a string")
    raw_results = _field(doc, "results", list, None, where)
    results = (None if raw_results is None else
               [result_from_bson(r, where) for r in raw_results])
    return TaskState(
        task_uuid=uuid,
        state=_field(doc, "state", str, "", where),
        task_name=_field(doc, "task_name", str, "", where),
        results=results,
        error=_field(doc, "error", str, "", where),
        created_at=_time_field(doc, "created_at", where),
        ttl=int(_field(doc, "ttl", int, 0, where)),
    )


def group_meta_from_doc(doc: Mapping[str, Any]) -> GroupMeta:
    uuid = doc.get("_id")
    where = f"group meta {uuid!r}"
    if not isinstance(uuid, str):
        raise DecodeError(f"{where}: _id is not a string")
    uuids = _field(doc, "task_uuids", list, [], where)
    if not all(isinstance(u, str) for u in uuids):
        raise DecodeError(f"{where}: task_uuids holds a non-string")
    return GroupMeta(uuid, list(uuids),
                     chord_triggered=_field(doc, "chord_triggered", bool, False, where),
                     lock=_field(doc, "lock", bool, False, where),
                     created_at=_time_field(doc, "created_at", where),
                     ttl=int(_field(doc, "ttl", int, 0, where)))


def chord_claim_id(group_uuid: str) -> str:
    """The ``_id`` of the document in ``group_metas`` that records which caller triggered a
    group's chord (Python only; Go never reads it)."""
    return group_uuid + CHORD_CLAIM_SUFFIX


def _date(unix_ns: int) -> Any:
    """A BSON date of ``unix_ns``, truncated to milliseconds as Go's driver does."""
    from bson.datetime_ms import DatetimeMS

    return DatetimeMS(unix_ns // 1_000_000)


# --------------------------------------------------------------------------------------
# the backend
# --------------------------------------------------------------------------------------


class MongoDBBackend(Backend):
    """Results in two MongoDB collections, as Go Machinery keeps them (see the module docs)."""

    schemes = SCHEMES

    def __init__(self, url: str = "mongodb://localhost:27017", results_expire_in: int = 0, *,
                 database: str = DEFAULT_DATABASE, client: Any = None) -> None:
        """``database``: where ``tasks`` and ``group_metas`` live (Go's ``MongoDB.Database``);
        ``client``: a pymongo ``MongoClient`` to use instead of building one from ``url``."""
        super().__init__(results_expire_in)
        if not database:
            raise ConfigError("mongodb.database is empty (Go's zero value; MongoDB refuses it)")
        self.url = url
        self.database = database
        self._own_client = client is None
        self._client = client if client is not None else build_client(url)
        self._pid = os.getpid()
        self._index_lock = threading.Lock()
        self._index_done = False

    @classmethod
    def from_config(cls, config: Config) -> MongoDBBackend:
        """The backend for ``config.result_backend``: ``config.mongodb`` (database
        ``machinery`` and a client of its own when ``None``), ``config.results_expire_in``."""
        cfg = config.mongodb
        return cls(config.result_backend, config.results_expire_in,
                   database=config.effective_mongodb_database,
                   client=cfg.client if cfg is not None else None)

    # -- plumbing -----------------------------------------------------------------------
    @property
    def client(self) -> Any:
        """The ``MongoClient`` (a new one in a forked child, unless it was given)."""
        if self._pid != os.getpid():
            if self._own_client:
                self._client = build_client(self.url)
            self._pid = os.getpid()
            self._index_done = False
        return self._client

    def _collection(self, name: str) -> Any:
        from bson.codec_options import CodecOptions, DatetimeConversion

        opts: CodecOptions[dict[str, Any]] = CodecOptions(
            datetime_conversion=DatetimeConversion.DATETIME_MS)
        return self.client[self.database].get_collection(name, codec_options=opts)

    @property
    def tasks(self) -> Any:
        """The ``tasks`` collection (the TTL index requested on first use)."""
        coll = self._collection(TASKS_COLLECTION)
        if not self._index_done:
            self._ensure_ttl_index(coll)
        return coll

    @property
    def group_metas(self) -> Any:
        return self._collection(GROUP_METAS_COLLECTION)

    def _ensure_ttl_index(self, coll: Any) -> None:
        """Go v2's index: ``{delete_at: 1}``, ``expireAfterSeconds: 0``, background.  A refusal
        is logged once (as Go ignores it); a connection error leaves it for the next call."""
        import pymongo.errors

        with self._index_lock:
            if self._index_done:
                return
            try:
                coll.create_index([(DELETE_AT, 1)], expireAfterSeconds=0, background=True)
            except pymongo.errors.OperationFailure as e:
                logger.warning("MongoDB result backend: the server refused the TTL index on "
                               "%s.%s.%s (%s): finished task states will not expire",
                               self.database, TASKS_COLLECTION, DELETE_AT, e)
            except pymongo.errors.PyMongoError as e:
                raise BackendError(f"MongoDB result backend: creating the TTL index: {e}") from e
            self._index_done = True

    @contextmanager
    def _mongo(self, what: str) -> Iterator[None]:
        """Translate pymongo errors into BackendError."""
        import pymongo.errors

        try:
            yield
        except pymongo.errors.PyMongoError as e:
            raise BackendError(f"MongoDB result backend: {what}: {e}") from e

    def _expiry(self) -> Any:
        return _date(time.time_ns() + self.expire_in * 1_000_000_000)

    def _update(self, task_uuid: str, fields: dict[str, Any], what: str) -> None:
        import pymongo.errors

        with self._mongo(f"writing {what} of {task_uuid}"):
            try:
                self.tasks.update_one({"_id": task_uuid}, {"$set": fields}, upsert=True)
            except pymongo.errors.DuplicateKeyError:
                # a concurrent upsert of the same _id (e.g. a Go worker's duplicate chord
                # callback, §6.3) inserted the document first: MongoDB 4.2+ retries that
                # itself, FerretDB and older servers report E11000; it exists now, so the
                # same write again is an update
                self.tasks.update_one({"_id": task_uuid}, {"$set": fields}, upsert=True)

    # -- writes -------------------------------------------------------------------------
    def state_fields(self, state: TaskState,
                     exc_record: ExceptionRecord | None = None) -> dict[str, Any]:
        """The ``$set`` document of one state write (see the module docs)."""
        fields: dict[str, Any] = {"state": state.state}
        if state.state == PENDING:
            fields["task_name"] = state.task_name
            fields["created_at"] = _date(state.created_at.unix_ns)
        elif state.state == SUCCESS:
            fields["results"] = [result_to_bson(r) for r in state.results or ()]
            fields[DELETE_AT] = self._expiry()
        elif state.state == FAILURE:
            fields["error"] = state.error
            fields[DELETE_AT] = self._expiry()
            if exc_record is not None:
                fields[EXCEPTION_RECORD_FIELD] = exc_record.to_json().decode("ascii")
        return fields

    def set_state(self, state: TaskState, *, merge: bool) -> None:
        # every write is a $set (Go's): PENDING too overwrites only its own fields
        self._update(state.task_uuid, self.state_fields(state), state.state)

    def set_state_pending(self, sig: Signature) -> None:
        from .base import pending_state

        self.set_state(pending_state(sig), merge=False)

    def set_final_state(self, state: TaskState, token: Any = None,
                        exc_record: ExceptionRecord | None = None) -> None:
        """SUCCESS/FAILURE/RETRY; a FAILURE's ``exc_record`` in the same update."""
        self._update(state.task_uuid, self.state_fields(state, exc_record), state.state)

    def set_exception_record(self, task_uuid: str, record: ExceptionRecord) -> None:
        self._update(task_uuid, {EXCEPTION_RECORD_FIELD: record.to_json().decode("ascii")},
                     "the exception record")

    # -- reads --------------------------------------------------------------------------
    def get_document(self, task_uuid: str) -> dict[str, Any] | None:
        """The raw ``tasks`` document (dates as ``DatetimeMS``), or ``None``."""
        with self._mongo(f"reading {task_uuid}"):
            doc: dict[str, Any] | None = self.tasks.find_one({"_id": task_uuid})
        return doc

    def get_group_document(self, group_uuid: str) -> dict[str, Any] | None:
        with self._mongo(f"reading group {group_uuid}"):
            doc: dict[str, Any] | None = self.group_metas.find_one({"_id": group_uuid})
        return doc

    def get_state(self, task_uuid: str) -> TaskState | None:
        doc = self.get_document(task_uuid)
        return None if doc is None else task_state_from_doc(doc)

    def get_states(self, task_uuids: Sequence[str]) -> list[TaskState | None]:
        """One ``find({_id: {$in: …}})``; the states in the order of ``task_uuids``."""
        if not task_uuids:
            return []
        with self._mongo(f"reading {len(task_uuids)} states ({task_uuids[0]} …)"):
            docs = list(self.tasks.find({"_id": {"$in": list(dict.fromkeys(task_uuids))}}))
        found = {}
        for d in docs:
            st = task_state_from_doc(d)
            found[st.task_uuid] = st
        return [found.get(u) for u in task_uuids]

    def get_exception_record(self, task_uuid: str) -> ExceptionRecord | None:
        with self._mongo(f"reading the exception record of {task_uuid}"):
            doc = self.tasks.find_one({"_id": task_uuid}, {EXCEPTION_RECORD_FIELD: 1})
        raw = (doc or {}).get(EXCEPTION_RECORD_FIELD)
        return decode_exception_record(task_uuid, raw if isinstance(raw, str) else None)

    # -- groups -------------------------------------------------------------------------
    def init_group(self, group_uuid: str, task_uuids: Sequence[str]) -> None:
        """Go's ``InitGroup``: one ``insert_one``; an existing meta is kept (logged)."""
        import pymongo.errors

        doc = {"_id": group_uuid, "task_uuids": list(task_uuids), "chord_triggered": False,
               "lock": False, "created_at": _date(GoTime.now().unix_ns)}
        with self._mongo(f"writing group {group_uuid}"):
            try:
                self.group_metas.insert_one(doc)
            except pymongo.errors.DuplicateKeyError:
                logger.warning("group %s: a meta is already stored; kept as it is (as Go's "
                               "InitGroup fails and SendGroup goes on)", group_uuid)

    def get_group_meta(self, group_uuid: str) -> GroupMeta | None:
        doc = self.get_group_document(group_uuid)
        return None if doc is None else group_meta_from_doc(doc)

    def trigger_chord(self, group_uuid: str) -> bool:
        """True for exactly one caller per group (see the module docs)."""
        import pymongo.errors

        with self._mongo(f"triggering the chord of group {group_uuid}"):
            res = self.group_metas.update_one({"_id": group_uuid, "chord_triggered": False},
                                              {"$set": {"chord_triggered": True}})
            if res.matched_count != 1:
                if self.group_metas.find_one({"_id": group_uuid}, {"_id": 1}) is None:
                    raise BackendError(f"group {group_uuid}: meta not found")
                return False
            try:  # the claim: one insert with a unique _id is atomic on every server
                self.group_metas.insert_one({"_id": chord_claim_id(group_uuid),
                                             "created_at": _date(GoTime.now().unix_ns)})
            except pymongo.errors.DuplicateKeyError:
                return False
        return True

    # -- as JSON (tests, tools) ---------------------------------------------------------
    def raw(self, key: str) -> bytes | None:
        """What is stored under ``key`` as the memory backend's ``raw`` gives it: a task state
        (else a group meta) as the Go JSON of what this backend reads; for
        ``<task UUID>.exc`` the task's exception record as stored; ``None`` when there is none."""
        if key.endswith(EXCEPTION_RECORD_SUFFIX):
            doc = self.get_document(key[:-len(EXCEPTION_RECORD_SUFFIX)])
            rec = (doc or {}).get(EXCEPTION_RECORD_FIELD)
            return rec.encode("utf-8") if isinstance(rec, str) else None
        doc = self.get_document(key)
        if doc is not None:
            return task_state_from_doc(doc).to_json()
        group = self.get_group_document(key)
        return None if group is None else group_meta_from_doc(group).to_json()

    def store_raw(self, key: str, body: bytes) -> None:
        """Store Go JSON under ``key`` as a whole document (``replace_one``, upsert): a
        TaskState with every field of Go's struct (``_id, task_name, state, results, error,
        created_at``), or a GroupMeta when the body has a ``GroupUUID`` field; for
        ``<task UUID>.exc`` the bytes become the task's exception record."""
        if key.endswith(EXCEPTION_RECORD_SUFFIX):
            self._update(key[:-len(EXCEPTION_RECORD_SUFFIX)],
                         {EXCEPTION_RECORD_FIELD: body.decode("utf-8", "replace")},
                         "the exception record")
            return
        obj = loads(body)
        if isinstance(obj, dict) and any(k.lower() == "groupuuid" for k in obj):
            meta = GroupMeta.from_obj(obj)
            doc: dict[str, Any] = {"_id": key, "task_uuids": meta.task_uuids,
                                   "chord_triggered": meta.chord_triggered, "lock": meta.lock,
                                   "created_at": _date(meta.created_at.unix_ns)}
            with self._mongo(f"writing group {key}"):
                self.group_metas.replace_one({"_id": key}, doc, upsert=True)
            return
        state = TaskState.from_obj(obj)
        doc = {"_id": key, "task_name": state.task_name, "state": state.state,
               "results": (None if state.results is None
                           else [result_to_bson(r) for r in state.results]),
               "error": state.error, "created_at": _date(state.created_at.unix_ns)}
        with self._mongo(f"writing {key}"):
            self.tasks.replace_one({"_id": key}, doc, upsert=True)

    # -- housekeeping -------------------------------------------------------------------
    def purge_state(self, task_uuid: str) -> None:
        """``delete_one`` (the exception record lives in the same document)."""
        with self._mongo(f"deleting {task_uuid}"):
            self.tasks.delete_one({"_id": task_uuid})

    def purge_group_meta(self, group_uuid: str) -> None:
        """Delete the meta and the chord claim."""
        with self._mongo(f"deleting group {group_uuid}"):
            self.group_metas.delete_many({"_id": {"$in": [group_uuid,
                                                          chord_claim_id(group_uuid)]}})

    def close(self) -> None:
        if self._own_client and self._pid == os.getpid():
            self._client.close()


__all__ = ["CHORD_CLAIM_SUFFIX", "DEFAULT_DATABASE", "GROUP_METAS_COLLECTION", "TASKS_COLLECTION", "MongoDBBackend",
           "MongoURL", "build_client", "chord_claim_id", "group_meta_from_doc", "mongo_uri", "result_from_bson",
           "result_to_bson", "task_state_from_doc"]
