"""The sublime fork's worker-side rules that need no server: the SQS receive fields against
the signature a real fork worker handed its task (``sublime_brokers.json``), SQS
``DelaySeconds`` from ``Delay`` against what the fork's broker sent, the unknown-task hook's
results, ``task.retry(keep_message=True)``.  The behaviour on real brokers is in
tests/behaviour/test_sublime_worker.py."""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any

import pytest

from machinery_compat import Machinery
from machinery_compat.brokers.sqs import SQSBroker
from machinery_compat.exceptions import ConfigError, Retry
from machinery_compat.protocol.gotime import GoTime
from machinery_compat.protocol.models import Signature
from machinery_compat.protocol.sublime import fill_sqs_receipt, unknown_task_decision
from machinery_compat.task import KeepAndRetry

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden" / "sublime_brokers.json"
BROKER = "https://sqs.us-west-2.amazonaws.com/123456789012"
MS = 1_000_000


def _sqs() -> dict[str, Any]:
    if not GOLDEN.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{GOLDEN} is missing (written by interop/sublime-golden.sh)")
        pytest.skip(f"{GOLDEN} is missing: it is written by interop/sublime-golden.sh")
    sqs: dict[str, Any] = json.loads(GOLDEN.read_text("utf-8"))["sqs"]
    return sqs


def test_sqs_receive_fields_as_the_fork_worker_fills_them() -> None:
    """The fork's worker received a message sent with ``AttemptCount`` 9 and no routing key;
    its task saw these bytes.  The same fields from the same receive attributes give them."""
    seen = _sqs()["consumed_signature_as_task_sees_it"]
    want = Signature.from_json(seen)
    assert want.ingestion_time is not None and want.first_received is not None
    assert want.received_at is not None
    sent = want.copy(routing_key="", attempt_count=9, received_at=None, ingestion_time=None,
                     first_received=None, sqs_receipt_handle="", sqs_message_id="")
    sig = Signature.from_json(sent.to_json())
    fill_sqs_receipt(sig, queue="consume_tasks", receipt_handle=want.sqs_receipt_handle,
                     message_id=want.sqs_message_id, receive_count=1,
                     sent_ms=want.ingestion_time.unix_ns // MS,
                     first_ms=want.first_received.unix_ns // MS, now=want.received_at)
    assert sig.to_json().decode() == seen
    assert not sig.no_backend


def test_sqs_receive_fields_without_uuid_or_attributes() -> None:
    sig = Signature(name="add", attempt_count=4, wire_dialect="sublime")
    fill_sqs_receipt(sig, queue="q", receipt_handle="rh", message_id="mid", receive_count=None,
                     sent_ms=None, first_ms=None, now=GoTime(5))
    assert sig.no_backend and sig.attempt_count == 4  # no ApproximateReceiveCount: kept
    assert sig.ingestion_time is None and sig.first_received is None
    assert (sig.routing_key, sig.sqs_receipt_handle, sig.sqs_message_id) == ("q", "rh", "mid")


@pytest.mark.parametrize(("case", "seconds"), [
    ("send_delay_5s", 5), ("send_delay_2500ms", 2), ("send_delay_20min_clamped", 900),
])
def test_sqs_delay_seconds_from_delay_as_the_fork_sends(case: str, seconds: int) -> None:
    """A sublime body's ``DelaySeconds`` comes from its ``Delay`` (clamped at 900, not
    refused), not from the clock at send time: the fork's requests, parameter for parameter."""
    sent = _sqs()[case]
    sig = Signature.from_json(sent["MessageBody"])
    sig.eta = GoTime.now()  # a due time already passing must not shorten it
    params = SQSBroker(BROKER, client=object()).message_params(sig)
    assert params == {"QueueUrl": f"{BROKER}/machinery_tasks", "MessageBody": sent["MessageBody"],
                      "DelaySeconds": int(sent["DelaySeconds"])}
    assert params["DelaySeconds"] == seconds


def test_upstream_bodies_keep_the_eta_rule() -> None:
    sig = Signature(uuid="u", name="add", eta=GoTime.now().add_seconds(30.5))
    params = SQSBroker(BROKER, client=object()).message_params(sig)
    assert params["DelaySeconds"] in (29, 30) and b'"ETA"' in params["MessageBody"].encode()


def test_unknown_task_decisions() -> None:
    assert unknown_task_decision(False) == (False, 0.0)
    assert unknown_task_decision(True) == (True, 0.0)
    assert unknown_task_decision((True, 3)) == (True, 3.0)
    assert unknown_task_decision((True, datetime.timedelta(minutes=2))) == (True, 120.0)
    for bad in (None, 1, "keep", (True,), (True, -1), (True, float("nan")), (1, 2),
                (True, True), (True, "5s")):
        with pytest.raises(ValueError, match="unknown-task hook must return"):
            unknown_task_decision(bad)


def test_unknown_task_hook_needs_the_sublime_dialect() -> None:
    up = Machinery("memory://")
    with pytest.raises(ConfigError, match="wire_dialect='sublime'"):
        up.on_unknown_task(lambda sig: False)
    sub = Machinery("memory://", wire_dialect="sublime")

    @sub.on_unknown_task
    def hook(sig: Signature) -> bool:
        return False

    assert sub._unknown_task_hook is hook and sub.set_unknown_task_handler(None) is None
    assert sub._unknown_task_hook is None
    up.close()
    sub.close()


def test_keep_message_retry() -> None:
    app = Machinery("memory://", wire_dialect="sublime")

    @app.task(name="t", bind=True)
    def t(self: Any) -> None:
        raise self.retry(countdown=7, keep_message=True)

    with pytest.raises(KeepAndRetry) as info:
        t.run(Signature(uuid="u", name="t", retry_count=2), [])
    assert isinstance(info.value, Retry) and info.value.countdown == 7
    assert info.value.keep_message and not info.value.consume
    with pytest.raises(ValueError, match="needs a countdown"):
        t.retry(keep_message=True)
    app.close()
