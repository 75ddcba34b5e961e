"""Artifact use cases: inspect an upload in a sandboxed subprocess, register it, delete one.

The inspector (``python -m workers.inspect_artifact``, started by module name so that this
process never imports torch) reads the staged file with ``gif.io`` — safetensors or npz, or a
``.pt`` state dict through ``torch.load(weights_only=True)`` only — and prints one JSON line:
the format and metadata (dataset size, shapes, label counts; checkpoint tensor names and
shapes), or an error code. A ``.pt`` checkpoint is converted to safetensors there, so that
workers only ever read safetensors. Nothing is stored when inspection rejects a file.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import artifacts
from .blobs import BlobStore, StagedBlob
from .config import Settings
from .db import Database
from .errors import ArtifactInUse, CheckpointUnsafe, InvalidArtifact, NotFound, ValidationFailed
from .models import Artifact

INSPECTOR_MODULE = "workers.inspect_artifact"
#: Address space for the inspector beyond 4x the file: the interpreter, torch and numpy.
INSPECTOR_BASE_MEMORY = 2 * 1024**3
_PASSED_ENV = ("PATH", "LANG", "LC_ALL", "SYSTEMROOT", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


@dataclass
class Inspection:
    """What the inspector found: the file's format, its metadata, and a safetensors conversion."""

    format: str
    metadata: dict[str, Any]
    converted: Path | None = None


def inspect_file(path: Path, kind: str, settings: Settings, convert_to: Path) -> Inspection:
    """Run the inspector on ``path`` in a fresh interpreter with a minimal environment.

    Raises:
        CheckpointUnsafe: a pickle that would execute code.
        InvalidArtifact: anything else that is not a readable checkpoint / dataset.
    """
    limit = int(settings.validator_timeout_seconds)
    size = path.stat().st_size
    cmd = [
        sys.executable, "-B", "-m", INSPECTOR_MODULE, "--kind", kind, "--path", str(path),
        "--convert-to", str(convert_to), "--cpu-seconds", str(limit),
        "--max-output-bytes", str(2 * size + 64 * 1024 * 1024),
        "--max-memory-bytes", str(INSPECTOR_BASE_MEMORY + 4 * size),
    ]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="gif-inspect-") as workdir:
        try:
            proc = subprocess.run(
                cmd,
                capture_output=True,
                timeout=settings.validator_timeout_seconds + 5,
                env=_sandbox_env(workdir),
                cwd=workdir,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise InvalidArtifact(f"the file could not be inspected within {limit} s") from None
    answer = _last_json_line(proc.stdout)
    if answer is None:
        raise InvalidArtifact(
            f"the file could not be inspected (the inspector exited with status {proc.returncode})"
        )
    if not answer.get("ok"):
        error = CheckpointUnsafe if answer.get("code") == "checkpoint_unsafe" else InvalidArtifact
        message = str(answer.get("message", "invalid artifact")).replace(str(path), "the upload")
        raise error(message[:2000])
    converted = convert_to if answer.get("converted") else None
    return Inspection(format=str(answer["format"]), metadata=dict(answer["metadata"]), converted=converted)


def _sandbox_env(workdir: str) -> dict[str, str]:
    """No credentials, no API keys: only what Python needs to find the packages."""
    env = {k: os.environ[k] for k in _PASSED_ENV if k in os.environ}
    roots = []
    for package in ("workers", "gif"):
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            roots.append(str(Path(next(iter(spec.submodule_search_locations))).parent))
    env.update(
        PYTHONPATH=os.pathsep.join(dict.fromkeys(roots)),
        HOME=workdir,
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


def _last_json_line(stdout: bytes) -> dict[str, Any] | None:
    for line in reversed(stdout.decode("utf-8", "replace").strip().splitlines()):
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None


def find_duplicate(db: Database, tenant_id: str, source_sha256: str, kind: str) -> Artifact | None:
    with db.read() as session:
        return artifacts.find_upload(session, tenant_id, source_sha256, kind)


def register_upload(
    db: Database,
    blobs: BlobStore,
    tenant_id: str,
    staged: StagedBlob,
    kind: str,
    filename: str | None,
    inspection: Inspection,
) -> tuple[Artifact, bool]:
    """Store an inspected upload; ``(artifact, created)`` — ``created`` False on per-tenant dedup."""
    stored = blobs.adopt(inspection.converted) if inspection.converted else staged
    meta = dict(inspection.metadata)
    if inspection.converted:
        meta["converted_from"] = {"format": inspection.format, "sha256": staged.sha256}
    try:
        with db.begin() as session:
            existing = artifacts.find_upload(session, tenant_id, staged.sha256, kind)
            if existing is not None:
                return existing, False
            stored.commit()  # inside the write transaction: serialised with deletions of the blob
            artifact = artifacts.create_artifact(
                session,
                tenant_id=tenant_id,
                kind=kind,
                format="safetensors" if inspection.converted else inspection.format,
                sha256=stored.sha256,
                source_sha256=staged.sha256,
                size_bytes=stored.size,
                filename=filename,
                metadata=meta,
            )
            return artifact, True
    finally:
        staged.discard()
        stored.discard()


def delete(db: Database, blobs: BlobStore, tenant_id: str, artifact_id: str) -> None:
    """Delete an artifact; its blob goes too when nothing else references it.

    Raises:
        NotFound: no such artifact for this tenant.
        ArtifactInUse: a queued or running job uses it.
    """
    with db.begin() as session:
        artifact = artifacts.get_artifact(session, tenant_id, artifact_id)
        if artifact is None:
            raise NotFound(f"artifact {artifact_id!r} not found")
        users = artifacts.jobs_using(session, tenant_id, artifact_id)
        if users:
            raise ArtifactInUse(
                f"artifact {artifact_id} is used by unfinished job(s): {', '.join(users[:5])}"
            )
        if artifacts.delete_artifact(session, artifact):
            blobs.delete(artifact.sha256)


def store_upload(
    db: Database,
    blobs: BlobStore,
    settings: Settings,
    tenant_id: str,
    staged: StagedBlob,
    kind: str,
    filename: str | None,
) -> tuple[Artifact, bool]:
    """The upload use case: per-tenant dedup, inspection, registration. ``(artifact, created)``.

    The staged file is consumed (stored or removed) whatever happens.
    """
    convert_to = blobs.tmp_path(".safetensors")
    try:
        if kind not in artifacts.UPLOAD_KINDS:
            raise ValidationFailed.one(
                ["body", "kind"], f"must be one of {', '.join(artifacts.UPLOAD_KINDS)}"
            )
        existing = find_duplicate(db, tenant_id, staged.sha256, kind)
        if existing is not None:
            return existing, False
        inspection = inspect_file(staged.tmp, kind, settings, convert_to)
        return register_upload(db, blobs, tenant_id, staged, kind, filename, inspection)
    finally:
        staged.discard()
        convert_to.unlink(missing_ok=True)
