"""Backdoor repair by relabelling on scikit-learn digits (the paper's Table 3 protocol).

For each seed: 10% of the training images (true label ≠ 4) get a 3×3 checkerboard trigger and
the label 4; the TinyNet CNN is trained on that poisoned set. The edit relabels the poisoned
samples to their true labels. References: the poisoned model and a model retrained on the
corrected labels. Validation (for the step) is carved from the clean training samples; the test
split is used once, for this table.

Columns (test split): clean accuracy on untouched test images; relabel accuracy = triggered
test images (true label ≠ 4) classified as their true label; attack success = triggered test
images classified as 4; edit time, and edit time ÷ the time retraining took in the same run.

    python examples/backdoor_relabel.py [--seeds 3] [--methods NAME ...]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from digits import CNN, accuracy, add_trigger, load_digits, poison, report, train

import gif

TARGET = 4

#: name -> gif.relabel options ({} = the engine's defaults)
METHODS: dict[str, dict] = {
    "default (gif.relabel)": {},
    "GIF 5%": {"method": "gif"},
    "GIF 5%, 1 Newton step": {"method": "gif", "newton_steps": 1},
    "FIF 20%": {"method": "fif"},
    "IF 100%, guarded K-FAC (the default before the head first)": {"method": "if"},
    "IF 100%, CG (the default until 2026-12-06)": {"method": "if", "solver": "cg"},
    "SIF 100%": {"method": "sif"},
    "paper: GIF 5% outputs, Neumann 200": {
        "method": "gif",
        "selection": "highest_outputs",
        "solver": "neumann",
        "max_iter": 200,
        "tol": 1e-9,
        "newton_steps": 1,
    },
    "FIF head": {"method": "fif", "selection": "head"},
}


def run(seed: int) -> dict[str, list[float]]:
    s = load_digits(seed)
    xp, yp, idx = poison(s.x_train, s.y_train, seed, add_trigger, TARGET)
    model = train(CNN, xp, yp, seed=seed)
    fixed = yp.clone()
    fixed[idx] = s.y_train[idx]
    start = time.perf_counter()
    retrained = train(CNN, xp, fixed, seed=seed)
    retrain_seconds = time.perf_counter() - start
    not_target = s.y_test != TARGET
    x_trig, y_true = add_trigger(s.x_test[not_target]), s.y_test[not_target]
    rows: dict[str, list[float]] = {}

    def record(name: str, m: torch.nn.Module, seconds: float) -> None:
        clean = accuracy(m, s.x_test, s.y_test)
        relabel = accuracy(m, x_trig, y_true)
        attack = accuracy(m, x_trig, torch.full_like(y_true, TARGET))
        rows[name] = [clean, relabel, attack, seconds, seconds / retrain_seconds]
        print(
            f"  seed {seed} {name:36s} clean {clean:6.2f}  relabel {relabel:6.2f}  attack {attack:6.2f}"
            f"  ({seconds:.2f}s, {seconds / retrain_seconds:.2f}× retraining)",
            flush=True,
        )

    record("poisoned (original)", model, 0.0)
    record("retrained on fixed labels", retrained, retrain_seconds)
    for name, options in METHODS.items():
        start = time.perf_counter()
        result = gif.relabel(model, (xp, yp), idx, s.y_train[idx], seed=seed, **options)
        record(name, result.model, time.perf_counter() - start)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "output")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (tiny models: 1 is fastest)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), help="names of METHODS (default: all)")
    args = parser.parse_args()
    for name in set(METHODS) - set(args.methods):
        del METHODS[name]
    torch.set_num_threads(args.threads)
    runs = [run(seed) for seed in range(args.seeds)]
    report(
        runs,
        title="Backdoor relabelling, digits, TinyNet",
        columns=["clean acc", "relabel acc", "attack success", "edit seconds", "÷ retraining"],
        plotted=3,
        out=args.out,
        stem="backdoor_relabel",
    )


if __name__ == "__main__":
    main()
