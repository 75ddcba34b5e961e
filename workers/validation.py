"""Deep validation of a submitted job on a CPU worker (distributed mode): ``validating → queued | failed``.

The API checks a request against the artifacts' recorded metadata; this step loads what it names
(the architecture from the registry, the checkpoint into it, every dataset through it) exactly as
the compute worker will, so a job that cannot run fails here, cheaply and before it takes a GPU
slot, with the engine's error code (``checkpoint_incompatible``, ``dataset_incompatible``, ...).
It also sizes the job (workers/sizing.py) against ``GIF_MAX_MEMORY_BYTES``: the compute worker's
budget is at most that setting, so a job over it would fail there (``memory_budget_exceeded``).
"""

from __future__ import annotations

import json

from gif.errors import GifError
from jobs import logs, specs, store
from jobs.blobs import BlobStore
from jobs.db import Database
from jobs.errors import BlobCorrupted, StorageUnavailable
from jobs.states import JobStatus

from .loading import load_inputs
from .sizing import Budget, check_job_fits

log = logs.get(__name__)


def validate_job(job_id: str, db: Database, blobs: BlobStore, max_memory_bytes: int = 0) -> JobStatus | None:
    """Validate a ``validating`` job, sized against ``max_memory_bytes`` (0: not sized); returns
    its new status (None: it was not validating any more)."""
    with db.read() as session:
        job = store.find_job(session, job_id)
        if job is None or job.status != JobStatus.VALIDATING.value:
            return None
        tenant_id, stored, inputs = job.tenant_id, job.request_json, json.loads(job.inputs_json)
    try:
        spec = specs.load(stored)
        loaded = load_inputs(spec.model, inputs, blobs)
        check_job_fits(spec, loaded, Budget.setting(max_memory_bytes))
    except (GifError, specs.StoredSpecInvalid) as exc:
        return _fail(db, job_id, tenant_id, exc.code, exc.message)
    except FileNotFoundError:
        return _fail(db, job_id, tenant_id, "artifact_missing", "an input artifact's content is missing")
    except (StorageUnavailable, BlobCorrupted) as exc:
        return _fail(db, job_id, tenant_id, "storage_error", f"an input could not be read: {exc}")
    with db.begin() as session:
        moved = store.finish_validation(session, job_id, tenant_id)
    log.info("job_validated", job_id=job_id, queued=moved)
    return JobStatus.QUEUED if moved else None


def _fail(db: Database, job_id: str, tenant_id: str, code: str, message: str) -> JobStatus | None:
    log.info("job_validation_failed", job_id=job_id, code=code, message=message)
    with db.begin() as session:
        return JobStatus.FAILED if store.fail_validation(session, job_id, tenant_id, code, message) else None
