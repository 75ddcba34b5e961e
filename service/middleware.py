"""Pure ASGI middleware: request ids, request body limits, HTTP metrics and the access log."""

from __future__ import annotations

import re
import time

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobs import logs
from jobs.errors import PayloadTooLarge
from jobs.ids import ulid

from .errors import PROBLEM_JSON, problem_bytes
from .metrics import Metrics

_access = logs.get("gif.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

#: Room for multipart boundaries and the small form fields around an upload's file part.
MULTIPART_OVERHEAD = 64 * 1024


class RequestIdMiddleware:
    """Use the client's ``X-Request-ID`` (when well-formed) or a new one; echo it on the response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID.match(given) else f"req_{ulid()}"
        scope.setdefault("state", {})["request_id"] = request_id
        # every log line written while serving this request carries its id
        structlog.contextvars.bind_contextvars(request_id=request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message["headers"] = [*headers, (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            structlog.contextvars.unbind_contextvars("request_id")


class BodyLimitMiddleware:
    """413 ``payload-too-large`` for bodies over the limit: routes matching a pattern of
    ``upload_limits`` (uploads, upload parts) get its limit plus multipart overhead (the blob
    writer enforces the exact file limit), every other route ``max_json_bytes``. Checked on
    ``Content-Length`` up front and on the bytes actually received."""

    def __init__(self, app: ASGIApp, *, max_json_bytes: int, upload_limits: dict[str, int]) -> None:
        self.app = app
        self.max_json_bytes = max_json_bytes
        self.upload_limits = [(re.compile(pattern), limit) for pattern, limit in upload_limits.items()]

    def limit_for(self, path: str) -> int:
        for pattern, limit in self.upload_limits:
            if pattern.fullmatch(path):
                return limit + MULTIPART_OVERHEAD
        return self.max_json_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # every method: a GET or DELETE with a body is limited too
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _too_large(scope, send, limit)
            return
        received, started, exceeded, answered = 0, False, False, False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
            return message

        async def guarded_send(message: Message) -> None:
            # Whatever the app answers after the body went over the limit (frameworks may turn the
            # receive error into a 400), the client gets the 413.
            nonlocal started, answered
            if exceeded and not started:
                if not answered:
                    answered = True
                    await _too_large(scope, send, limit)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except PayloadTooLarge:
            if started:
                raise
            if not answered:
                await _too_large(scope, send, limit)


async def _too_large(scope: Scope, send: Send, limit: int) -> None:
    body = problem_bytes(
        scope,
        413,
        "payload-too-large",
        "Payload too large",
        f"request body exceeds the limit of {limit} bytes",
    )
    await send({
        "type": "http.response.start", "status": 413,
        "headers": [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close")],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": body})


class MetricsMiddleware:
    """Counts requests and their duration by method, route template and status, and writes one
    JSON access-log line per request (with the request id; no query strings or bodies)."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            seconds = time.perf_counter() - start
            self.metrics.observe_request(scope["method"], route, status, seconds)
            _access.info(
                "request",
                method=scope["method"],
                route=route,
                status=status,
                duration_ms=round(1000 * seconds, 2),
            )


class HeadMiddleware:
    """``HEAD`` on any ``GET`` route (RFC 9110 §9.3.2): the ``GET`` runs, its status and headers
    (``Content-Length`` included) go out, its body does not. FastAPI routes answer ``GET`` only."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        started = False

        async def headers_only(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                await send(message)
            elif not started:  # one empty body ends the response; the GET's body is dropped
                started = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        await self.app({**scope, "method": "GET", "head": True}, receive, headers_only)


class PageHeadersMiddleware:
    """Security headers (a Content-Security-Policy above all) on every response under ``prefix``
    — the job page's routes (service/routers/ui.py), its 404s included. The JSON API's
    responses are left as they are: they are not documents a browser renders."""

    def __init__(self, app: ASGIApp, *, prefix: str, headers: dict[str, str]) -> None:
        self.app, self.prefix = app, prefix
        self.headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]

    def applies(self, path: str) -> bool:
        return path == self.prefix or path.startswith(self.prefix + "/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.applies(scope["path"]):
            await self.app(scope, receive, send)
            return
        names = {name for name, _ in self.headers}

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message["headers"] = [*kept, *self.headers]
            await send(message)

        await self.app(scope, receive, send_with_headers)
