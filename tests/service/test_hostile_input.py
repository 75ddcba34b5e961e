"""Hostile input against one real server (``gif-service serve`` with a worker, tests/stack.py).

Every case is a row: what is sent, and the exact answer — a 4xx problem+json with its ``code``
(and a fragment of its ``detail`` or its ``errors[].loc``), or, for what only shows when a job
runs, a job that ends ``failed`` with the engine's ``error.code``. After every case the server
process is alive and answers /livez and /readyz, never answered 500, and what is stored is
unchanged except for what the case legitimately created: the artifacts (every id in the
database, read back through the API with its sha256), the jobs (listed through the API, with
their statuses), every file of the blob store with the sha256 of its bytes, the blob store's
temporary folder and the server's TMPDIR (both empty), and every other file under GIF_HOME. No
file anywhere carries a hostile client file name.
"""

from __future__ import annotations

import hashlib
import math
import os
import socket
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import httpx
import numpy as np
import pytest
import torch

import gif
from tests import factories
from tests import hostile as H
from tests import programs as P
from tests.stack import KEY, ROOT, Stack

pytestmark = pytest.mark.slow

MAX_UPLOAD = 8 * 1024 * 1024
VALIDATOR_TIMEOUT = 90
#: An inspection starts a fresh interpreter that imports torch (seconds); a bomb may not take longer.
QUICK = 30.0
TERMINAL = {"succeeded", "failed", "cancelled"}
JSON = {"content-type": "application/json"}
MULTIPART = {"content-type": H.multipart_type()}


# -- the server, its legitimate inputs, and what is stored ----------------------------------------


@dataclass
class Ctx:
    stack: Stack
    client: httpx.Client
    work: Path  # where the test writes its files (outside the server's folders)
    escape: Path  # where a path-traversal file name would land; must never exist
    tmpdir: Path  # the server's TMPDIR
    files: dict[str, Path]
    inputs: dict[str, dict]
    digits: factories.Digits
    trained: torch.nn.Module

    @property
    def data(self) -> Path:
        return self.stack.home / "data"


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, files, digits, trained):
    home = tmp_path_factory.mktemp("hostile")
    tmpdir = home / "server-tmp"
    tmpdir.mkdir()
    stack = Stack("embedded", home, extra_env={
        "GIF_MAX_UPLOAD_BYTES": str(MAX_UPLOAD), "GIF_VALIDATOR_TIMEOUT_SECONDS": str(VALIDATOR_TIMEOUT),
        "GIF_RATE_LIMIT_PER_SECOND": "0", "TMPDIR": str(tmpdir),
    })  # fmt: skip
    with stack:
        client = stack.client
        inputs = {}
        for name, kind in (("checkpoint", "checkpoint"), ("train", "dataset"), ("queries", "dataset")):
            response = upload(client, files[name].read_bytes(), kind, files[name].name.encode())
            assert response.status_code == 201, response.text
            inputs[name] = response.json()
        work = tmp_path_factory.mktemp("hostile-files")
        yield Ctx(stack, client, work, work / "escape", tmpdir, files, inputs, digits, trained)


@dataclass(frozen=True)
class Snapshot:
    artifacts: dict[str, str]  # id -> sha256: ids from the database, sha256 from the API
    jobs: dict[str, str]  # id -> status, from the API
    blobs: dict[str, str]  # path under blobs/sha256 -> sha256 of the bytes
    blob_tmp: list[str]
    server_tmp: list[str]
    other_files: frozenset[str]  # everything else under GIF_HOME but the database and the cache


def snapshot(ctx: Ctx) -> Snapshot:
    with sqlite3.connect(f"file:{ctx.data / 'gif.db'}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT id, sha256 FROM artifacts").fetchall()
    artifacts = {}
    for artifact_id, sha in rows:
        response = ctx.client.get(f"/v1/artifacts/{artifact_id}")
        assert response.status_code == 200 and response.json()["sha256"] == sha, response.text
        artifacts[artifact_id] = sha
    jobs, after = {}, None
    while True:
        params = {"limit": 100, **({"after": after} if after else {})}
        page = ctx.client.get("/v1/jobs", params=params).json()
        jobs.update({job["id"]: job["status"] for job in page["data"]})
        if not page["has_more"]:
            break
        after = page["last_id"]
    blobs = ctx.data / "blobs"
    others = (p.relative_to(ctx.data) for p in ctx.data.rglob("*") if p.is_file())
    return Snapshot(
        artifacts=artifacts,
        jobs=jobs,
        blobs={
            str(p.relative_to(blobs)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in (blobs / "sha256").rglob("*")
            if p.is_file()
        },
        blob_tmp=sorted(p.name for p in (blobs / "tmp").iterdir()),
        # an inspector interpreter started ahead waits in an empty folder of its own
        server_tmp=sorted(p.name for p in ctx.tmpdir.iterdir() if not _waiting_spare(p)),
        other_files=frozenset(
            str(p) for p in others if p.parts[0] not in ("blobs", "cache") and not p.name.startswith("gif.db")
        ),
    )


def _waiting_spare(path: Path) -> bool:
    return path.name.startswith("gif-inspect-") and path.is_dir() and not any(path.iterdir())


@dataclass
class Created:
    """What a case legitimately created."""

    artifacts: set[str] = field(default_factory=set)
    jobs: set[str] = field(default_factory=set)


def check_unchanged(ctx: Ctx, before: Snapshot, created: Created) -> None:
    assert ctx.stack.api is not None and ctx.stack.api.alive(), ctx.stack.log_text()[-3000:]
    assert ctx.client.get("/livez").status_code == 200
    assert ctx.client.get("/readyz").status_code == 200
    log = (ctx.stack.home / "api.log").read_text(errors="replace")
    assert "unhandled_error" not in log and '"status": 500' not in log, log[-3000:]
    after = _settled(ctx)
    assert after.blob_tmp == [], "temporary upload files left behind"
    assert after.server_tmp == [], "inspector scratch folders left behind"
    assert {k: v for k, v in after.artifacts.items() if k in before.artifacts} == before.artifacts
    assert set(after.artifacts) - set(before.artifacts) == created.artifacts
    assert {k: v for k, v in after.jobs.items() if k in before.jobs} == before.jobs
    assert set(after.jobs) - set(before.jobs) == created.jobs
    assert {k: v for k, v in after.blobs.items() if k in before.blobs} == before.blobs, "a blob changed"
    new_blobs = {Path(p).name for p in set(after.blobs) - set(before.blobs)}
    assert new_blobs <= {after.artifacts[a] for a in created.artifacts}, "a blob that no artifact owns"
    assert all(Path(p).name == sha for p, sha in after.blobs.items()), "a blob whose bytes are not its name"
    assert after.other_files == before.other_files
    assert not ctx.escape.exists()
    assert [p for p in ctx.stack.home.rglob("*") if "owned" in p.name or "passwd" in p.name] == []


def _settled(ctx: Ctx, timeout: float = 10) -> Snapshot:
    """The snapshot once the temporary folders are empty (a disconnected upload is cleaned up
    when the server notices the disconnection)."""
    deadline = time.monotonic() + timeout
    while True:
        current = snapshot(ctx)
        if (not current.blob_tmp and not current.server_tmp) or time.monotonic() > deadline:
            return current
        time.sleep(0.1)


# -- request helpers --------------------------------------------------------------------------------


def upload(client: httpx.Client, content: bytes, kind: str | None, filename: bytes = b"upload.bin"):
    parts = ([("kind", None, kind.encode())] if kind is not None else []) + [("file", filename, content)]
    return client.post("/v1/artifacts", content=H.multipart(*parts), headers=MULTIPART)


def upload_ok(ctx: Ctx, content: bytes, kind: str, filename: bytes = b"upload.bin") -> dict:
    response = upload(ctx.client, content, kind, filename)
    assert response.status_code == 201, response.text
    return response.json()


def expect_problem(
    ctx: Ctx, response: httpx.Response, status: int, code: str, detail: str | None = None
) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == code and body["status"] == status and body["type"].endswith(":" + code), body
    assert body["request_id"] == response.headers["x-request-id"]
    if detail is not None:
        assert detail in body["detail"], body["detail"]
    assert str(ctx.stack.home) not in response.text and str(ctx.work) not in response.text  # no paths
    return body


def locs(body: dict) -> set[tuple]:
    return {tuple(e["loc"]) for e in body.get("errors") or []}


def model_spec(ctx: Ctx, checkpoint: str | None = None) -> dict:
    return {
        "arch": "mlp",
        "config": dict(factories.MLP_CONFIG),
        "checkpoint": checkpoint or ctx.inputs["checkpoint"]["id"],
    }


def remove_body(ctx: Ctx, **changes) -> dict:
    body = {
        "type": "remove", "model": model_spec(ctx), "train": ctx.inputs["train"]["id"],
        "forget": {"class": 3}, "options": {"newton_steps": 1, "hessian_samples": 256},
    }  # fmt: skip
    body.update(changes)
    return body


def relabel_body(ctx: Ctx, relabel: dict) -> dict:
    body = remove_body(ctx, type="relabel", relabel=relabel)
    del body["forget"]
    return body


def post_job(ctx: Ctx, body: dict) -> httpx.Response:
    return ctx.client.post("/v1/jobs", json=body)


def wait(ctx: Ctx, job_id: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = ctx.client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in TERMINAL:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {job['status']}")


def run_job(ctx: Ctx, body: dict) -> dict:
    response = post_job(ctx, body)
    assert response.status_code == 202, response.text
    return wait(ctx, response.json()["id"])


def expect_failed_job(ctx: Ctx, body: dict, code: str, message: str) -> dict:
    job = run_job(ctx, body)
    assert job["status"] == "failed", job
    assert job["error"]["code"] == code and message in job["error"]["message"], job["error"]
    assert str(ctx.stack.home) not in job["error"]["message"]
    return job


def checkpoint_bytes(ctx: Ctx, state: dict[str, torch.Tensor] | torch.nn.Module) -> bytes:
    path = ctx.work / "checkpoint.safetensors"
    gif.io.save_checkpoint(state, path)
    return path.read_bytes()


def dataset_bytes(ctx: Ctx, inputs, labels) -> bytes:
    """An npz (``gif.io.save_dataset`` refuses what some cases need to send)."""
    path = ctx.work / "dataset.npz"
    np.savez(path, inputs=np.asarray(inputs), labels=np.asarray(labels))
    return path.read_bytes()


def trained_state(ctx: Ctx, convert: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: convert(v.clone()) for k, v in ctx.trained.state_dict().items()}


# -- the cases ------------------------------------------------------------------------------------------

CASES: dict[str, Callable[[Ctx], Created | None]] = {}


def case(name: str):
    def register(fn: Callable[[Ctx], Created | None]):
        CASES[name] = fn
        return fn

    return register


# Uploads refused by the inspector: (name, file builder, kind, status, code, detail, must be quick).

_W = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
_HUGE = {"w": {"dtype": "F32", "shape": [2**30], "data_offsets": [0, 2**32]}}


def _nan_inputs(ctx: Ctx) -> bytes:
    x = ctx.digits.x_test[:20].numpy().copy()
    x[3, 0, 0, 0], x[7, 0, 1, 1] = np.nan, np.inf
    return dataset_bytes(ctx, x, ctx.digits.y_test[:20].numpy())


def _float_labels(ctx: Ctx) -> bytes:
    labels = ctx.digits.y_test[:20].numpy().astype(np.float32)
    return dataset_bytes(ctx, ctx.digits.x_test[:20].numpy(), labels)


REFUSED_UPLOADS: list[tuple[str, Callable[[Ctx], bytes], str, int, str, str, bool]] = [
    ("npz-bzip2-bomb-4GiB-from-3KB", lambda ctx: H.npz_bz2_bomb(ctx.work / "bomb.npz").read_bytes(),
     "dataset", 422, "invalid-artifact", "compressed with bzip2", True),
    ("pt-zip-data.pkl-bomb-3.5GiB", lambda ctx: H.pt_pickle_bomb(ctx.work / "bomb.pt").read_bytes(),
     "checkpoint", 422, "invalid-artifact", "over the limit", True),
    ("pt-zip-storage-bomb-3.5GiB", lambda ctx: H.pt_storage_bomb(ctx.work / "bomb.pt").read_bytes(),
     "checkpoint", 422, "invalid-artifact", "can't allocate memory", True),
    ("pickle-hash-bomb", lambda ctx: H.hash_bomb_pickle(ctx.work / "bomb.pt").read_bytes(),
     "checkpoint", 422, "checkpoint-unsafe", "pickle bomb", True),
    ("pickle-deeply-nested-tuple", lambda ctx: H.deep_tuple_pickle(ctx.work / "deep.pt").read_bytes(),
     "checkpoint", 422, "checkpoint-unsafe", "nests tuples more than 1000 deep", True),
    ("safetensors-truncated", lambda ctx: H.safetensors_bytes(_W, bytes(8))[:-3],
     "checkpoint", 422, "invalid-artifact", "truncated file", False),
    ("safetensors-offsets-beyond-file", lambda ctx: H.safetensors_bytes(_HUGE, bytes(8)),
     "checkpoint", 422, "invalid-artifact", "needs bytes up to 4294967296", False),
    ("safetensors-header-longer-than-file", lambda ctx: H.safetensors_bytes(_W, bytes(8), length=50_000_000),
     "checkpoint", 422, "invalid-artifact", "goes beyond the end of the file", False),
    ("safetensors-header-length-2**63", lambda ctx: H.safetensors_bytes(_W, bytes(8), length=2**63),
     "dataset", 422, "invalid-artifact", "exceeds the 104857600-byte limit", False),
    ("safetensors-header-not-json", lambda ctx: H.safetensors_bytes(b"{'w': not json\xff}", bytes(8)),
     "checkpoint", 422, "invalid-artifact", "header is not JSON", False),
    ("dataset-nan-inf-inputs", _nan_inputs, "dataset", 422, "invalid-artifact", "2 NaN/Inf value(s)", False),
    ("dataset-float-labels", _float_labels, "dataset", 422, "invalid-artifact", "labels must be integers",
     False),
]  # fmt: skip


def _refused_upload(build, kind: str, status: int, code: str, detail: str, quick: bool):
    def run(ctx: Ctx) -> None:
        content = build(ctx)
        start = time.monotonic()
        response = upload(ctx.client, content, kind)
        elapsed = time.monotonic() - start
        expect_problem(ctx, response, status, code, detail)
        if quick:
            assert elapsed < QUICK, f"{elapsed:.1f} s (the validator timeout is {VALIDATOR_TIMEOUT} s)"

    return run


for _name, *_row in REFUSED_UPLOADS:
    case(_name)(_refused_upload(*_row))


@case("canary-pickle")
def _(ctx: Ctx) -> None:
    evil = factories.canary_pickle(ctx.work / "evil.pt", ctx.work / "CANARY")
    response = upload(ctx.client, evil.read_bytes(), "checkpoint", b"evil.pt")
    expect_problem(ctx, response, 422, "checkpoint-unsafe", "would execute code")
    assert not (ctx.work / "CANARY").exists()


def _program(ctx: Ctx) -> Path:
    """A real exported program of a small custom module, dynamic batch (tests/programs.py)."""
    path = ctx.work / "net.pt2"
    if not path.exists():
        torch.manual_seed(0)
        P.export(P.DigitsNet().eval(), torch.randn(4, 1, 8, 8), path)
    return path


#: Hostile .pt2 archives that torch.export.load would let run code (each creates its canary
#: there, tests/engine/test_programs.py): refused at upload, the canary never appears.
PROGRAM_CANARIES = {
    "program-pickled-weight": (P.pickled_weight, "use_pickle"),
    "program-pickled-sample-inputs": (P.pickled_sample_inputs, "sample inputs' pickle names"),
    "program-guard-code": (P.guard_code, "guard code"),
    "program-sympy-expression": (P.sympy_expression, "sympy.sympify"),
}


def _program_canary(build, detail: str):
    def run(ctx: Ctx) -> None:
        canary = ctx.work / "CANARY"
        evil = build(_program(ctx), ctx.work / "evil.pt2", canary)
        response = upload(ctx.client, evil.read_bytes(), "program", b"evil.pt2")
        expect_problem(ctx, response, 422, "checkpoint-unsafe", detail)
        assert not canary.exists()

    return run


for _name, (_build, _detail) in PROGRAM_CANARIES.items():
    case(_name)(_program_canary(_build, _detail))


def _odd_program(how: str):
    def run(ctx: Ctx) -> None:
        odd = P.odd_member(_program(ctx), ctx.work / f"{how}.pt2", how)
        expect_problem(ctx, upload(ctx.client, odd.read_bytes(), "program"), 422, "checkpoint-unsafe")
        assert not ctx.escape.exists() and not Path("/tmp/escape").exists()

    return run


for _how in ("traversal", "absolute", "symlink", "deflated", "duplicate"):
    case(f"program-zip-{_how}")(_odd_program(_how))


@case("program-native-code")
def _(ctx: Ctx) -> None:
    evil = P.extra_member(_program(ctx), ctx.work / "aoti.pt2", "data/aotinductor/model/model.so")
    expect_problem(
        ctx, upload(ctx.client, evil.read_bytes(), "program"), 422, "checkpoint-unsafe", "native code"
    )


@case("program-foreign-call")
def _(ctx: Ctx) -> None:
    evil = P.foreign_target(_program(ctx), ctx.work / "call.pt2", "torch.os.system")
    expect_problem(
        ctx, upload(ctx.client, evil.read_bytes(), "program"), 422, "invalid-artifact", "only ATen"
    )


# The upload request itself.


@case("upload-oversized")
def _(ctx: Ctx) -> None:
    big = os.urandom(MAX_UPLOAD + 1024)
    declared = upload(ctx.client, big, "dataset")  # Content-Length over the limit: refused up front
    expect_problem(ctx, declared, 413, "payload-too-large")
    body = H.multipart(("kind", None, b"dataset"), ("file", b"big.bin", big))
    chunks = (body[i : i + 65536] for i in range(0, len(body), 65536))  # no Content-Length: counted
    streamed = ctx.client.post("/v1/artifacts", content=chunks, headers=MULTIPART)
    expect_problem(ctx, streamed, 413, "payload-too-large")
    just_over = upload(ctx.client, os.urandom(MAX_UPLOAD + 1), "dataset")  # within the multipart allowance
    expect_problem(ctx, just_over, 413, "payload-too-large", f"limit of {MAX_UPLOAD} bytes")


@case("upload-client-disconnects-mid-body")
def _(ctx: Ctx) -> None:
    body = H.multipart(("kind", None, b"dataset"), ("file", b"cut.npz", os.urandom(1_000_000)))
    head = (
        f"POST /v1/artifacts HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: {H.multipart_type()}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", ctx.stack.port), timeout=10) as sock:
        sock.sendall(head + body[: len(body) // 2])
        time.sleep(0.5)  # the server is writing the staged file
        sock.shutdown(socket.SHUT_WR)
        try:
            answer = sock.recv(65536)
        except OSError:
            answer = b""
    assert not answer.startswith(b"HTTP/1.1 2"), answer[:200]


@case("upload-multipart-without-closing-boundary")
def _(ctx: Ctx) -> None:
    content = ctx.files["queries"].read_bytes()  # a valid file: only the end of the body is missing
    body = H.multipart(("kind", None, b"dataset"), ("file", b"q.safetensors", content), close=False)
    response = ctx.client.post("/v1/artifacts", content=body, headers=MULTIPART)
    expect_problem(ctx, response, 400, "bad-request", "closing boundary")


@case("upload-wrong-or-missing-kind")
def _(ctx: Ctx) -> None:
    content = ctx.files["queries"].read_bytes()
    for kind in ("weights", None):
        problem = expect_problem(ctx, upload(ctx.client, content, kind), 422, "validation-error")
        assert locs(problem) == {("body", "kind")}


@case("upload-missing-file-part")
def _(ctx: Ctx) -> None:
    body = H.multipart(("kind", None, b"dataset"), ("other", b"x.npz", b"123"))
    response = ctx.client.post("/v1/artifacts", content=body, headers=MULTIPART)
    assert locs(expect_problem(ctx, response, 422, "validation-error")) == {("body", "file")}


@case("upload-two-file-parts")
def _(ctx: Ctx) -> None:
    content = ctx.files["queries"].read_bytes()
    body = H.multipart(("kind", None, b"dataset"), ("file", b"a.st", content), ("file", b"b.st", content))
    response = ctx.client.post("/v1/artifacts", content=body, headers=MULTIPART)
    problem = expect_problem(ctx, response, 422, "validation-error", "only one file per upload")
    assert locs(problem) == {("body", "file")}


@case("upload-broken-boundary-and-wrong-content-type")
def _(ctx: Ctx) -> None:
    body = H.multipart(("kind", None, b"dataset"), ("file", b"a", b"123"), boundary=b"other-boundary")
    response = ctx.client.post("/v1/artifacts", content=body, headers=MULTIPART)
    expect_problem(ctx, response, 400, "bad-request", "malformed multipart body")
    no_boundary = {"content-type": "multipart/form-data"}
    response = ctx.client.post("/v1/artifacts", content=body, headers=no_boundary)
    expect_problem(ctx, response, 415, "unsupported-media-type")
    response = ctx.client.post("/v1/artifacts", content=b"1", headers={"content-type": "text/csv"})
    expect_problem(ctx, response, 415, "unsupported-media-type")
    octets = {"content-type": "application/octet-stream", "x-artifact-kind": "checkpoint"}
    response = ctx.client.post("/v1/artifacts", content=b"1", headers=octets)  # a raw body: inspected
    expect_problem(ctx, response, 422, "invalid-artifact")


# Client file names: metadata only, sanitised; nothing is written anywhere but the blob store.


def _filename_case(name: str, raw_name: Callable[[Ctx], bytes], expected: str) -> None:
    @case(name)
    def run(ctx: Ctx) -> Created:
        start = sum(map(ord, name)) % 50  # different bytes per case: no dedup
        content = dataset_bytes(ctx, ctx.digits.x_test[start : start + 10].numpy(), np.arange(10))
        artifact = upload_ok(ctx, content, "dataset", raw_name(ctx))
        assert artifact["filename"] == expected
        download = ctx.client.get(f"/v1/artifacts/{artifact['id']}/content")
        assert download.status_code == 200
        assert hashlib.sha256(download.content).hexdigest() == artifact["sha256"]
        disposition = download.headers["content-disposition"]
        prefix, quoted = disposition.split("''", 1)
        assert prefix == "attachment; filename*=UTF-8" and unquote(quoted) == expected
        assert all(0x21 <= ord(c) < 0x7F for c in quoted)  # percent-encoded
        return Created(artifacts={artifact["id"]})


_filename_case(
    "filename-relative-traversal",
    lambda ctx: os.path.relpath(ctx.escape / "owned.npz", ROOT).encode() + b"\\..\\..\\passwd.npz",
    "passwd.npz",
)
_filename_case(
    "filename-absolute-with-nul-and-controls",
    lambda ctx: str(ctx.escape).encode() + b"/own\x00ed\x01\x1b[31m.npz",
    "owned[31m.npz",
)
_filename_case(
    "filename-long-with-unicode-tricks",
    # division slashes and a fullwidth solidus look like "/", U+202E reverses the display; 1000 é
    lambda ctx: ("..\u2215..\u2215etc\u2215passwd\u202eznp.\uff0f" + "é" * 1000 + ".npz").encode(),
    ("\u2215..\u2215etc\u2215passwdznp.\uff0f" + "é" * 1000)[:200],
)


@case("filename-over-the-part-header-limit")
def _(ctx: Ctx) -> None:
    response = upload(ctx.client, ctx.files["queries"].read_bytes(), "dataset", b"passwd" + b"x" * 20_000)
    expect_problem(ctx, response, 400, "bad-request", "Maximum header size exceeded")


# Job bodies.


@case("job-2-million-indices-over-the-body-limit")
def _(ctx: Ctx) -> None:
    response = post_job(ctx, remove_body(ctx, forget={"indices": list(range(2_000_000))}))
    expect_problem(ctx, response, 413, "payload-too-large")


@case("job-index-list-over-max-length")
def _(ctx: Ctx) -> None:
    response = post_job(ctx, remove_body(ctx, forget={"indices": list(range(100_001))}))
    assert len(response.request.content) < 1024 * 1024  # within the body limit
    problem = expect_problem(ctx, response, 422, "validation-error")
    assert [(tuple(e["loc"]), e["type"]) for e in problem["errors"]] == [
        (("body", "forget", "indices"), "too_long")
    ]


@case("job-duplicated-and-negative-indices")
def _(ctx: Ctx) -> None:
    response = post_job(ctx, remove_body(ctx, forget={"indices": [5, 9, 5]}))
    dup = expect_problem(ctx, response, 422, "validation-error")
    assert "duplicated index 5" in dup["errors"][0]["msg"]
    response = post_job(ctx, remove_body(ctx, forget={"indices": [1, -2, 3, -(2**40)]}))
    negative = expect_problem(ctx, response, 422, "validation-error")
    assert locs(negative) == {("body", "forget", "indices", 1), ("body", "forget", "indices", 3)}
    response = post_job(ctx, relabel_body(ctx, {"indices": [0, -1], "labels": [1, -3]}))
    relabel = expect_problem(ctx, response, 422, "validation-error")
    assert locs(relabel) == {("body", "relabel", "indices", 1), ("body", "relabel", "labels", 1)}


@case("job-unknown-fields-at-every-level")
def _(ctx: Ctx) -> None:
    body = remove_body(ctx, surprise=1)
    for part in (body["model"], body["forget"], body["options"]):
        part["surprise"] = 2
    problem = expect_problem(ctx, post_job(ctx, body), 422, "validation-error")
    assert locs(problem) == {
        ("body", "surprise"), ("body", "model", "surprise"), ("body", "forget", "surprise"),
        ("body", "options", "surprise"),
    }  # fmt: skip
    assert {e["type"] for e in problem["errors"]} == {"extra_forbidden"}
    config = remove_body(ctx)
    config["model"]["config"]["surprise"] = 3  # the architecture's keyword arguments
    problem = expect_problem(ctx, post_job(ctx, config), 422, "validation-error", "surprise")
    assert locs(problem) == {("body", "model", "config")}
    problem = expect_problem(
        ctx, post_job(ctx, relabel_body(ctx, {"indices": [1], "labels": [2], "surprise": 0})), 422,
        "validation-error",
    )  # fmt: skip
    assert locs(problem) == {("body", "relabel", "surprise")}
    scores = {
        "type": "scores", "model": model_spec(ctx), "train": ctx.inputs["train"]["id"],
        "queries": ctx.inputs["queries"]["id"], "options": {"surprise": 1, "tol": 1e-3},
    }  # fmt: skip
    problem = expect_problem(ctx, post_job(ctx, scores), 422, "validation-error")
    assert locs(problem) == {("body", "options", "surprise")}


# Raw job bodies: (name, bytes, content type, status, code, an expected errors[].loc or a
# substring of the detail).

_MALFORMED = b'{"type": "remove", "forget": {"class": 3}'
RAW_BODIES: list[tuple[str, bytes, str, int, str, tuple | str]] = [
    ("json-invalid-utf8", b'{"type": "remove", "train": "art_\xff\xfe"}', "application/json", 400,
     "bad-request", "not valid UTF-8"),
    ("json-malformed", _MALFORMED, "application/json", 422, "validation-error", ("body", len(_MALFORMED))),
    ("json-array-not-object", b"[1, 2, 3]", "application/json", 422, "validation-error", ("body",)),
    ("json-string-not-object", b'"remove"', "application/json", 422, "validation-error", ("body",)),
    ("json-null", b"null", "application/json", 422, "validation-error", ("body",)),
    ("json-100k-nested-arrays", b"[" * 100_000 + b"]" * 100_000, "application/json", 400, "bad-request",
     "nests too deeply"),
    ("json-nan-literal", b'{"type": "remove", "options": {"damping": NaN}}', "application/json", 422,
     "validation-error", ("body", "options", "damping")),
    ("json-5000-digit-number", b'{"type": "remove", "forget": {"class": ' + b"9" * 5000 + b"}}",
     "application/json", 400, "bad-request", "integer string conversion"),
    ("json-as-text-plain", b'{"type": "remove"}', "text/plain", 415, "unsupported-media-type",
     "Content-Type: application/json"),
    ("json-as-form", b"type=remove", "application/x-www-form-urlencoded", 415, "unsupported-media-type",
     "got application/x-www-form-urlencoded"),
    ("json-without-content-type", b'{"type": "remove"}', "", 415, "unsupported-media-type",
     "got no Content-Type"),
    ("json-plus-json-media-type", b'{"type": "remove"}', "application/merge-patch+json", 422,
     "validation-error", ("body", "model")),
]  # fmt: skip


def _raw_body(content: bytes, content_type: str, status: int, code: str, expected: tuple | str):
    def run(ctx: Ctx) -> None:
        headers = {"content-type": content_type} if content_type else {}
        response = ctx.client.post("/v1/jobs", content=content, headers=headers)
        problem = expect_problem(ctx, response, status, code, expected if isinstance(expected, str) else None)
        if isinstance(expected, tuple):
            assert expected in locs(problem), problem

    return run


for _name, *_row in RAW_BODIES:
    case(_name)(_raw_body(*_row))


# Accepted at upload; only loading the model or running the job shows the problem.


@case("checkpoint-nan-inf-weights")
def _(ctx: Ctx) -> Created:
    state = trained_state(ctx, lambda v: v)
    state["1.weight"][0, 0], state["1.weight"][1, 1] = math.nan, math.inf
    art = upload_ok(ctx, checkpoint_bytes(ctx, state), "checkpoint")
    body = remove_body(ctx, model=model_spec(ctx, art["id"]))
    job = expect_failed_job(ctx, body, "numerical_error", "'1.weight' holds 2 NaN/Inf value(s)")
    return Created({art["id"]}, {job["id"]})


@case("checkpoint-bool-tensors")
def _(ctx: Ctx) -> Created:
    art = upload_ok(ctx, checkpoint_bytes(ctx, trained_state(ctx, lambda v: v > 0)), "checkpoint")
    assert {t["dtype"] for t in art["metadata"]["tensors"]} == {"bool"}
    body = remove_body(ctx, model=model_spec(ctx, art["id"]))
    job = expect_failed_job(ctx, body, "checkpoint_incompatible", "dtype bool, expected float32")
    return Created({art["id"]}, {job["id"]})


@case("checkpoint-float16-is-upcast")
def _(ctx: Ctx) -> Created:
    art = upload_ok(ctx, checkpoint_bytes(ctx, trained_state(ctx, torch.Tensor.half)), "checkpoint")
    assert {t["dtype"] for t in art["metadata"]["tensors"]} == {"float16"}
    job = run_job(ctx, {
        "type": "scores", "model": model_spec(ctx, art["id"]), "train": ctx.inputs["train"]["id"],
        "queries": ctx.inputs["queries"]["id"], "top_k": 3, "options": {"solver": "cg", "max_iter": 5},
    })  # fmt: skip
    assert job["status"] == "succeeded", job["error"]
    return Created({art["id"]} | {a["id"] for a in job["result"]["artifacts"]}, {job["id"]})


@case("checkpoint-mlp-other-hidden-sizes")
def _(ctx: Ctx) -> Created:
    other = gif.models.build("mlp", **{**factories.MLP_CONFIG, "hidden_sizes": [16]})
    art = upload_ok(ctx, checkpoint_bytes(ctx, other), "checkpoint")
    body = remove_body(ctx, model=model_spec(ctx, art["id"]))
    message = "'1.weight' expected (32, 64), got (16, 64)"
    job = expect_failed_job(ctx, body, "checkpoint_incompatible", message)
    return Created({art["id"]}, {job["id"]})


@case("checkpoint-of-another-architecture")
def _(ctx: Ctx) -> Created:
    tinynet = gif.models.build("tinynet", in_channels=1, num_classes=10, image_size=8)
    art = upload_ok(ctx, checkpoint_bytes(ctx, tinynet), "checkpoint")
    body = remove_body(ctx, model=model_spec(ctx, art["id"]))
    job = expect_failed_job(ctx, body, "checkpoint_incompatible", "does not match the architecture: missing")
    return Created({art["id"]}, {job["id"]})


@case("dataset-integer-inputs-for-a-float-model")
def _(ctx: Ctx) -> Created:
    x = (ctx.digits.x_train[:60] * 16).round().long()
    art = upload_ok(ctx, dataset_bytes(ctx, x.numpy(), ctx.digits.y_train[:60].numpy()), "dataset")
    assert art["metadata"]["input_dtype"] == "int64" and art["metadata"]["input_shape"] == [1, 8, 8]
    body = remove_body(ctx, train=art["id"])
    job = expect_failed_job(ctx, body, "dataset_incompatible", "train samples of shape [1, 8, 8] do not fit")
    return Created({art["id"]}, {job["id"]})


@case("dataset-samples-of-another-shape")
def _(ctx: Ctx) -> Created:
    x = ctx.digits.x_train[:60].reshape(60, 64)
    art = upload_ok(ctx, dataset_bytes(ctx, x.numpy(), ctx.digits.y_train[:60].numpy()), "dataset")
    problem = expect_problem(ctx, post_job(ctx, remove_body(ctx, train=art["id"])), 422, "validation-error")
    assert [(tuple(e["loc"]), e["type"]) for e in problem["errors"]] == [
        (("body", "model", "config", "input_shape"), "shape_mismatch")
    ]
    return Created({art["id"]})


# -- the test -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_input(ctx: Ctx, name: str) -> None:
    before = snapshot(ctx)
    created = CASES[name](ctx) or Created()
    check_unchanged(ctx, before, created)
