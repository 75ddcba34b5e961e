"""Blobs in an S3-compatible bucket (AWS S3, MinIO, Ceph, R2…), so hosts share no filesystem.

Objects are content-addressed like the folder store: ``<prefix>sha256/ab/cd/<64 hex>``, with the
digest also in the object's metadata (``x-amz-meta-sha256``). The local folder ``root`` keeps
what the bucket cannot: staging files (``tmp/``, written and hashed as in :mod:`jobs.blobs`) and
copies of blobs this host fetched or stored (``sha256/…``), so a worker reads a checkpoint from
local disk and a repeated job does not download it again. Copies unused for a day are dropped
and the rest trimmed to a size cap, least recently used first; the bucket stays the only truth.

* ``publish`` uploads the staged file unless the bucket has the digest already (boto3's managed
  transfer: multipart above 8 MiB), then keeps the file as the local copy.
* ``fetch`` downloads into staging, re-hashes, and moves the copy into place only when the
  content matches its digest (:class:`jobs.errors.BlobCorrupted` otherwise).
* Every bucket error surfaces as :class:`jobs.errors.StorageUnavailable` (503 at the API, a job
  failing ``storage_error``) except "no such object", which is ``FileNotFoundError`` as for files.

boto3 is imported here only, so the folder store does not need it.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from . import logs
from .blobs import _HEX64, CHUNK, BlobStore, StagedBlob, StoredBlob, file_sha256
from .errors import BlobCorrupted, StorageUnavailable

log = logs.get(__name__)

T = TypeVar("T")
_URL = re.compile(r"^s3://(?P<bucket>[^/]+)/?(?P<prefix>.*)$")
_MISSING = {"404", "NoSuchKey", "NotFound", "NoSuchUpload"}
#: Local copies unused this long are dropped by :meth:`S3BlobStore.trim_copies`.
COPY_MAX_AGE = 24 * 3600.0


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` → ``("bucket", "a/b/")``; the prefix is empty or ends with ``/``."""
    found = _URL.match(url)
    if found is None or not found.group("bucket"):
        raise ValueError(f"not an s3://bucket/prefix URL: {url!r}")
    prefix = found.group("prefix").strip("/")
    return found.group("bucket"), f"{prefix}/" if prefix else ""


class S3BlobStore(BlobStore):
    """A :class:`jobs.blobs.BlobStore` whose blobs live in ``url`` (``s3://bucket/prefix``).

    Args:
        root: local folder for staging files and copies.
        url: bucket and key prefix.
        endpoint_url: an S3-compatible service other than AWS.
        public_endpoint_url: the endpoint as clients reach it, for presigned URLs.
        region: the bucket's region.
        local_max_bytes: cap of the local copies (:meth:`trim_copies`).
        client: a boto3 S3 client to use instead of building one (tests, custom sessions).
    """

    def __init__(
        self,
        root: Path,
        url: str,
        *,
        endpoint_url: str | None = None,
        public_endpoint_url: str | None = None,
        region: str | None = None,
        local_max_bytes: int = 20 * 1024**3,
        client: Any = None,
    ) -> None:
        super().__init__(root)
        self.bucket, self.prefix = parse_s3_url(url)
        self.local_max_bytes = local_max_bytes
        self.client = client or _client(endpoint_url, region)
        self._public = (endpoint_url, public_endpoint_url, region)
        self._presigner: Any = None

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def key(self, sha256: str) -> str:
        """The object key of a blob (validates the digest)."""
        local = self.path(sha256)  # validates
        return f"{self.prefix}sha256/{sha256[:2]}/{sha256[2:4]}/{local.name}"

    # -- reading -----------------------------------------------------------------------------

    def exists(self, sha256: str) -> bool:
        return self.stat(sha256) is not None

    def stat(self, sha256: str) -> StoredBlob | None:
        try:
            head = self._call(
                "look up", lambda: self.client.head_object(Bucket=self.bucket, Key=self.key(sha256))
            )
        except FileNotFoundError:
            return None
        return StoredBlob(sha256, int(head["ContentLength"]), head["LastModified"].timestamp())

    def fetch(self, sha256: str) -> Path:
        local = self.path(sha256)
        if local.is_file():
            _touch(local)  # recently used: trimmed last
            return local
        tmp = self.tmp_path(".fetch")
        try:
            self._call("download", lambda: self.client.download_file(self.bucket, self.key(sha256), str(tmp)))
            found = file_sha256(tmp)
            if found != sha256:
                raise BlobCorrupted(f"blob {sha256} in {self.location} holds content with digest {found}")
            local.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, local)
        finally:
            tmp.unlink(missing_ok=True)
        return local

    def committed(self) -> Iterator[StoredBlob]:
        for page in self._pages("list_objects_v2", Prefix=f"{self.prefix}sha256/"):
            for item in page.get("Contents", []):
                name = item["Key"].rsplit("/", 1)[-1]
                if _HEX64.match(name):
                    yield StoredBlob(name, int(item["Size"]), item["LastModified"].timestamp())

    def presigned_get(self, sha256: str, *, seconds: int, filename: str, content_type: str) -> str | None:
        """A presigned GET of the object (no network call: signing is local), made with the
        public endpoint's host, since the signature covers it; the response carries the
        artifact's file name and content type."""
        params = {
            "Bucket": self.bucket,
            "Key": self.key(sha256),
            "ResponseContentDisposition": filename,
            "ResponseContentType": content_type,
        }
        return self._presign("get_object", params, seconds)

    def _presign(self, operation: str, params: dict[str, Any], seconds: int) -> str:
        if self._presigner is None:
            endpoint, public, region = self._public
            self._presigner = _client(public or endpoint, region)
        return self._presigner.generate_presigned_url(operation, Params=params, ExpiresIn=seconds)

    # -- writing -----------------------------------------------------------------------------

    def publish(self, tmp: Path, sha256: str, source_key: str | None = None) -> Path:
        if not self.exists(sha256):
            extra = {"Metadata": {"sha256": sha256}, "ContentType": "application/octet-stream"}
            key = self.key(sha256)
            if source_key is not None:  # already in the bucket: a server-side copy (multipart above 8 MiB)
                source = {"Bucket": self.bucket, "Key": source_key}
                extra["MetadataDirective"] = "REPLACE"
                self._call("copy", lambda: self.client.copy(source, self.bucket, key, ExtraArgs=extra))
            else:
                self._call(
                    "upload", lambda: self.client.upload_file(str(tmp), self.bucket, key, ExtraArgs=extra)
                )
        return super().publish(tmp, sha256)  # the staged file becomes the local copy

    def delete(self, sha256: str) -> None:
        self._call("delete", lambda: self.client.delete_object(Bucket=self.bucket, Key=self.key(sha256)))
        super().delete(sha256)

    def check_writable(self) -> None:
        super().check_writable()  # staging
        key = f"{self.prefix}probe/{secrets.token_hex(8)}"
        self._call("write", lambda: self.client.put_object(Bucket=self.bucket, Key=key, Body=b"ok"))
        try:
            body = self._call(
                "read", lambda: self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            )
            if body != b"ok":
                raise StorageUnavailable("the blob store read back different bytes")
        finally:
            self._call("delete", lambda: self.client.delete_object(Bucket=self.bucket, Key=key))

    def put_part(self, upload_id: str, number: int, staged: StagedBlob) -> None:
        key = self._part_key(upload_id, number)
        try:
            self._call("upload", lambda: self.client.upload_file(str(staged.tmp), self.bucket, key))
        finally:
            staged.discard()

    def read_part(self, upload_id: str, number: int) -> Iterator[bytes]:
        return self._read_key(self._part_key(upload_id, number))

    def delete_parts(self, upload_id: str) -> None:
        prefix = self._part_key(upload_id, 1).rsplit("/", 1)[0] + "/"
        for page in self._pages("list_objects_v2", Prefix=prefix):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                batch = {"Objects": keys}
                self._call("delete", partial(self.client.delete_objects, Bucket=self.bucket, Delete=batch))

    # -- upload sessions straight to the bucket (S3 multipart upload) ---------------------------

    direct_uploads = True
    #: S3's smallest part (but the last).
    MIN_PART = 5 * 1024 * 1024

    def direct_key(self, upload_id: str) -> str:
        """Where a direct session's file is assembled by S3."""
        return self._part_key(upload_id, 1).rsplit("/", 1)[0] + "/object"

    def start_direct_upload(self, upload_id: str) -> str:
        """Open an S3 multipart upload for the session; returns S3's upload id."""
        key = self.direct_key(upload_id)
        return self._call("start", lambda: self.client.create_multipart_upload(Bucket=self.bucket, Key=key))[
            "UploadId"
        ]

    def presigned_part(self, upload_id: str, remote_id: str, number: int, seconds: int) -> str:
        """A URL to PUT part ``number`` to, without credentials, for ``seconds``."""
        params = {
            "Bucket": self.bucket,
            "Key": self.direct_key(upload_id),
            "UploadId": remote_id,
            "PartNumber": number,
        }
        return self._presign("upload_part", params, seconds)

    def put_direct_part(self, upload_id: str, remote_id: str, number: int, staged: StagedBlob) -> None:
        """A part sent through the API after all: passed on to the multipart upload."""
        key = self.direct_key(upload_id)
        try:
            with open(staged.tmp, "rb") as body:
                self._call("upload", lambda: self.client.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=remote_id, PartNumber=number, Body=body))  # fmt: skip
        finally:
            staged.discard()

    def direct_parts(self, upload_id: str, remote_id: str) -> list[tuple[int, int, str]]:
        """The parts S3 holds: ``(number, size, etag)``, by number."""
        key = self.direct_key(upload_id)
        parts = []
        for page in self._pages("list_parts", Key=key, UploadId=remote_id):
            parts += [(p["PartNumber"], int(p["Size"]), p["ETag"].strip('"')) for p in page.get("Parts", [])]
        return sorted(parts)

    def finish_direct_upload(
        self, upload_id: str, remote_id: str, parts: list[tuple[int, int, str]]
    ) -> Iterator[bytes]:
        """Have S3 assemble the parts; returns the assembled file's bytes, in chunks."""
        key = self.direct_key(upload_id)
        manifest = {"Parts": [{"PartNumber": number, "ETag": f'"{etag}"'} for number, _, etag in parts]}
        self._call("complete", lambda: self.client.complete_multipart_upload(
            Bucket=self.bucket, Key=key, UploadId=remote_id, MultipartUpload=manifest))  # fmt: skip
        return self._read_key(key)

    def abort_direct_upload(self, upload_id: str, remote_id: str) -> None:
        key = self.direct_key(upload_id)
        try:
            self._call(
                "abort",
                lambda: self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=remote_id),
            )
        except FileNotFoundError:
            pass  # completed or aborted already

    def _pages(self, operation: str, **params: Any) -> Iterator[dict[str, Any]]:
        """The pages of a listing of the bucket, each request's failure mapped like any call."""
        listing = iter(self.client.get_paginator(operation).paginate(Bucket=self.bucket, **params))
        while (page := self._call("list", lambda: next(listing, None))) is not None:
            yield page

    def _read_key(self, key: str) -> Iterator[bytes]:
        body = self._call("download", lambda: self.client.get_object(Bucket=self.bucket, Key=key)["Body"])
        try:
            while chunk := self._call("download", lambda: body.read(CHUNK)):
                yield chunk
        finally:
            body.close()

    def _part_key(self, upload_id: str, number: int) -> str:
        local = self.part_path(upload_id, number)  # validates
        return f"{self.prefix}uploads/{upload_id}/{local.name}"

    def trim_copies(self) -> int:
        """Delete local copies unused for ``COPY_MAX_AGE`` seconds (an artifact deleted on another
        host leaves no copy here for long), then the least recently used until the rest fit
        ``local_max_bytes``; returns how many."""
        copies = []
        for path in (self.root / "sha256").glob("*/*/*"):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            copies.append((st.st_mtime, st.st_size, path))
        total = sum(size for _, size, _ in copies)
        stale = time.time() - COPY_MAX_AGE
        dropped = 0
        for mtime, size, path in sorted(copies):
            if total <= self.local_max_bytes and mtime >= stale:
                break
            path.unlink(missing_ok=True)  # a reader that has it open keeps reading (POSIX)
            total -= size
            dropped += 1
        return dropped

    # -- errors ------------------------------------------------------------------------------

    def _call(self, what: str, call: Callable[[], T]) -> T:
        """Run a bucket operation; "no such object" → FileNotFoundError, any other failure →
        StorageUnavailable naming the operation and the bucket."""
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return call()
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", "")) or "error"
            if code in _MISSING:
                raise FileNotFoundError(f"no such blob in {self.location}") from exc
            raise self._unavailable(f"the blob store refused to {what} ({code})", exc) from exc
        except (BotoCoreError, Boto3Error) as exc:  # Boto3Error: a managed transfer that failed
            wrapped = _code_in(exc)
            detail = (
                f"the blob store refused to {what} ({wrapped})"
                if wrapped
                else f"the blob store could not {what}"
            )
            raise self._unavailable(detail, exc) from exc

    def _unavailable(self, detail: str, exc: BaseException) -> StorageUnavailable:
        reason = f"{self.location}: {type(exc).__name__}: {exc}"
        log.warning("blob_store_error", detail=detail, reason=reason)
        return StorageUnavailable(detail, reason)


def _code_in(exc: BaseException) -> str | None:
    """The S3 error code inside a failed managed transfer (which wraps the ClientError)."""
    from botocore.exceptions import ClientError

    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, ClientError):
        return str(cause.response.get("Error", {}).get("Code", "")) or None
    found = re.search(r"\((\w+)\) when calling", str(exc))
    return found.group(1) if found else None


def _client(endpoint_url: str | None, region: str | None) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=10,
        read_timeout=60,
        retries={"max_attempts": 5, "mode": "standard"},
        signature_version="s3v4",  # presigned URLs too (SigV2 is deprecated and refused by AWS)
        # only checksums every S3-compatible server accepts (CRC trailers are AWS-specific)
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)


def _touch(path: Path) -> None:
    now = time.time()
    try:
        os.utime(path, (now, now))
    except OSError:
        pass  # trimmed meanwhile, or a read-only copy: recency is only a hint
