"""Class removal on scikit-learn digits: GIF vs FIF vs IF vs retraining from scratch.

The paper's Table 1/2 protocol (docs/method.md, "Class removal"), made honest: the Hessian and
the step come from *training* data only (validation is carved from the retained training
samples), and the test split is used once, for this table. For each seed: train the TinyNet CNN
on all classes, retrain it without the class (the reference), then edit the original with each
method.

Columns: accuracy on the retained classes (test), accuracy on the removed class (test),
F1 = 2(1 − forget)·retain / ((1 − forget) + retain) (the paper's), edit time, and edit time ÷
the time retraining took on the same machine (the reference's own row: 1).

    python examples/class_removal.py [--seeds 3] [--cls 3] [--arch cnn|mlp]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from digits import CNN, MLP, accuracy, load_digits, report, train

import gif

#: name -> gif.remove options ({} = the engine's defaults)
METHODS: dict[str, dict] = {
    "default (gif.remove: FIF on the head)": {},
    "GIF 5%": {"method": "gif"},
    "GIF 5%, 1 Newton step": {"method": "gif", "newton_steps": 1},
    "FIF 20%": {"method": "fif"},
    "IF 100%": {"method": "if"},
    "SIF 100%": {"method": "sif"},
    "paper: GIF 5% outputs, Neumann 200": {
        "method": "gif",
        "selection": "highest_outputs",
        "solver": "neumann",
        "max_iter": 200,
        "tol": 1e-9,
        "newton_steps": 1,
    },
}


def run(seed: int, cls: int, arch: dict) -> dict[str, list[float]]:
    s = load_digits(seed)
    keep_test = s.y_test != cls
    model = train(arch, s.x_train, s.y_train, seed=seed)
    start = time.perf_counter()
    retrained = train(arch, s.x_train[s.y_train != cls], s.y_train[s.y_train != cls], seed=seed)
    retrain_seconds = time.perf_counter() - start
    rows: dict[str, list[float]] = {}

    def record(name: str, m: torch.nn.Module, seconds: float) -> None:
        retain = accuracy(m, s.x_test[keep_test], s.y_test[keep_test])
        forget = accuracy(m, s.x_test[~keep_test], s.y_test[~keep_test])
        f1 = 100 * gif.metrics.f1(1 - forget / 100, retain / 100)
        rows[name] = [retain, forget, f1, seconds, seconds / retrain_seconds]
        print(
            f"  seed {seed} {name:36s} retain {retain:6.2f}  forget {forget:6.2f}  "
            f"({seconds:.2f}s, {seconds / retrain_seconds:.2f}× retraining)",
            flush=True,
        )

    record("original", model, 0.0)
    record("retrained from scratch", retrained, retrain_seconds)
    for name, options in METHODS.items():
        start = time.perf_counter()
        result = gif.remove(model, (s.x_train, s.y_train), {"class": cls}, seed=seed, **options)
        record(name, result.model, time.perf_counter() - start)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--cls", type=int, default=3)
    parser.add_argument("--arch", choices=["cnn", "mlp"], default="cnn")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "output")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (tiny models: 1 is fastest)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runs = [run(seed, args.cls, CNN if args.arch == "cnn" else MLP) for seed in range(args.seeds)]
    report(
        runs,
        title=f"Class removal, digits, {args.arch}, class {args.cls}",
        columns=["retained acc (test)", "removed-class acc (test)", "F1", "edit seconds", "÷ retraining"],
        plotted=3,
        out=args.out,
        stem="class_removal",
    )


if __name__ == "__main__":
    main()
