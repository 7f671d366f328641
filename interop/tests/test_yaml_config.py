"""One YAML file, loaded by Go Machinery (v1 and v2 ``config.NewFromYaml``) and by
machinery_compat (``Machinery.from_yaml``): both workers consume the same AMQP queue.

The file is examples/machinery.yml, which README.md shows verbatim (checked here too);
only its host:port is pointed at the test node.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from machinery_compat import Machinery

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "machinery.yml"


def test_readme_shows_the_example_file() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "```yaml\n" + EXAMPLE.read_text() + "```" in readme


@pytest.fixture
def config_file(interop_rabbitmq: Any, tmp_path: Path) -> Path:
    server = interop_rabbitmq.server
    url = server.url_for(server.new_vhost())
    text = EXAMPLE.read_text().replace("amqp://guest:guest@localhost:5672/", url)
    assert text.count(url) == 2
    path = tmp_path / "machinery.yml"
    path.write_text(text)
    return path


@pytest.fixture(params=["v1", "v2"])
def go_worker(request: pytest.FixtureRequest, go_bins: Path, config_file: Path,
              tmp_path: Path) -> Iterator[str]:
    flavour = request.param
    log = tmp_path / f"yamlworker-{flavour}.log"
    with log.open("w") as err:
        proc = subprocess.Popen([str(go_bins / "yamlworker"), "-config", str(config_file),
                                 "-flavour", flavour], stdout=subprocess.PIPE, stderr=err,
                                text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line == "ready", (line, log.read_text())
        yield flavour
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        assert proc.returncode in (0, -15), log.read_text()


@pytest.mark.interop
def test_go_and_python_workers_share_one_yaml_file(go_worker: str, config_file: Path) -> None:
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
        go = [app.send_task("go_who") for _ in range(3)]
        py = [app.send_task("py_who") for _ in range(3)]
        sums = [app.send_task("add", args=[i, 1], priority=i % 10) for i in range(20)]
        assert [r.get(timeout=30) for r in go] == [f"go-{go_worker}"] * 3
        assert [r.get(timeout=30) for r in py] == ["python"] * 3
        assert [r.get(timeout=30) for r in sums] == [i + 1 for i in range(20)]
    finally:
        worker.stop()
        app.close()
