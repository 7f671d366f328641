"""machinery_compat: Python producers and workers for Go Machinery's queues, byte for byte.

.. code-block:: python

    from machinery_compat import Machinery, Arg
    app = Machinery(broker="redis://127.0.0.1:6379/0")

    @app.task(name="add")
    def add(*nums: int) -> int:
        return sum(nums)

    app.send_task("add", args=[1, 2]).get(timeout=10)   # 3, whether a Go or a Python worker ran it
"""

from .app import Machinery
from .canvas import Chain, Chord, Group, Sig, chain, chord, group
from .config import Config
from .exceptions import (
    ArgTypeError,
    BackendError,
    BrokerConnectionError,
    BrokerError,
    ConfigError,
    DecodeError,
    EncodeError,
    MachineryCompatError,
    ProtocolError,
    PublishError,
    ResultTimeout,
    Retry,
    TaskFailed,
    TaskNotRegistered,
    UnsupportedOption,
)
from .protocol import (
    Arg,
    GoTime,
    GoType,
    GroupMeta,
    Signature,
    TaskResult,
    TaskState,
)
from .result import AsyncResult, ChainResult, ChordResult, GroupResult
from .task import Request, Task

__version__ = "0.1.0.dev0"

__all__ = [
    "Arg",
    "ArgTypeError",
    "AsyncResult",
    "BackendError",
    "BrokerConnectionError",
    "BrokerError",
    "Chain",
    "ChainResult",
    "Chord",
    "ChordResult",
    "Config",
    "ConfigError",
    "DecodeError",
    "EncodeError",
    "GoTime",
    "GoType",
    "Group",
    "GroupMeta",
    "GroupResult",
    "Machinery",
    "MachineryCompatError",
    "ProtocolError",
    "PublishError",
    "Request",
    "ResultTimeout",
    "Retry",
    "Sig",
    "Signature",
    "Task",
    "TaskFailed",
    "TaskNotRegistered",
    "TaskResult",
    "TaskState",
    "UnsupportedOption",
    "__version__",
    "chain",
    "chord",
    "group",
]
