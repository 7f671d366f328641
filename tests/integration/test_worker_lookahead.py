"""The worker's look-ahead on Redis (machinery_compat/worker/lookahead.py): a pool thread
writing a task's SUCCESS takes the next waiting message and writes its RECEIVED/STARTED in the
same round trip.  Real Redis; one pool thread and a prefetch of 2, so that a message waits
behind every task.

* every task still sees itself STARTED while it runs, and ends SUCCESS with the TaskName and
  CreatedAt of its PENDING state (the merge token of the piggybacked write is right);
* most tasks were started ahead (the path is taken), and the processing list is empty;
* messages that may not start ahead (undecodable, not registered, expired) interleaved with
  the others end where they always do (dead-lettered, handed back, FAILURE).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import redis

from machinery_compat import Machinery
from tests.helpers import wait_for

N = 40


def _state(client: redis.Redis, task_id: str) -> dict[str, Any]:
    raw = client.get(task_id)
    return json.loads(raw) if raw else {}


def test_lookahead_states_and_outcomes(redis_url: str, redis_client: redis.Redis) -> None:
    queue = f"ahead_{uuid.uuid4().hex[:8]}"
    app = Machinery(broker=redis_url, result_backend=redis_url, default_queue=queue)
    seen: dict[str, str] = {}

    @app.task(name="look", bind=True)
    def look(self: Any, n: int) -> int:
        seen[self.request.id] = _state(redis_client, self.request.id).get("State", "-")
        time.sleep(0.002)
        return n

    ids = [app.send_task("look", args=[i]).id for i in range(N)]
    # interleaved: undecodable, unregistered (handed back), expired (FAILURE, not run)
    redis_client.rpush(queue, b"{not json")
    other = app.send_task("nobody_has_it", args=[1]).id
    expired = app.send_task("look", args=[-1], expires=0.001).id
    ids2 = [app.send_task("look", args=[i]).id for i in range(N, 2 * N)]
    pending = {i: _state(redis_client, i) for i in ids + ids2}
    time.sleep(0.01)

    # one thread, two messages taken at a time: one waits behind every running task
    worker = app.worker(concurrency=1, prefetch=2, crash_safe=True)
    with worker:
        wait_for(lambda: all(_state(redis_client, i).get("State") == "SUCCESS"
                               for i in ids + ids2), 30, "all tasks SUCCESS")
        wait_for(lambda: _state(redis_client, expired).get("State") == "FAILURE", 10,
                   "the expired task FAILURE")
        wait_for(lambda: worker.outcomes["dead_lettered"] == 1, 10, "the bad message dead")
    try:
        for i in ids + ids2:
            final = _state(redis_client, i)
            assert seen[i] == "STARTED", (i, seen[i])
            assert final["TaskName"] == "look" == pending[i]["TaskName"]
            assert final["CreatedAt"] == pending[i]["CreatedAt"]
            assert final["Results"] == [{"Type": "int64", "Value": final["Results"][0]["Value"]}]
        assert expired not in seen
        assert worker.started_ahead >= N, worker.started_ahead  # the look-ahead path ran
        # (counted after the stored state these reads saw)
        wait_for(lambda: worker.outcomes["run"] == 2 * N + 1, 10, "every run counted")
        assert worker.outcomes["handed_back"] >= 1
        assert redis_client.llen(f"{queue}.dead") == 1
        assert other not in seen
        assert not [k for k in redis_client.scan_iter("machinery_compat:processing:*")
                    if redis_client.llen(k)]
    finally:
        app.close()
