"""``Client``: a small synchronous SDK for the gif-service REST API (``/v1``)."""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Self

import httpx

from . import pretrained
from ._http import HttpCore, parse_retry_after
from .errors import ApiError, IntegrityError, JobCancelled, JobFailed, WaitTimeout

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
#: Poll interval when the server sends no Retry-After.
DEFAULT_POLL = 2.0
#: Files above this size go through a resumable upload session (``Client.upload_resumable``).
RESUMABLE_ABOVE = 512 * 1024 * 1024


class Client:
    """Talks to one gif-service.

    ``base_url`` defaults to ``$GIF_BASE_URL`` (else http://127.0.0.1:8000), ``api_key`` to
    ``$GIF_API_KEY``. Requests are retried ``max_retries`` times on connection errors, 408, 409,
    429 and 5xx with exponential backoff and jitter, honouring ``Retry-After``.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60,
        max_retries: int = 2,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url or os.environ.get("GIF_BASE_URL") or DEFAULT_BASE_URL
        self.api_key = api_key if api_key is not None else os.environ.get("GIF_API_KEY")
        self._http = HttpCore(
            self.base_url, self.api_key, timeout=timeout, max_retries=max_retries, transport=transport
        )

    # -- lifecycle -------------------------------------------------------------------------------
    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- artifacts -------------------------------------------------------------------------------
    def upload(self, path: str | os.PathLike[str], kind: str, *, idempotency_key: str | None = None) -> dict:
        """Upload a checkpoint or dataset file; returns the artifact (same one again for same bytes).

        The file's SHA-256 goes with it (the server refuses bytes that changed in transit);
        files over ``RESUMABLE_ABOVE`` go through :meth:`upload_resumable`.
        """
        path = Path(path)
        if path.stat().st_size > RESUMABLE_ABOVE:
            return self.upload_resumable(path, kind)
        digest = _sha256_of(path)
        with open(path, "rb") as f:
            response = self._http.request(
                "POST",
                "/v1/artifacts",
                files={"file": (path.name, f, "application/octet-stream")},
                data={"kind": kind, "sha256": digest},
                idempotency_key=idempotency_key,
                rewind=(f,),
            )
        return response.json()

    def upload_model(self, path: str | os.PathLike[str]) -> dict:
        """Upload a model file and return the ``model`` object of a job body that names it.

        Accepted:

        * the ``.pt2`` file of ``torch.export.save`` (kind ``program``; the program needs a
          dynamic batch dimension) -> ``{"format": "torch.export", "program": <artifact id>}``;
        * a ``save_pretrained`` folder of a Hugging Face classifier (``config.json`` and
          ``model.safetensors``, or shards and their index, merged here into one file) ->
          ``{"format": "huggingface", "config": {...}, "checkpoint": <artifact id>}``.

        Raises:
            ValueError: ``path`` is not a model file this client knows how to upload.
        """
        path = Path(path)
        if path.is_dir():
            return self._upload_model_folder(path)
        if _is_exported_program(path):
            return {"format": "torch.export", "program": self.upload(path, "program")["id"]}
        raise ValueError(f"{path} is not a model this client can upload (a .pt2 file of torch.export.save)")

    def _upload_model_folder(self, path: Path) -> dict:
        """A ``save_pretrained`` folder: its config and its weights as one safetensors checkpoint."""
        config = pretrained.read_config(path)
        with tempfile.TemporaryDirectory(prefix="gif-merge-") as scratch:
            weights = pretrained.checkpoint_file(path, Path(scratch) / pretrained.SINGLE)
            checkpoint = self.upload(weights, "checkpoint")["id"]
        return {"format": "huggingface", "config": config, "checkpoint": checkpoint}

    def upload_dataset(self, tensors: Mapping[str, Any], labels: Any, *, sample_ids: Any = None) -> dict:
        """Upload named input tensors and their labels as one dataset (an ``.npz``; needs numpy).

        ``tensors`` maps names to arrays (numpy arrays, torch tensors, a tokenizer's
        ``BatchEncoding``…), one row per sample: ``{"input_ids": ..., "attention_mask": ...}`` are
        passed to the model as keyword arguments; ``{"inputs": x}`` is one positional tensor.
        ``labels`` holds one integer class per sample; ``sample_ids`` (optional) one distinct
        integer per sample, your own key for it, which rankings (top-k of scores and
        self-influence jobs) then name beside the row index. Returns the artifact.
        """
        import numpy as np  # only here: the SDK itself needs httpx and the standard library

        arrays = {str(name): np.asarray(_host(value)) for name, value in tensors.items()}
        for reserved in ("labels", "sample_ids"):
            if reserved in arrays:
                raise ValueError(f"pass `{reserved}` as its own argument, not as a tensor named {reserved!r}")
        arrays["labels"] = np.asarray(_host(labels))
        if sample_ids is not None:
            arrays["sample_ids"] = np.asarray(_host(sample_ids))
        with tempfile.TemporaryDirectory(prefix="gif-dataset-") as scratch:
            path = Path(scratch) / "dataset.npz"
            np.savez(path, **arrays)  # type: ignore[arg-type]  # (numpy stubs read a keyword as allow_pickle)
            return self.upload(path, "dataset")

    def upload_resumable(
        self, path: str | os.PathLike[str], kind: str, *, upload_id: str | None = None, parallel: int = 4
    ) -> dict:
        """Upload a large file in parts through an upload session; returns the artifact.

        ``upload_id``: resume that session (sending only the parts it lacks) instead of
        starting one. Parts go ``parallel`` at a time, each with its SHA-256; a part that fails
        is retried like any request. If the assembled file does not match (a part changed on
        disk meanwhile), the parts whose digests differ are sent again once.
        """
        path = Path(path)
        if upload_id is None:
            body = {
                "kind": kind,
                "size_bytes": path.stat().st_size,
                "sha256": _sha256_of(path),
                "filename": path.name,
            }
            upload_id = self._http.request("POST", "/v1/uploads", json=body).json()["id"]
        for attempt in range(2):
            session = self._http.request("GET", f"/v1/uploads/{upload_id}").json()
            if session["status"] == "completed":  # resuming one that an earlier call finished
                return self.artifact(session["artifact_id"])
            stale = [p["number"] for p in session["parts"] if not _same_part(path, session, p)]
            self._send_parts(path, session, sorted({*session["missing_parts"], *stale}), parallel)
            try:
                return self._http.request("POST", f"/v1/uploads/{upload_id}/complete").json()
            except ApiError as exc:
                if exc.code != "digest-mismatch" or attempt:
                    raise
        raise AssertionError("unreachable")

    def upload_status(self, upload_id: str) -> dict:
        """An upload session: its status, the parts received, the artifact once completed."""
        return self._http.request("GET", f"/v1/uploads/{upload_id}").json()

    def _send_parts(self, path: Path, session: dict, numbers: list[int], parallel: int) -> None:
        def send(number: int) -> None:
            chunk = _part_bytes(path, session, number)
            if session.get("direct"):  # to the bucket, through a presigned URL
                where = self._http.request("GET", f"/v1/uploads/{session['id']}/parts/{number}/url").json()
                self._put_presigned(where["url"], chunk)
                return
            self._http.request(
                "PUT", f"/v1/uploads/{session['id']}/parts/{number}", content=chunk,
                headers={"Content-Type": "application/octet-stream", "X-Part-SHA256": hashlib.sha256(chunk).hexdigest()},
            )  # fmt: skip

        with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
            list(pool.map(send, numbers))  # the first failure is raised

    def _put_presigned(self, url: str, chunk: bytes) -> None:
        """PUT to a presigned URL: no API key (the URL carries its own signature), same retries."""
        for attempt in range(self._http.max_retries + 1):
            try:
                response = httpx.put(url, content=chunk, timeout=self._http.client.timeout)
            except httpx.TransportError:
                if attempt >= self._http.max_retries:
                    raise
            else:
                if response.status_code < 500 or attempt >= self._http.max_retries:
                    response.raise_for_status()
                    return
            self._http.sleep(self._http.backoff(attempt, None))

    def artifact(self, artifact_id: str) -> dict:
        return self._http.request("GET", f"/v1/artifacts/{artifact_id}").json()

    def download(self, artifact_id: str, path: str | os.PathLike[str]) -> Path:
        """Stream the artifact's bytes to ``path``, checking its SHA-256; atomic (temp file + rename)."""
        expected = self.artifact(artifact_id)["sha256"]
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                digest = self._fetch(artifact_id, out)
                out.flush()
                os.fsync(out.fileno())
            if digest != expected:
                raise IntegrityError(
                    f"artifact {artifact_id}: downloaded sha256 {digest} != recorded {expected}"
                )
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return target

    def _fetch(self, artifact_id: str, out: Any) -> str:
        """One download into ``out`` (restarted from zero if the stream breaks); returns the sha256."""
        attempt = 0
        while True:
            out.seek(0)
            out.truncate()
            sha = hashlib.sha256()
            response = self._http.request(
                "GET", f"/v1/artifacts/{artifact_id}/content", stream=True, follow_redirects=True
            )
            try:
                for chunk in response.iter_bytes(1 << 20):
                    sha.update(chunk)
                    out.write(chunk)
                return sha.hexdigest()
            except httpx.TransportError:
                if attempt >= self._http.max_retries:
                    raise
                self._http.sleep(self._http.backoff(attempt, None))
                attempt += 1
            finally:
                response.close()

    # -- jobs ------------------------------------------------------------------------------------
    def submit(
        self,
        body: dict,
        idempotency_key: str | None = None,
        *,
        webhook: str | Mapping[str, Any] | None = None,
    ) -> dict:
        """``POST /v1/jobs``; returns the job (202). The same key replays the same job.

        ``webhook``: a URL (notified when the job completes) or ``{"url", "events"}`` with events
        ``completed`` and/or ``progress``; deliveries are signed with :meth:`webhook_secret`.
        """
        if webhook is not None:
            body = {**body, "webhook": {"url": webhook} if isinstance(webhook, str) else dict(webhook)}
        return self._http.request("POST", "/v1/jobs", json=body, idempotency_key=idempotency_key).json()

    # -- webhooks ----------------------------------------------------------------------------------
    def webhook_secret(self) -> str:
        """The ``whsec_…`` secret that signs this tenant's webhook deliveries (created on first use);
        verify deliveries with it, e.g. ``standardwebhooks.Webhook(secret).verify(body, headers)``."""
        return self._http.request("GET", "/v1/webhooks/secret").json()["secret"]

    def rotate_webhook_secret(self) -> str:
        """Replace the secret; returns the new one. Deliveries carry signatures by both the new and
        the former secret for the server's grace period (``GIF_WEBHOOK_SECRET_GRACE_SECONDS``)."""
        return self._http.request("POST", "/v1/webhooks/secret/rotate").json()["secret"]

    def job(self, job_id: str) -> dict:
        return self._http.request("GET", f"/v1/jobs/{job_id}").json()

    def jobs(self, status: str | None = None, limit: int = 20) -> Iterator[dict]:
        """All jobs, newest first, fetched ``limit`` per page."""
        yield from self._pages("/v1/jobs", {"status": status, "limit": limit})

    def events(self, job_id: str, limit: int = 100) -> Iterator[dict]:
        """A job's events, oldest first, all pages."""
        yield from self._pages(f"/v1/jobs/{job_id}/events", {"limit": limit})

    def _pages(self, path: str, params: dict[str, Any]) -> Iterator[dict]:
        after = None
        while True:
            page = self._http.request("GET", path, params={**params, "after": after}).json()
            yield from page["data"]
            if not page.get("has_more") or not page["data"]:
                return
            after = page["last_id"]

    def cancel(self, job_id: str) -> dict:
        return self._http.request("POST", f"/v1/jobs/{job_id}/cancel").json()

    def terminate(self, job_id: str) -> dict:
        """Admin keys only: kill the worker process of a job that ignores its cancellation
        (``POST /v1/admin/jobs/{id}/terminate``); 409 until the job has been ``cancelling`` for
        the server's grace period. Returns the job, ``cancelled``, with ``terminated_pid``."""
        return self._http.request("POST", f"/v1/admin/jobs/{job_id}/terminate").json()

    def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        poll: float | None = None,
        on_progress: Callable[[dict], None] | None = None,
    ) -> dict:
        """Poll until the job is terminal; return it if it succeeded.

        Between polls it sleeps ``poll`` seconds if given, else the server's ``Retry-After``
        (else 2 s), never past the deadline. ``on_progress(job)`` is called after every poll.
        Raises ``JobFailed``, ``JobCancelled``, or ``WaitTimeout`` after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            response = self._http.request("GET", f"/v1/jobs/{job_id}")
            job = response.json()
            if on_progress is not None:
                on_progress(job)
            status = job["status"]
            if status == "succeeded":
                return job
            if status == "failed":
                raise JobFailed(job)
            if status == "cancelled":
                raise JobCancelled(job)
            delay = poll
            if delay is None:
                delay = parse_retry_after(response.headers.get("retry-after"))
            if delay is None:
                delay = DEFAULT_POLL
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WaitTimeout(job, f"job {job_id} still {status} after {timeout} s")
                delay = min(delay, left)
            self._http.sleep(delay)

    @staticmethod
    def result_artifact(job: dict, kind: str) -> dict:
        """The entry of ``job['result']['artifacts']`` with this ``kind`` (``weights``, ``report``...)."""
        for entry in (job.get("result") or {}).get("artifacts", []):
            if entry.get("kind") == kind:
                return entry
        raise KeyError(f"job {job.get('id')} has no result artifact of kind {kind!r}")


def _host(value: Any) -> Any:
    """A torch tensor's values on the host (numpy reads them from there); anything else as is."""
    for method in ("detach", "cpu"):
        value = getattr(value, method)() if callable(getattr(value, method, None)) else value
    return value


def _is_exported_program(path: Path) -> bool:
    """A zip holding ``<folder>/models/model.json`` (the layout of ``torch.export.save``)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.split("/", 1)[-1] == "models/model.json" for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _part_bytes(path: Path, session: dict, number: int) -> bytes:
    with open(path, "rb") as f:
        f.seek((number - 1) * session["part_size"])
        return f.read(session["part_size"])


def _same_part(path: Path, session: dict, part: dict) -> bool:
    """Whether the server's part is the file's: by SHA-256, or for a part in a bucket by its ETag
    (the MD5 of the part, for S3 without KMS; another kind of ETag cannot tell, so it is trusted:
    the whole file's digest is still checked at completion)."""
    chunk = _part_bytes(path, session, part["number"])
    if part.get("sha256"):
        return part["sha256"] == hashlib.sha256(chunk).hexdigest()
    etag = part.get("etag") or ""
    if len(etag) == 32:
        return etag == hashlib.md5(chunk, usedforsecurity=False).hexdigest()
    return True
