"""The asyncio API: send Machinery tasks and await their results without blocking the loop.

.. code-block:: python

    from machinery_compat import Machinery

    app = Machinery(broker="redis://127.0.0.1:6379/0")     # or amqp://… (Redis/AMQP results)

    async def handler() -> int:
        result = await app.aio.send_task("add", args=[1, 2])   # a Go or Python worker runs it
        return await result.get(timeout=10)

    await app.aio.apply_async(add.s(1, 1) | add.s(5))          # chains, groups, chords
    await app.aio.close()                                      # this loop's connections

Same messages as the sync API, byte for byte (see :mod:`machinery_compat.aio.app`); Redis on
``redis.asyncio`` (extra ``redis``; a single server or Sentinel), AMQP on aio-pika's core aiormq
(extra ``aio``); the result backend is Redis or AMQP (Go's per-task state queues, consuming
reads).  Details and limits: ``docs/asyncio.md``.
"""

from .app import AsyncMachinery
from .result import AioChainResult, AioChordResult, AioGroupResult, AioResult

__all__ = ["AioChainResult", "AioChordResult", "AioGroupResult", "AioResult", "AsyncMachinery"]
