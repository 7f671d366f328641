"""One scenario's stack and Python app outside the module-wide matrix fixtures: for small
interop tests parametrized by a :class:`StackSpec` of their own (``redis`` or an AMQP broker
with a Redis backend)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from interop.tests.harness import AMQPSettings, Stack, StackSpec
from interop.tests.pyapp import PyApp, make_app

#: the two cells these tests run on: Redis (v2 with go-redis), and an AMQP broker with a
#: Redis backend (v1)
SINGLE_STACK_SPECS = [
    StackSpec("redis", "v2-goredis"),
    pytest.param(StackSpec("amqp+redis", "v1"), marks=pytest.mark.rabbitmq),
]


def single_stack(spec: StackSpec, queue: str, interop_redis: Any, new_db: Callable[[], str],
                 request: pytest.FixtureRequest) -> tuple[Stack, PyApp]:
    """A :class:`Stack` on ``queue`` (Redis: a fresh DB for everything; AMQP: the interop
    RabbitMQ node's traced vhost and a fresh Redis DB for results — on kind ``amqp`` the
    results go to the vhost too — and counters) and a Python
    app on it with no task registered."""
    if spec.kind == "redis":
        url = new_db()
        stack = Stack(spec, url, url, url, queue, interop_redis)
    else:
        rabbit = request.getfixturevalue("interop_rabbitmq")
        rabbit.ensure()
        db = new_db()
        backend = rabbit.url if spec.backend_kind == "amqp" else db  # kind "amqp": both AMQP
        stack = Stack(spec, rabbit.url, backend, db, queue, interop_redis, rabbit.server,
                      rabbit.vhost)
    amqp = AMQPSettings(binding_key=queue).as_config_kwargs() if stack.amqp_broker else None
    py = make_app(stack.broker, queue, only=set(), backend=stack.backend,
                  counters=stack.counters, amqp=amqp)
    return stack, py
