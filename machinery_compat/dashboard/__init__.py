"""The web dashboard: ``machinery-compat dashboard -A module:app`` (see ``docs/dashboard.md``).

.. code-block:: python

    import uvicorn
    from machinery_compat.dashboard import create_app

    uvicorn.run(create_app(app, queues=["go_tasks"], auth=("admin", "secret")),
                host="127.0.0.1", port=5555)

Queues with depth, dead letters (requeue / purge) and the delayed count, live Python workers
(Go workers publish no heartbeat: they are not listed), recent tasks with state, arguments,
result or error, a task's detail, periodic tasks with their next fire time, charts of
throughput, failures and runtimes (inline SVG).  Needs ``machinery-compat[dashboard]``
(Starlette, Jinja2, uvicorn); nothing is imported until :func:`create_app` is called.

Modules: :mod:`.data` (what is shown, read through :mod:`machinery_compat.ops`,
:mod:`machinery_compat.events` and the result backend), :mod:`.charts` (SVG),
:mod:`.security` (basic auth, CSRF, headers), :mod:`.app` (routes), ``templates/``,
``static/``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def create_app(app: Any, **kwargs: Any) -> Any:
    """The dashboard's ASGI app; see :func:`machinery_compat.dashboard.app.create_app`."""
    try:
        from .app import create_app as make
    except ImportError as e:
        from ..exceptions import ConfigError

        raise ConfigError(f"the dashboard needs its extra: pip install "
                          f"'machinery-compat[dashboard]' ({e})") from e
    return make(app, **kwargs)
