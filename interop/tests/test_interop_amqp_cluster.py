"""A RabbitMQ cluster node dies under a Go and a Python worker sharing one quorum queue.

Three RabbitMQ nodes on this machine (``tests/services/rabbitmq_cluster_svc.py``).  One YAML
file, as a user would write it, lists the three nodes' URLs joined by
``multiple_broker_separator`` and declares the queue as a quorum queue
(``queue_declare_args: {x-queue-type: quorum}``); Go Machinery (``yamlworker``, v1 and v2,
``config.NewFromYaml``) and machinery_compat (``Machinery.from_yaml``) load it.  2,000 tasks
are queued, and while both workers drain them the node they are connected to (the first URL)
is killed with SIGKILL.  Every task must end with its result stored (none lost; at-least-once,
so a task whose ack died with the node may run twice), and neither worker may exit: both
reconnect to the next URL by themselves and keep consuming.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from interop.tests.harness import yamlworker
from machinery_compat import Machinery
from tests.services.rabbitmq_cluster_svc import RabbitMQCluster

N_TASKS = 2000
#: each task sleeps this long (ms), so that 8 workers' threads take ~6 s for all of them
TASK_MS = 25
#: killed once this many results are stored
KILL_AFTER = 300


def _config(cluster: RabbitMQCluster, vhost: str, backend: str, queue: str) -> str:
    return "\n".join([
        f"broker: {cluster.url(vhost, separator='|')}",
        "multiple_broker_separator: '|'",
        f"result_backend: {backend}",
        f"default_queue: {queue}",
        "results_expire_in: 3600",
        "amqp:",
        f"  exchange: {queue}_exchange",
        "  exchange_type: direct",
        f"  binding_key: {queue}",
        "  prefetch_count: 8",
        "  queue_declare_args:",
        "    x-queue-type: quorum",
        "",
    ])


@pytest.fixture(params=["v1", "v2"])
def flavour(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def config_file(rabbitmq_cluster: RabbitMQCluster, new_db: Callable[[], str], tmp_path: Path,
                flavour: str) -> Iterator[Path]:
    for node in rabbitmq_cluster.nodes:  # a node a previous test killed rejoins
        node.start()
    rabbitmq_cluster.wait_running(len(rabbitmq_cluster.nodes))
    path = tmp_path / "machinery.yml"
    path.write_text(_config(rabbitmq_cluster, rabbitmq_cluster.new_vhost(), new_db(),
                            f"cluster_{flavour}"))
    yield path
    for node in rabbitmq_cluster.nodes:
        node.start()


def _stored(app: Machinery, ids: list[str]) -> int:
    """How many of ``ids`` have a SUCCESS state stored (one MGET)."""
    raw = app.backend.client.mget(ids)  # type: ignore[attr-defined]
    return sum(1 for v in raw if v is not None and b'"State":"SUCCESS"' in v)


def _py_connection_nodes(cluster: RabbitMQCluster) -> set[str]:
    """The nodes holding a py-amqp client connection."""
    nodes = set()
    for n in cluster.nodes:
        if not n.running:
            continue
        rows = json.loads(n.ctl("list_connections", "--formatter", "json",
                                "client_properties") or "[]")
        for row in rows:
            props = {p[0]: p[2] for p in row.get("client_properties", [])}
            if "py-amqp" in str(props.get("product", "")):
                nodes.add(n.node)
    return nodes


@pytest.mark.interop
def test_node_killed_under_go_and_python_workers_loses_nothing(
        rabbitmq_cluster: RabbitMQCluster, config_file: Path, go_bins: Path, flavour: str,
        tmp_path: Path) -> None:
    app = Machinery.from_yaml(str(config_file))

    @app.task(name="sleep_ms")
    def sleep_ms(ms: int) -> int:
        time.sleep(ms / 1000)
        return ms

    @app.task(name="py_who")
    def py_who() -> str:
        return "python"

    first = rabbitmq_cluster.nodes[0]
    log = tmp_path / f"yamlworker-{flavour}.log"
    # queued before the workers start, so that the node dies in the middle of the drain
    results = [app.send_task("sleep_ms", args=[TASK_MS]) for _ in range(N_TASKS)]
    ids = [r.id for r in results]
    with yamlworker(config_file, flavour, log, concurrency=4, go_bins=go_bins) as go_worker:
        worker = app.worker(concurrency=4).start()
        try:
            # (rabbitmqctl takes a second or two: asked before the drain is far along)
            assert first.node in _py_connection_nodes(rabbitmq_cluster)
            deadline = time.monotonic() + 120
            while _stored(app, ids) < KILL_AFTER:
                assert time.monotonic() < deadline, "the workers did not start draining"
                time.sleep(0.02)
            before = _stored(app, ids)
            first.kill()
            killed_at = time.monotonic()
            values = [r.get(timeout=180) for r in results]
            took = time.monotonic() - killed_at
            assert values == [TASK_MS] * N_TASKS
            assert go_worker.poll() is None, f"the Go worker exited:\n{log.read_text()[-3000:]}"
            assert all(t.is_alive() for t in worker._threads), "a Python worker thread exited"
            # both still consume after the failover, from a surviving node
            go = [app.send_task("go_who") for _ in range(3)]
            py = [app.send_task("py_who") for _ in range(3)]
            assert [r.get(timeout=60) for r in go] == [f"go-{flavour}"] * 3
            assert [r.get(timeout=60) for r in py] == ["python"] * 3
            assert first.node not in _py_connection_nodes(rabbitmq_cluster)
            print(f"{flavour}: killed {first.node} after {before}/{N_TASKS} results; the rest "
                  f"stored {took:.1f} s later")
        finally:
            worker.stop()
            app.close()


def test_config_lists_every_node(rabbitmq_cluster: Any) -> None:
    """The YAML file names all three nodes, in order, with the separator Go splits on."""
    text = _config(rabbitmq_cluster, "v", "redis://x/0", "q")
    broker = text.splitlines()[0].removeprefix("broker: ")
    assert broker.split("|") == [n.url_for("v") for n in rabbitmq_cluster.nodes]
