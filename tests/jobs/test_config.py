"""Settings: durations in seconds, the deprecated hour/day variables, and the start-up cross-checks
(each one with the Settings class directly, then through `gif-service serve` / `worker`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from jobs import config
from jobs.config import DEPRECATED, Settings, cross_check, describe

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_gif_environment(monkeypatch):
    """Only what a test sets: no GIF_* variable of the machine running the suite."""
    for name in list(os.environ):
        if name.upper().startswith("GIF_"):
            monkeypatch.delenv(name)


class Recorder:
    def __init__(self) -> None:
        self.warnings: list[tuple[str, dict]] = []

    def warning(self, event: str, **fields: object) -> None:
        self.warnings.append((event, fields))


@pytest.fixture
def logged(monkeypatch) -> Recorder:
    recorder = Recorder()
    monkeypatch.setattr(config, "log", recorder)
    monkeypatch.setattr(config, "_warned", set())
    return recorder


def _refused(**values: object) -> str:
    with pytest.raises(ValidationError) as caught:
        Settings(**values)
    return describe(caught.value)


# -- every duration in seconds ----------------------------------------------------------------------


def test_every_duration_setting_is_in_seconds():
    durations = [name for name in Settings.model_fields if name.endswith(("_hours", "_days", "_minutes"))]
    assert durations == []
    assert {new for new, _ in DEPRECATED.values()} <= Settings.model_fields.keys()


def test_the_defaults_keep_their_lengths():
    settings = Settings()
    assert settings.upload_session_seconds == 24 * 3600
    assert settings.result_ttl_seconds == 30 * 86400
    assert settings.upload_ttl_seconds == 0
    assert settings.idempotency_ttl_seconds == 7 * 86400


@pytest.mark.parametrize(
    ("old", "value", "field", "seconds"),
    [
        ("GIF_UPLOAD_SESSION_HOURS", "2", "upload_session_seconds", 7200),
        ("GIF_RESULT_TTL_DAYS", "1.5", "result_ttl_seconds", 129_600),
        ("GIF_UPLOAD_TTL_DAYS", "0", "upload_ttl_seconds", 0),
        ("GIF_IDEMPOTENCY_TTL_HOURS", "168", "idempotency_ttl_seconds", 604_800),
    ],
)
def test_a_deprecated_variable_is_converted_with_a_warning(monkeypatch, logged, old, value, field, seconds):
    monkeypatch.setenv(old, value)
    assert getattr(Settings(), field) == seconds
    new = f"GIF_{field.upper()}"
    assert logged.warnings == [
        ("deprecated_setting", {"variable": old, "replacement": new, "seconds": seconds})
    ]
    Settings()
    assert len(logged.warnings) == 1  # once per process


def test_deprecated_names_are_read_whatever_their_case_and_as_keywords(monkeypatch, logged):
    monkeypatch.setenv("gif_result_ttl_days", "2")
    assert Settings().result_ttl_seconds == 2 * 86400
    assert Settings(upload_ttl_days=1).upload_ttl_seconds == 86400


def test_the_new_name_is_read(monkeypatch):
    monkeypatch.setenv("GIF_RESULT_TTL_SECONDS", "60")
    assert Settings().result_ttl_seconds == 60


def test_old_and_new_names_together_are_refused(monkeypatch, logged):
    monkeypatch.setenv("GIF_RESULT_TTL_DAYS", "2")
    monkeypatch.setenv("GIF_RESULT_TTL_SECONDS", "60")
    message = _refused()
    assert "GIF_RESULT_TTL_DAYS and GIF_RESULT_TTL_SECONDS are both set" in message
    assert "keep only GIF_RESULT_TTL_SECONDS" in message
    monkeypatch.delenv("GIF_RESULT_TTL_SECONDS")
    assert "both set" in _refused(result_ttl_seconds=60)  # a keyword and a variable, likewise


def test_a_deprecated_variable_that_is_not_a_number_is_named(monkeypatch, logged):
    monkeypatch.setenv("GIF_UPLOAD_SESSION_HOURS", "a day")
    assert _refused() == (
        "GIF_UPLOAD_SESSION_HOURS ('a day') is not a number of hours; better, set GIF_UPLOAD_SESSION_SECONDS in seconds"
    )


def test_a_converted_value_still_meets_the_new_bounds(monkeypatch, logged):
    monkeypatch.setenv("GIF_RESULT_TTL_DAYS", "-1")
    assert _refused().startswith(
        "GIF_RESULT_TTL_SECONDS (-86400.0): Input should be greater than or equal to 0"
    )


# -- cross-checks -----------------------------------------------------------------------------------


def test_the_defaults_and_the_test_stacks_pass_the_cross_checks(monkeypatch):
    from tests.stack import FAST

    assert cross_check(Settings()) == []
    for name, value in FAST.items():
        monkeypatch.setenv(name, value)
    assert cross_check(Settings()) == []


def test_a_heartbeat_slower_than_the_lease_is_refused():
    message = _refused(heartbeat_seconds=200, lease_seconds=120)
    assert message == (
        "GIF_HEARTBEAT_SECONDS (200) must be below half of GIF_LEASE_SECONDS (120): a lease expires "
        "before its first renewal, so every running job would be reaped; set GIF_HEARTBEAT_SECONDS "
        "below 60 or GIF_LEASE_SECONDS above 400 (defaults: 30 and 120)"
    )


@pytest.mark.parametrize("beat", [60, 61, 119.9])
def test_a_heartbeat_without_room_for_one_failed_renewal_is_refused(beat):
    message = _refused(heartbeat_seconds=beat, lease_seconds=120)
    assert message.startswith(
        f"GIF_HEARTBEAT_SECONDS ({beat:g}) must be below half of GIF_LEASE_SECONDS (120)"
    )
    assert "a single database hiccup would lose the running job" in message


def test_a_heartbeat_below_half_the_lease_is_accepted():
    assert Settings(heartbeat_seconds=59.9, lease_seconds=120).heartbeat_seconds == 59.9
    assert Settings(heartbeat_seconds=0.5, lease_seconds=3).lease_seconds == 3


def test_an_orphan_grace_shorter_than_an_inspection_is_refused():
    message = _refused(orphan_grace_seconds=300, validator_timeout_seconds=300)
    assert message.startswith(
        "GIF_ORPHAN_GRACE_SECONDS (300) must be 0 (no sweep) or above GIF_VALIDATOR_TIMEOUT_SECONDS + 5 (305)"
    )
    assert "raise GIF_ORPHAN_GRACE_SECONDS" in message
    assert Settings(orphan_grace_seconds=0, validator_timeout_seconds=300).orphan_grace_seconds == 0
    assert Settings(orphan_grace_seconds=306, validator_timeout_seconds=300).orphan_grace_seconds == 306


def test_every_contradiction_is_reported_at_once():
    lines = _refused(heartbeat_seconds=10, lease_seconds=10, orphan_grace_seconds=1).splitlines()
    assert [line.split(" (")[0] for line in lines] == ["GIF_HEARTBEAT_SECONDS", "GIF_ORPHAN_GRACE_SECONDS"]


def test_celery_visibility_timeout_exceeds_the_hard_time_limit():
    """Not a setting of its own: both follow GIF_MAX_JOB_SECONDS, and the redelivery of a
    message must come after the hard limit has killed the job that holds it."""
    from workers.celery_app import celery_config

    for longest in (1, 60, 21_600, 7 * 86_400):
        conf = celery_config(Settings(broker_url="redis://x:6379/0", max_job_seconds=longest))
        hard = conf["task_time_limit"]
        assert conf["task_soft_time_limit"] < hard
        for visibility in (
            conf["visibility_timeout"],
            conf["broker_transport_options"]["visibility_timeout"],
            conf["result_backend_transport_options"]["visibility_timeout"],
        ):
            assert visibility > hard


# -- how a refusal reads --------------------------------------------------------------------------


def test_field_errors_are_named_by_variable_and_secrets_are_not_echoed():
    lines = _refused(lease_seconds=-1, database_url=None, blob_url="s3://UPPER:pw@x").splitlines()
    assert "GIF_LEASE_SECONDS (-1): Input should be greater than 0" in lines
    blob = next(line for line in lines if line.startswith("GIF_BLOB_URL"))
    assert "pw" not in blob


def _cli(*args: str, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("GIF_")}
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        env={**clean, "GIF_HOME": str(tmp_path / "data"), **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_the_cli_prints_the_contradiction_and_exits_2(tmp_path, command):
    env = {
        "GIF_HEARTBEAT_SECONDS": "200",
        "GIF_LEASE_SECONDS": "120",
        "GIF_BROKER_URL": "redis://127.0.0.1:1/0",
    }
    done = _cli(command, "--port" if command == "serve" else "--concurrency", "1", env=env, tmp_path=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(
        "error: invalid settings:\n  GIF_HEARTBEAT_SECONDS (200) must be below half"
    )
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "data").exists()  # refused before anything was created


def test_the_cli_refuses_old_and_new_names_together(tmp_path):
    env = {"GIF_UPLOAD_TTL_DAYS": "1", "GIF_UPLOAD_TTL_SECONDS": "60"}
    done = _cli("serve", env=env, tmp_path=tmp_path)
    assert done.returncode == 2
    assert "GIF_UPLOAD_TTL_DAYS and GIF_UPLOAD_TTL_SECONDS are both set" in done.stderr
