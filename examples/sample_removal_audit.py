"""The forgetting audit (gif/audit.py) of a sample removal, next to retraining.

Protocol: the first ``N`` training samples (digits: 100, examples/digits.py split; ``--data
mnist``: 1,000 of MNIST-5k, examples/mnist.py), an MLP fitted to them by full-batch Adam (300
steps: it memorises them), 30% of them removed at random with ``gif.remove``'s defaults (by row;
a dataset with ``sample_ids`` can name them by id, docs/audit.md), the test split as holdout, and
a reference retrained on the rest with the same recipe. Prints the audit's figures before and
after the edit and the reference's, the average gap to it, and the edit's seconds (the audit's
own time excluded) next to retraining's, per seed.

    python examples/sample_removal_audit.py [--data digits|mnist] [--seeds 0 1 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch
from digits import MLP, build, load_digits
from mnist import load_mnist
from torch import nn

import gif
from gif.audit import FIGURES

#: --data -> (loader, training samples used)
DATA = {"digits": (load_digits, 100), "mnist": (load_mnist, 1000)}
FORGET_FRACTION = 0.3


def memorise(x: torch.Tensor, y: torch.Tensor, seed: int) -> nn.Module:
    """MLP [64] fitted to (x, y) by full-batch Adam (lr 1e-2, 300 steps)."""
    torch.manual_seed(seed)
    model = build({**MLP, "input_shape": list(x.shape[1:])})
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def run(seed: int, data: str) -> dict:
    load, n_train = DATA[data]
    s = load(seed)
    x, y = s.x_train[:n_train], s.y_train[:n_train]
    n_forget = round(FORGET_FRACTION * n_train)
    forget = torch.randperm(n_train, generator=torch.Generator().manual_seed(seed))[:n_forget]
    keep = torch.ones(n_train, dtype=torch.bool)
    keep[forget] = False
    model = memorise(x, y, seed)
    start = time.perf_counter()
    reference = memorise(x[keep], y[keep], seed)
    retrain_seconds = time.perf_counter() - start
    start = time.perf_counter()
    edit = gif.remove(model, (x, y), forget, seed=seed, holdout=(s.x_test, s.y_test), reference=reference)
    edit_seconds = time.perf_counter() - start - edit.report["timings"].get("audit", 0.0)
    return {**edit.report["audit"], "seconds": (edit_seconds, retrain_seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", choices=sorted(DATA), default="digits")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| seed | model | " + " | ".join(FIGURES) + " | avg_gap | seconds |")
    print("|---|---|" + "---|" * (len(FIGURES) + 2))
    for seed in args.seeds:
        audit = run(seed, args.data)
        edit_seconds, retrain_seconds = audit["seconds"]
        seconds = {
            "after": f"{edit_seconds:.2f} ({edit_seconds / retrain_seconds:.2f}× retraining)",
            "reference": f"{retrain_seconds:.2f}",
        }
        for stage in ("before", "after", "reference"):
            gap = audit["gap"][stage]["avg_gap"] if stage in audit["gap"] else 0.0
            cells = " | ".join(f"{audit[stage][f]:.3f}" for f in FIGURES)
            print(f"| {seed} | {stage} | {cells} | {gap:.3f} | {seconds.get(stage, '')} |")


if __name__ == "__main__":
    main()
