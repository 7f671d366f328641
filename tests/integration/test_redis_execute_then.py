"""``FastPath.execute_then`` when Redis lost the piggyback script (a restart, ``SCRIPT
FLUSH``): the commands behind the failed call ran, and their real replies come back, so the
worker does not write the next task's RECEIVED/STARTED a second time (seen as
PENDING, RECEIVED, STARTED, RECEIVED, STARTED, SUCCESS in the interop echo test)."""

from __future__ import annotations

import redis

from machinery_compat._redis import FastPath


def test_after_commands_run_once_and_report_their_replies(redis_url: str,
                                                          redis_client: redis.Redis) -> None:
    fast = FastPath(redis.Redis.from_url(redis_url))
    redis_client.script_flush()
    with fast.piggyback(("SET", "piggybacked", "1")) as pb:
        first, after = fast.execute_then([("SET", "first", "1")], [("INCR", "after")])
    assert after == [1]  # the INCR's own reply, not the script error of the first call
    assert redis_client.get("after") == b"1"  # it ran once
    assert first == [b"OK"]
    assert pb.replies == [b"OK"]
    assert redis_client.get("first") == b"1" and redis_client.get("piggybacked") == b"1"
