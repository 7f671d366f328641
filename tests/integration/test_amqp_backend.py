"""The AMQP result backend as Go's (§6.4): one message per state, no merge, consuming reads,
group queues, the chord step, exception records; read the way Go's AsyncResult reads.

Worker and workflow behaviour on this backend runs in tests/behaviour/ (kind ``amqp``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from machinery_compat import BackendError
from machinery_compat.backends.amqp import AMQPBackend
from machinery_compat.backends.base import ExceptionRecord
from machinery_compat.protocol import FAILURE, SUCCESS, Signature, TaskResult, TaskState
from tests.helpers import state_bytes
from tests.services import RabbitMQServer

ZERO = "0001-01-01T00:00:00Z"


@pytest.fixture
def backend(rabbitmq_vhost_url: str) -> Iterator[AMQPBackend]:
    b = AMQPBackend(rabbitmq_vhost_url)
    yield b
    b.close()


def _go_get_state(server: RabbitMQServer, url: str, uuid: str) -> bytes | None:
    """Go's ``GetState``: ``basic.get`` one message and ack it."""
    conn = server.connection(url.rsplit("/", 1)[1])
    try:
        ch = conn.channel()
        msg = ch.basic_get(uuid, no_ack=False)
        if msg is None:
            return None
        ch.basic_ack(msg.delivery_tag)
        return bytes(msg.body)
    finally:
        conn.close()


def test_states_are_separate_messages_and_never_merged(
    backend: AMQPBackend, rabbitmq_server: RabbitMQServer, rabbitmq_vhost_url: str
) -> None:
    sig = Signature(uuid="task_s", name="add")
    backend.set_state_pending(sig)
    token = backend.mark_received_started(sig)
    backend.set_final_state(TaskState("task_s", SUCCESS, results=[TaskResult("int64", 2)]), token)
    got = [_go_get_state(rabbitmq_server, rabbitmq_vhost_url, "task_s") for _ in range(5)]
    assert (got[0] or b"").startswith(b'{"TaskUUID":"task_s","TaskName":"add","State":"PENDING"')
    assert got[1:] == [state_bytes("task_s", "", "RECEIVED", ZERO),
                       state_bytes("task_s", "", "STARTED", ZERO),
                       state_bytes("task_s", "", "SUCCESS", ZERO,
                                   results='[{"Type":"int64","Value":2}]'),
                       None]


def test_reading_consumes_and_the_newest_is_remembered(
    backend: AMQPBackend, rabbitmq_server: RabbitMQServer, rabbitmq_vhost_url: str
) -> None:
    sig = Signature(uuid="task_r", name="add")
    backend.set_state_pending(sig)
    backend.mark_received_started(sig)
    st = backend.get_state("task_r")
    assert st is not None and st.state == "STARTED"
    assert _go_get_state(rabbitmq_server, rabbitmq_vhost_url, "task_r") is None  # consumed
    other = AMQPBackend(rabbitmq_vhost_url)  # same URL, same process: sees what was read
    try:
        again = other.get_state("task_r")
        assert again is not None and again.state == "STARTED"
    finally:
        other.close()
    backend.set_state(TaskState("task_r", FAILURE, error="boom"), merge=True)
    last = backend.get_state("task_r")
    assert last is not None and (last.state, last.error) == (FAILURE, "boom")
    backend.purge_state("task_r")
    assert backend.get_state("task_r") is None


def test_group_queue_completion_and_the_chord_step(
    backend: AMQPBackend, rabbitmq_server: RabbitMQServer, rabbitmq_vhost_url: str
) -> None:
    members = [Signature(uuid=f"task_g{i}", name="add", group_uuid="group_1", group_task_count=3)
               for i in range(3)]
    backend.init_group("group_1", [m.uuid for m in members])  # nothing, as Go
    assert backend.get_group_meta("group_1") is None
    assert not backend.group_completed("group_1", 3)  # no queue yet
    for i, m in enumerate(members):
        token = backend.mark_received_started(m)
        final = TaskState(m.uuid, SUCCESS, results=[TaskResult("int64", i)])
        backend.set_final_state(final, token)
        assert backend.group_completed("group_1", 3) == (i == 2)
    assert backend.trigger_chord("group_1")  # nothing creates <group>_chord_triggered
    states = backend.group_task_states("group_1", 3)
    assert [s.task_uuid for s in states] == ["task_g0", "task_g1", "task_g2"]  # completion order
    vhost = rabbitmq_vhost_url.rsplit("/", 1)[1]
    assert "group_1" not in {q["name"] for q in rabbitmq_server.queues(vhost)}  # purged
    with pytest.raises(BackendError, match="Already consumed"):
        backend.group_task_states("group_1", 3)


def test_failure_without_a_token_still_reaches_the_group_queue(backend: AMQPBackend) -> None:
    m = Signature(uuid="task_f", name="x", group_uuid="group_2", group_task_count=1)
    backend.set_state_received(m)  # e.g. argument errors: no mark_received_started token
    backend.set_final_state(TaskState("task_f", FAILURE, error="bad args"))
    assert backend.group_completed("group_2", 1)
    (st,) = backend.group_task_states("group_2", 1)
    assert (st.state, st.error) == (FAILURE, "bad args")


def test_exception_record_is_peeked_not_consumed(backend: AMQPBackend) -> None:
    record = ExceptionRecord("ValueError", "builtins", "ValueError", "Traceback ...", "bad")
    backend.set_final_state(TaskState("task_x", FAILURE, error="bad"), None, record)
    assert backend.get_exception_record("task_x") == record
    assert backend.get_exception_record("task_x") == record
    assert backend.get_exception_record("task_none") is None
