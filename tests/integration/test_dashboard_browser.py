"""The dashboard in a real headless Chromium (selenium, Debian chromium + chromium-driver),
with a Go Machinery worker (interop's ``mcworker``, v2 go-redis) and a Python worker on one
Redis: tasks from both producers (Python ``send_task``, Go ``mcproducer``), a failing task of
each, a dead letter (undecodable bytes the Python worker kept in ``<queue>.dead``).  The
browser must show the queues, the Python worker (not the Go one: it publishes nothing), the
task states, the failed tasks' errors and the dead letter; requeue must take the dead letter
off the list.  Screenshots go to ``build/artifacts/dashboard/`` (git-ignored); with
``DASHBOARD_SCREENSHOT=1`` the overview is also written to ``docs/img/dashboard.png``."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from interop.tests.harness import GoWorker, build_go_programs, run_producer
from machinery_compat import Machinery
from machinery_compat.dashboard import create_app
from machinery_compat.events import EventsConfig
from tests.helpers import wait_for
from tests.services import free_port
from tests.services._base import missing_service

pytestmark = [pytest.mark.interop, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "build" / "artifacts" / "dashboard"
PY_QUEUE = "dash_py"
GO_QUEUE = "dash_go"
UNDECODABLE = b"\xff\x00 not a signature"


def _int(n: int) -> dict[str, Any]:
    return {"type": "int64", "value": n}


@pytest.fixture
def go_bins() -> None:
    ok, message = build_go_programs()
    if not ok:
        missing_service(f"the Go interop programs did not build: {message}")


@pytest.fixture
def dashboard(redis_url: str) -> Iterator[tuple[Machinery, str]]:
    """The Python app (tasks add, boom; a periodic task) and the dashboard serving it on a
    free port (uvicorn in a thread)."""
    app = Machinery(broker=redis_url, default_queue=PY_QUEUE, store_signatures=True)
    app.events_config = EventsConfig(worker_events=True)

    @app.task(name="add")
    def add(*nums: int) -> int:
        return sum(nums)

    @app.task(name="boom")
    def boom(text: str) -> None:
        raise ValueError(text)

    app.periodic("*/15 * * * *", "quarter-hour-report", app.signature("add", args=[1, 1]))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(
        create_app(app, queues=[GO_QUEUE], refresh=0.5), host="127.0.0.1", port=port,
        log_level="warning", timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, name="dashboard", daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 15, "the dashboard to listen")
        yield app, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        app.close()


def _shot(browser: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    browser.save_screenshot(str(path))
    return path


def test_dashboard_in_chromium(go_bins: None, redis_url: str, dashboard: tuple[Machinery, str],
                               browser: Any) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    app, base = dashboard

    def until(check: Callable[[], Any], what: str, timeout: float = 15) -> Any:
        def probe(_: Any) -> Any:
            try:
                return check()
            except StaleElementReferenceException:  # the live part was just replaced
                return None

        try:
            return WebDriverWait(browser, timeout, poll_frequency=0.2,
                                 ignored_exceptions=[StaleElementReferenceException]
                                 ).until(probe)
        except Exception as e:
            _shot(browser, "failure")
            raise AssertionError(f"the browser never showed {what}: {e!r}") from e

    def text(css: str) -> str:
        """The text of the elements ``css`` selects (read again if the live part was
        replaced while reading)."""
        for _ in range(20):
            try:
                return " ".join(el.text for el in browser.find_elements(By.CSS_SELECTOR, css))
            except StaleElementReferenceException:
                continue
        raise AssertionError(f"{css}: replaced 20 times in a row while being read")

    def click(css: str, what: str) -> None:
        """Click the element ``css`` selects (found again if the live part replaced it
        between finding and clicking)."""
        def found_and_clicked() -> bool:
            browser.find_element(By.CSS_SELECTOR, css).click()
            return True

        until(found_and_clicked, what)

    go = GoWorker("v2-goredis", redis_url, GO_QUEUE, concurrency=2).start()
    worker = app.worker(concurrency=2, poll_timeout=0.1).start()
    try:
        ok = app.send_task("add", args=[2, 3])
        bad = app.send_task("boom", args=["python says no"])
        sent = run_producer("v2-goredis", redis_url, [
            {"name": "add", "wait": False, "args": [_int(40), _int(2)]},
            {"name": "fail", "wait": False, "args": [{"type": "string", "value": "go says no"}]},
        ], queue=GO_QUEUE)
        go_ok, go_bad = (s["uuid"] for s in sent)
        app.broker.client.rpush(PY_QUEUE, UNDECODABLE)
        assert ok.get(timeout=20) == 5
        wait_for(lambda: len(go.tasks()) == 2, 20, "Go ran its two tasks")
        wait_for(lambda: app.broker.client.llen(f"{PY_QUEUE}.dead") == 1, 10, "the dead letter")

        browser.get(base + "/")
        row = 'tr.task[data-uuid="{}"] td.{}'.format
        until(lambda: browser.find_elements(By.CSS_SELECTOR, f'tr[data-queue="{GO_QUEUE}"]'),
              "the Go worker's queue")
        until(lambda: text(f'tr[data-queue="{PY_QUEUE}"] td.dead') == "1",
              "one dead letter counted on the Python queue")
        until(lambda: text("#workers tr.worker"), "a live Python worker")
        assert "Go workers are not visible" in text("#workers")
        for uuid, state in ((ok.task_id, "SUCCESS"), (bad.task_id, "FAILURE"),
                            (go_ok, "SUCCESS"), (go_bad, "FAILURE")):
            until(lambda u=uuid, s=state: text(row(u, "state")) == s, f"{uuid} {state}")
        assert text(row(ok.task_id, "args")) == "int64:2, int64:3"
        assert text(row(go_ok, "name")) == "add"
        until(lambda: "python says no" in text(row(bad.task_id, "outcome")), "Python's error")
        until(lambda: "go says no" in text(row(go_bad, "outcome")), "Go's error")
        until(lambda: "undecodable" in text("#dead tr.deadletter"), "the dead letter")
        until(lambda: browser.find_elements(By.CSS_SELECTOR, "#throughput rect.failed"),
              "a failure in the throughput chart")
        assert "quarter-hour-report" in text("#periodic")
        overview = _shot(browser, "overview")
        if os.environ.get("DASHBOARD_SCREENSHOT") == "1":
            shutil.copyfile(overview, ROOT / "docs" / "img" / "dashboard.png")

        click(f'tr.task[data-uuid="{go_bad}"] a', "the failed Go task's link")
        until(lambda: text("#task-state") == "FAILURE", "the Go task's page")
        assert text("#task-error") == "go says no" and text("#task-name") == "fail"
        _shot(browser, "task")
        browser.back()
    finally:
        worker.stop(timeout=10)  # a requeued message must stay queued, not be taken again
        go.stop()
    until(lambda: "No live Python worker" in text("#workers"), "the worker gone", 20)
    click("#dead button.requeue", "the requeue button")
    until(lambda: "1 message(s) requeued to dash_py" in text("#flash"), "the requeue done")
    until(lambda: "No dead letters" in text("#dead"), "the dead-letter list empty")
    assert text(f'tr[data-queue="{PY_QUEUE}"] td.depth') == "1"
    assert app.broker.client.lrange(PY_QUEUE, 0, -1) == [UNDECODABLE]
    _shot(browser, "requeued")
