"""Machinery's wire protocol, pure (no I/O; the standard library, and orjson only as the
fast path of :mod:`.fastjson`, whose results are those of the exact decoder).

* :mod:`.models` — Signature, Arg, TaskState, TaskResult, GroupMeta and the state names;
* :mod:`.gojson` — Go-identical JSON encoding and Go-lenient decoding;
* :mod:`.fastjson` — the common Signature message decoded through orjson, exactly as
  :mod:`.gojson` decodes it (or not at all: the exact decoder then runs);
* :mod:`.gotypes` — the 29 Machinery type names ⇄ Python values;
* :mod:`.gotime` — Go times with nanoseconds;
* :mod:`.retry` — Fibonacci retry delays; :mod:`.ids` — task/group/chord ids;
* :mod:`.sublime` — the sublime-security fork's wire dialect (``wire_dialect="sublime"``).
"""

from .gojson import Number
from .gotime import GoTime
from .gotypes import SUPPORTED_TYPES, GoType, infer_type, to_python
from .ids import chord_id, group_id, task_id
from .models import (
    ALL_STATES,
    FAILURE,
    PENDING,
    READY_STATES,
    RECEIVED,
    RETRY,
    STARTED,
    SUCCESS,
    Arg,
    GroupMeta,
    Signature,
    TaskResult,
    TaskState,
)
from .retry import fibonacci_next, retry_delays
from .sublime import DIALECTS, WireDialect, check_dialect

__all__ = [
    "ALL_STATES",
    "DIALECTS",
    "FAILURE",
    "PENDING",
    "READY_STATES",
    "RECEIVED",
    "RETRY",
    "STARTED",
    "SUCCESS",
    "SUPPORTED_TYPES",
    "Arg",
    "GoTime",
    "GoType",
    "GroupMeta",
    "Number",
    "Signature",
    "TaskResult",
    "TaskState",
    "WireDialect",
    "check_dialect",
    "chord_id",
    "fibonacci_next",
    "group_id",
    "infer_type",
    "retry_delays",
    "task_id",
    "to_python",
]
