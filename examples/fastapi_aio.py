"""A FastAPI service that enqueues tasks for a Go Machinery worker and streams their results.

Nothing here blocks the event loop: ``app.aio`` sends with redis.asyncio (or aio-pika's
aiormq on AMQP) and polls the Redis result backend with ``asyncio.sleep`` between reads.

Run it (a Go worker with an ``add`` task on the same Redis, e.g. interop/bin/mcworker)::

    pip install 'machinery-compat[aio]' fastapi uvicorn
    MC_BROKER=redis://127.0.0.1:6379/0 python examples/fastapi_aio.py      # port 8000

    curl -X POST 'localhost:8000/add?x=20&y=22'          # {"task_id": "task_…"}
    curl 'localhost:8000/tasks/task_…'                   # {"state": "SUCCESS", "result": 42}
    curl -N 'localhost:8000/tasks/task_…/stream'         # server-sent events, one per state

``MC_BROKER`` / ``MC_BACKEND`` (default: the broker) / ``MC_QUEUE`` (default
``machinery_tasks``) choose where; an ``amqp://`` broker needs a ``redis://`` backend.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from machinery_compat import Machinery, TaskFailed
from machinery_compat.exceptions import ResultTimeout


def machinery_from_env() -> Machinery:
    broker = os.environ.get("MC_BROKER", "redis://127.0.0.1:6379/0")
    return Machinery(broker=broker, result_backend=os.environ.get("MC_BACKEND", broker),
                     default_queue=os.environ.get("MC_QUEUE", "machinery_tasks"))


# -- the service's logic: plain async functions (what the routes call) ---------------------
async def enqueue_add(mc: Machinery, x: int, y: int) -> str:
    """Send Go's ``add(int64...)`` task; its id."""
    result = await mc.aio.send_task("add", args=[x, y])
    return result.id


async def task_status(mc: Machinery, task_id: str) -> dict[str, Any]:
    """The task's state now, with its result or error once it finished."""
    result = mc.aio.AsyncResult(task_id)
    st = await result.task_state()
    return _describe(task_id, st.state if st is not None else "PENDING",
                     await result.get(timeout=0, propagate=False)
                     if st is not None and st.ready else None)


async def state_events(mc: Machinery, task_id: str, timeout: float = 60.0
                       ) -> AsyncIterator[str]:
    """Server-sent events: one per new state, the last with the result (or the error)."""
    result = mc.aio.AsyncResult(task_id)
    try:
        async for st in result.states(timeout=timeout, interval=0.05):
            value = await result.get(timeout=0, propagate=False) if st.ready else None
            yield f"data: {json.dumps(_describe(task_id, st.state, value))}\n\n"
    except ResultTimeout as e:
        yield f"data: {json.dumps({'task_id': task_id, 'timeout': str(e)})}\n\n"


def _describe(task_id: str, state: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"task_id": task_id, "state": state}
    if isinstance(value, TaskFailed):
        out["error"] = value.error
    elif state == "SUCCESS":
        out["result"] = value
    return out


# -- the FastAPI app ------------------------------------------------------------------------
def create_app(mc: Machinery | None = None) -> Any:
    """The FastAPI application (``fastapi`` is only needed here)."""
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse

    machinery = mc if mc is not None else machinery_from_env()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await machinery.aio.close()  # this loop's Redis/AMQP connections

    api = FastAPI(title="Machinery tasks over asyncio", lifespan=lifespan)

    @api.post("/add")
    async def add(x: int, y: int) -> dict[str, str]:
        return {"task_id": await enqueue_add(machinery, x, y)}

    @api.get("/tasks/{task_id}")
    async def status(task_id: str) -> dict[str, Any]:
        return await task_status(machinery, task_id)

    @api.get("/tasks/{task_id}/stream")
    async def stream(task_id: str, timeout: float = 60.0) -> StreamingResponse:
        return StreamingResponse(state_events(machinery, task_id, timeout),
                                 media_type="text/event-stream")

    return api


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(create_app(), host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
