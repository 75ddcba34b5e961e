"""A user's own module, exported with ``torch.export``, with a class removed — against retraining.

What a user without a registry architecture does (docs/models.md, "Exported programs"): export
the trained module with a dynamic batch dimension and save the ``.pt2``. Here the server's path is
followed without a server: the archive is checked and loaded without pickle
(``gif.io.programs.check_program`` / ``load_program``), turned into the module the engine edits
(``program_module``), edited with ``gif.remove`` at its defaults, and written back with the new
weights (``save_program``). The same edit on the original module, and retraining without the
class (timed in the same run), are the references.

Data: MNIST-5k at 28×28 (examples/mnist.py). Columns: test accuracy on the retained classes and
on the removed class, seconds, edit ÷ retraining.

    python examples/exported_module.py [--seeds 1] [--cls 3] [--epochs 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from digits import report, train
from mnist import load_mnist
from torch import nn

import gif
from gif.io import programs


class SmallCNN(nn.Module):
    """The kind of module a user writes: two convolutions, pooling, a two-layer head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def export(model: nn.Module, sample: torch.Tensor, path: Path) -> None:
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, (sample,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))


def run(seed: int, cls: int, epochs: int, folder: Path) -> dict[str, list[float]]:
    s = load_mnist(seed)
    model = train(SmallCNN, s.x_train, s.y_train, seed=seed, epochs=epochs)
    keep_train = s.y_train != cls
    start = time.perf_counter()
    retrained = train(SmallCNN, s.x_train[keep_train], s.y_train[keep_train], seed=seed, epochs=epochs)
    retrain_seconds = time.perf_counter() - start
    keep = s.y_test != cls
    rows: dict[str, list[float]] = {}

    def record(name: str, m: nn.Module, seconds: float) -> None:
        acc = lambda x, y: 100.0 * gif.metrics.evaluate(m, x, y).accuracy  # noqa: E731
        retained, removed = acc(s.x_test[keep], s.y_test[keep]), acc(s.x_test[~keep], s.y_test[~keep])
        rows[name] = [retained, removed, seconds, seconds / retrain_seconds]
        print(f"  seed {seed} {name:28s} retained {retained:6.2f} removed {removed:6.2f} ({seconds:.1f}s, "
              f"{seconds / retrain_seconds:.2f}× retraining)", flush=True)  # fmt: skip

    record("original", model, 0.0)
    record("retrained from scratch", retrained, retrain_seconds)
    start = time.perf_counter()
    direct = gif.remove(model, (s.x_train, s.y_train), {"class": cls}, seed=seed)
    record("edit of the module", direct.model, time.perf_counter() - start)

    path = folder / f"model-{seed}.pt2"
    export(model, s.x_train[:4], path)
    start = time.perf_counter()
    programs.check_program(path)
    module = programs.program_module(programs.load_program(path))
    edited = gif.remove(module, (s.x_train, s.y_train), {"class": cls}, seed=seed)
    programs.save_program(
        programs.load_program(path), edited.model.state_dict(), folder / f"edited-{seed}.pt2"
    )
    record("edit of the exported program", edited.model, time.perf_counter() - start)
    reloaded = torch.export.load(str(folder / f"edited-{seed}.pt2")).module()  # our own file: trusted
    torch.testing.assert_close(reloaded(s.x_test[:8]), edited.model(s.x_test[:8]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--cls", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "output")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        runs = [run(seed, args.cls, args.epochs, Path(folder)) for seed in range(args.seeds)]
    report(runs, title=f"Class {args.cls} removal, MNIST-5k, a user's CNN exported with torch.export",
           columns=["retained acc", "removed-class acc", "seconds", "÷ retraining"], out=args.out,
           stem="exported_module", plotted=2)  # fmt: skip


if __name__ == "__main__":
    main()
