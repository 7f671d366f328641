"""A Celery app whose workers also run Machinery (Go-sent) tasks: the Celery bridge.

Configuration: Machinery's environment variables for the Machinery side (``BROKER``,
``RESULT_BACKEND``, ``DEFAULT_QUEUE`` = the queue the bridge consumes, ``AMQP_EXCHANGE``,
``AMQP_BINDING_KEY`` … as a Go worker reads them), ``CELERY_BROKER_URL`` /
``CELERY_RESULT_BACKEND`` for Celery's own, ``GO_QUEUE`` for the queue Go workers consume.

Run the Celery worker (prefork, threads or solo pool)::

    export BROKER=redis://127.0.0.1:6379/0 DEFAULT_QUEUE=bridge_tasks GO_QUEUE=machinery_tasks
    export CELERY_BROKER_URL=redis://127.0.0.1:6379/1
    celery --workdir examples -A celery_bridge worker -c 4

then, from anywhere (a Go producer sends the same bytes)::

    python examples/celery_bridge.py add 20 22      # Machinery "add" -> Celery bridge.add
    python examples/celery_bridge.py relay 20 22    # a Celery task calling Go's "add"
    python examples/celery_bridge.py chain 5        # Celery chain: double(5) -> Go add(1, 10)
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from celery import Celery, chain

from machinery_compat import Machinery
from machinery_compat.celery import go_task, install, machinery_send

celery_app = Celery(
    "celery_bridge",
    broker=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/1"),
    backend=os.environ.get("CELERY_RESULT_BACKEND", os.environ.get("CELERY_BROKER_URL",
                                                                   "redis://127.0.0.1:6379/1")),
)
celery_app.conf.broker_connection_retry_on_startup = True
GO_QUEUE = os.environ.get("GO_QUEUE", "machinery_tasks")


@celery_app.task(name="bridge.add")
def add(*nums: int) -> int:
    """Machinery's ``add``, in Celery: the Go side reads an int64."""
    return sum(nums)


@celery_app.task(name="bridge.fail")
def fail(message: str) -> None:
    """Fails: the Go side reads FAILURE with the error text ``message``."""
    raise ValueError(message)


@celery_app.task(name="bridge.flaky", bind=True)
def flaky(self: Any, word: str) -> str:
    """Fails its first run; Machinery retries it (the message's RetryCount), then it returns
    its Machinery task id and how many times it was retried."""
    if self.request.retries == 0:
        raise RuntimeError(f"{word}: first attempt fails")
    return f"{word} {self.request.id} {self.request.retries}"


@celery_app.task(name="bridge.slow", time_limit=2)
def slow(seconds: float) -> float:
    """Sleeps: past its 2 s hard time limit (prefork pool) it fails with "Hard time limit
    (2s) exceeded"."""
    time.sleep(seconds)
    return seconds


@celery_app.task(name="bridge.relay_add")
def relay_add(x: int, y: int) -> int:
    """A Celery task calling a Go task: Go's ``add`` on ``GO_QUEUE``, its result returned."""
    result: int = machinery_send(celery_app, "add", [x, y], routing_key=GO_QUEUE).get(timeout=30)
    return result


@celery_app.task(name="bridge.double")
def double(x: int) -> int:
    """A plain Celery task (the first step of the chain below)."""
    return 2 * x


# The one setting: the Machinery queue DEFAULT_QUEUE, its messages run these Celery tasks.
machinery = Machinery.from_env()
install(celery_app, machinery, tasks={"add": "bridge.add", "fail": "bridge.fail",
                                      "flaky": "bridge.flaky", "relay_add": "bridge.relay_add",
                                      "slow": "bridge.slow"},
        worker_options={"poll_timeout": float(os.environ.get("BRIDGE_POLL_TIMEOUT", "1"))})


def go_chain(x: int) -> Any:
    """A Celery workflow with a Go step: double(x) on Celery, then Go's add(1, 2x)."""
    return chain(double.s(x), go_task(celery_app, "add", 1, routing_key=GO_QUEUE))


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("add", "relay", "chain"):
        print(__doc__)
        return 2
    numbers = [int(a) for a in argv[1:]]
    if argv[0] == "chain":
        print(go_chain(numbers[0]).apply_async().get(timeout=60))
        return 0
    name = "add" if argv[0] == "add" else "relay_add"
    print(machinery.send_task(name, numbers).get(timeout=60))  # the bridge runs it
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
