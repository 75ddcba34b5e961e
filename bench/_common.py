"""Shared pieces of the benchmark scripts: data, models, timing, machine description, tables.

Not a package: each script in ``bench/`` puts this folder on ``sys.path`` (Python does that for
the script's own folder) and does ``import _common``. Only torch, numpy and the standard library
are needed; scikit-learn is used for the digits images when it is installed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

import gif

# ---------------------------------------------------------------------------------------------
# models


@dataclass(frozen=True)
class ModelSpec:
    """A named benchmark model: a ``gif.models.build`` call and the input shape it expects."""

    arch: str
    kwargs: dict = field(default_factory=dict)
    input_shape: tuple[int, int, int] = (1, 8, 8)  # (channels, height, width)
    num_classes: int = 10

    def build(self, seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        model = gif.models.build(self.arch, num_classes=self.num_classes, **self.kwargs)
        return model.eval()  # BatchNorm/Dropout must be deterministic functions of θ


#: Every model a benchmark can name with ``--models``.
MODELS: dict[str, ModelSpec] = {
    # 8x8 digits at their native size
    "tinynet-8": ModelSpec("tinynet", {"in_channels": 1, "image_size": 8}, (1, 8, 8)),
    "mlp-64": ModelSpec("mlp", {"input_shape": [1, 8, 8], "hidden_sizes": [64]}, (1, 8, 8)),
    "mlp-256x256": ModelSpec("mlp", {"input_shape": [1, 8, 8], "hidden_sizes": [256, 256]}, (1, 8, 8)),
    # MNIST-sized (digits upsampled to 28x28)
    "tinynet-28": ModelSpec("tinynet", {"in_channels": 1, "image_size": 28}, (1, 28, 28)),
    "lenet-28": ModelSpec("lenet", {"in_channels": 1, "image_size": 28}, (1, 28, 28)),
    # CIFAR-sized (digits upsampled to 32x32, copied to 3 channels), narrow widths for CPUs
    "vgg11-w16": ModelSpec("vgg11", {"in_channels": 3, "image_size": 32, "width": 16}, (3, 32, 32)),
    "resnet18-w16": ModelSpec("resnet18", {"in_channels": 3, "width": 16}, (3, 32, 32)),
    # full widths, for bigger runs (GPU)
    "vgg11": ModelSpec("vgg11", {"in_channels": 3, "image_size": 32, "width": 64}, (3, 32, 32)),
    "resnet18": ModelSpec("resnet18", {"in_channels": 3, "width": 64}, (3, 32, 32)),
}


def model_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise SystemExit(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    return MODELS[name]


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------------------------
# data


_DIGITS_CACHE: list[tuple[torch.Tensor, torch.Tensor]] = []


def _digits() -> tuple[torch.Tensor, torch.Tensor] | None:
    """scikit-learn's 1,797 8x8 digits scaled to [0, 1], or None without scikit-learn."""
    if not _DIGITS_CACHE:
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            return None
        d = load_digits()
        x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
        _DIGITS_CACHE.append((x, torch.tensor(d.target, dtype=torch.long)))
    return _DIGITS_CACHE[0]


def make_data(
    n: int,
    shape: Sequence[int],
    *,
    num_classes: int = 10,
    synthetic: bool = False,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """``n`` samples of ``shape`` (C, H, W) with integer labels, and where they came from.

    Digits images are cycled when ``n`` exceeds 1,797, bilinearly resized to H x W and copied
    across C channels. ``synthetic`` (or no scikit-learn) gives standard-normal inputs with uniform
    random labels; the cost of a gradient or HVP does not depend on the values.
    """
    c, h, w = (int(s) for s in shape)
    digits = None if synthetic else _digits()
    gen = torch.Generator().manual_seed(seed)
    if digits is None:
        x = torch.randn(n, c, h, w, generator=gen)
        y = torch.randint(0, num_classes, (n,), generator=gen)
        return x, y, "synthetic"
    images, labels = digits
    order = torch.randperm(images.shape[0], generator=gen)
    idx = order[torch.arange(n) % images.shape[0]]
    x, y = images[idx], labels[idx] % num_classes
    if (h, w) != tuple(x.shape[-2:]):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    if c != 1:
        x = x.expand(-1, c, -1, -1)
    return x.contiguous(), y, "digits"


# ---------------------------------------------------------------------------------------------
# timing


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch.cuda.is_available() is False")
    return torch.device(name)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(
    fn: Callable[[], object], *, repeats: int, warmup: int = 1, device: torch.device | None = None
) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    device = device or torch.device("cpu")
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


# ---------------------------------------------------------------------------------------------
# command line, machine, output


def add_common_args(parser: argparse.ArgumentParser, *, synthetic_default: bool = False) -> None:
    """``--threads``, ``--device``, ``--seed`` and the data source (``--synthetic`` or ``--digits``)."""
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch.set_num_threads value (default 1; 0 leaves torch's default, one per core). More "
        "threads than free cores make CPU timings swing 10-100x, so use >1 only on an idle machine",
    )  # fmt: skip
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    parser.add_argument("--seed", type=int, default=0)
    source = parser.add_mutually_exclusive_group()
    on, off = (" (default)", "") if synthetic_default else ("", " (default)")
    source.add_argument("--synthetic", dest="synthetic", action="store_true", default=synthetic_default,
                        help="random normal inputs" + on)  # fmt: skip
    source.add_argument("--digits", dest="synthetic", action="store_false",
                        help="sklearn digits, resized to the model's input" + off)  # fmt: skip


def apply_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)


def int_list(text: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def str_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_description(device: torch.device | None = None) -> str:
    """One line: CPU model, cores, torch version and threads, accelerator, date (UTC)."""
    parts = [
        f"CPU: {cpu_model()}",
        f"{os.cpu_count()} cores",
        f"torch {torch.__version__}",
        f"torch threads: {torch.get_num_threads()}",
        f"Python {platform.python_version()}",
    ]
    if device is not None and device.type == "cuda":
        parts.append(f"GPU: {torch.cuda.get_device_name(device)}")
    parts.append(datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"))
    return "; ".join(parts)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table; numbers right-aligned, columns padded for reading in a terminal."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(_is_number(r[i]) for r in cells[1:]) and len(cells) > 1 for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        padded = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric, strict=True)]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(
        "-" * (w + 1) + ":" if num else "-" * (w + 2) for w, num in zip(widths, numeric, strict=True)
    )
    rule += "|"
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", "").rstrip("x×"))
    except ValueError:
        return text in ("-", "n/a")
    return True


def fmt_ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    return f"{ms:.1f}" if ms < 100 else f"{ms:.0f}"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


# ---------------------------------------------------------------------------------------------
# a measurement in a fresh interpreter

#: How a child process marks its result line on stdout.
RESULT_TAG = "RESULT "


def answer_as_child(spec: str, run: Callable[[dict], dict]) -> int:
    """In the child (``script --child SPEC``): run ``run`` on the JSON ``spec`` and print the result."""
    print(RESULT_TAG + json.dumps(run(json.loads(spec))), flush=True)
    return 0


def in_child(script: str, spec: dict, timeout: float | None = None) -> dict:
    """Run ``script --child SPEC`` in a fresh interpreter (so no measurement inherits another's
    memory high-water mark); its result, or ``{"error": ...}`` when it timed out or printed none."""
    cmd = [sys.executable, os.path.abspath(script), "--child", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"exit {proc.returncode}: {tail}"}
