"""Request bodies that become staged blobs: single-shot uploads (multipart form or raw bytes),
upload-session parts, and the digests a client declares for them.

Whatever the shape, the bytes stream into a :class:`jobs.blobs.BlobWriter` (hashed, size-limited,
never buffered in memory) and every failure removes what was written: a client that disconnects,
a body over its limit, a full disk, a malformed form.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import Message

from python_multipart.exceptions import MultipartParseError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request

from jobs.blobs import BlobStore, StagedBlob
from jobs.errors import (
    DomainError,
    InsufficientStorage,
    PayloadTooLarge,
    UnsupportedMediaType,
    is_storage_full,
)

from .errors import ProblemError

#: On an answer given before the request body was read to its end: the rest of the body is
#: never read, so the connection cannot carry another request (a client reusing it would be reset).
CLOSE = {"Connection": "close"}
RAW = "application/octet-stream"
#: Bytes gathered from the network before they are written (and hashed) off the event loop.
WRITE_BATCH = 1024 * 1024
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_REPR_SHA256 = re.compile(r"(?:^|,)\s*sha-256\s*=\s*:([A-Za-z0-9+/=]*):")


@dataclass
class UploadForm:
    """A single-shot upload: the staged file, its display name, and the form fields (or their
    header equivalents for a raw body: ``kind``, ``sha256``)."""

    staged: StagedBlob
    filename: str | None
    fields: dict[str, str]


async def read_upload(request: Request, blobs: BlobStore, limit: int) -> UploadForm:
    """``multipart/form-data`` (a ``file`` part, a ``kind`` field) or a raw body
    (``application/octet-stream``; ``X-Artifact-Kind`` or ``?kind=``, and a filename from
    ``Content-Disposition``). Raises 415 for anything else, 413 over ``limit``."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media == "multipart/form-data":
        from .multipart import read_multipart

        return await read_multipart(request, blobs, limit)
    if media == RAW:
        staged = await read_body(request, blobs, limit)
        kind = request.headers.get("x-artifact-kind") or request.query_params.get("kind") or ""
        return UploadForm(staged, _disposition_filename(request.headers), {"kind": kind})
    raise UnsupportedMediaType(
        "upload as multipart/form-data (a `file` part and a `kind` field) or as a raw "
        f"{RAW} body with an `X-Artifact-Kind` header (got {media or 'no Content-Type'})",
        headers=CLOSE,
    )


async def read_body(request: Request, blobs: BlobStore, limit: int) -> StagedBlob:
    """The whole request body as a staged blob of at most ``limit`` bytes."""
    check_declared_length(request.headers, limit)
    writer = blobs.writer(limit)
    pending: list[bytes] = []
    size = 0
    with staging_errors(writer.abort):
        async for chunk in request.stream():
            pending.append(chunk)
            size += len(chunk)
            if size >= WRITE_BATCH:  # one thread hop per MiB, not per network read
                await run_in_threadpool(writer.write, b"".join(pending))
                pending, size = [], 0
        if pending:
            await run_in_threadpool(writer.write, b"".join(pending))
        return await run_in_threadpool(writer.finish)


def require_raw(headers: Headers) -> None:
    """415 unless the body is declared ``application/octet-stream`` (or not declared at all)."""
    media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media not in ("", RAW):
        raise UnsupportedMediaType(f"send the raw bytes as {RAW} (got {media})", headers=CLOSE)


def check_declared_length(headers: Headers, limit: int) -> None:
    """413 at once when ``Content-Length`` already says the body is over ``limit``."""
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            f"the body ({declared} bytes) exceeds the limit of {limit} bytes", headers=CLOSE
        )


@contextlib.contextmanager
def staging_errors(abort: Callable[[], None]) -> Iterator[None]:
    """Around reading a body into a blob writer: on any failure ``abort`` (the partial file goes),
    and client-side failures become 4xx problems instead of 500s."""
    try:
        yield
    except MultipartParseError as exc:
        abort()
        raise ProblemError(400, f"malformed multipart body: {exc}", headers=CLOSE) from None
    except ClientDisconnect:  # a client error, not a 500 (nobody reads the answer)
        abort()
        raise ProblemError(400, "the client disconnected before the upload was complete") from None
    except OSError as exc:
        abort()
        if not is_storage_full(exc):
            raise
        raise InsufficientStorage.disk_full(CLOSE) from None
    except DomainError as exc:  # answered before the body was read to its end
        abort()
        exc.headers = {**exc.headers, **CLOSE}
        raise
    except BaseException:
        abort()
        raise


def declared_sha256(headers: Headers, field: str | None = None) -> str | None:
    """The SHA-256 (hex) the client declares for the content: ``X-Content-SHA256: <hex>``,
    ``Repr-Digest: sha-256=:<base64>:`` (RFC 9530) or a form field; None when it declares none.
    Malformed or contradictory declarations are 400."""
    found: dict[str, str] = {}
    if (value := headers.get("x-content-sha256")) is not None:
        found["X-Content-SHA256"] = _hex_digest(value.strip().lower(), "X-Content-SHA256")
    if (value := headers.get("repr-digest")) is not None:
        match = _REPR_SHA256.search(value)
        if match is None:
            raise ProblemError(400, "Repr-Digest carries no `sha-256=:<base64>:` member")
        try:
            raw = base64.b64decode(match.group(1), validate=True)
        except binascii.Error:
            raw = b""
        if len(raw) != 32:
            raise ProblemError(400, "Repr-Digest sha-256 is not the base64 of 32 bytes")
        found["Repr-Digest"] = raw.hex()
    if field:
        found["sha256"] = _hex_digest(field.strip().lower(), "the sha256 field")
    if len(set(found.values())) > 1:
        raise ProblemError(400, f"the declared digests disagree: {', '.join(sorted(found))}")
    return next(iter(found.values()), None)


def _hex_digest(value: str, where: str) -> str:
    if not _HEX64.match(value):
        raise ProblemError(400, f"{where} must be 64 hexadecimal digits (a SHA-256)")
    return value


def _disposition_filename(headers: Headers) -> str | None:
    """The filename of ``Content-Disposition`` (``filename*=UTF-8''…`` of RFC 6266 included)."""
    value = headers.get("content-disposition")
    if not value:
        return None
    message = Message()
    message["content-disposition"] = value
    return sanitize_filename(message.get_filename())


def sanitize_filename(name: str | None, max_length: int = 200) -> str | None:
    """A display name only: no directories, control characters or leading dots; length capped."""
    if not name:
        return None
    name = unicodedata.normalize("NFC", name).replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C")
    name = re.sub(r"\s+", " ", name).strip().lstrip(".")
    return name[:max_length] or None
