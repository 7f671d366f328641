"""Machinery's wire protocol, pure (standard library only, no I/O).

* :mod:`.models` — Signature, Arg, TaskState, TaskResult, GroupMeta and the state names;
* :mod:`.gojson` — Go-identical JSON encoding and Go-lenient decoding;
* :mod:`.gotypes` — the 29 Machinery type names ⇄ Python values;
* :mod:`.gotime` — Go times with nanoseconds;
* :mod:`.retry` — Fibonacci retry delays; :mod:`.ids` — task/group/chord ids.
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

__all__ = [
    "ALL_STATES",
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
    "chord_id",
    "fibonacci_next",
    "group_id",
    "infer_type",
    "retry_delays",
    "task_id",
    "to_python",
]
