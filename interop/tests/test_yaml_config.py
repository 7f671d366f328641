"""One YAML file, loaded by Go Machinery (v1 and v2 ``config.NewFromYaml``) and by
machinery_compat (``Machinery.from_yaml``): both workers consume the same AMQP queue.

The file is examples/machinery.yml, which README.md shows verbatim (checked here too);
only its host:port is pointed at the test node.  Variants of it cover the other exchange
types (fanout; topic; headers with ``queue_binding_args``) and several broker URLs joined
with ``multiple_broker_separator`` (the first one dead), each declared by both workers
without ``PRECONDITION_FAILED`` and routing the Python producer's tasks to both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from interop.tests.harness import yamlworker
from machinery_compat import Machinery
from machinery_compat.exceptions import ResultTimeout
from tests.services import free_port

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "machinery.yml"


def test_readme_shows_the_example_file() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "```yaml\n" + EXAMPLE.read_text() + "```" in readme


#: variant -> (replacements in the example file, headers every task carries).  The non-direct
#: exchanges use a Redis result backend: Machinery's AMQP backend publishes every state through
#: the same exchange, which a fanout or headers exchange would deliver to every task's queue.
REDIS_RESULTS = {"result_backend: URL": "result_backend: REDIS"}
VARIANTS: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "example": ({}, {}),
    "fanout": ({**REDIS_RESULTS, "exchange_type: direct": "exchange_type: fanout",
                "exchange: machinery_exchange": "exchange: yaml_fanout"}, {}),
    # a topic exchange routes by pattern: tasks go to the default queue's name
    "topic+urls": ({**REDIS_RESULTS, "exchange_type: direct": "exchange_type: topic",
                    "exchange: machinery_exchange": "exchange: yaml_topic",
                    "default_queue: machinery_tasks": "default_queue: machinery.tasks",
                    "binding_key: machinery_task": "binding_key: machinery.#",
                    "broker: URL": "broker: DEAD|URL\nmultiple_broker_separator: '|'"}, {}),
    "headers": ({**REDIS_RESULTS, "exchange_type: direct": "exchange_type: headers",
                 "exchange: machinery_exchange": "exchange: yaml_headers",
                 "  prefetch_count: 3": "  prefetch_count: 3\n  queue_binding_args:\n"
                                        "    x-match: any\n    lang: polyglot"},
                {"lang": "polyglot"}),
}


@pytest.fixture(params=list(VARIANTS))
def variant(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def config_file(interop_rabbitmq: Any, new_db: Callable[[], str], tmp_path: Path,
                variant: str) -> Path:
    server = interop_rabbitmq.server
    url = server.url_for(server.new_vhost())
    text = EXAMPLE.read_text().replace("amqp://guest:guest@localhost:5672/", "URL")
    for old, new in VARIANTS[variant][0].items():
        assert old in text, old
        text = text.replace(old, new)
    dead = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    text = text.replace("DEAD", dead).replace("REDIS", new_db()).replace("URL", url)
    path = tmp_path / "machinery.yml"
    path.write_text(text)
    return path


@pytest.fixture(params=["v1", "v2"])
def go_worker(request: pytest.FixtureRequest, go_bins: Path, config_file: Path,
              tmp_path: Path) -> Iterator[str]:
    flavour = request.param
    log = tmp_path / f"yamlworker-{flavour}.log"
    with yamlworker(config_file, flavour, log, go_bins=go_bins) as proc:
        yield flavour
    assert proc.returncode in (0, -15), log.read_text()


@pytest.mark.interop
def test_go_and_python_workers_share_one_yaml_file(go_worker: str, config_file: Path,
                                                   variant: str, tmp_path: Path) -> None:
    headers = VARIANTS[variant][1]
    app = Machinery.from_yaml(str(config_file))
    assert app.config.amqp is not None and app.config.amqp.prefetch_count == 3

    @app.task(name="add")
    def add(*nums: int) -> int:
        return sum(nums)

    @app.task(name="py_who")
    def py_who() -> str:
        return "python"

    worker = app.worker(concurrency=2).start()
    try:
        go = [app.send_task("go_who", headers=headers) for _ in range(3)]
        py = [app.send_task("py_who", headers=headers) for _ in range(3)]
        sums = [app.send_task("add", args=[i, 1], priority=i % 10, headers=headers)
                for i in range(20)]
        try:  # 60 s: once in CI (two pytest processes, two cores) 30 s were not enough
            assert [r.get(timeout=60) for r in go] == [f"go-{go_worker}"] * 3
            assert [r.get(timeout=60) for r in py] == ["python"] * 3
            assert [r.get(timeout=60) for r in sums] == [i + 1 for i in range(20)]
        except ResultTimeout as e:  # say where the messages were
            log = tmp_path / f"yamlworker-{go_worker}.log"
            try:
                pending: object = [r.task_id for r in (*go, *py, *sums) if not r.ready()]
            except Exception as read_error:  # a diagnostic only
                pending = read_error
            raise AssertionError(f"{e}; not done: {pending}; Python worker outcomes "
                                 f"{dict(worker.outcomes)}; Go log tail:\n"
                                 f"{log.read_text()[-4000:]}") from e
    finally:
        worker.stop()
        app.close()
