"""AWS DynamoDB result backend, attribute for attribute what Go Machinery v2 writes (§6.5 of the
protocol notes), reading what v1 and v2 write.

Selecting it
------------

``result_backend`` is any ``https://`` or ``http://`` URL.  Go v1's factory wants a URL starting
with ``https://dynamodb`` (``https://dynamodb.us-east-1.amazonaws.com``, say); Go v2 has no
factory.  As in Go, the URL only selects the backend.  Where boto3 sends the calls:

* ``dynamodb.client`` (code only): a boto3 DynamoDB client, used as it is;
* else a client built from ``dynamodb.endpoint_url`` / ``DYNAMODB_ENDPOINT_URL`` and
  ``dynamodb.region`` / ``DYNAMODB_REGION`` (both Python only: Go ignores them; empty means
  boto3's standard chain: ``AWS_ENDPOINT_URL_DYNAMODB``, ``AWS_REGION``, profiles…, and for a
  region missing there too, the one in a ``https://dynamodb.<region>.amazonaws.com`` URL), with
  boto3's standard credential chain, ``standard`` retry mode (throttling and transient errors
  are retried with exponential back-off, up to :data:`MAX_ATTEMPTS` attempts), 5 s connect and
  15 s read timeouts.

Tables (``dynamodb.task_states_table`` / ``TASK_STATES_TABLE``, default ``task_states``, hash key
``TaskUUID`` S; ``dynamodb.group_metas_table`` / ``GROUP_METAS_TABLE``, default ``group_metas``,
hash key ``GroupUUID`` S) must exist, as for Go: :func:`create_tables` creates them
(on-demand capacity, DynamoDB TTL on the attribute ``TTL``).

Items (Go v2's shapes)
----------------------

* PENDING: ``PutItem`` of the whole state, replacing the item: ``TaskUUID`` S, ``TaskName`` S,
  ``State`` S, ``Results`` NULL, ``Error`` S ``""``, ``CreatedAt`` S (RFC 3339 with nanoseconds),
  ``TTL`` N ``0`` (DynamoDB ignores a TTL that far in the past: unfinished tasks never expire).
* STARTED, RETRY: ``UpdateItem SET State``; SUCCESS: ``SET State, TTL, Results`` (``Results``
  only when there are some); FAILURE: ``SET State, Error, TTL``.  Every other attribute is
  kept, so ``TaskName`` and ``CreatedAt`` survive (Machinery's merge) and a FAILURE keeps the
  ``Results`` NULL of its PENDING.  ``TTL`` = now + ``results_expire_in`` (default 3600) s.
  A worker's RECEIVED and STARTED are one ``SET State = STARTED``: the item afterwards is the
  one Go's two writes leave, one round trip (and one write unit) sooner.
* ``Results``: L of M ``{Type: S, Value: S}``; ``Value`` is Go's ``fmt`` ``%v`` of the value
  (``2``, ``0.5``, ``1e+06``, ``true``, ``[1 2]``, ``[104 105]`` for bytes, ``map[a:1]``,
  ``<nil>``; :mod:`machinery_compat.protocol.gofmt`).
* Group meta: ``PutItem``: ``GroupUUID`` S, ``TaskUUIDs`` L of S, ``ChordTriggered`` BOOL,
  ``Lock`` BOOL, ``CreatedAt`` S, ``TTL`` N (now + ``results_expire_in``).
* A Python worker's FAILURE also sets ``ExceptionRecord`` S (the exception's type, module and
  traceback as JSON, :class:`~machinery_compat.backends.base.ExceptionRecord`) in the same
  ``UpdateItem``.  Go's SDKs ignore attributes they do not know; a PENDING (retry) drops it.

Reading
-------

Strongly consistent ``GetItem``; groups with ``BatchGetItem``, 100 keys per call (Go: 99), keys
DynamoDB leaves unprocessed asked again with back-off (Go v2 drops them), states returned in
group order (Go: whatever order DynamoDB answers in).  Go v1's shapes read too (SDK v1 writes
``""`` as NULL), and so does an item missing any attribute (a state written by ``UpdateItem``
alone): absent or NULL is the zero value.  A missing item is "no state yet" (``None``; Go's
``GetState`` returns a zero state, which its ``AsyncResult`` treats the same way).

Result values come back typed (``%v`` strings parsed with their ``Type``): ``"2"`` typed
``int64`` is ``2``, ``"[1 2]"`` typed ``[]int64`` is ``[1, 2]``, ``"[104 105]"`` typed
``[]uint8`` is ``b"hi"``.  What cannot round-trip: maps, ``[]interface {}`` and other types
Machinery does not know stay the ``%v`` string (``"map[a:1]"``); ``[]string`` elements that
contain spaces are split at them, and ``[""]`` reads back as ``[]``.  A chord callback a Python
worker sends gets these typed values (so Go callbacks can reflect them); Go workers pass the
strings on, which typed Go or Python callbacks refuse (``2 is not int64``).

Chord trigger
-------------

Go's ``TriggerChord`` reads the meta, returns false if ``ChordTriggered``, spins while ``Lock``,
then sets ``Lock``, ``ChordTriggered`` and clears ``Lock`` with three unconditional updates:
two Go workers that both read ``ChordTriggered = false`` both send the callback.  Here one
conditional ``UpdateItem SET ChordTriggered = true`` decides (condition: the meta exists,
``ChordTriggered`` is not true, ``Lock`` is not true), so exactly one Python caller wins.  A
loser re-reads the meta: already triggered → false; locked → it waits (10 ms steps) for the Go
worker holding ``Lock``, which is about to set ``ChordTriggered``; after
:data:`CHORD_LOCK_WAIT` (10) s (``backend.chord_lock_wait``) a lock left behind by a crashed Go
worker is ignored.

In a pool of Go and Python workers: a Python worker never triggers after a Go worker set
``Lock`` or ``ChordTriggered``, and never sets ``Lock`` itself (a Go worker would spin on it).
A Go worker that read ``ChordTriggered = false`` before a Python worker's update still triggers
too, because Go never checks again: the same race two Go workers have with each other, no wider.

Threads, processes, errors
--------------------------

One boto3 client per backend, shared by all threads (boto3 clients are thread-safe).  After
``fork()`` the child builds its own client on first use (a client given in the config is kept:
give each process its own).  AWS errors become :class:`~machinery_compat.exceptions.BackendError`
(a missing table says how to create it).  A DynamoDB item holds at most 400 KB: a final state
that does not fit is not retried as it is (see :meth:`DynamoDBBackend.update_state`; results
that large become a FAILURE saying so).
"""

from __future__ import annotations

import logging
import os
import random
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from ..exceptions import BackendError, ConfigError, DecodeError
from ..protocol import (
    FAILURE,
    STARTED,
    SUCCESS,
    GoTime,
    GroupMeta,
    Number,
    Signature,
    TaskResult,
    TaskState,
)
from ..protocol.gofmt import parse_typed, sprint_typed
from .base import EXCEPTION_RECORD_SUFFIX, Backend, ExceptionRecord, decode_exception_record

if TYPE_CHECKING:
    from ..config import Config, DynamoDBConfig

logger = logging.getLogger(__name__)

#: Hash key of the task states table (S).
TASK_KEY: Final = "TaskUUID"
#: Hash key of the group metas table (S).
GROUP_KEY: Final = "GroupUUID"
#: The Number attribute DynamoDB's TTL is enabled on (epoch seconds).
TTL_ATTRIBUTE: Final = "TTL"
#: Python only: the JSON :class:`ExceptionRecord` of a Python worker's FAILURE.
EXCEPTION_RECORD_ATTRIBUTE: Final = "ExceptionRecord"
#: Keys per BatchGetItem call (DynamoDB's limit; Go uses 99).
BATCH_GET_LIMIT: Final = 100
#: BatchGetItem calls for keys DynamoDB left unprocessed, before giving up.
UNPROCESSED_ATTEMPTS: Final = 10
#: botocore ``standard`` retry mode: attempts per call (throttling, 5xx, timeouts).
MAX_ATTEMPTS: Final = 6
CONNECT_TIMEOUT: Final = 5.0
READ_TIMEOUT: Final = 15.0
#: Connections per client (a worker's threads share one client).
MAX_POOL_CONNECTIONS: Final = 64
#: A FAILURE's error text is cut to this many characters when the item would not fit.
MAX_ERROR_CHARS: Final = 65536
#: Seconds a chord trigger waits for a Go worker's ``Lock`` before ignoring it.
CHORD_LOCK_WAIT: Final = 10.0
_LOCK_POLL: Final = 0.01

_STATE_ATTRIBUTES: Final = ("TaskUUID", "TaskName", "State", "Results", "Error", "CreatedAt",
                            "TTL")
_SURROGATE = re.compile("[\ud800-\udfff]")
_INSTALL_HINT: Final = "pip install 'machinery-compat[aws]'"


def _require_boto3() -> Any:
    try:
        import boto3
    except ImportError as e:
        raise ConfigError(f"the DynamoDB result backend needs boto3: {_INSTALL_HINT}") from e
    return boto3


_AWS_URL = re.compile(r"https?://dynamodb\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?(?:[/:?#]|\Z)",
                      re.IGNORECASE)


def region_from_url(url: str) -> str | None:
    """The region named in an ``https://dynamodb.<region>.amazonaws.com`` URL, if any."""
    m = _AWS_URL.match(url)
    return m.group(1).lower() if m else None


def build_client(cfg: DynamoDBConfig | None = None, url: str = "") -> Any:
    """A boto3 DynamoDB client for ``cfg``: its ``endpoint_url`` and ``region`` (empty: boto3's
    chain; with no region there either, the one in a ``dynamodb.<region>.amazonaws.com``
    ``url``), ``standard`` retries, this module's timeouts."""
    boto3 = _require_boto3()
    from botocore.config import Config as BotoConfig
    from botocore.exceptions import BotoCoreError, NoRegionError

    endpoint = (cfg.endpoint_url if cfg is not None else "") or None
    region = (cfg.region if cfg is not None else "") or None
    session = boto3.session.Session()
    if region is None and session.region_name is None:
        region = region_from_url(url)
    try:
        return session.client(
            "dynamodb", endpoint_url=endpoint, region_name=region,
            config=BotoConfig(retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS},
                              connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT,
                              max_pool_connections=MAX_POOL_CONNECTIONS,
                              user_agent_extra="machinery-compat"))
    except NoRegionError as e:
        raise ConfigError("the DynamoDB result backend needs an AWS region: set AWS_REGION (or "
                          "AWS_DEFAULT_REGION, or a profile's region), or dynamodb.region "
                          "(DYNAMODB_REGION) in the config") from e
    except BotoCoreError as e:  # an invalid endpoint URL …
        raise ConfigError(f"DynamoDB result backend: {e}") from e


def _text(s: str) -> str:
    """A string DynamoDB accepts (valid UTF-8): lone surrogates become U+FFFD, as Go's SDK
    sends invalid UTF-8."""
    return _SURROGATE.sub("\ufffd", s) if _SURROGATE.search(s) else s


# --------------------------------------------------------------------------------------
# items: writing
# --------------------------------------------------------------------------------------


def _s(value: str) -> dict[str, Any]:
    return {"S": _text(value)}


def _n(value: int) -> dict[str, Any]:
    return {"N": str(value)}


def result_attribute(result: TaskResult) -> dict[str, Any]:
    """One result as Go writes it: ``{"M": {"Type": {"S": …}, "Value": {"S": <%v>}}}``."""
    return {"M": {"Type": _s(result.type),
                  "Value": _s(sprint_typed(result.type, result.wire_value))}}


def results_attribute(results: Sequence[TaskResult] | None) -> dict[str, Any]:
    if results is None:
        return {"NULL": True}
    return {"L": [result_attribute(r) for r in results]}


def task_state_item(state: TaskState) -> dict[str, Any]:
    """The whole item Go v2's ``PutItem`` writes for ``state`` (its PENDING)."""
    return {
        "TaskUUID": _s(state.task_uuid),
        "TaskName": _s(state.task_name),
        "State": _s(state.state),
        "Results": results_attribute(state.results),
        "Error": _s(state.error),
        "CreatedAt": _s(state.created_at.isoformat()),
        "TTL": _n(state.ttl),
    }


def group_meta_item(meta: GroupMeta) -> dict[str, Any]:
    """The item Go v2's ``InitGroup`` writes."""
    return {
        "GroupUUID": _s(meta.group_uuid),
        "TaskUUIDs": {"L": [_s(u) for u in meta.task_uuids]},
        "ChordTriggered": {"BOOL": meta.chord_triggered},
        "Lock": {"BOOL": meta.lock},
        "CreatedAt": _s(meta.created_at.isoformat()),
        "TTL": _n(meta.ttl),
    }


# --------------------------------------------------------------------------------------
# items: reading (v1 and v2)
# --------------------------------------------------------------------------------------


def _kind(av: Any) -> str:
    return next(iter(av), "?") if isinstance(av, Mapping) else type(av).__name__


def _is_null(av: Any) -> bool:
    return av is None or (isinstance(av, Mapping) and "NULL" in av)


def _attr(item: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    """Attribute ``name`` of ``item``; ``None`` when it is absent or NULL."""
    av = item.get(name)
    if _is_null(av):
        return None
    if not isinstance(av, Mapping):
        raise DecodeError(f"DynamoDB attribute {name} is not an AttributeValue: {av!r}")
    return av


def _get_str(item: Mapping[str, Any], name: str) -> str:
    av = _attr(item, name)
    if av is None:
        return ""
    if "S" in av:
        return str(av["S"])
    raise DecodeError(f"DynamoDB attribute {name} is {_kind(av)}, not S (string)")


def _get_bool(item: Mapping[str, Any], name: str) -> bool:
    av = _attr(item, name)
    if av is None:
        return False
    if "BOOL" in av:
        return bool(av["BOOL"])
    raise DecodeError(f"DynamoDB attribute {name} is {_kind(av)}, not BOOL")


def _get_int(item: Mapping[str, Any], name: str) -> int:
    av = _attr(item, name)
    if av is None:
        return 0
    if "N" in av:
        try:
            return int(av["N"])
        except ValueError:
            pass
    raise DecodeError(f"DynamoDB attribute {name} is {dict(av)!r}, not an integer N")


def _get_time(item: Mapping[str, Any], name: str) -> GoTime:
    text = _get_str(item, name)
    return GoTime.parse(text) if text else GoTime.zero()


def plain_value(av: Mapping[str, Any]) -> Any:
    """A DynamoDB AttributeValue as a plain value (numbers as
    :class:`~machinery_compat.protocol.gojson.Number`, like received JSON)."""
    if "S" in av:
        return av["S"]
    if "N" in av:
        return Number(av["N"])
    if "BOOL" in av:
        return bool(av["BOOL"])
    if "NULL" in av:
        return None
    if "L" in av:
        return [plain_value(v) for v in av["L"]]
    if "M" in av:
        return {k: plain_value(v) for k, v in av["M"].items()}
    if "B" in av:
        return bytes(av["B"])
    if "SS" in av:
        return list(av["SS"])
    if "NS" in av:
        return [Number(n) for n in av["NS"]]
    if "BS" in av:
        return [bytes(b) for b in av["BS"]]
    raise DecodeError(f"unknown DynamoDB attribute value {av!r}")


def result_from_attribute(av: Any) -> TaskResult:
    """One ``Results`` element back as a typed result: a ``%v`` string ``Value`` is parsed with
    the ``Type`` (:func:`~machinery_compat.protocol.gofmt.parse_typed`); other attribute types
    (never written by Go's ``UpdateItem``) are taken as they are."""
    if not isinstance(av, Mapping) or "M" not in av:
        raise DecodeError(f"DynamoDB Results element is {_kind(av)}, not M (map)")
    m = av["M"]
    type_name = _get_str(m, "Type")
    value_av = _attr(m, "Value")
    if value_av is None:
        value: Any = None
    elif "S" in value_av:
        value = parse_typed(type_name, value_av["S"])
    else:
        value = plain_value(value_av)
    return TaskResult.from_obj({"Type": type_name, "Value": value})


def task_state_from_item(item: Mapping[str, Any]) -> TaskState:
    """A TaskState from an item of Go v1 or v2 (or this backend); absent or NULL attributes
    are zero values, except a SUCCESS's absent or NULL ``Results``: ``[]`` (a task without
    results; Go writes no ``Results`` then, and Go's ``AsyncResult.Get`` gives an empty
    slice, as on Redis).  :class:`DecodeError` where Go's SDK could not decode it either."""
    results_av = _attr(item, "Results")
    results: list[TaskResult] | None
    if results_av is None:
        results = [] if _get_str(item, "State") == SUCCESS else None
    elif "L" in results_av:
        results = [result_from_attribute(r) for r in results_av["L"]]
    else:
        raise DecodeError(f"DynamoDB attribute Results is {_kind(results_av)}, not L (list)")
    return TaskState(
        task_uuid=_get_str(item, "TaskUUID"),
        state=_get_str(item, "State"),
        task_name=_get_str(item, "TaskName"),
        results=results,
        error=_get_str(item, "Error"),
        created_at=_get_time(item, "CreatedAt"),
        ttl=_get_int(item, "TTL"),
    )


def group_meta_from_item(item: Mapping[str, Any]) -> GroupMeta:
    """A GroupMeta from an item of Go v1 or v2 (or this backend)."""
    uuids_av = _attr(item, "TaskUUIDs")
    if uuids_av is None:
        uuids: list[str] = []
    elif "L" in uuids_av and all(isinstance(v, Mapping) and "S" in v for v in uuids_av["L"]):
        uuids = [str(v["S"]) for v in uuids_av["L"]]
    elif "SS" in uuids_av:  # a string set: order is lost, but the members are there
        uuids = [str(v) for v in uuids_av["SS"]]
    else:
        raise DecodeError(f"DynamoDB attribute TaskUUIDs is {uuids_av!r}, not a list of S")
    return GroupMeta(
        group_uuid=_get_str(item, "GroupUUID"),
        task_uuids=uuids,
        chord_triggered=_get_bool(item, "ChordTriggered"),
        lock=_get_bool(item, "Lock"),
        created_at=_get_time(item, "CreatedAt"),
        ttl=_get_int(item, "TTL"),
    )


# --------------------------------------------------------------------------------------
# the backend
# --------------------------------------------------------------------------------------


def _too_big(e: BaseException) -> bool:
    """A write refused because the item would exceed DynamoDB's 400 KB."""
    cause = e.__cause__
    return (cause is not None and _error_code(cause) == "ValidationException"
            and "exceeded the maximum allowed size" in str(cause))


def _error_code(e: BaseException) -> str:
    response = getattr(e, "response", None)
    if isinstance(response, Mapping):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


class DynamoDBBackend(Backend):
    """Results in two DynamoDB tables, as Go Machinery keeps them (see the module docs)."""

    schemes = ("https", "http")

    def __init__(self, url: str = "https://dynamodb", results_expire_in: int = 0, *,
                 dynamodb: DynamoDBConfig | None = None, client: Any = None) -> None:
        """``dynamodb``: table names, endpoint and region (default: Go's); ``client``: a boto3
        DynamoDB client to use instead of building one (also taken from ``dynamodb.client``)."""
        from ..config import DynamoDBConfig

        super().__init__(results_expire_in)
        self.url = url
        self.cfg = dynamodb if dynamodb is not None else DynamoDBConfig()
        self.task_table = self.cfg.task_states_table
        self.group_table = self.cfg.group_metas_table
        given = client if client is not None else self.cfg.client
        self._own_client = given is None
        self._client = given if given is not None else build_client(self.cfg, url)
        self._pid = os.getpid()
        #: seconds :meth:`trigger_chord` waits for a Go worker's ``Lock`` before ignoring it
        self.chord_lock_wait = CHORD_LOCK_WAIT

    @classmethod
    def from_config(cls, config: Config) -> DynamoDBBackend:
        """The backend for ``config``: ``config.dynamodb`` (Go's defaults when ``None``) and
        ``config.results_expire_in``."""
        cfg = config.dynamodb
        url = config.result_backend
        if (not url.lower().startswith("https://dynamodb")
                and (cfg is None or (not cfg.endpoint_url and cfg.client is None))
                and not any(os.environ.get(v) for v in ("AWS_ENDPOINT_URL_DYNAMODB",
                                                        "AWS_ENDPOINT_URL"))):
            logger.warning(
                "result_backend %s selects the DynamoDB backend, but (as in Go) the URL is not "
                "where calls go: set dynamodb.endpoint_url (DYNAMODB_ENDPOINT_URL) for an "
                "emulator or a VPC endpoint; boto3's default endpoint is used", url)
        return cls(url, config.results_expire_in, dynamodb=cfg)

    # -- plumbing -----------------------------------------------------------------------
    @property
    def client(self) -> Any:
        """The boto3 client (a new one in a forked child, unless it was given)."""
        if self._pid != os.getpid():
            self._after_fork()
        return self._client

    def _after_fork(self) -> None:
        if self._own_client:
            # the parent's connection pool must not be shared: its sockets are the parent's
            self._client = build_client(self.cfg, self.url)
        self._pid = os.getpid()

    @contextmanager
    def _aws(self, what: str, table: str) -> Iterator[None]:
        """Translate botocore errors into BackendError."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as e:
            if _error_code(e) == "ResourceNotFoundException":
                raise BackendError(
                    f"DynamoDB result backend: {what}: table {table!r} not found ({e}); create "
                    "the tables with machinery_compat.backends.dynamodb.create_tables(config)"
                ) from e
            raise BackendError(f"DynamoDB result backend: {what}: {e}") from e
        except BotoCoreError as e:
            raise BackendError(f"DynamoDB result backend: {what}: {e}") from e

    def _task_key(self, task_uuid: str) -> dict[str, Any]:
        return {TASK_KEY: _s(task_uuid)}

    def _expiry(self) -> int:
        """Go's ``getExpirationTime``: now + results_expire_in, Unix seconds."""
        return int(time.time()) + self.expire_in

    # -- writes -------------------------------------------------------------------------
    def put_state(self, state: TaskState) -> None:
        """``PutItem`` of the whole state (what Go does for PENDING)."""
        with self._aws(f"writing {state.state} of {state.task_uuid}", self.task_table):
            self.client.put_item(TableName=self.task_table, Item=task_state_item(state))

    def update_state(self, state: TaskState, exc_record: ExceptionRecord | None = None) -> None:
        """Go's ``UpdateItem`` for every state but PENDING (see the module docs), with a
        FAILURE's exception record in the same call.

        A state that does not fit a DynamoDB item (400 KB) is never retried as it is (it never
        would fit; Go's worker fails the message and meets it again): a FAILURE is written
        without its exception record, then with its error text cut to
        :data:`MAX_ERROR_CHARS`; a SUCCESS becomes a FAILURE saying so (logged), so that
        readers see the task end.
        """
        try:
            self._update(state, exc_record)
            return
        except BackendError as e:
            if not _too_big(e):
                raise
            why = e
        if state.state == FAILURE and exc_record is not None:
            logger.warning("task %s: the FAILURE state with its exception record does not fit "
                           "a DynamoDB item; writing it without the record", state.task_uuid)
            self.update_state(state)
            return
        if state.state == FAILURE and len(state.error) > MAX_ERROR_CHARS:
            cut = state.error[:MAX_ERROR_CHARS] + f"… ({len(state.error)} characters)"
            self._update(TaskState(state.task_uuid, FAILURE, error=cut))
            return
        if state.state == SUCCESS:
            logger.error("task %s: its results do not fit a DynamoDB item; storing FAILURE "
                         "instead (%s)", state.task_uuid, why)
            self._update(TaskState(state.task_uuid, FAILURE, error=(
                "the task's results do not fit a DynamoDB item (at most 400 KB): "
                + str(why.__cause__ or why))))
            return
        raise why

    def _update(self, state: TaskState, exc_record: ExceptionRecord | None = None) -> None:
        names = {"#S": "State"}
        values: dict[str, Any] = {":s": _s(state.state)}
        parts = ["#S = :s"]
        if state.state == FAILURE:
            names["#E"] = "Error"
            values[":e"] = _s(state.error)
            parts.append("#E = :e")
        ttl = self._expiry() if state.state in (SUCCESS, FAILURE) else state.ttl
        if ttl > 0:
            names["#T"] = TTL_ATTRIBUTE
            values[":t"] = _n(ttl)
            parts.append("#T = :t")
        if state.state != FAILURE and state.results:
            names["#R"] = "Results"
            values[":r"] = results_attribute(state.results)
            parts.append("#R = :r")
        if exc_record is not None:
            names["#X"] = EXCEPTION_RECORD_ATTRIBUTE
            values[":x"] = _s(exc_record.to_json().decode("ascii"))
            parts.append("#X = :x")
        with self._aws(f"writing {state.state} of {state.task_uuid}", self.task_table):
            self.client.update_item(
                TableName=self.task_table, Key=self._task_key(state.task_uuid),
                UpdateExpression="SET " + ", ".join(parts),
                ExpressionAttributeNames=names, ExpressionAttributeValues=values)

    def set_state(self, state: TaskState, *, merge: bool) -> None:
        if merge:
            self.update_state(state)
        else:
            self.put_state(state)

    def mark_received_started(self, sig: Signature) -> Any:
        """One ``SET State = STARTED`` (see the module docs)."""
        self.update_state(TaskState(sig.uuid, STARTED))
        return None

    def set_final_state(self, state: TaskState, token: Any = None,
                        exc_record: ExceptionRecord | None = None) -> None:
        self.update_state(state, exc_record)

    def set_exception_record(self, task_uuid: str, record: ExceptionRecord) -> None:
        with self._aws(f"writing the exception record of {task_uuid}", self.task_table):
            self.client.update_item(
                TableName=self.task_table, Key=self._task_key(task_uuid),
                UpdateExpression="SET #X = :x",
                ExpressionAttributeNames={"#X": EXCEPTION_RECORD_ATTRIBUTE},
                ExpressionAttributeValues={":x": _s(record.to_json().decode("ascii"))})

    # -- reads --------------------------------------------------------------------------
    def get_item(self, task_uuid: str) -> dict[str, Any] | None:
        """The raw item of a task (every attribute), or ``None``."""
        with self._aws(f"reading {task_uuid}", self.task_table):
            reply = self.client.get_item(TableName=self.task_table,
                                         Key=self._task_key(task_uuid), ConsistentRead=True)
        item: dict[str, Any] | None = reply.get("Item")
        return item

    def get_group_item(self, group_uuid: str) -> dict[str, Any] | None:
        """The raw item of a group meta, or ``None``."""
        with self._aws(f"reading group {group_uuid}", self.group_table):
            reply = self.client.get_item(TableName=self.group_table,
                                         Key={GROUP_KEY: _s(group_uuid)}, ConsistentRead=True)
        item: dict[str, Any] | None = reply.get("Item")
        return item

    def get_state(self, task_uuid: str) -> TaskState | None:
        names = {f"#{i}": a for i, a in enumerate(_STATE_ATTRIBUTES)}
        with self._aws(f"reading {task_uuid}", self.task_table):
            reply = self.client.get_item(
                TableName=self.task_table, Key=self._task_key(task_uuid), ConsistentRead=True,
                ProjectionExpression=", ".join(names), ExpressionAttributeNames=names)
        item = reply.get("Item")
        return None if item is None else task_state_from_item(item)

    def get_states(self, task_uuids: Sequence[str]) -> list[TaskState | None]:
        """``BatchGetItem`` in chunks of :data:`BATCH_GET_LIMIT` keys, unprocessed keys asked
        again; the states in the order of ``task_uuids`` (``None`` where there is none)."""
        unique = list(dict.fromkeys(task_uuids))
        found: dict[str, TaskState] = {}
        for start in range(0, len(unique), BATCH_GET_LIMIT):
            chunk = unique[start:start + BATCH_GET_LIMIT]
            request: dict[str, Any] = {self.task_table: {
                "Keys": [self._task_key(u) for u in chunk], "ConsistentRead": True}}
            for attempt in range(UNPROCESSED_ATTEMPTS):
                with self._aws(f"reading {len(chunk)} states ({chunk[0]} …)", self.task_table):
                    reply = self.client.batch_get_item(RequestItems=request)
                for item in reply.get("Responses", {}).get(self.task_table, ()):
                    state = task_state_from_item(item)
                    found[state.task_uuid] = state
                request = reply.get("UnprocessedKeys") or {}
                if not request:
                    break
                if attempt + 1 < UNPROCESSED_ATTEMPTS:
                    time.sleep(random.uniform(0.5, 1.0) * min(0.05 * 2 ** attempt, 2.0))
            else:
                left = len(request.get(self.task_table, {}).get("Keys", ()))
                raise BackendError(f"DynamoDB result backend: {left} of {len(chunk)} states "
                                   f"still unprocessed after {UNPROCESSED_ATTEMPTS} BatchGetItem "
                                   "calls (throttled?)")
        return [found.get(u) for u in task_uuids]

    def scan_states(self, states: Sequence[str]) -> Iterator[TaskState]:
        """Every task state whose ``State`` is one of ``states``: a consistent ``Scan`` of the
        task table, page by page (for operators: ``recovery.find_stuck_tasks``).  Items that
        do not decode as a TaskState are left out."""
        values = {f":s{i}": _s(st) for i, st in enumerate(states)}
        kwargs: dict[str, Any] = {
            "TableName": self.task_table, "ConsistentRead": True,
            "FilterExpression": f"#S IN ({', '.join(values)})",
            "ExpressionAttributeNames": {"#S": "State"}, "ExpressionAttributeValues": values}
        while True:
            with self._aws("scanning the task states", self.task_table):
                reply = self.client.scan(**kwargs)
            for item in reply.get("Items", ()):
                try:
                    yield task_state_from_item(item)
                except (DecodeError, ValueError, KeyError):
                    continue
            if "LastEvaluatedKey" not in reply:
                return
            kwargs["ExclusiveStartKey"] = reply["LastEvaluatedKey"]

    def get_exception_record(self, task_uuid: str) -> ExceptionRecord | None:
        with self._aws(f"reading the exception record of {task_uuid}", self.task_table):
            reply = self.client.get_item(
                TableName=self.task_table, Key=self._task_key(task_uuid), ConsistentRead=True,
                ProjectionExpression="#X", ExpressionAttributeNames={
                    "#X": EXCEPTION_RECORD_ATTRIBUTE})
        av = reply.get("Item", {}).get(EXCEPTION_RECORD_ATTRIBUTE)
        raw = av.get("S") if isinstance(av, Mapping) else None
        return decode_exception_record(task_uuid, raw)

    # -- groups -------------------------------------------------------------------------
    def init_group(self, group_uuid: str, task_uuids: Sequence[str]) -> None:
        meta = GroupMeta(group_uuid, list(task_uuids), created_at=GoTime.now(),
                         ttl=self._expiry())
        with self._aws(f"writing group {group_uuid}", self.group_table):
            self.client.put_item(TableName=self.group_table, Item=group_meta_item(meta))

    def get_group_meta(self, group_uuid: str) -> GroupMeta | None:
        item = self.get_group_item(group_uuid)
        return None if item is None else group_meta_from_item(item)

    def trigger_chord(self, group_uuid: str) -> bool:
        """True for exactly one Python caller per group (see the module docs)."""
        from botocore.exceptions import ClientError

        key = {GROUP_KEY: _s(group_uuid)}
        names = {"#G": GROUP_KEY, "#CT": "ChordTriggered", "#L": "Lock"}
        deadline = time.monotonic() + self.chord_lock_wait
        warned = False
        while True:
            respect_lock = time.monotonic() < deadline
            condition = "attribute_exists(#G) AND NOT #CT = :t"
            if respect_lock:
                condition += " AND NOT #L = :t"
            with self._aws(f"triggering the chord of group {group_uuid}", self.group_table):
                try:
                    self.client.update_item(
                        TableName=self.group_table, Key=key,
                        UpdateExpression="SET #CT = :t", ConditionExpression=condition,
                        ExpressionAttributeNames=(
                            names if respect_lock else {k: names[k] for k in ("#G", "#CT")}),
                        ExpressionAttributeValues={":t": {"BOOL": True}})
                    return True
                except ClientError as e:
                    if _error_code(e) != "ConditionalCheckFailedException":
                        raise
            # the condition failed: find out why
            item = self.get_group_item(group_uuid)
            if item is None:
                raise BackendError(f"group {group_uuid}: meta not found")
            meta = group_meta_from_item(item)
            if meta.chord_triggered:
                return False
            if meta.lock:
                if not warned:
                    logger.info("group %s locked by a Go worker's TriggerChord, waiting",
                                group_uuid)
                    warned = True
                time.sleep(_LOCK_POLL)
                if time.monotonic() >= deadline:
                    logger.warning("group %s still locked after %gs: ignoring the lock (a Go "
                                   "worker died holding it?)", group_uuid, self.chord_lock_wait)

    # -- as JSON (tests, tools) ---------------------------------------------------------
    def raw(self, key: str) -> bytes | None:
        """What is stored under ``key`` as the memory backend's
        :meth:`~machinery_compat.backends.memory.MemoryBackend.raw` gives it: a task state
        (else a group meta) as the Go JSON of what this backend reads from the item (result
        values typed); for ``<task UUID>.exc`` the task's exception record as stored; ``None``
        when there is none."""
        if key.endswith(EXCEPTION_RECORD_SUFFIX):
            task_item = self.get_item(key[:-len(EXCEPTION_RECORD_SUFFIX)])
            av = (task_item or {}).get(EXCEPTION_RECORD_ATTRIBUTE)
            return str(av["S"]).encode("utf-8") if isinstance(av, Mapping) and "S" in av else None
        item = self.get_item(key)
        if item is not None:
            return task_state_from_item(item).to_json()
        group = self.get_group_item(key)
        return None if group is None else group_meta_from_item(group).to_json()

    def store_raw(self, key: str, body: bytes) -> None:
        """Store Go JSON under ``key`` as the item Go would hold for it (``PutItem``): a
        TaskState, or a GroupMeta when the body has a ``GroupUUID`` field; for
        ``<task UUID>.exc`` the bytes become the task's exception record as they are."""
        from ..protocol.gojson import loads

        if key.endswith(EXCEPTION_RECORD_SUFFIX):
            task_uuid = key[:-len(EXCEPTION_RECORD_SUFFIX)]
            with self._aws(f"writing the exception record of {task_uuid}", self.task_table):
                self.client.update_item(
                    TableName=self.task_table, Key=self._task_key(task_uuid),
                    UpdateExpression="SET #X = :x",
                    ExpressionAttributeNames={"#X": EXCEPTION_RECORD_ATTRIBUTE},
                    ExpressionAttributeValues={":x": _s(body.decode("utf-8", "replace"))})
            return
        obj = loads(body)
        if isinstance(obj, dict) and any(k.lower() == "groupuuid" for k in obj):
            meta = GroupMeta.from_obj(obj)
            meta.group_uuid = key
            with self._aws(f"writing group {key}", self.group_table):
                self.client.put_item(TableName=self.group_table, Item=group_meta_item(meta))
            return
        state = TaskState.from_obj(obj)
        state.task_uuid = key
        self.put_state(state)

    # -- housekeeping -------------------------------------------------------------------
    def purge_state(self, task_uuid: str) -> None:
        """``DeleteItem`` (the exception record lives in the same item)."""
        with self._aws(f"deleting {task_uuid}", self.task_table):
            self.client.delete_item(TableName=self.task_table, Key=self._task_key(task_uuid))

    def purge_group_meta(self, group_uuid: str) -> None:
        with self._aws(f"deleting group {group_uuid}", self.group_table):
            self.client.delete_item(TableName=self.group_table, Key={GROUP_KEY: _s(group_uuid)})

    def close(self) -> None:
        if self._own_client and self._pid == os.getpid():
            close = getattr(self._client, "close", None)
            if close is not None:
                close()


# --------------------------------------------------------------------------------------
# creating the tables
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TableReport:
    """What :func:`create_tables` found or did for one table."""

    name: str
    key: str
    created: bool
    ttl_enabled: bool


def create_tables(config_or_client: Any = None, *, task_states_table: str | None = None,
                  group_metas_table: str | None = None, ttl: bool = True,
                  wait: bool = True) -> list[TableReport]:
    """Create the two tables Go Machinery's DynamoDB backend expects, if they do not exist.

    ``config_or_client``: a :class:`~machinery_compat.config.Config`, a
    :class:`~machinery_compat.config.DynamoDBConfig`, a boto3 DynamoDB client, or ``None``
    (boto3's defaults).  Table names default to the config's (``task_states`` and
    ``group_metas``).  Each table: hash key ``TaskUUID`` / ``GroupUUID`` of type S, on-demand
    capacity (``PAY_PER_REQUEST``); with ``wait`` (default) it waits until the table is
    ACTIVE; with ``ttl`` (default) DynamoDB TTL is enabled on the Number attribute ``TTL``
    (Go sets it on SUCCESS, FAILURE and group metas; DynamoDB deletes expired items within a
    few days, and ignores PENDING's ``0``).  An existing table is kept: its hash key is checked
    (:class:`ConfigError` if it is not the one Go uses) and TTL enabled if it is not yet.
    Returns one :class:`TableReport` per table.

    The same as the AWS CLI's::

        aws dynamodb create-table --table-name task_states --billing-mode PAY_PER_REQUEST \\
            --attribute-definitions AttributeName=TaskUUID,AttributeType=S \\
            --key-schema AttributeName=TaskUUID,KeyType=HASH
        aws dynamodb update-time-to-live --table-name task_states \\
            --time-to-live-specification Enabled=true,AttributeName=TTL
        (and the same for group_metas with GroupUUID)
    """
    from ..config import Config, DynamoDBConfig

    cfg: DynamoDBConfig
    if isinstance(config_or_client, Config):
        cfg = config_or_client.dynamodb or DynamoDBConfig()
        client = cfg.client if cfg.client is not None else build_client(cfg)
    elif isinstance(config_or_client, DynamoDBConfig):
        cfg = config_or_client
        client = cfg.client if cfg.client is not None else build_client(cfg)
    elif config_or_client is None:
        cfg = DynamoDBConfig()
        client = build_client(cfg)
    else:
        cfg = DynamoDBConfig()
        client = config_or_client
    tables = ((task_states_table or cfg.task_states_table, TASK_KEY),
              (group_metas_table or cfg.group_metas_table, GROUP_KEY))
    return [_create_table(client, name, key, ttl=ttl, wait=wait) for name, key in tables]


def _create_table(client: Any, name: str, key: str, *, ttl: bool, wait: bool) -> TableReport:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        created = True
        try:
            client.create_table(
                TableName=name, BillingMode="PAY_PER_REQUEST",
                AttributeDefinitions=[{"AttributeName": key, "AttributeType": "S"}],
                KeySchema=[{"AttributeName": key, "KeyType": "HASH"}])
        except ClientError as e:
            if _error_code(e) != "ResourceInUseException":
                raise
            created = False
        if wait or not created:
            client.get_waiter("table_exists").wait(
                TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 120})
        if not created:
            _check_key(client.describe_table(TableName=name)["Table"], name, key)
        enabled = False
        if ttl:
            spec = client.describe_time_to_live(TableName=name).get(
                "TimeToLiveDescription", {})
            status = spec.get("TimeToLiveStatus")
            if status in ("ENABLED", "ENABLING"):
                if spec.get("AttributeName") != TTL_ATTRIBUTE:
                    raise ConfigError(
                        f"table {name!r} has DynamoDB TTL on {spec.get('AttributeName')!r}; "
                        f"Machinery writes expiry times into {TTL_ATTRIBUTE!r}")
            else:
                client.update_time_to_live(TableName=name, TimeToLiveSpecification={
                    "Enabled": True, "AttributeName": TTL_ATTRIBUTE})
            enabled = True
    except (ClientError, BotoCoreError) as e:
        raise BackendError(f"creating DynamoDB table {name!r}: {e}") from e
    if created:
        logger.info("created DynamoDB table %s (hash key %s S, on demand)", name, key)
    return TableReport(name, key, created, enabled)


def _check_key(table: Mapping[str, Any], name: str, key: str) -> None:
    schema = {k["AttributeName"]: k["KeyType"] for k in table.get("KeySchema", ())}
    types = {a["AttributeName"]: a["AttributeType"]
             for a in table.get("AttributeDefinitions", ())}
    if schema != {key: "HASH"} or types.get(key) != "S":
        raise ConfigError(
            f"DynamoDB table {name!r} exists with key schema {schema} {types}; Go Machinery "
            f"needs the hash key {key} of type S and no range key")


__all__ = [
    "DynamoDBBackend",
    "TableReport",
    "build_client",
    "create_tables",
    "group_meta_from_item",
    "group_meta_item",
    "region_from_url",
    "task_state_from_item",
    "task_state_item",
]
