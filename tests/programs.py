"""Exported programs for the tests: a small custom module exported with a dynamic batch dimension,
and hostile ``.pt2`` archives made from it, each a rewrite of the real archive's members.

The canary cases are real: loaded with ``torch.export.load`` (or its module run), each creates its
canary file (tests/engine/test_programs.py proves it, in the test's own process); the server must
refuse them before anything loads them, so the canary never appears.
"""

from __future__ import annotations

import io
import json
import stat
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from tests import factories

Members = dict[str, bytes]


class DigitsNet(nn.Module):
    """A custom module (not in the registry): conv, BatchNorm, a scaling buffer, a linear head."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Linear(4 * 8 * 8, classes)
        self.register_buffer("scale", torch.tensor(1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1) * self.scale)


def train_digits_net(data: factories.Digits, epochs: int = 15, seed: int = 0) -> DigitsNet:
    """SGD, batch 64, a few seconds on one thread."""
    torch.manual_seed(seed)
    model = DigitsNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(data.y_train), generator=gen)
        for i in range(0, len(perm), 64):
            batch = perm[i : i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(data.x_train[batch]), data.y_train[batch]).backward()
            opt.step()
    return model.eval()


def export(model: nn.Module, sample: torch.Tensor, path: Path, *, dynamic: bool = True) -> Path:
    """``torch.export.save`` of ``model`` on ``sample``, the batch dimension dynamic or not."""
    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    torch.export.save(torch.export.export(model, (sample,), dynamic_shapes=shapes), str(path))
    return path


# -- rewriting an archive ---------------------------------------------------------------------------


def read(path: Path) -> tuple[str, Members]:
    """The archive's root folder and its members by path under it."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        root = names[0].split("/", 1)[0]
        return root, {n[len(root) + 1 :]: archive.read(n) for n in names}


def write(path: Path, root: str, members: Members) -> Path:
    """Members stored uncompressed, as ``torch.export.save`` writes them."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(f"{root}/{name}", data)
    return path


def rewrite(source: Path, path: Path, change: Callable[[Members], None]) -> Path:
    root, members = read(source)
    change(members)
    return write(path, root, members)


def edit_json(members: Members, name: str, change: Callable[[dict], None]) -> None:
    document = json.loads(members[name])
    change(document)
    members[name] = json.dumps(document).encode()


def _torch_save(value: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


# -- hostile archives --------------------------------------------------------------------------------

WEIGHTS = "data/weights/model_weights_config.json"
MODEL = "models/model.json"


def pickled_weight(source: Path, path: Path, canary: Path) -> Path:
    """A weight marked ``use_pickle`` whose pickle opens ``canary`` (torch.load(weights_only=False))."""

    def change(members: Members) -> None:
        config = json.loads(members[WEIGHTS])
        entry = config["config"]["head.bias"]
        entry["use_pickle"] = True
        members[f"data/weights/{entry['path_name']}"] = _torch_save(factories._Canary(canary))
        members[WEIGHTS] = json.dumps(config).encode()

    return rewrite(source, path, change)


def pickled_sample_inputs(source: Path, path: Path, canary: Path) -> Path:
    """Sample inputs that the weights-only load refuses, so torch falls back to weights_only=False."""

    def change(members: Members) -> None:
        members["data/sample_inputs/model.pt"] = _torch_save(((factories._Canary(canary),), {}))

    return rewrite(source, path, change)


def guard_code(source: Path, path: Path, canary: Path) -> Path:
    """Guard code (Python that ``ExportedProgram.module()`` executes on each call) opening ``canary``."""
    code = f"open({str(canary)!r}, 'w') is not None"
    return rewrite(source, path, lambda m: edit_json(m, MODEL, lambda d: d.update(guards_code=[code])))


def sympy_expression(source: Path, path: Path, canary: Path) -> Path:
    """A shape expression that ``sympy.sympify`` evaluates (opening ``canary``) at load."""
    evil = f"Symbol('s77', positive=True, integer=True) + 0*len(str(open({str(canary)!r}, 'w')))"

    def change(members: Members) -> None:
        text = members[MODEL].decode()
        found = json.loads(text)["graph_module"]["graph"]["tensor_values"]
        first = next(v for v in found.values() if v["sizes"] and "as_expr" in v["sizes"][0])["sizes"][0][
            "as_expr"
        ]["expr_str"]
        members[MODEL] = text.replace(json.dumps(first)[1:-1], json.dumps(evil)[1:-1]).encode()

    return rewrite(source, path, change)


def extra_member(source: Path, path: Path, name: str, data: bytes = b"\x7fELF") -> Path:
    return rewrite(source, path, lambda m: m.update({name: data}))


def foreign_target(source: Path, path: Path, target: str = "torch.os.system") -> Path:
    """A graph node whose target is not an ATen operator."""

    def change(document: dict) -> None:
        document["graph_module"]["graph"]["nodes"][0]["target"] = target

    return rewrite(source, path, lambda m: edit_json(m, MODEL, change))


def odd_member(source: Path, path: Path, how: str) -> Path:
    """An archive with one odd member: ``traversal`` (``../``), ``absolute``, ``symlink``,
    ``deflated`` (compressed) or ``duplicate``."""
    root, members = read(source)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(f"{root}/{name}", data)
        if how == "traversal":
            archive.writestr(f"{root}/../escape", b"x")
        elif how == "absolute":
            archive.writestr(zipfile.ZipInfo("/tmp/escape"), b"x")
        elif how == "symlink":
            info = zipfile.ZipInfo(f"{root}/extra/link")
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, "/etc/passwd")
        elif how == "deflated":
            archive.writestr(f"{root}/extra/big", bytes(1 << 20), compress_type=zipfile.ZIP_DEFLATED)
        elif how == "duplicate":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "Duplicate name"
                archive.writestr(f"{root}/{MODEL}", members[MODEL])
    return path
