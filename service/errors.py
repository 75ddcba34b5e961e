"""RFC 9457 problem details for every error response (``application/problem+json``).

Members: ``type``, ``title``, ``status``, ``detail``, ``instance``, plus ``code`` (stable slug),
``request_id`` and, for validation failures, ``errors: [{loc, msg, type}]``. Domain errors,
FastAPI's request validation errors, routing errors (404/405) and unhandled exceptions (500)
all take this shape.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import Scope

from jobs import logs
from jobs.errors import DatabaseBusy, DomainError, InsufficientStorage, is_database_busy, is_storage_full
from jobs.specs import JOB_TYPES, MODEL_FORMATS

PROBLEM_JSON = "application/problem+json"
TYPE_PREFIX = "urn:gif-service:problem:"

log = logs.get(__name__)

_HTTP_CODES = {
    400: ("bad-request", "Bad request"),
    401: ("unauthenticated", "Authentication required"),
    403: ("forbidden", "Forbidden"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    406: ("not-acceptable", "Not acceptable"),
    413: ("payload-too-large", "Payload too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
    416: ("range-not-satisfiable", "Range not satisfiable"),
    422: ("validation-error", "Request validation failed"),
    500: ("internal", "Internal server error"),
    503: ("service-unavailable", "Service unavailable"),
}


class ProblemError(DomainError):
    """An HTTP-level problem raised by the service itself (e.g. a malformed multipart body)."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        code: str | None = None,
        title: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail, headers=headers)
        default_code, default_title = _HTTP_CODES.get(status, ("http-error", "HTTP error"))
        self.status, self.code, self.title = status, code or default_code, title or default_title


def request_id_of(scope: Scope) -> str | None:
    state = scope.get("state") or {}
    return state.get("request_id") if isinstance(state, dict) else None


def problem_body(
    scope: Scope, status: int, code: str, title: str, detail: str, **extra: Any
) -> dict[str, Any]:
    body = {
        "type": TYPE_PREFIX + code,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": scope.get("path"),
        "code": code,
        "request_id": request_id_of(scope),
    }
    body.update({k: v for k, v in extra.items() if v is not None})
    return body


def problem_response(
    scope: Scope,
    status: int,
    code: str,
    title: str,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body = problem_body(scope, status, code, title, detail, **extra)
    response = JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)
    if body["request_id"]:
        response.headers["X-Request-ID"] = body["request_id"]
    return response


def problem_bytes(scope: Scope, status: int, code: str, title: str, detail: str) -> bytes:
    """The encoded body, for pure ASGI middleware that answers before the app runs."""
    return json.dumps(problem_body(scope, status, code, title, detail)).encode()


async def _domain_error(request: Request, exc: DomainError) -> JSONResponse:
    return problem_response(
        request.scope, exc.status, exc.code, exc.title, exc.detail, headers=exc.headers, errors=exc.errors
    )


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [_validation_entry(e) for e in exc.errors()]
    detail = (
        f"{len(errors)} field(s) are invalid"
        if len(errors) != 1
        else f"{_loc(errors[0])}: {errors[0]['msg']}"
    )
    return problem_response(
        request.scope, 422, "validation-error", "Request validation failed", detail, errors=errors
    )


def _validation_entry(error: dict[str, Any]) -> dict[str, Any]:
    loc = list(error.get("loc", ()))
    if len(loc) > 1 and loc[0] == "body" and loc[1] in JOB_TYPES:
        loc = [loc[0], *loc[2:]]  # drop the discriminator tag pydantic inserts
    if len(loc) > 2 and loc[:2] == ["body", "model"] and loc[2] in MODEL_FORMATS:
        loc = [*loc[:2], *loc[3:]]  # and the model format's tag
    msg = str(error.get("msg", "invalid"))
    if error.get("type") == "json_invalid":
        reason = (error.get("ctx") or {}).get("error")
        msg = f"request body is not valid JSON ({reason})" if reason else "request body is not valid JSON"
    return {
        "loc": loc,
        "msg": msg.removeprefix("Value error, "),
        "type": str(error.get("type", "value_error")),
    }


def _loc(entry: dict[str, Any]) -> str:
    return ".".join(str(p) for p in entry["loc"])


def _unparsable(cause: BaseException) -> str:
    """Why a request body could not be parsed (``json.loads`` raised ``cause``)."""
    if isinstance(cause, UnicodeDecodeError):
        return "the request body is not valid UTF-8 (JSON must be UTF-8)"
    if isinstance(cause, RecursionError):
        return "the request body nests too deeply to parse"
    if isinstance(cause, ValueError):  # e.g. an integer of thousands of digits
        return f"the request body could not be parsed: {str(cause)[:200]}"
    return "the request body could not be parsed"


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code, title = _HTTP_CODES.get(exc.status_code, ("http-error", "HTTP error"))
    detail = exc.detail if isinstance(exc.detail, str) else title
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == 400 and exc.__cause__ is not None:  # FastAPI's words do not say why
        detail = _unparsable(exc.__cause__)
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no route for {request.method} {request.url.path}"
    if exc.status_code == 405:
        # Starlette names the methods of the first route matching the path only
        allowed = _allowed_methods(request)
        headers["Allow"] = ", ".join(allowed)
        method = "HEAD" if request.scope.get("head") else request.method  # HeadMiddleware asked GET
        detail = f"{method} is not allowed on {request.url.path}; allowed: {headers['Allow']}"
    return problem_response(request.scope, exc.status_code, code, title, detail, headers=headers or None)


def _allowed_methods(request: Request) -> list[str]:
    """The methods of every route whose path matches the request's."""
    methods: set[str] = set()
    for route in app_routes(request.app):
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= set(route.methods or ())
    if "GET" in methods:
        methods.add("HEAD")  # HeadMiddleware
    return sorted(methods)


def app_routes(app: FastAPI) -> list[Any]:
    """Every route of ``app`` (``path``, ``methods``, ``matches``…), those of included routers
    too: recent FastAPI keeps them nested, older versions list them flat."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # pragma: no cover (FastAPI before the nested routers)
        return list(app.router.routes)
    return list(iter_route_contexts(app.router.routes))


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    if is_storage_full(exc):  # the staged file is already gone (the writers clean up on error)
        log.error("storage_full", path=request.url.path, error=str(exc))
        return await _domain_error(request, InsufficientStorage.disk_full())
    if is_database_busy(exc):  # the transaction rolled back: nothing half-written
        log.warning("database_busy", path=request.url.path, error=str(exc))
        return await _domain_error(request, DatabaseBusy.locked())
    log.error("unhandled_error", path=request.url.path, error=f"{type(exc).__name__}: {exc}", exc_info=exc)
    return problem_response(
        request.scope, 500, "internal", "Internal server error", "an unexpected error occurred"
    )


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""
    # Starlette types every handler as taking ``Exception``, though it calls each one only with the
    # class it is registered for: a handler typed for its own class is refused (the ignores below).
    app.add_exception_handler(DomainError, _domain_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unhandled)
