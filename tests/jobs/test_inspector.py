"""The upload inspector's interpreters: started ahead, one upload each, isolated, cleaned up."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from jobs.errors import InvalidArtifact
from jobs.inspector import Inspector


@pytest.fixture
def dataset(tmp_path) -> Path:
    path = tmp_path / "tiny.safetensors"
    save_file({"inputs": torch.randn(6, 3), "labels": torch.tensor([0, 1, 2, 2, 1, 0])}, str(path))
    return path


@pytest.fixture
def inspector():
    inspector = Inspector(timeout_seconds=60, spares=1)
    yield inspector
    inspector.close()


def _waiting_pids(inspector: Inspector) -> list[int]:
    return [spare.proc.pid for spare in inspector._ready]


def _gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_a_prestarted_interpreter_serves_one_upload_then_exits(inspector, dataset, tmp_path):
    inspector.prestart()
    [first] = _waiting_pids(inspector)
    found = inspector.inspect(dataset, "dataset", tmp_path / "out.safetensors")
    assert found.format == "safetensors"
    assert found.metadata["n_samples"] == 6 and found.metadata["label_counts"] == [2, 2, 2]
    assert (inspector.warm, inspector.cold) == (1, 0)
    assert _gone(first)  # one upload per interpreter
    [second] = _waiting_pids(inspector)  # a replacement is already importing torch
    assert second != first
    inspector.inspect(dataset, "dataset", tmp_path / "out.safetensors")
    assert (inspector.warm, inspector.cold) == (2, 0)


def test_a_dead_spare_is_replaced_by_a_fresh_interpreter(inspector, dataset, tmp_path):
    inspector.prestart()
    [spare] = inspector._ready
    spare.proc.kill()
    spare.proc.wait()
    found = inspector.inspect(dataset, "dataset", tmp_path / "out.safetensors")
    assert found.metadata["n_samples"] == 6
    assert (inspector.warm, inspector.cold) == (0, 1)


def test_without_spares_nothing_waits(dataset, tmp_path):
    inspector = Inspector(timeout_seconds=60, spares=0)
    inspector.inspect(dataset, "dataset", tmp_path / "out.safetensors")
    assert (inspector.warm, inspector.cold) == (0, 1)
    assert _waiting_pids(inspector) == []


def test_close_stops_waiting_interpreters_and_starts_no_more(dataset, tmp_path):
    inspector = Inspector(timeout_seconds=60, spares=2)
    inspector.prestart()
    pids = _waiting_pids(inspector)
    assert len(pids) == 2
    inspector.close()
    assert all(_gone(pid) for pid in pids)
    inspector.prestart()
    assert _waiting_pids(inspector) == []


def test_interpreters_get_no_credentials(inspector, monkeypatch):
    monkeypatch.setenv("GIF_API_KEYS", "t:secret-key-0123456789")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "also-secret")
    inspector.prestart()
    [pid] = _waiting_pids(inspector)
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    names = {entry.split(b"=", 1)[0] for entry in environ if entry}
    assert b"GIF_API_KEYS" not in names and b"AWS_SECRET_ACCESS_KEY" not in names
    assert not any(b"secret" in entry for entry in environ)
    cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    assert cwd.name.startswith("gif-inspect-") and not any(cwd.iterdir())


def test_a_file_that_is_not_a_dataset_is_refused_with_its_reason(inspector, tmp_path):
    bad = tmp_path / "bad.safetensors"
    save_file({"inputs": torch.randn(4, 3)}, str(bad))
    with pytest.raises(InvalidArtifact, match="labels") as refused:
        inspector.inspect(bad, "dataset", tmp_path / "out.safetensors")
    assert str(bad) not in str(refused.value)  # server paths never reach the client


def test_working_folders_are_removed(inspector, dataset, tmp_path):
    inspector.prestart()
    folder = Path(inspector._ready[0].workdir)
    assert folder.is_dir()
    inspector.inspect(dataset, "dataset", tmp_path / "out.safetensors")
    assert not folder.exists()
