"""The dashboard's protections: HTTP basic auth (``--auth user:pass``), the CSRF check of
its POST forms, and the headers every response carries.

* **Basic auth** (:class:`BasicAuth`): every request, the static files and the event stream
  included, needs the user and password; both are compared in constant time.  Basic auth
  sends them in clear text on each request: put the dashboard behind TLS (a reverse proxy)
  when it listens beyond 127.0.0.1.
* **CSRF** (:func:`csrf_ok`): the requeue and purge forms carry a random token made when the
  dashboard starts (a page of another site cannot read it); a POST without it, with another
  one, or whose ``Origin`` names another host is refused (403).
* **Headers** (:class:`SecurityHeaders`): a Content-Security-Policy allowing only the
  dashboard's own script and styles (no inline script, no other origin), no framing
  (clickjacking), no MIME sniffing, no referrer to other sites.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Any, Final
from urllib.parse import urlsplit

from ..exceptions import ConfigError

Scope = dict[str, Any]

CSP: Final = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
              "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
HEADERS: Final = (
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
)
REALM: Final = "machinery-compat dashboard"


def parse_auth(text: str) -> tuple[str, str]:
    """``user:pass`` -> (user, pass); :class:`ConfigError` for anything else."""
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise ConfigError("--auth takes USER:PASSWORD (both non-empty)")
    return user, password


class BasicAuth:
    """ASGI middleware: 401 unless the request carries these basic-auth credentials."""

    def __init__(self, app: Any, user: str, password: str) -> None:
        self.app = app
        self.user = user.encode()
        self.password = password.encode()

    def allowed(self, header: bytes) -> bool:
        scheme, _, value = header.partition(b" ")
        if scheme.lower() != b"basic":
            return False
        try:
            raw = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        user, sep, password = raw.partition(b":")
        # both compared, always: no early exit telling which one was wrong
        ok_user = hmac.compare_digest(user, self.user)
        ok_password = hmac.compare_digest(password, self.password)
        return bool(sep) and ok_user and ok_password

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers") or ()).get(b"authorization", b"")
        if self.allowed(header):
            await self.app(scope, receive, send)
            return
        body = b"authentication required\n"
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"www-authenticate", f'Basic realm="{REALM}", charset="UTF-8"'.encode()),
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()), *HEADERS]})
        await send({"type": "http.response.body", "body": body})


class SecurityHeaders:
    """ASGI middleware adding :data:`HEADERS` to every HTTP response."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *HEADERS]}
            await send(message)

        await self.app(scope, receive, with_headers)


def csrf_ok(token: str, given: str | None, origin: str | None, host: str | None) -> bool:
    """Whether a POST may go on: the form's token is the dashboard's, and an ``Origin``
    header, when the browser sent one, names this host."""
    if not given or not hmac.compare_digest(given.encode(), token.encode()):
        return False
    if origin is not None and origin != "null":
        return urlsplit(origin).netloc == (host or "")
    return origin is None
