"""Streaming ``multipart/form-data`` reader for uploads: the ``file`` part goes straight into a
staged blob (hashed, size-limited) without being buffered in memory or spooled elsewhere; the
small text fields are collected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from jobs.blobs import BlobStore, BlobWriter
from jobs.errors import UnsupportedMediaType, ValidationFailed

from .upload_body import (
    CLOSE,
    WRITE_BATCH,
    UploadForm,
    check_declared_length,
    sanitize_filename,
    staging_errors,
)

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks  # defined for type checkers only

FILE_FIELD = "file"
MAX_FIELD_BYTES = 1024
MAX_FIELDS = 8


@dataclass
class _Part:
    headers: dict[str, str] = field(default_factory=dict)
    name: str | None = None
    filename: str | None = None
    data: bytearray = field(default_factory=bytearray)


class _FormReader:
    """python-multipart callbacks; file bytes are queued and written off the event loop."""

    def __init__(self, blobs: BlobStore, limit: int) -> None:
        self.blobs, self.limit = blobs, limit
        self.part = _Part()
        self._header_field, self._header_value = bytearray(), bytearray()
        self.writer: BlobWriter | None = None
        self.filename: str | None = None
        self.fields: dict[str, str] = {}
        self.pending: list[bytes] = []
        self.count = 0
        self.complete = False

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._begin,
            "on_header_field": lambda d, s, e: self._header_field.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._header_value.extend(d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_part_end": self._end,
            "on_end": self._finished,
        }

    def _begin(self) -> None:
        self.part = _Part()
        self.count += 1
        if self.count > MAX_FIELDS:
            raise ValidationFailed.one(["body"], f"too many form fields (at most {MAX_FIELDS})")

    def _header_end(self) -> None:
        self.part.headers[self._header_field.decode("latin-1").lower()] = self._header_value.decode("latin-1")
        self._header_field.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self.part.headers.get("content-disposition", ""))
        name = options.get(b"name")
        self.part.name = name.decode("utf-8", "replace") if name is not None else None
        filename = options.get(b"filename")
        self.part.filename = filename.decode("utf-8", "replace") if filename is not None else None
        if self.part.name == FILE_FIELD:
            if self.writer is not None:
                raise ValidationFailed.one(["body", FILE_FIELD], "only one file per upload")
            self.writer = self.blobs.writer(self.limit)
            self.filename = self.part.filename

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self.part.name == FILE_FIELD:
            self.pending.append(bytes(data[start:end]))
        else:
            self.part.data.extend(data[start:end])
            if len(self.part.data) > MAX_FIELD_BYTES:
                raise ValidationFailed.one(
                    ["body", self.part.name or "?"], f"form field longer than {MAX_FIELD_BYTES} bytes"
                )

    def _end(self) -> None:
        if self.part.name != FILE_FIELD and self.part.name is not None:
            self.fields[self.part.name] = self.part.data.decode("utf-8", "replace")

    def _finished(self) -> None:
        self.complete = True

    async def flush(self, *, final: bool = False) -> None:
        """Write what the parser handed over, once there is a batch of it (or at the end)."""
        if not self.pending or self.writer is None:
            return
        if not final and sum(map(len, self.pending)) < WRITE_BATCH:
            return
        chunk, self.pending = b"".join(self.pending), []
        await run_in_threadpool(self.writer.write, chunk)

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()


async def read_multipart(request: Request, blobs: BlobStore, limit: int) -> UploadForm:
    """Parse a ``multipart/form-data`` body; the file part lands in a staged blob of at most
    ``limit`` bytes.

    Raises:
        UnsupportedMediaType: no boundary.
        PayloadTooLarge: the file is over ``limit`` (nothing is left on disk).
        ValidationFailed: no ``file`` part, or bad form fields.
    """
    _, options = parse_options_header(request.headers.get("content-type", ""))
    if not options.get(b"boundary"):
        raise UnsupportedMediaType("a multipart/form-data body needs a boundary", headers=CLOSE)
    check_declared_length(request.headers, limit + _FORM_OVERHEAD)
    reader = _FormReader(blobs, limit)
    parser = MultipartParser(options[b"boundary"], reader.callbacks())
    with staging_errors(reader.abort):
        async for chunk in request.stream():
            parser.write(chunk)
            await reader.flush()
        parser.finalize()
        if not reader.complete:  # python-multipart's finalize() does not check it
            raise MultipartParseError("the body ends before the closing boundary (truncated upload?)")
        await reader.flush(final=True)
        if reader.writer is None:
            raise ValidationFailed.one(["body", FILE_FIELD], "field required: the file to upload")
        staged = await run_in_threadpool(reader.writer.finish)
    return UploadForm(staged, sanitize_filename(reader.filename), reader.fields)


#: Room for the boundaries and the small fields around the file in a form's Content-Length.
_FORM_OVERHEAD = MAX_FIELDS * (MAX_FIELD_BYTES + 512)
