"""Python client for the gif-service REST API (httpx + stdlib only).

from gif_client import Client
with Client() as c:                       # GIF_BASE_URL, GIF_API_KEY
    ckpt = c.upload("model.safetensors", "checkpoint")
    job = c.wait(c.submit(body)["id"], timeout=3600)
    c.download(c.result_artifact(job, "weights")["id"], "edited.safetensors")
"""

from __future__ import annotations

from ._http import VERSION as __version__
from .client import DEFAULT_BASE_URL, TERMINAL, Client
from .errors import (
    ApiError,
    AuthError,
    GifClientError,
    IntegrityError,
    JobCancelled,
    JobError,
    JobFailed,
    NetworkError,
    NotFound,
    ValidationError,
    WaitTimeout,
)
from .progress import percent, progress_line

__all__ = [
    "DEFAULT_BASE_URL",
    "TERMINAL",
    "ApiError",
    "AuthError",
    "Client",
    "GifClientError",
    "IntegrityError",
    "JobCancelled",
    "JobError",
    "JobFailed",
    "NetworkError",
    "NotFound",
    "ValidationError",
    "WaitTimeout",
    "__version__",
    "percent",
    "progress_line",
]
