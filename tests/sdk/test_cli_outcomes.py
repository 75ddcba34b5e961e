"""Exit codes 1 / 3 / 4 / 6 of ``wait`` and ``submit --wait`` (job outcomes scripted with a MockTransport)."""

from __future__ import annotations

import httpx
import pytest
from typer.testing import CliRunner

import service.cli
from gif_client import Client


def scripted(monkeypatch, final: str, status_code: int = 200) -> None:
    def handler(request):
        if status_code != 200:
            return httpx.Response(status_code, json={"code": "internal", "detail": "boom"})
        job = {"id": "job_1", "status": final, "progress": {"stage": "solving", "fraction": 0.5}}
        if final == "failed":
            job["error"] = {"code": "numerical_error", "message": "nan"}
        return httpx.Response(200, json=job, headers={"Retry-After": "0"})

    def make(ctx):
        c = Client("http://svc", api_key="k", transport=httpx.MockTransport(handler))
        c._http.sleep = lambda s: None
        return c

    monkeypatch.setattr(service.cli, "_client", make)


@pytest.mark.parametrize(
    ("final", "code"), [("succeeded", 0), ("failed", 1), ("cancelled", 3), ("running", 4)]
)
def test_wait_exit_codes(monkeypatch, final, code):
    scripted(monkeypatch, final)
    result = CliRunner().invoke(service.cli.app, ["wait", "job_1", "--timeout", "0.05"])
    assert result.exit_code == code, result.output
    assert '"job_1"' in result.stdout  # the last job object is printed even on failure
    assert "solving" in result.stderr


def test_server_error_after_retries_is_6(monkeypatch):
    scripted(monkeypatch, "running", status_code=503)
    assert CliRunner().invoke(service.cli.app, ["status", "job_1"]).exit_code == 6
