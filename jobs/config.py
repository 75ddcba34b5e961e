"""Settings of the service and its workers, read from the environment (prefix ``GIF_``).

Every duration is in seconds and its variable ends in ``_SECONDS``; the former variables in hours
or days (:data:`DEPRECATED`) are still read, converted, with a warning. :func:`cross_check` refuses
settings that contradict each other (a heartbeat slower than the lease it renews, ...) at start-up.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from . import logs

GIB = 1024**3
MIB = 1024**2
HOUR = 3600.0
DAY = 24 * HOUR

#: Former settings in hours or days → (the setting in seconds that replaces it, seconds per unit).
DEPRECATED: dict[str, tuple[str, float]] = {
    "upload_session_hours": ("upload_session_seconds", HOUR),
    "result_ttl_days": ("result_ttl_seconds", DAY),
    "upload_ttl_days": ("upload_ttl_seconds", DAY),
    "idempotency_ttl_hours": ("idempotency_ttl_seconds", HOUR),
}

#: How long past GIF_VALIDATOR_TIMEOUT_SECONDS the inspector waits before it kills an inspection
#: (``Inspector.inspect`` in jobs/inspector.py).
INSPECTOR_KILL_MARGIN = 5.0

log = logs.get(__name__)
_warned: set[str] = set()


class Settings(BaseSettings):
    """Every setting, documented; the environment variable is ``GIF_<FIELD NAME IN CAPITALS>``."""

    model_config = SettingsConfigDict(env_prefix="GIF_", extra="ignore", frozen=True)

    home: Path = Field(
        default=Path("./gif-data"),
        description="Data folder: the SQLite job store, blobs (artifacts) and the generated API key file.",
    )
    api_keys: str = Field(
        default="",
        description='API keys as "tenantA:keyA,tenantB:keyB". A key maps a Bearer token to its tenant.',
    )
    api_key_file: Path | None = Field(
        default=None,
        description="File with one tenant:key per line (or comma-separated), read in addition to "
        "GIF_API_KEYS. Default: <home>/api-keys.txt when it exists (`serve` writes one if no key is set).",
    )
    admin_tenants: str = Field(
        default="default",
        description="Comma-separated tenants whose keys have the admin scope: they may read /metrics "
        "(other keys get 403). Default: the tenant of the key `serve` generates.",
    )
    database_timeout_seconds: float = Field(
        default=30.0,
        ge=2,
        description="PostgreSQL: connect timeout, and how long a connection may stay silent or leave "
        "data unacknowledged (a partition, a dead host) before it fails.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the job store. Default: sqlite:///<home>/gif.db (WAL mode).",
    )
    blob_url: str | None = Field(
        default=None,
        pattern=r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[A-Za-z0-9!_.*'()/-]*)?$",
        description="Keep artifacts in an S3-compatible bucket, as s3://bucket/prefix (credentials: the "
        "standard AWS variables or an instance role). Unset: the folder <home>/blobs, which several hosts "
        "must then share (NFS). With a bucket, <home> holds only staging files and fetched copies.",
    )
    s3_endpoint_url: str | None = Field(
        default=None,
        description="Endpoint of an S3-compatible service other than AWS (MinIO, Ceph, R2…), as http(s)://host:port.",
    )
    s3_region: str | None = Field(
        default=None, description="Region of the bucket (default: the AWS settings')."
    )
    s3_public_endpoint_url: str | None = Field(
        default=None,
        description="The bucket's endpoint as clients reach it, for presigned URLs (default: GIF_S3_ENDPOINT_URL).",
    )
    s3_presign_seconds: int = Field(
        default=0,
        ge=0,
        le=7 * 24 * 3600,
        description="With a bucket: downloads answer 302 to a presigned URL valid this long, so the bytes "
        "do not pass through the API (0: the API serves them).",
    )
    blob_local_max_bytes: int = Field(
        default=20 * GIB,
        ge=0,
        description="With GIF_BLOB_URL: size cap of the local copies of fetched blobs (least recently "
        "used go first, in the 10-minute housekeeping).",
    )
    broker_url: str | None = Field(
        default=None,
        description="Celery broker URL (redis://host:6379/0). Set, it switches the service to distributed "
        "mode: the API enqueues, `gif-service worker` processes execute, the API runs the lease sweeper.",
    )
    redis_url: str | None = Field(
        default=None,
        description="Redis URL of the gradient cache (a separate instance or DB from the broker). "
        "Unset: the cache lives on disk under <home>/cache.",
    )
    cache: bool = Field(
        default=True,
        description="Cache target gradients, selections, influence solves and low-rank fits by content "
        "digest (Redis with GIF_REDIS_URL, else <home>/cache), so repeated or related requests skip work.",
    )
    cache_max_bytes: int = Field(
        default=4 * GIB,
        ge=0,
        description="Size cap of the on-disk cache (least recently used entries go first).",
    )
    device: str = Field(
        default="auto",
        pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$",
        description='Where workers compute: "auto" (the GPU when there is one), "cpu", "cuda" or "cuda:N".',
    )
    max_memory_bytes: int = Field(
        default_factory=lambda: _machine_memory() * 4 // 5,
        ge=0,
        description="Memory one job may use: a job the engine sizes over it fails at once with "
        "memory_budget_exceeded, naming what to change (0: no check); on a GPU worker also at most 90% "
        "of the device's free memory when the job starts. Default: 80% of the machine's memory.",
    )
    gpu_pool: str = Field(
        default="default",
        pattern=r"^[a-z0-9_-]{1,32}$",
        description="Compute jobs go to the Celery queue gpu.<pool>; workers listen on the pools they serve.",
    )
    max_job_seconds: float = Field(
        default=21_600.0,
        gt=0,
        description="H, the longest a job may compute: Celery's soft time limit (the job fails "
        "deadline_exceeded); the hard limit is H + 300 s and the broker visibility timeout H + 1800 s.",
    )
    queue_deadline_seconds: float = Field(
        default=0.0,
        ge=0,
        description="A job still validating or queued this long after submission fails deadline_exceeded "
        "(0: jobs wait as long as it takes).",
    )
    redispatch_seconds: float = Field(
        default=600.0,
        gt=0,
        description="Distributed mode: a validating or queued job whose message was published this long "
        "ago without being picked up is published again (duplicates are no-ops: claims are compare-and-set).",
    )
    strict_dispatch: bool = Field(
        default=False,
        description="Distributed mode: answer 503 to a submission when the broker is unreachable. "
        "Default (lenient): accept it; the sweeper publishes it when the broker is back.",
    )
    max_upload_bytes: int = Field(
        default=2 * GIB, ge=1, description="Largest artifact upload in bytes; bigger ones get 413."
    )
    max_session_upload_bytes: int = Field(
        default=64 * GIB,
        ge=1,
        description="Largest file an upload session (POST /v1/uploads) may declare; bigger: 413.",
    )
    upload_part_bytes: int = Field(
        default=64 * MIB,
        ge=1024,
        description="Part size of upload sessions (every part but the last has exactly this size).",
    )
    upload_session_seconds: float = Field(
        default=1 * DAY,
        gt=0,
        description="How long an upload session accepts parts before it expires (410). "
        "Formerly GIF_UPLOAD_SESSION_HOURS.",
    )
    max_open_uploads_per_tenant: int = Field(
        default=16,
        ge=1,
        description="Upload sessions a tenant may have open at once; more: 429 quota-exceeded.",
    )
    max_json_bytes: int = Field(
        default=1 * MIB, ge=1, description="Largest JSON request body in bytes; bigger ones get 413."
    )
    workers: int = Field(
        default=1, ge=0, description="Worker processes of the embedded executor (0: jobs stay queued)."
    )
    lease_seconds: float = Field(
        default=120.0, gt=0, description="A worker's lease on a running job; an expired lease is reaped."
    )
    heartbeat_seconds: float = Field(
        default=30.0, gt=0, description="How often a worker renews its lease and reads the cancel flag."
    )
    max_attempts: int = Field(
        default=3, ge=1, description="Claims of a job before a lost worker fails it with worker_lost."
    )
    torch_threads: int = Field(default=1, ge=1, description="torch intra-op threads per worker process.")
    poll_seconds: float = Field(
        default=0.5, gt=0, description="How long an idle worker sleeps between looks for queued jobs."
    )
    reaper_seconds: float = Field(
        default=5.0,
        gt=0,
        description="How often the lease sweeper runs (reaps expired leases; in distributed mode also "
        "republishes undispatched jobs).",
    )
    progress_seconds: float = Field(
        default=0.5, ge=0, description="Smallest interval between two progress writes of a running job."
    )
    validator_timeout_seconds: float = Field(
        default=300.0, gt=0, description="Time limit of the subprocess that inspects an uploaded artifact."
    )
    inspector_spares: int = Field(
        default=1,
        ge=0,
        le=16,
        description="Upload-inspector interpreters kept started ahead of need (each serves one upload, "
        "then exits); 0: start one per upload.",
    )
    cancel_grace_seconds: float = Field(
        default=120.0,
        ge=0,
        description="How long a cancelled running job gets to stop on its own before an admin may "
        "terminate its worker process (POST /v1/admin/jobs/{id}/terminate).",
    )
    orphan_grace_seconds: float = Field(
        default=6 * 3600.0,
        ge=0,
        description="Blob files that no artifact names (left by a process killed mid-write) and stale "
        "temporary files are deleted once this old, by a sweep every 10 minutes; 0: never.",
    )
    result_ttl_seconds: float = Field(
        default=30 * DAY,
        ge=0,
        description="How long a job's result artifacts are kept (default 30 days): afterwards they answer "
        "410 gone and their blobs are deleted (0: until deleted). Formerly GIF_RESULT_TTL_DAYS.",
    )
    upload_ttl_seconds: float = Field(
        default=0.0,
        ge=0,
        description="How long uploaded artifacts are kept, as GIF_RESULT_TTL_SECONDS (0: until deleted). "
        "Formerly GIF_UPLOAD_TTL_DAYS.",
    )
    idempotency_ttl_seconds: float = Field(
        default=7 * DAY,
        gt=0,
        description="How long an Idempotency-Key is remembered (default 7 days). "
        "Formerly GIF_IDEMPOTENCY_TTL_HOURS.",
    )
    rate_limit_per_second: float = Field(
        default=50.0,
        ge=0,
        description="Sustained requests per second per tenant (0: no limit); over it: 429 + Retry-After. "
        "Shared through Redis across API processes in distributed mode.",
    )
    rate_limit_burst: int = Field(
        default=100, ge=1, description="Requests a tenant may send at once above the rate."
    )
    max_active_jobs_per_tenant: int = Field(
        default=32,
        ge=0,
        description="Jobs a tenant may have validating, queued or running at once (0: no limit); "
        "a submission over it gets 429 quota-exceeded.",
    )
    max_waiting_jobs: int = Field(
        default=10_000,
        ge=0,
        description="Jobs validating or queued over all tenants (0: no limit); over it the service "
        "answers submissions 503 queue-full (backpressure).",
    )
    webhook_allowed_hosts: str = Field(
        default="",
        description="Comma-separated host names (exact) and CIDRs (10.0.0.0/8, ::1/128) that webhook URLs may "
        "target although they are loopback, private, link-local or reserved; everything else such is refused "
        "at submit and at each delivery (SSRF guard). Default: none.",
    )
    webhook_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=60,
        description="Time limit of one webhook delivery attempt (connect, and each read); slower counts as "
        "failed and is retried.",
    )
    webhook_retry_seconds: float = Field(
        default=5.0,
        gt=0,
        description="Delay before the first retry of a failed webhook delivery; it doubles after every "
        "further failure (5 s, 10 s, 20 s, …).",
    )
    webhook_retry_horizon_seconds: float = Field(
        default=1 * DAY,
        gt=0,
        description="How long after its event a webhook delivery is retried (default 24 h); no attempt is "
        "scheduled past it, and the delivery is then given up.",
    )
    webhook_secret_grace_seconds: float = Field(
        default=1 * DAY,
        ge=0,
        description="After POST /v1/webhooks/secret/rotate, how long deliveries stay signed with the former "
        "secret as well as the new one (default 24 h), so receivers can switch without losing events.",
    )
    webhook_poll_seconds: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="How often the API process looks for webhook deliveries that are due.",
    )
    executor: str = Field(
        default="auto",
        description='The executor started with the API, as "module:Class"; "none" starts no executor; '
        '"auto": the embedded worker processes, or the Celery dispatcher when GIF_BROKER_URL is set.',
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The usual sources, and the deprecated variables (:class:`_DeprecatedEnv`)."""
        return (
            init_settings,
            env_settings,
            _DeprecatedEnv(settings_cls),
            dotenv_settings,
            file_secret_settings,
        )

    @model_validator(mode="before")
    @classmethod
    def _convert_deprecated(cls, data: Any) -> Any:
        """A former setting in hours or days (variable or keyword) becomes its setting in seconds."""
        if not isinstance(data, dict) or not DEPRECATED.keys() & data.keys():
            return data
        data = dict(data)
        for old, (new, unit) in DEPRECATED.items():
            if old not in data:
                continue
            value = data.pop(old)
            if new in data:
                raise ValueError(
                    f"{env_name(old)} and {env_name(new)} are both set: keep only {env_name(new)} "
                    f"(in seconds; {env_name(old)} is its deprecated form in {_unit(unit)})"
                )
            try:
                data[new] = float(value) * unit
            except (TypeError, ValueError):
                raise ValueError(
                    f"{env_name(old)} ({value!r}) is not a number of {_unit(unit)}; "
                    f"better, set {env_name(new)} in seconds"
                ) from None
            if old not in _warned:
                _warned.add(old)
                log.warning("deprecated_setting", variable=env_name(old), replacement=env_name(new),
                            seconds=data[new])  # fmt: skip
        return data

    @model_validator(mode="after")
    def _cross_checked(self) -> Settings:
        if problems := cross_check(self):
            raise ValueError("\n".join(problems))
        return self

    @field_validator("webhook_allowed_hosts")
    @classmethod
    def _allow_list_parses(cls, value: str) -> str:
        """A CIDR that does not parse is refused at start-up, not found wrong at the first delivery."""
        from .webhook_targets import AllowList

        AllowList.parse(value)
        return value

    @field_validator("blob_url", "s3_endpoint_url", "s3_public_endpoint_url", "s3_region", "database_url",
                     "broker_url", "redis_url", mode="before")  # fmt: skip
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """``GIF_BLOB_URL=`` (as compose writes ``${GIF_BLOB_URL:-}``) means unset, not an invalid URL."""
        return None if value == "" else value

    @property
    def distributed(self) -> bool:
        """Jobs go through a Celery broker to `gif-service worker` processes."""
        return bool(self.broker_url)

    @property
    def executor_path(self) -> str:
        """The effective executor, as "module:Class" or "none"."""
        if self.executor != "auto":
            return self.executor
        return "workers.distributed:CeleryExecutor" if self.distributed else "workers.local:LocalExecutor"

    @property
    def db_url(self) -> str:
        """The effective database URL."""
        return self.database_url or f"sqlite:///{(self.home / 'gif.db').resolve()}"

    @property
    def blob_root(self) -> Path:
        """Root folder of the content-addressed blob store."""
        return self.home / "blobs"

    @property
    def admins(self) -> frozenset[str]:
        return frozenset(t.strip() for t in self.admin_tenants.split(",") if t.strip())

    @property
    def key_file(self) -> Path:
        """The API key file: GIF_API_KEY_FILE or <home>/api-keys.txt."""
        return self.api_key_file or self.home / "api-keys.txt"


def _machine_memory() -> int:
    """Physical memory of this machine in bytes (0 where the platform does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def env_name(field: str) -> str:
    """The environment variable of a setting: ``lease_seconds`` → ``GIF_LEASE_SECONDS``."""
    return f"{Settings.model_config.get('env_prefix', '')}{field}".upper()


def _unit(seconds: float) -> str:
    return "hours" if seconds == HOUR else "days"


class _DeprecatedEnv(PydanticBaseSettingsSource):
    """The former variables in hours or days (:data:`DEPRECATED`), under their former names, for
    ``Settings._convert_deprecated`` to convert (the environment source reads only the fields)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # not used: __call__ reads the variables itself

    def __call__(self) -> dict[str, Any]:
        environ = {name.upper(): value for name, value in os.environ.items()}
        return {old: environ[env_name(old)] for old in DEPRECATED if env_name(old) in environ}


def cross_check(settings: Settings) -> list[str]:
    """What contradicts what in ``settings``, one sentence each naming the variables and what to
    change (empty: nothing). Only invariants the code relies on are checked."""
    problems = []
    # workers/heartbeat.py renews the lease every GIF_HEARTBEAT_SECONDS; a failed renewal is
    # retried only at the next beat, and the worker gives the job up once a whole lease has
    # passed without one. So two beats must fit in a lease for one failed renewal (a database
    # hiccup, a busy SQLite) not to lose the job to the reaper.
    beat, lease = settings.heartbeat_seconds, settings.lease_seconds
    if 2 * beat >= lease:
        why = (
            "a lease expires before its first renewal, so every running job would be reaped"
            if beat >= lease
            else "a failed renewal is retried one beat later, after the lease has expired, so a single "
            "database hiccup would lose the running job to the reaper"
        )
        problems.append(
            f"GIF_HEARTBEAT_SECONDS ({beat:g}) must be below half of GIF_LEASE_SECONDS ({lease:g}): {why}; "
            f"set GIF_HEARTBEAT_SECONDS below {lease / 2:g} or GIF_LEASE_SECONDS above {2 * beat:g} "
            "(defaults: 30 and 120)"
        )
    # An upload waits in a temporary file of the blob store while the inspector reads it (for up
    # to GIF_VALIDATOR_TIMEOUT_SECONDS + INSPECTOR_KILL_MARGIN); the orphan sweep deletes
    # temporary files older than GIF_ORPHAN_GRACE_SECONDS.
    grace = settings.orphan_grace_seconds
    inspection = settings.validator_timeout_seconds + INSPECTOR_KILL_MARGIN
    if 0 < grace <= inspection:
        problems.append(
            f"GIF_ORPHAN_GRACE_SECONDS ({grace:g}) must be 0 (no sweep) or above GIF_VALIDATOR_TIMEOUT_SECONDS "
            f"+ {INSPECTOR_KILL_MARGIN:g} ({inspection:g}): the orphan sweep would delete an upload's "
            "temporary file while the inspector still reads it; raise GIF_ORPHAN_GRACE_SECONDS (default "
            "21600) or lower GIF_VALIDATOR_TIMEOUT_SECONDS"
        )
    # jobs/webhooks.py (next_attempt) schedules no retry past the horizon: a first retry delay
    # beyond it would give every failed delivery up after its first attempt.
    first, horizon = settings.webhook_retry_seconds, settings.webhook_retry_horizon_seconds
    if first >= horizon:
        problems.append(
            f"GIF_WEBHOOK_RETRY_SECONDS ({first:g}) must be below GIF_WEBHOOK_RETRY_HORIZON_SECONDS ({horizon:g}): "
            "a failed webhook delivery would never be retried; lower the first or raise the second "
            "(defaults: 5 and 86400)"
        )
    return problems


def describe(error: ValidationError) -> str:
    """The problems of a refused ``Settings()``, one per line, by environment variable (values of
    URLs and keys left out: they may hold passwords)."""
    lines = []
    for problem in error.errors():
        cause = (problem.get("ctx") or {}).get("error")
        message = str(cause) if isinstance(cause, ValueError) else problem["msg"]
        if not problem["loc"]:  # a model validator: the message names its variables
            lines += message.splitlines()
            continue
        field = str(problem["loc"][0])
        secret = field.endswith("_url") or field == "api_keys"
        value = "" if secret else f" ({problem.get('input')!r})"
        lines.append(f"{env_name(field)}{value}: {message}")
    return "\n".join(lines)
