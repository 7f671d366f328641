"""The web dashboard (``machinery_compat.dashboard``) through Starlette's TestClient, over a
real Redis (broker and results) with a real Python worker: the pages, the JSON and
server-sent-event endpoints, CSRF and basic-auth refusals, the requeue and purge effects,
and ``machinery-compat dashboard`` as a subprocess.  The browser test is
``test_dashboard_browser.py``."""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from starlette.testclient import TestClient

from machinery_compat import Machinery, chord
from machinery_compat.dashboard import create_app
from machinery_compat.events import EventsConfig
from tests.helpers import wait_for
from tests.services import free_port

#: the app ``machinery-compat dashboard -A tests.integration.test_dashboard:cli_app`` loads
cli_app = Machinery(broker=os.environ.get("MC_TEST_DASHBOARD_BROKER", "redis://127.0.0.1:1/0"))

UNDECODABLE = b"\xff\x00 not a signature"
_serial = itertools.count(1)


@dataclass
class Scene:
    app: Machinery
    queue: str
    ok: str
    bad: str
    chord_member: str
    client: Any

    def overview(self) -> dict[str, Any]:
        r = self.client.get("/api/overview")
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    def queue_row(self) -> dict[str, Any]:
        return next(q for q in self.overview()["queues"] if q["queue"] == self.queue)

    def csrf(self) -> str:
        m = re.search(r'name="csrf" value="([^"]+)"', self.client.get("/").text)
        assert m, "no CSRF token in the page"
        return m.group(1)


def _app(url: str, queue: str) -> Machinery:
    app = Machinery(broker=url, default_queue=queue, store_signatures=True)
    app.events_config = EventsConfig(worker_events=True)

    @app.task(name="add")
    def add(*nums: int) -> int:
        return sum(nums)

    @app.task(name="boom")
    def boom(text: str) -> None:
        raise ValueError(f"kaput: {text}")

    @app.task(name="total")
    def total(*nums: int) -> int:
        return sum(nums)

    app.periodic("@every 1h", "hourly-add", app.signature("add", args=[1, 1]))
    return app


@pytest.fixture
def scene(redis_url: str) -> Iterator[Scene]:
    """A worker ran add(2, 3), boom('x') and a chord, and dead-lettered undecodable bytes;
    it is stopped (so a requeued message stays queued) unless the test restarts one."""
    queue = f"dash_{next(_serial)}"
    app = _app(redis_url, queue)
    worker = app.worker(concurrency=2, poll_timeout=0.1).start()
    try:
        ok = app.send_task("add", args=[2, 3])
        bad = app.send_task("boom", args=["x"])
        add = app.signature("add", args=[1, 2])
        ch = chord([add, app.signature("add", args=[3, 4])], app.signature("total")).apply_async()
        assert ok.get(timeout=15) == 5
        with pytest.raises(Exception, match="kaput"):
            bad.get(timeout=15)
        assert ch.get(timeout=15) == 10
        app.broker.client.rpush(queue, UNDECODABLE)
        wait_for(lambda: app.broker.client.llen(f"{queue}.dead") == 1, 10, "the dead letter")
    finally:
        worker.stop(timeout=10)
    app.close()  # the last events are written
    with TestClient(create_app(app, queues=["go_only_queue"], refresh=0.2)) as client:
        yield Scene(app, queue, ok.task_id, bad.task_id,
                    ch.results[0].task_id, client)
    app.close()


def test_index_shows_queues_tasks_dead_letters_charts_and_schedule(scene: Scene) -> None:
    r = scene.client.get("/")
    assert r.status_code == 200
    page = r.text
    assert f'data-queue="{scene.queue}"' in page and "go_only_queue" in page
    assert "Go workers" in page and "not visible" in page
    assert scene.ok[:18] in page and "SUCCESS" in page
    assert "FAILURE" in page and "kaput: x" in page
    assert "int64:2, int64:3" in page  # args, from the stored signature
    assert "undecodable" in page and 'action="/dead/requeue"' in page
    assert "hourly-add" in page and "@every 1h" in page
    assert page.count("<svg") == 2 and 'class="failed"' in page and 'class="ok"' in page
    # served with its script and styles, and the protective headers
    assert r.headers["x-frame-options"] == "DENY"
    assert "script-src 'self'" in r.headers["content-security-policy"]
    js = scene.client.get("/static/dashboard.js")
    assert js.status_code == 200 and "EventSource" in js.text
    assert scene.client.get("/static/dashboard.css").status_code == 200


def test_api_overview(scene: Scene) -> None:
    ov = scene.overview()
    row = scene.queue_row()
    assert row == {"queue": scene.queue, "depth": 0, "dead": 1,
                   "dead_place": f"{scene.queue}.dead"}
    assert ov["broker"] == "redis" and ov["delayed"] == 0 and ov["notes"] == []
    dead = ov["dead"][scene.queue]
    assert len(dead) == 1 and dead[0]["error"].startswith("undecodable")
    tasks = {t["uuid"]: t for t in ov["tasks"]}
    assert tasks[scene.ok]["state"] == "SUCCESS" and tasks[scene.ok]["result"] == "int64:5"
    assert tasks[scene.ok]["args"] == "int64:2, int64:3"
    assert tasks[scene.bad]["state"] == "FAILURE" and "kaput: x" in tasks[scene.bad]["error"]
    assert sum(ov["charts"]["succeeded"]) == 4  # add, the two chord members, total
    assert sum(ov["charts"]["failed"]) == 1
    assert sum(ov["charts"]["runtimes"]) == 5
    (p,) = ov["periodic"]
    assert p["name"] == "hourly-add" and p["next_fire"]
    assert ov["workers"] == []  # the worker stopped: its heartbeat is gone


def test_task_detail(scene: Scene) -> None:
    ok = scene.client.get(f"/api/task/{scene.ok}").json()
    assert ok["state"] == "SUCCESS" and ok["results"] == [{"type": "int64", "value": "5"}]
    assert ok["signature"]["args"] == "int64:2, int64:3"
    assert [e["type"] for e in ok["events"]] == ["task-started", "task-succeeded"]
    bad = scene.client.get(f"/task/{scene.bad}")
    assert bad.status_code == 200 and "kaput: x" in bad.text and "FAILURE" in bad.text
    member = scene.client.get(f"/api/task/{scene.chord_member}").json()
    assert member["signature"]["chord_callback"]["name"] == "total"
    group = member["group"]
    assert group["chord_triggered"] is True and len(group["members"]) == 2
    assert {m["state"] for m in group["members"]} == {"SUCCESS"}
    page = scene.client.get(f"/task/{scene.chord_member}").text
    assert "chord triggered" in page and "total" in page
    assert scene.client.get("/api/task/task_nope").status_code == 404
    assert scene.client.get("/task/task_nope").status_code == 404
    found = scene.client.get(f"/task?id=+{scene.ok}+", follow_redirects=False)  # search box
    assert found.status_code == 303 and found.headers["location"] == f"/task/{scene.ok}"
    assert scene.client.get("/task?id=").status_code == 400


def test_event_stream_sends_the_live_part(scene: Scene) -> None:
    started = time.monotonic()
    with scene.client.stream("GET", "/api/stream?count=2") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        text = "".join(r.iter_text())
    assert text.count("event: overview\n") == 2
    assert time.monotonic() - started >= 0.2  # one refresh between the two
    first = text.split("event: overview\n")[1]
    assert all(line.startswith("data: ") for line in first.strip().splitlines())
    assert f'data-queue="{scene.queue}"' in first
    assert scene.client.get("/api/stream?count=x").status_code == 400


def test_posts_without_the_csrf_token_are_refused(scene: Scene) -> None:
    form = {"queue": scene.queue}
    c = scene.client
    assert c.post("/dead/requeue", data=form).status_code == 403
    assert c.post("/dead/purge", data={**form, "csrf": "forged"}).status_code == 403
    token = scene.csrf()
    evil = c.post("/dead/purge", data={**form, "csrf": token},
                  headers={"Origin": "https://evil.example"})
    assert evil.status_code == 403
    assert c.post("/dead/requeue", json={**form, "csrf": token}).status_code == 415
    unknown = c.post("/dead/purge", data={"queue": "not_a_queue", "csrf": token})
    assert unknown.status_code == 400 and "unknown queue" in unknown.text
    assert c.get("/dead/requeue").status_code == 405
    assert scene.queue_row()["dead"] == 1  # nothing moved


def test_requeue_then_purge(scene: Scene) -> None:
    client, redis = scene.client, scene.app.broker.client
    token = scene.csrf()
    r = client.post("/dead/requeue", data={"queue": scene.queue, "csrf": token},
                    headers={"Origin": "http://testserver"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/?done=requeue")
    assert redis.lrange(scene.queue, 0, -1) == [UNDECODABLE]  # bytes unchanged
    page = client.get(r.headers["location"]).text
    assert f"1 message(s) requeued to {scene.queue}" in page
    assert scene.queue_row() | {} == {"queue": scene.queue, "depth": 1, "dead": 0,
                                      "dead_place": f"{scene.queue}.dead"}
    redis.rpush(f"{scene.queue}.dead", b"one", b"two")
    r = client.post("/dead/purge", data={"queue": scene.queue, "csrf": token})
    assert r.status_code == 200 and "2 message(s) purged" in r.text  # redirect followed
    assert redis.llen(f"{scene.queue}.dead") == 0 and redis.llen(scene.queue) == 1


def test_basic_auth(scene: Scene) -> None:
    with TestClient(create_app(scene.app, auth=("admin", "s3cret"))) as c:
        r = c.get("/")
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic ")
        assert c.get("/api/overview", auth=("admin", "wrong")).status_code == 401
        assert c.get("/static/dashboard.js", auth=("root", "s3cret")).status_code == 401
        assert c.get("/api/overview", auth=("admin", "s3cret")).status_code == 200


def test_live_workers_are_listed(scene: Scene) -> None:
    worker = scene.app.worker(concurrency=1, poll_timeout=0.1).start()
    try:
        workers = wait_for(lambda: scene.overview()["workers"], 10, "a heartbeat")
        assert [w["pid"] for w in workers] == [os.getpid()]
        assert workers[0]["queues"] == [scene.queue]
        assert workers[0]["hostname"] in scene.client.get("/").text
    finally:
        worker.stop(timeout=10)


def test_the_dashboard_command(redis_url: str) -> None:
    port = free_port()
    env = {**os.environ, "MC_TEST_DASHBOARD_BROKER": redis_url}
    cmd = [sys.executable, "-m", "machinery_compat", "dashboard", "-A",
           "tests.integration.test_dashboard:cli_app", "--port", str(port),
           "--auth", "ops:pw", "-Q", "extra_q"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        import httpx

        def up() -> httpx.Response | None:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/api/overview", auth=("ops", "pw"))
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                return None

        r = wait_for(up, 20, "the dashboard to answer")
        assert r.status_code == 200
        assert {q["queue"] for q in r.json()["queues"]} == {"machinery_tasks", "extra_q"}
        assert httpx.get(f"http://127.0.0.1:{port}/").status_code == 401
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=15)
    # uvicorn re-raises the SIGTERM it handled once shut down
    assert proc.returncode in (0, -signal.SIGTERM), err.decode(errors="replace")
    assert b"Traceback" not in err, err.decode(errors="replace")
    bad = subprocess.run([sys.executable, "-m", "machinery_compat", "dashboard", "-A",
                          "tests.integration.test_dashboard:cli_app", "--auth", "nopassword"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--auth takes USER:PASSWORD" in bad.stderr


# -- the pure parts (no service) --------------------------------------------------------------
def test_chart_series_buckets_and_runtimes() -> None:
    from machinery_compat.dashboard import charts
    from machinery_compat.events import Event

    now = 1_000.0
    events = [Event("task-succeeded", now - 5, runtime=0.0005),     # last bucket, <1ms
              Event("task-failed", now - 5, runtime=0.05),          # last bucket, 10-100ms
              Event("task-succeeded", now - 65, runtime=2.0),       # third from last, 1-10s
              Event("task-succeeded", now - 700, runtime=20.0),     # before the window, >10s
              Event("task-started", now - 1),                       # not an ending
              Event("task-succeeded", now + 1)]                     # after now: not counted
    s = charts.series(events, now, buckets=20, width=30.0)
    assert s["succeeded"] == [0] * 17 + [1, 0, 1] and s["failed"] == [0] * 19 + [1]
    assert s["runtimes"] == [1, 0, 1, 0, 1, 1]
    svg = charts.throughput_svg(s)
    assert svg.count('class="ok"') == 2 and svg.count('class="failed"') == 1
    assert "succeeded 2, failed 1" in svg
    assert charts.histogram_svg(s).count('class="runtime"') == 4
    assert [charts._scale(v) for v in ([], [1], [3], [7], [30], [101])] == [1, 1, 5, 10, 50, 200]


def test_csrf_and_basic_auth_checks() -> None:
    import base64

    from machinery_compat.dashboard.security import BasicAuth, csrf_ok, parse_auth
    from machinery_compat.exceptions import ConfigError

    assert csrf_ok("tok", "tok", None, "h:1")
    assert csrf_ok("tok", "tok", "http://h:1", "h:1")
    assert not csrf_ok("tok", "tok", "http://evil:1", "h:1")
    assert not csrf_ok("tok", "tok", "null", "h:1")  # a sandboxed or file: page
    assert not csrf_ok("tok", "tik", None, "h:1") and not csrf_ok("tok", None, None, "h:1")
    auth = BasicAuth(None, "u", "p:w")
    basic = b"Basic " + base64.b64encode(b"u:p:w")
    assert auth.allowed(basic) and auth.allowed(b"basic " + basic[6:])
    for bad in (b"", b"Bearer x", b"Basic !!!", b"Basic " + base64.b64encode(b"u:p"),
                b"Basic " + base64.b64encode(b"up:w")):
        assert not auth.allowed(bad), bad
    assert parse_auth("a:b:c") == ("a", "b:c")
    for bad_spec in ("nopass", ":pw", "user:"):
        with pytest.raises(ConfigError, match="USER:PASSWORD"):
            parse_auth(bad_spec)
