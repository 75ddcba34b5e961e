"""A real ``gif-service serve`` (uvicorn + one spawned worker) for the SDK and CLI tests.

Uses the process helpers of ``tests/stack.py`` and the digits files of
``tests/service/conftest.py``; one server for the whole ``tests/sdk`` session.
"""

from __future__ import annotations

import pytest

from gif_client import Client
from tests import factories
from tests.service.conftest import digits, files, trained  # noqa: F401  (fixtures)
from tests.stack import KEY, Stack

PART = 64 * 1024


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    # small upload-session parts, so the test files span several
    with Stack(
        "embedded", tmp_path_factory.mktemp("sdk"), extra_env={"GIF_UPLOAD_PART_BYTES": str(PART)}
    ) as stack:
        stack.url = f"http://127.0.0.1:{stack.port}"
        yield stack


@pytest.fixture(scope="session")
def client(server):
    with Client(server.url, api_key=KEY, timeout=30) as c:
        yield c


@pytest.fixture(scope="session")
def uploaded(client, files) -> dict[str, dict]:  # noqa: F811  (the imported fixture)
    """Checkpoint and training set uploaded through the SDK."""
    return {
        "checkpoint": client.upload(files["checkpoint"], "checkpoint"),
        "train": client.upload(files["train"], "dataset"),
    }


def remove_body(uploaded: dict, cls: int = 3) -> dict:
    return {
        "type": "remove",
        "model": {
            "arch": "mlp",
            "config": dict(factories.MLP_CONFIG),
            "checkpoint": uploaded["checkpoint"]["id"],
        },
        "train": uploaded["train"]["id"],
        "forget": {"class": cls},
        "options": {"newton_steps": 1, "hessian_samples": 256},
    }
