"""The HTTP layer: auth header, idempotency keys, retries with backoff, error mapping."""

from __future__ import annotations

import email.utils
import random
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx

from .errors import ApiError, NetworkError, error_from_response

#: Statuses worth another try (a 409 only when it is not a definitive conflict, see ``_retryable``).
RETRY_STATUSES = frozenset({408, 409, 429})
#: 409 codes that will not change by retrying.
FINAL_CONFLICTS = frozenset({"job-not-cancellable", "artifact-in-use", "upload-not-open"})
BACKOFF_BASE = 0.5
BACKOFF_MAX = 8.0
#: Longest Retry-After honoured between two attempts of one request.
RETRY_AFTER_MAX = 60.0

VERSION = "0.1.0"


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def new_idempotency_key() -> str:
    return str(uuid.uuid4())


class HttpCore:
    """One ``httpx.Client`` plus the retry policy. ``sleep`` is replaceable for tests."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        timeout: float,
        max_retries: int,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"User-Agent": f"gif-client/{VERSION}", "Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.max_retries = max(0, int(max_retries))
        self.sleep: Callable[[float], None] = time.sleep
        self.client = httpx.Client(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self.client.close()

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with full jitter, never shorter than the server's Retry-After."""
        delay = random.uniform(0, min(BACKOFF_MAX, BACKOFF_BASE * 2**attempt))
        if retry_after is not None:
            delay = max(delay, min(retry_after, RETRY_AFTER_MAX))
        return delay

    @staticmethod
    def _retryable(response: httpx.Response, error: ApiError) -> bool:
        status = response.status_code
        if status >= 500:
            return True
        if status == 409:
            return error.code not in FINAL_CONFLICTS
        return status in RETRY_STATUSES

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        content: bytes | None = None,
        files: dict[str, Any] | None = None,
        data: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        idempotency_key: str | None = None,
        stream: bool = False,
        rewind: tuple[Any, ...] = (),
        follow_redirects: bool = False,
    ) -> httpx.Response:
        """Send with retries; return a response with status < 400 or raise ``ApiError``.

        POSTs always carry an ``Idempotency-Key`` (the same one on every attempt), so retrying
        them cannot create a second job. ``rewind``: file objects to seek(0) before each attempt.
        With ``stream=True`` the caller must close the returned response.
        """
        headers = dict(headers or {})
        if method.upper() == "POST":
            headers.setdefault("Idempotency-Key", idempotency_key or new_idempotency_key())
        if params:
            params = {k: v for k, v in params.items() if v is not None}
        attempt = 0
        while True:
            for f in rewind:
                f.seek(0)
            try:
                req = self.client.build_request(
                    method,
                    path,
                    params=params,
                    json=json,
                    content=content,
                    files=files,
                    data=data,
                    headers=headers,
                )
                # a redirect to another origin (a presigned URL) goes without the Authorization header
                response = self.client.send(req, stream=stream, follow_redirects=follow_redirects)
            except httpx.TransportError as exc:
                if attempt >= self.max_retries:
                    raise NetworkError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
                self.sleep(self.backoff(attempt, None))
                attempt += 1
                continue
            if response.status_code < 400:
                return response
            if stream:
                response.read()
                response.close()
            error = error_from_response(response)
            if attempt < self.max_retries and self._retryable(response, error):
                self.sleep(self.backoff(attempt, parse_retry_after(response.headers.get("retry-after"))))
                attempt += 1
                continue
            raise error
