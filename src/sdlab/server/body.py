"""Request bodies at the edge: a size cap counted as the body streams (chunked or not) and strict
JSON (no NaN/Infinity, no number that overflows to infinity, no lone surrogate), so that bad
bodies are a 413 or a one-line 422 before any endpoint sees them."""

from __future__ import annotations

import json
import math
import re
from typing import Callable, Optional

from fastapi import HTTPException
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


SURROGATE = re.compile("[\ud800-\udfff]")  # in a str only unpaired: json.loads joins escaped pairs


class BodyTooLarge(HTTPException):
    """The request body passed its limit while it streamed in (an HTTPException, so FastAPI's
    body reading lets it through as a 413)."""

    def __init__(self, limit: int):
        super().__init__(413, f"the request body is over the limit of {limit} bytes")


def _bad_value(value) -> Optional[str]:
    if isinstance(value, float) and not math.isfinite(value):
        got = "NaN" if math.isnan(value) else "Infinity (or a number beyond 1.8e308)"
        return f"numbers must be finite, got {got}"
    if isinstance(value, str) and (found := SURROGATE.search(value)):
        return f"a lone surrogate (U+{ord(found.group()):04X}) is not text: send valid UTF-8"
    return None


def check_json(body: bytes) -> Optional[tuple[list, str]]:
    """None if `body` is JSON the API may parse, else (location, one-line reason). Malformed
    JSON passes here: FastAPI answers it with its own 422."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    stack: list[tuple[list, object]] = [(["body"], data)]
    while stack:
        loc, item = stack.pop()
        if isinstance(item, dict):
            for key in item:
                if reason := _bad_value(key):
                    return _where(loc + [key]), f"field name: {reason}"
            stack.extend((loc + [k], v) for k, v in reversed(item.items()))
        elif isinstance(item, list):
            stack.extend((loc + [i], v) for i, v in reversed(list(enumerate(item))))
        elif reason := _bad_value(item):
            return _where(loc), reason
    return None


def _where(loc: list) -> list:
    return [_public(part, 80) for part in loc]


def _is_json(headers: Headers) -> bool:
    kind = headers.get("content-type", "").split(";")[0].strip().lower()
    return kind in ("", "application/json") or kind.endswith("+json")


class BodyGuardMiddleware:
    """413 once a body passes `limit_for(path, content_type)` bytes, counted as it streams (never
    buffering past the limit); JSON bodies are read whole (within the limit) and checked by
    check_json (422) before the app sees them."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str, str], int]):
        self.app, self.limit_for = app, limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        limit = self.limit_for(scope["path"], headers.get("content-type", ""))
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            return await _reply(scope, receive, send, 413, BodyTooLarge(limit).detail)
        if _is_json(headers) and scope["method"] in ("POST", "PUT", "PATCH", "DELETE"):
            return await self._json(scope, receive, send, limit)
        await self._streamed(scope, receive, send, limit)

    async def _streamed(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        seen, started = 0, False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge as err:
            if started:
                raise
            await _reply(scope, receive, send, 413, err.detail)

    async def _json(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > limit:
                return await _reply(scope, receive, send, 413, BodyTooLarge(limit).detail)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        bad = check_json(body) if body else None
        if bad is not None:
            return await _reply(scope, receive, send, 422, [{"loc": bad[0], "msg": bad[1], "type": "value_error"}])
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


async def _reply(scope: Scope, receive: Receive, send: Send, status: int, detail) -> None:
    await JSONResponse({"detail": detail}, status_code=status)(scope, receive, send)


def _public(value, width: int):
    """A location part or message fit to send back: at most `width` characters, no lone surrogate."""
    if not isinstance(value, str):
        return value
    text = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= width else text[:width - 1] + "…"


def public_errors(errors) -> list[dict]:
    """pydantic/FastAPI validation errors without the input: where (loc), what (msg) and the type;
    `input` and `ctx` (which may hold the input) are dropped."""
    return [{"loc": [_public(part, 80) for part in err.get("loc", ())], "msg": _public(str(err.get("msg", "")), 300),
             "type": err.get("type", "")} for err in errors]
