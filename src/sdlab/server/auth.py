"""Access control: a bearer token (when set) on every request but the static page, and, without
a token, a Host/Origin check so that other web pages cannot drive a loopback server (DNS
rebinding, cross-site form posts, pages served by other local servers on other ports)."""

from __future__ import annotations

import base64
import hmac
from typing import Optional
from urllib.parse import urlsplit

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from .settings import is_loopback

PUBLIC_PATHS = ("/", "/favicon.ico")
PUBLIC_PREFIXES = ("/static/",)


def token_matches(expected: str, given: Optional[str]) -> bool:
    """Constant-time comparison (hmac.compare_digest) of UTF-8 bytes."""
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())


def request_token(headers: dict[str, str], query: dict[str, str]) -> Optional[str]:
    """`Authorization: Bearer TOKEN`, or Basic auth with the token as the password (any user
    name: what A1111 clients send for --api-auth), else the `token` query parameter (for <img>
    and EventSource)."""
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    if auth[:6].lower() == "basic ":
        try:
            return base64.b64decode(auth[6:].strip(), validate=True).decode("utf-8").partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            return None
    return query.get("token")


DEFAULT_PORTS = {"http": 80, "https": 443}


def _hostname(value: str) -> str:
    return (urlsplit(f"//{value}").hostname or "") if value else ""


def _origin_parts(url: str) -> Optional[tuple[str, str, int]]:
    """(scheme, host, port) of an http(s) origin; None for anything else (e.g. `null`)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        return None
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port or DEFAULT_PORTS[scheme]


def is_own_origin(origin: str, scheme: str, host_header: str) -> bool:
    """True if `origin` is this server as the request reached it: the scheme and port of the
    request's Host and its name (on loopback, any loopback name: localhost is 127.0.0.1)."""
    mine, theirs = _origin_parts(f"{scheme}://{host_header}"), _origin_parts(origin)
    if mine is None or theirs is None or mine[0] != theirs[0] or mine[2] != theirs[2]:
        return False
    return mine[1] == theirs[1] or (is_loopback(mine[1]) and is_loopback(theirs[1]))


class AccessMiddleware:
    """ASGI middleware: 401 without the right token; on a token-less server, 403 for a foreign Host
    or for an Origin other than the server's own (another port is another origin)."""

    def __init__(self, app: ASGIApp, token: Optional[str]):
        self.app, self.token = app, token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from starlette.requests import Request

        request = Request(scope)
        error = self.check(request)
        if error is not None:
            return await error(scope, receive, send)
        await self.app(scope, receive, send)

    def check(self, request) -> Optional[JSONResponse]:
        path = request.url.path
        if self.token is None:
            return self._check_local(request)
        if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            return None
        given = request_token({k.lower(): v for k, v in request.headers.items()}, dict(request.query_params))
        if not token_matches(self.token, given):
            return JSONResponse({"detail": "missing or wrong access token (Authorization: Bearer TOKEN, or Basic "
                                           "auth with the token as the password)"},
                                status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return None

    def _check_local(self, request) -> Optional[JSONResponse]:
        host = _hostname(request.headers.get("host", ""))
        if not is_loopback(host):
            return JSONResponse({"detail": f"host {host!r} refused: this server answers only loopback names "
                                           "(start it with --token to serve other names)"}, status_code=403)
        origin = request.headers.get("origin")
        if origin is not None and not is_own_origin(origin, request.url.scheme, request.headers.get("host", "")):
            return JSONResponse({"detail": f"cross-origin request from {origin[:100]!r} refused: this server "
                                           "answers only its own page"}, status_code=403)
        return None
