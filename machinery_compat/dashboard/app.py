"""The dashboard's ASGI app (Starlette routes, Jinja2 templates; see ``docs/dashboard.md``).

=====================================  ===============================================
``GET /``                              queues, workers, recent tasks, dead letters,
                                       charts, periodic tasks (the live part refreshed
                                       by the event stream)
``GET /task?id={id}``                  redirects to ``/task/{id}`` (the header's search box)
``GET /task/{id}``                     one task: state, result or error, callbacks,
                                       group/chord, events
``GET /api/overview``                  what ``/`` shows, as JSON
``GET /api/task/{id}``                 what ``/task/{id}`` shows, as JSON (404: unknown)
``GET /api/stream``                    server-sent events: ``overview`` (the live part,
                                       HTML) every ``refresh`` seconds; ``?count=N``
                                       ends the stream after N
``POST /dead/requeue``, ``/dead/purge``  form ``queue``, ``csrf``: move a queue's dead
                                       letters back to it, or delete them; 303 to ``/``
=====================================  ===============================================
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

import anyio
import jinja2
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..exceptions import MachineryCompatError
from . import charts, data
from .security import BasicAuth, SecurityHeaders, csrf_ok

logger = logging.getLogger(__name__)

#: the longest form body a POST may send
MAX_FORM = 4096


def _when(unix: float | None) -> str:
    if not unix:
        return "-"
    return datetime.fromtimestamp(unix).strftime("%Y-%m-%d %H:%M:%S")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("machinery_compat.dashboard"),
                             autoescape=True)  # a key a store does not give renders empty
    env.filters["when"] = _when
    env.filters["throughput_svg"] = lambda s: Markup(charts.throughput_svg(s))
    env.filters["histogram_svg"] = lambda s: Markup(charts.histogram_svg(s))
    return env


class Dashboard:
    """One dashboard over one app (``machinery_compat.Machinery``)."""

    def __init__(self, app: Any, settings: data.Settings | None = None, *,
                 refresh: float = 2.0) -> None:
        if refresh <= 0:
            raise ValueError(f"refresh must be > 0 seconds, not {refresh}")
        self.app = app
        self.settings = settings or data.Settings()
        self.refresh = refresh
        #: the CSRF token of this dashboard's forms (see :mod:`.security`)
        self.csrf = secrets.token_urlsafe(32)
        self.env = _environment()
        self._shared: tuple[float, dict[str, Any]] | None = None
        self._shared_lock = threading.Lock()

    # -- rendering -----------------------------------------------------------------------
    def render(self, name: str, **context: Any) -> str:
        return self.env.get_template(name).render(csrf=self.csrf, refresh=self.refresh,
                                                  **context)

    def overview(self) -> dict[str, Any]:
        return data.overview(self.app, self.settings)

    def shared_overview(self) -> dict[str, Any]:
        """:meth:`overview`, read at most once per half refresh for all open streams (ten
        open pages cost the stores what one does)."""
        with self._shared_lock:
            now = time.monotonic()
            if self._shared is None or now - self._shared[0] >= self.refresh / 2:
                self._shared = (now, self.overview())
            return self._shared[1]

    # -- routes --------------------------------------------------------------------------
    async def index(self, request: Request) -> Response:
        ov = await run_in_threadpool(self.overview)
        flash = _flash(request.query_params)
        return HTMLResponse(self.render("index.html", ov=ov, flash=flash))

    async def api_overview(self, request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(self.overview))

    async def task(self, request: Request) -> Response:
        task_id = request.path_params["task_id"]
        info = await run_in_threadpool(data.task_detail, self.app, task_id)
        if info is None:
            return HTMLResponse(self.render("missing.html", task_id=task_id), status_code=404)
        return HTMLResponse(self.render("task.html", t=info))

    async def find_task(self, request: Request) -> Response:
        task_id = request.query_params.get("id", "").strip()
        if not task_id or "/" in task_id:
            return PlainTextResponse("give a task id: /task?id=<id>\n", status_code=400)
        return RedirectResponse(f"/task/{quote(task_id, safe='')}", status_code=303)

    async def api_task(self, request: Request) -> Response:
        task_id = request.path_params["task_id"]
        info = await run_in_threadpool(data.task_detail, self.app, task_id)
        if info is None:
            return JSONResponse({"error": f"nothing is known of task {task_id}"},
                                status_code=404)
        return JSONResponse(info)

    async def stream(self, request: Request) -> Response:
        raw = request.query_params.get("count", "0")
        if not raw.isdigit():
            return PlainTextResponse("count must be a whole number\n", status_code=400)
        count = int(raw)

        async def events() -> AsyncIterator[str]:
            sent = 0
            yield f"retry: {int(self.refresh * 1000)}\n\n"
            while True:
                ov = await run_in_threadpool(self.shared_overview)
                html = self.render("live.html", ov=ov)
                yield "event: overview\n" + "".join(
                    f"data: {line}\n" for line in html.splitlines()) + "\n"
                sent += 1
                if count and sent >= count:
                    return
                await anyio.sleep(self.refresh)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache",
                                          "X-Accel-Buffering": "no"})

    async def dead_action(self, request: Request) -> Response:
        action = request.path_params["action"]
        if action not in ("requeue", "purge"):
            return PlainTextResponse("unknown action\n", status_code=404)
        ctype = request.headers.get("content-type", "").split(";")[0].strip()
        if ctype != "application/x-www-form-urlencoded":
            return PlainTextResponse("send the form (application/x-www-form-urlencoded)\n",
                                     status_code=415)
        body = await request.body()
        if len(body) > MAX_FORM:
            return PlainTextResponse("form too large\n", status_code=413)
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        if not csrf_ok(self.csrf, form.get("csrf"), request.headers.get("origin"),
                       request.headers.get("host")):
            return PlainTextResponse("refused: missing or wrong CSRF token (reload the page "
                                     "and use its buttons)\n", status_code=403)
        queue = form.get("queue", "")
        known = await run_in_threadpool(data.known_queues, self.app, self.settings)
        if queue not in known:
            return PlainTextResponse(f"unknown queue {queue!r}: the dashboard acts on "
                                     f"{', '.join(known)}\n", status_code=400)
        try:
            n = await run_in_threadpool(self._dead, action, queue)
        except MachineryCompatError as e:
            return PlainTextResponse(f"{action} failed: {e}\n", status_code=502)
        logger.warning("dashboard: %s %d dead letter(s) of %s (from %s)", action, n, queue,
                       request.client.host if request.client else "?")
        query = urlencode({"done": action, "queue": queue, "n": n})
        return RedirectResponse(f"/?{query}", status_code=303)

    def _dead(self, action: str, queue: str) -> int:
        from ..ops import broker_ops

        ops = broker_ops(self.app.broker)
        try:
            if action == "requeue":
                return ops.dead_requeue(queue, 1_000_000)
            return ops.dead_purge(queue)
        finally:
            ops.close()

    # -- the ASGI app --------------------------------------------------------------------
    def asgi(self, *, auth: tuple[str, str] | None = None) -> Any:
        routes = [
            Route("/", self.index),
            Route("/task", self.find_task),
            Route("/task/{task_id}", self.task),
            Route("/api/overview", self.api_overview),
            Route("/api/task/{task_id}", self.api_task),
            Route("/api/stream", self.stream),
            Route("/dead/{action}", self.dead_action, methods=["POST"]),
            Mount("/static", StaticFiles(packages=[("machinery_compat.dashboard", "static")]),
                  name="static"),
        ]
        app: Any = SecurityHeaders(Starlette(routes=routes))
        if auth is not None:
            app = BasicAuth(app, *auth)
        return app


def _flash(params: Any) -> str:
    done, queue, n = params.get("done"), params.get("queue"), params.get("n", "")
    if done not in ("requeue", "purge") or not queue or not n.isdigit():
        return ""
    verb = "requeued to" if done == "requeue" else "purged from the dead letters of"
    return f"{n} message(s) {verb} {queue}"


def create_app(app: Any, *, queues: Any = (), auth: tuple[str, str] | None = None,
               refresh: float = 2.0, tasks_limit: int = 50) -> Any:
    """The dashboard's ASGI app for ``app`` (serve it with uvicorn); ``queues``: queues to
    show besides the default one (name the Go workers' queues here)."""
    settings = data.Settings(queues=tuple(queues), tasks_limit=tasks_limit)
    return Dashboard(app, settings, refresh=refresh).asgi(auth=auth)


__all__ = ["Dashboard", "create_app"]
