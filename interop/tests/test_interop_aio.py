"""``app.aio`` (the asyncio API) to a real Go Machinery worker: three cells, Redis (v2 with
go-redis), AMQP + Redis backend (v1) and AMQP broker + AMQP backend (v1).  The Go worker runs what ``await
app.aio.send_task(...)`` / ``apply_async`` sent (a task, a group, a chain, a chord with
Go's own callback) and Python awaits the results Go wrote."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable
from typing import Any

import pytest

from interop.tests.harness import Stack, StackSpec
from interop.tests.pyapp import make_app
from interop.tests.single_stack import SINGLE_STACK_SPECS, single_stack
from machinery_compat.canvas import chord, group

pytestmark = [pytest.mark.interop, pytest.mark.redis]

_serial = itertools.count(1)


#: the single-stack cells and AMQP for both broker and result backend (v1; the result
#: backend's per-task queues are read by app.aio's consuming reads)
AIO_SPECS = [*SINGLE_STACK_SPECS,
             pytest.param(StackSpec("amqp", "v1"), marks=pytest.mark.rabbitmq)]


@pytest.mark.parametrize("spec", AIO_SPECS, ids=lambda s: s.id)
def test_go_worker_runs_what_app_aio_sent(spec: StackSpec, go_bins: Any, interop_redis: Any,
                                          new_db: Callable[[], str],
                                          request: pytest.FixtureRequest) -> None:
    queue = f"q_aio_{spec.id.replace('+', '_')}_{next(_serial)}"
    stack, py = single_stack(spec, queue, interop_redis, new_db, request)
    app = py.app
    add = app.signature("add")
    go = stack.go_worker().start()
    try:
        async def main() -> tuple[Any, ...]:
            async with app.aio:
                one = await app.aio.send_task("add", args=[20, 22])
                g = await app.aio.apply_async(group(add.clone([1, 1]), add.clone([2, 2])))
                c = await app.aio.apply_async(add.clone([1, 2]) | add.clone([10]))
                ch = await app.aio.apply_async(chord([add.clone([1]), add.clone([2])],
                                                     add.clone([100])))
                states = [st.state async for st in (await app.aio.send_task(
                    "add", args=[1])).states(timeout=30)]
                return (await one.get(timeout=30), await g.get(timeout=30),
                        await c.get(timeout=30), await ch.get(timeout=30), states)

        one, g, c, ch, states = asyncio.run(main())
        assert (one, g, c, ch) == (42, [2, 4], 13, 103)
        assert states[-1] == "SUCCESS"
        assert {e["name"] for e in go.tasks()} == {"add"}
        assert len(go.tasks()) >= 1 + 2 + 2 + 3 + 1  # every one ran on Go
    finally:
        go.stop()
        py.close()



def test_fastapi_example_streams_a_go_result(go_bins: Any, interop_redis: Any,
                                             new_db: Callable[[], str]) -> None:
    """examples/fastapi_aio.py through fastapi.testclient: POST /add enqueues for a Go
    worker (v2, go-redis), /tasks/<id>/stream streams its states to SUCCESS with 42, a Go
    failure comes back as its error text."""
    pytest.importorskip("fastapi.testclient", reason="needs fastapi and httpx (extra dev)")
    from fastapi.testclient import TestClient

    example = _load_example()
    url = new_db()
    queue = f"q_aio_fastapi_{next(_serial)}"
    stack = Stack(StackSpec("redis", "v2-goredis"), url, url, url, queue, interop_redis)
    py = make_app(url, queue, only=set())
    go = stack.go_worker().start()
    try:
        with TestClient(example.create_app(py.app)) as client:
            task_id = client.post("/add", params={"x": 20, "y": 22}).json()["task_id"]
            with client.stream("GET", f"/tasks/{task_id}/stream",
                               params={"timeout": 30}) as resp:
                events = [json.loads(line[len("data: "):]) for line in resp.iter_lines()
                          if line.startswith("data: ")]
            assert events[0]["state"] in ("PENDING", "RECEIVED", "STARTED", "SUCCESS")
            assert events[-1] == {"task_id": task_id, "state": "SUCCESS", "result": 42}
            assert client.get(f"/tasks/{task_id}").json()["result"] == 42
            failing = asyncio.run(_send_and_close(py.app, "fail"))
            stream = client.get(f"/tasks/{failing}/stream", params={"timeout": 30}).text
            assert '"state": "FAILURE"' in stream and '"error": ' in stream
        assert go.tasks(uuid=task_id)
    finally:
        go.stop()
        py.close()


async def _send_and_close(app: Any, name: str) -> str:
    async with app.aio:
        return (await app.aio.send_task(name, args=["boom"])).id


def _load_example() -> Any:
    import importlib.util

    from interop.tests.harness import REPO

    spec = importlib.util.spec_from_file_location("fastapi_aio", REPO / "examples" /
                                                  "fastapi_aio.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
