"""Small helpers and Go-written bytes shared by the test suites (no fixtures here)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; returns that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


#: A task message exactly as Go's ``SendTask`` publishes ``add(1, 1)``.
UUID = "task_7e0b7c39-3d0c-4b5e-9e1a-2f7d5c1b8a90"
GOLDEN_BODY = (
    b'{"UUID":"task_7e0b7c39-3d0c-4b5e-9e1a-2f7d5c1b8a90","Name":"add","RoutingKey":"machinery_tasks",'
    b'"ETA":null,"GroupUUID":"","GroupTaskCount":0,"Args":[{"Name":"","Type":"int64","Value":1},'
    b'{"Name":"","Type":"int64","Value":1}],"Headers":{},"Priority":0,"Immutable":false,'
    b'"RetryCount":0,"RetryTimeout":0,"OnSuccess":null,"OnError":null,"ChordCallback":null,'
    b'"BrokerMessageGroupId":"","SQSReceiptHandle":"","StopTaskDeletionOnError":false,'
    b'"IgnoreWhenTaskNotRegistered":false}'
)
GO_PENDING = (
    b'{"TaskUUID":"task_7e0b7c39-3d0c-4b5e-9e1a-2f7d5c1b8a90","TaskName":"add","State":"PENDING",'
    b'"Results":null,"Error":"","CreatedAt":"2024-05-01T12:34:56.123456789Z","TTL":0}'
)


def state_bytes(uuid: str, name: str, state: str, created: str, results: str = "null",
                error: str = "") -> bytes:
    """A TaskState as Go's encoding/json writes it."""
    return (f'{{"TaskUUID":"{uuid}","TaskName":"{name}","State":"{state}","Results":{results},'
            f'"Error":"{error}","CreatedAt":"{created}","TTL":0}}').encode()


def retrying_sender(app: Any, ids: list[str], errors: list[str], *,
                    name: str = "retrying-producer") -> threading.Thread:
    """A started thread sending ``add(1)`` under each id of ``ids``, one by one, each send
    retried (up to 200 times, 50 ms apart) as a caller would while a broker fails over; the
    errors' type names go to ``errors``."""

    def produce() -> None:
        for task_id in ids:
            for _ in range(200):
                try:
                    app.send_task("add", args=[1], task_id=task_id)
                    break
                except Exception as e:  # the master moving
                    errors.append(type(e).__name__)
                    time.sleep(0.05)
            time.sleep(0.001)

    thread = threading.Thread(target=produce, name=name)
    thread.start()
    return thread
