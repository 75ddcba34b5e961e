"""Mislabel triage: how many flipped labels each ranking puts in its top 10% / 20%.

Protocol: scikit-learn digits (1,200 training samples, examples/digits.py split; ``--data
mnist``: MNIST-5k's 4,000, examples/mnist.py), 10% of the training labels flipped to another
class at random, an MLP (one hidden layer of 256) or TinyNet (``--arch cnn``) trained on the noisy
labels by Adam for ``--steps`` steps (full-batch, or ``--batch`` samples per step), long enough to
fit every flipped label (the regime where a large loss no longer gives them away). Each ranking
orders the training samples, most suspicious first; the table gives the fraction of the
flipped samples found in the top 10% and top 20% (recall; 10% is also the best possible
precision cut-off), mean ± std over seeds.

Rankings:

* ``loss`` — the per-sample training loss −log p_y (the baseline any user has);
* ``self`` — ``gif.self_influence`` with its defaults: on these classifiers (logits from a last
  Linear layer) the leave-one-out head (``measure="head"``, gif/loo_head.py): the margin against
  the given label of a ridge head refitted on the penultimate features without the sample;
* ``self margin`` — the previous default: the label's log-odds m = log p_y − log(1 − p_y) as the
  measure, −∇m_iᵀ(H + λI)⁻¹∇ℓ_i, low-rank H (``measure="margin"``);
* ``self (loss)`` — the classic self-influence ∇ℓ_iᵀ(H + λI)⁻¹∇ℓ_i (``measure="loss"``);
* ``self/class`` — self-influence divided by the median self-influence of the sample's (given)
  class, so that classes with larger gradients do not crowd the top;
* ``self-ekfac`` — self-influence with the EK-FAC curvature (``exact=True, solver="ekfac"``);
* ``self kfac`` / ``self ekfac`` — ``self`` (the margin measure) with the K-FAC / EK-FAC curvature,
  each layer damped by 0.1 × its mean eigenvalue (``layer_damping``, the scores' default);
* ``self λ=0.001`` / ``self rank=128`` — the classic self-influence with a smaller damping / a
  larger rank;
* ``kronfluence self`` — kronfluence 1.0.1's self-influence with its EK-FAC defaults
  (bench/_kronfluence.py, which says how to install it), the peer's answer to this task;
* ``val-influence`` — influence of each training sample on the mean loss of a trusted, clean
  validation set (200 test samples): ``gif.scores`` summed over the validation queries, most
  negative first (samples whose removal would lower the validation loss).

    python bench/mislabel.py [--data digits|mnist] [--arch mlp|cnn] [--seeds 0 1 2] [--steps 1000]
        [--batch B] [--threads 2] [--rankings loss self ...]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import gif

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from digits import CNN, MLP, build, load_digits
from mnist import TINYNET, load_mnist

FLIP_FRACTION = 0.1
N_VALIDATION = 200
CUTS = (0.1, 0.2)

Ranking = Callable[[nn.Module, torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]], torch.Tensor]


def flip_labels(y: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A copy of ``y`` with ``fraction`` of the labels moved to another class (uniformly), and
    the flipped indices."""
    gen = torch.Generator().manual_seed(1000 + seed)
    flipped = torch.randperm(len(y), generator=gen)[: int(fraction * len(y))]
    noisy = y.clone()
    noisy[flipped] = (y[flipped] + torch.randint(1, 10, (len(flipped),), generator=gen)) % 10
    return noisy, flipped


ARCHS = {
    "digits": {"mlp": {**MLP, "hidden_sizes": [256]}, "cnn": CNN},
    "mnist": {"mlp": {**MLP, "input_shape": [1, 28, 28], "hidden_sizes": [256]}, "cnn": TINYNET},
}
LOADERS = {"digits": load_digits, "mnist": load_mnist}


def memorise(
    x: torch.Tensor, y: torch.Tensor, *, seed: int, steps: int, arch: str = "mlp", data: str = "digits",
    batch: int | None = None,
) -> nn.Module:  # fmt: skip
    """``arch`` (MLP [256], or TinyNet: 390k parameters on digits, 398k on MNIST) fitted to (x, y)
    by ``steps`` Adam steps (lr 3e-3, no weight decay) on the full batch, or on shuffled batches of
    ``batch`` samples."""
    torch.manual_seed(seed)
    model = build(ARCHS[data][arch])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    order = torch.arange(len(y))
    for step in range(steps):
        rows = order
        if batch is not None:
            start = (step * batch) % len(y)
            if start < batch:
                order = torch.randperm(len(y))
            rows = order[start : start + batch]
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[rows]), y[rows]).backward()
        opt.step()
    return model.eval()


def by_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, val: tuple) -> torch.Tensor:
    with torch.no_grad():
        return nn.functional.cross_entropy(model(x), y, reduction="none")


def by_self_influence(model: nn.Module, x: torch.Tensor, y: torch.Tensor, val: tuple) -> torch.Tensor:
    return gif.self_influence(model, (x, y))


def by_self_margin(model: nn.Module, x: torch.Tensor, y: torch.Tensor, val: tuple) -> torch.Tensor:
    return gif.self_influence(model, (x, y), measure="margin")


def by_self_on_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, val: tuple) -> torch.Tensor:
    return gif.self_influence(model, (x, y), measure="loss")


def per_class(scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``scores`` divided by the median score of each sample's class."""
    out = scores.clone().double()
    for c in torch.unique(y):
        mask = y == c
        out[mask] = out[mask] / out[mask].median().clamp_min(1e-30)
    return out


def by_self_per_class(model: nn.Module, x: torch.Tensor, y: torch.Tensor, val: tuple) -> torch.Tensor:
    return per_class(gif.self_influence(model, (x, y), measure="loss"), y)


def by_self_ekfac(model: nn.Module, x: torch.Tensor, y: torch.Tensor, val: tuple) -> torch.Tensor:
    return gif.self_influence(model, (x, y), exact=True, solver="ekfac", measure="loss")


def by_self_kfac(model: nn.Module, x: torch.Tensor, y: torch.Tensor, val: tuple) -> torch.Tensor:
    return gif.self_influence(model, (x, y), solver="kfac", layer_damping=0.1)


def by_self_ekfac_margin(model: nn.Module, x: torch.Tensor, y: torch.Tensor, val: tuple) -> torch.Tensor:
    return gif.self_influence(model, (x, y), solver="ekfac", layer_damping=0.1)


def by_kronfluence_self(model: nn.Module, x: torch.Tensor, y: torch.Tensor, val: tuple) -> torch.Tensor:
    import _kronfluence

    if not _kronfluence.available():
        raise SystemExit("ranking 'kronfluence self' needs kronfluence 1.0.1: " + _kronfluence.INSTALL)
    return _kronfluence.self_scores(model, (x, y))


def by_validation_influence(model: nn.Module, x: torch.Tensor, y: torch.Tensor, val: tuple) -> torch.Tensor:
    return -gif.scores(model, (x, y), val, solver="lowrank").sum(dim=0)


def by_self_small_damping(model: nn.Module, x: torch.Tensor, y: torch.Tensor, val: tuple) -> torch.Tensor:
    return gif.self_influence(model, (x, y), damping=1e-3, measure="loss")


def by_self_rank128(model: nn.Module, x: torch.Tensor, y: torch.Tensor, val: tuple) -> torch.Tensor:
    return gif.self_influence(model, (x, y), rank=128, measure="loss")


RANKINGS: dict[str, Ranking] = {
    "loss": by_loss,
    "self": by_self_influence,
    "self margin": by_self_margin,
    "self (loss)": by_self_on_loss,
    "self λ=0.001": by_self_small_damping,
    "self rank=128": by_self_rank128,
    "self/class": by_self_per_class,
    "self-ekfac": by_self_ekfac,
    "self kfac": by_self_kfac,
    "self ekfac": by_self_ekfac_margin,
    "kronfluence self": by_kronfluence_self,
    "val-influence": by_validation_influence,
}


def found(scores: torch.Tensor, flipped: torch.Tensor, cut: float) -> float:
    """Fraction of ``flipped`` among the top ``cut`` of samples by decreasing score."""
    k = round(cut * len(scores))
    top = torch.sort(scores.double(), descending=True, stable=True).indices[:k]
    return float(torch.isin(flipped, top).double().mean())


def run_seed(
    seed: int, steps: int, names: list[str], arch: str, data: str = "digits", batch: int | None = None
) -> dict[str, dict]:
    s = LOADERS[data](seed)
    noisy, flipped = flip_labels(s.y_train, FLIP_FRACTION, seed)
    model = memorise(s.x_train, noisy, seed=seed, steps=steps, arch=arch, data=data, batch=batch)
    with torch.no_grad():
        fitted = float((model(s.x_train[flipped]).argmax(1) == noisy[flipped]).double().mean())
    val = (s.x_test[:N_VALIDATION], s.y_test[:N_VALIDATION])
    out: dict[str, dict] = {"_fitted": {"flipped_fitted": fitted}}
    for name, rank in RANKINGS.items():
        if names and name not in names:
            continue
        start = time.perf_counter()
        scores = rank(model, s.x_train, noisy, val)
        out[name] = {f"top{int(c * 100)}": found(scores, flipped, c) for c in CUTS}
        out[name]["seconds"] = time.perf_counter() - start
    return out


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def machine() -> str:
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines()
        name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name")), "")
    except OSError:
        name = ""
    return name or platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--arch", choices=["cnn", "mlp"], default="mlp")
    parser.add_argument("--data", choices=sorted(LOADERS), default="digits")
    parser.add_argument("--batch", type=int, default=None, help="Adam batch size (default: the full batch)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rankings", nargs="*", default=[], help=f"a subset of {', '.join(RANKINGS)}")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runs = [
        run_seed(seed, args.steps, args.rankings, args.arch, args.data, args.batch) for seed in args.seeds
    ]
    fitted = [r["_fitted"]["flipped_fitted"] for r in runs]
    model = "MLP [256]" if args.arch == "mlp" else "CNN (TinyNet)"
    batch = "full-batch" if args.batch is None else f"batch-{args.batch}"
    print(f"# mislabel triage — {args.data}, {FLIP_FRACTION:.0%} flipped labels, {model} {args.steps} {batch} Adam "
          f"steps, seeds {args.seeds}; {machine()}, {args.threads} threads, {datetime.date.today()}")  # fmt: skip
    print(f"flipped labels fitted by the model (training accuracy on them): {mean_std(fitted)}\n")
    print("| ranking | flipped in top 10% | flipped in top 20% | seconds |")
    print("|---|---|---|---|")
    for name in [n for n in RANKINGS if n in runs[0]]:
        cells = [mean_std([r[name][f"top{int(c * 100)}"] for r in runs]) for c in CUTS]
        seconds = statistics.mean(r[name]["seconds"] for r in runs)
        print(f"| {name} | {cells[0]} | {cells[1]} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
