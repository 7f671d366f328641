"""A three-node RabbitMQ cluster on this machine, for failover tests.

Three private nodes (:class:`~tests.services.rabbitmq_svc.RabbitMQServer`: own node names,
AMQP and distribution ports, data dirs) share one epmd and one Erlang cookie; the second and
third join the first (``rabbitmqctl join_cluster``).  Queues that must survive a node are
declared as quorum queues (``x-queue-type: quorum``), as users do with Machinery's
``amqp.queue_declare_args``.  :meth:`RabbitMQCluster.url` joins the nodes' URLs with a
separator, Machinery's ``multiple_broker_separator`` form.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from ._base import ServiceError, _session_service, start_or_report

if TYPE_CHECKING:  # imported where used: every module here is a pytest plugin, and a plugin
    # imported by another before pytest registers it could not have its asserts rewritten
    from .rabbitmq_svc import RabbitMQServer

#: joins the nodes' URLs in :meth:`RabbitMQCluster.url` (Machinery's multiple_broker_separator)
SEPARATOR = ","


class RabbitMQCluster:
    """Three RabbitMQ nodes clustered together (``nodes[0]`` is the one the others join)."""

    def __init__(self, size: int = 3) -> None:
        from .rabbitmq_svc import RabbitMQServer

        cookie = secrets.token_hex(16).upper()
        first = RabbitMQServer(cookie=cookie)
        self.nodes = [first]
        self._size = size
        self._cookie = cookie

    def start(self) -> RabbitMQCluster:
        from .rabbitmq_svc import RabbitMQServer

        first = self.nodes[0]
        first.start()
        while len(self.nodes) < self._size:
            node = RabbitMQServer(cookie=self._cookie, epmd_port=first.epmd_port)
            self.nodes.append(node)
            node.start()
            node.ctl("stop_app")
            node.ctl("join_cluster", first.node)
            node.ctl("start_app")
        self.wait_running(self._size)
        return self

    def running_nodes(self, via: RabbitMQServer | None = None) -> list[str]:
        """The cluster's running nodes as ``via`` (default: the first running node) sees
        them."""
        import json

        node = via or next(n for n in self.nodes if n.running)
        status = json.loads(node.ctl("cluster_status", "--formatter", "json"))
        return sorted(status.get("running_nodes", []))

    def wait_running(self, count: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while time.monotonic() < deadline:
            try:
                seen = self.running_nodes()
            except ServiceError:
                seen = []
            if len(seen) == count:
                return
            time.sleep(0.5)
        raise ServiceError(f"RabbitMQ cluster: {count} running nodes wanted, saw {seen}")

    def url(self, vhost: str = "/", separator: str = SEPARATOR) -> str:
        """Every node's URL of ``vhost``, joined by ``separator``, in node order."""
        return separator.join(n.url_for(vhost) for n in self.nodes)

    def new_vhost(self) -> str:
        """A fresh vhost (cluster-wide: vhosts and permissions are replicated)."""
        return next(n for n in self.nodes if n.running).new_vhost()

    def connection_nodes(self) -> dict[str, str]:
        """Which node each client connection is on: ``{connection name: node}``."""
        import json

        out: dict[str, str] = {}
        for n in self.nodes:
            if n.running:
                rows = json.loads(n.ctl("list_connections", "--formatter", "json", "name",
                                        "client_properties") or "[]")
                for row in rows:
                    out[str(row["name"])] = n.node
        return out

    def close(self) -> None:
        for n in reversed(self.nodes):  # the first node owns the shared epmd: last
            n.close()

    def __repr__(self) -> str:
        return f"<RabbitMQCluster {[n.node for n in self.nodes if n._port]}>"


@pytest.fixture(scope="session")
def rabbitmq_cluster() -> Iterator[RabbitMQCluster]:
    """A three-node RabbitMQ cluster for the session (~30 s to form).  Tests that kill a node
    start it again (``node.start()``: same ports and data, it rejoins)."""
    cluster = start_or_report(RabbitMQCluster)
    with _session_service("rabbitmq_cluster", cluster):  # type: ignore[type-var]
        yield cluster


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test using ``rabbitmq_cluster`` ``rabbitmq``."""
    for item in items:
        if "rabbitmq_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.rabbitmq)
