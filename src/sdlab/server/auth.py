"""Access control: a bearer token (when set) on every request but the static page, and, without
a token, a Host/Origin check so that other web pages cannot drive a loopback server (DNS
rebinding, cross-site form posts)."""

from __future__ import annotations

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
    """`Authorization: Bearer TOKEN`, else the `token` query parameter (for <img> and EventSource)."""
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return query.get("token")


def _hostname(value: str) -> str:
    return (urlsplit(f"//{value}").hostname or "") if value else ""


class AccessMiddleware:
    """ASGI middleware: 401 without the right token; 403 for foreign Host/Origin on a token-less server."""

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
            return JSONResponse({"detail": "missing or wrong access token (Authorization: Bearer TOKEN)"},
                                status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return None

    def _check_local(self, request) -> Optional[JSONResponse]:
        host = _hostname(request.headers.get("host", ""))
        if not is_loopback(host):
            return JSONResponse({"detail": f"host {host!r} refused: this server answers only loopback names "
                                           "(start it with --token to serve other names)"}, status_code=403)
        origin = request.headers.get("origin")
        if origin and not is_loopback(_hostname(urlsplit(origin).netloc)):
            return JSONResponse({"detail": f"cross-origin request from {origin!r} refused"}, status_code=403)
        return None
