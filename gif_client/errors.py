"""Exceptions raised by :mod:`gif_client`.

``ApiError`` carries what the service put in its ``application/problem+json`` body: the HTTP
``status``, the stable ``code`` (``validation-error``, ``not-found``, ...), the ``detail`` text and
the ``request_id`` (quote it when reporting a problem). Job outcomes that are not a success raise a
``JobError`` subclass holding the last job object seen.
"""

from __future__ import annotations

from typing import Any

import httpx


class GifClientError(Exception):
    """Base class of everything this package raises on purpose."""


class ApiError(GifClientError):
    """The service answered with an error status (after any retries)."""

    def __init__(
        self,
        status: int,
        code: str | None,
        detail: str | None,
        request_id: str | None = None,
        *,
        errors: list[dict[str, Any]] | None = None,
        body: Any = None,
    ) -> None:
        self.status = status
        self.code = code
        self.detail = detail
        self.request_id = request_id
        self.errors = errors or []
        self.body = body
        super().__init__(self._message())

    def _message(self) -> str:
        text = f"HTTP {self.status}"
        if self.code:
            text += f" {self.code}"
        if self.detail:
            text += f": {self.detail}"
        if self.request_id:
            text += f" (request_id={self.request_id})"
        return text


class AuthError(ApiError):
    """401 or 403: missing, unknown or insufficient API key."""


class NotFound(ApiError):
    """404: no such object for this tenant."""


class ValidationError(ApiError):
    """422: the request was understood but rejected (see ``errors`` for the fields)."""


class NetworkError(ApiError):
    """No HTTP answer at all (connection refused, reset, timeout) after all retries."""

    def __init__(self, detail: str) -> None:
        super().__init__(0, "network-error", detail)


class IntegrityError(GifClientError):
    """A download's SHA-256 does not match the artifact's recorded digest."""


class JobError(GifClientError):
    """A waited-for job did not succeed; ``job`` is the last job object seen."""

    def __init__(self, job: dict[str, Any], message: str | None = None) -> None:
        self.job = job
        super().__init__(message or f"job {job.get('id')} is {job.get('status')}")


class JobFailed(JobError):
    """The job ended ``failed``; ``job['error']`` has ``code`` and ``message``."""

    def __init__(self, job: dict[str, Any]) -> None:
        error = job.get("error") or {}
        super().__init__(job, f"job {job.get('id')} failed: {error.get('code')}: {error.get('message')}")


class JobCancelled(JobError):
    """The job ended ``cancelled``."""


class WaitTimeout(JobError):
    """``wait`` gave up while the job was still unfinished (it keeps running on the server)."""


def error_from_response(response: httpx.Response) -> ApiError:
    """Map an error response (problem+json or not) to the matching ``ApiError`` subclass."""
    status = response.status_code
    body: Any = None
    try:
        body = response.json()
    except ValueError:
        body = None
    problem = body if isinstance(body, dict) else {}
    code = problem.get("code")
    detail = problem.get("detail") or problem.get("title")
    if detail is None and body is None:
        detail = response.text[:500] or response.reason_phrase
    request_id = problem.get("request_id") or response.headers.get("x-request-id")
    cls = ApiError
    if status in (401, 403):
        cls = AuthError
    elif status == 404:
        cls = NotFound
    elif status == 422:
        cls = ValidationError
    return cls(status, code, detail, request_id, errors=problem.get("errors"), body=body)
