"""Attribution quality by the linear datamodeling score (LDS): ``gif.scores`` beside kronfluence.

Protocol (the LDS of TRAK and dattri; docs/benchmarks.md "Scores: LDS against retraining"):
train the model on the full training set, score ``--queries`` test samples against every training
sample, then retrain ``--subsets`` models, each on a seeded random half of the training set
(α = 0.5, same recipe). For a query z and subset S_j the attribution predicts the change of z's
loss as −Σ_{i∈S_j} score(z, i) (a positive score = sample i lowers z's loss, gif's convention and
kronfluence's); LDS(z) is the Spearman correlation, over the subsets, of that prediction with the
query loss the retrained model actually has. The table gives LDS averaged over queries (± the
standard error over queries) and the seconds each method took to produce its [queries, train]
matrix (fit included; one process, ``--threads`` threads), and each method's mean per-query
difference from the first one listed, with the standard error of that paired difference.

Model and data: examples/digits.py (scikit-learn digits, 1,200 training images, 40 epochs of
SGD); ``--arch`` picks the model (:data:`ARCHS`: TinyNet by default, the examples' MLP, LeNet-5,
wider and deeper MLPs, two small CNNs). Each subset's model is the same architecture, retrained
with the same recipe.

Rankings (``--methods``):

* ``gif default`` — ``gif.scores`` at its defaults;
* ``gif <solver>`` — ``gif.scores(solver=...)`` for ``ekfac``, ``kfac``, ``lowrank``, ``cg``;
* ``kronfluence ekfac`` / ``kronfluence kfac`` — kronfluence (bench/_kronfluence.py says how to install it;
  skipped with a note when it is not installed), its factors fitted on the training set, damping
  its heuristic (0.1 × the mean eigenvalue), measurement the query loss. Its Fisher draws labels
  from the model's predictions: ``kronfluence ekfac seed=1`` seeds that draw (default 0).

    python bench/lds.py [--subsets 40] [--queries 20] [--methods "gif default,gif ekfac,kronfluence ekfac"]
    python bench/lds.py --methods "gif ekfac layer_damping=0.1,kronfluence ekfac seed=1"   # options
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))
import _kronfluence  # noqa: E402
from _common import apply_threads, machine_description, markdown_table  # noqa: E402
from digits import CNN, MLP, load_digits, train  # noqa: E402

import gif  # noqa: E402

ALPHA = 0.5
#: Each method first scores 2 queries against this many training samples, untimed: the first call
#: in a process pays lazy imports and kernel set-up, which would otherwise land on whichever
#: method comes first.
WARM_UP = 64


def small_cnn(first: int, second: int, hidden: int | None = None) -> Callable[[], nn.Module]:
    """Two 3×3 convolutions (``first``, ``second`` channels, each + ReLU + 2×2 max-pool) on 8×8
    images, then the logits' Linear layer (after a hidden one of ``hidden`` units if given)."""

    def build() -> nn.Module:
        layers: list[nn.Module] = [nn.Conv2d(1, first, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        layers += [nn.Conv2d(first, second, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten()]
        width = second * 4
        if hidden is not None:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        return nn.Sequential(*layers, nn.Linear(width, 10))

    return build


def mlp(*hidden: int) -> dict:
    return {**MLP, "hidden_sizes": list(hidden)}


#: The models of examples/digits.py — TinyNet (``cnn``, 390k parameters) and an MLP (one hidden
#: layer of 64, 4.8k) — LeNet-5 at 8×8 (21k), and a spread of MLPs (9k–167k) and small CNNs
#: (1.9k, 13.7k, 36k) on which the scores default was chosen.
ARCHS: dict[str, dict | Callable[[], nn.Module]] = {
    "cnn": CNN,
    "mlp": MLP,
    "lenet": {"name": "lenet", "in_channels": 1, "num_classes": 10, "image_size": 8},
    "mlp64x64": mlp(64, 64),
    "mlp256": mlp(256),
    "mlp512": mlp(512),
    "mlp512x256": mlp(512, 256),
    "cnn8x16": small_cnn(8, 16),
    "cnn16x32h64": small_cnn(16, 32, 64),
    "cnn32x64h64": small_cnn(32, 64, 64),
}
METHODS = ("gif default", "gif ekfac", "gif kfac", "gif lowrank", "kronfluence ekfac", "kronfluence kfac")
Scorer = Callable[
    [nn.Module, tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]], torch.Tensor
]


def query_losses(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return nn.functional.cross_entropy(model(x), y, reduction="none")


def subset_masks(n: int, subsets: int, seed: int) -> torch.Tensor:
    """[subsets, n] booleans, each row a seeded random α-fraction of the training set."""
    gen = torch.Generator().manual_seed(seed)
    masks = torch.zeros(subsets, n, dtype=torch.bool)
    for j in range(subsets):
        masks[j, torch.randperm(n, generator=gen)[: int(ALPHA * n)]] = True
    return masks


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of two 1-D tensors (average ranks for ties)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a.numpy(), b.numpy()).statistic)


def lds(scores: torch.Tensor, masks: torch.Tensor, losses: torch.Tensor) -> list[float]:
    """Per query: Spearman(−Σ_{i∈S_j} score(q, i), loss of the model trained on S_j) over j.

    ``scores`` [queries, n], ``masks`` [subsets, n], ``losses`` [subsets, queries]."""
    predicted = -(masks.double() @ scores.double().T)  # [subsets, queries]
    return [spearman(predicted[:, q], losses[:, q].double()) for q in range(scores.shape[0])]


def gif_scorer(options: dict) -> Scorer:
    def run(model, train_data, queries):
        return gif.scores(model, train_data, queries, **options)

    return run


def kronfluence_scorer(strategy: str, seed: int = 0) -> Scorer:
    def run(model, train_data, queries):
        return _kronfluence.pairwise_scores(model, train_data, queries, strategy=strategy, seed=seed)

    return run


def scorer(name: str) -> Scorer | None:
    """The method named ``name`` (module docstring), or None when its library is missing.
    ``gif`` methods may add options as ``key=value`` words: ``gif ekfac damping=0.1``."""
    library, _, rest = name.partition(" ")
    variant, *settings = rest.split()
    options: dict = {}
    for setting in settings:
        key, _, value = setting.partition("=")
        options[key] = float(value) if "." in value or "e" in value else int(value)
    if library == "gif":
        return gif_scorer(options if variant == "default" else {"solver": variant, **options})
    if library == "kronfluence":
        return kronfluence_scorer(variant, **options) if _kronfluence.available() else None
    raise SystemExit(f"unknown method {name!r}; known: {', '.join(METHODS)}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subsets", type=int, default=40)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arch", choices=sorted(ARCHS), default="cnn")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", type=Path, help="a folder keeping the retrained models' query losses")
    args = parser.parse_args()
    apply_threads(args.threads)
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    scorers = {name: scorer(name) for name in names}

    split = load_digits(args.seed)
    x, y = split.x_train, split.y_train
    pick = torch.randperm(len(split.y_test), generator=torch.Generator().manual_seed(args.seed))[
        : args.queries
    ]
    queries = (split.x_test[pick], split.y_test[pick])
    start = time.perf_counter()
    arch = ARCHS[args.arch]
    model = train(arch, x, y, seed=args.seed, epochs=args.epochs)
    train_seconds = time.perf_counter() - start

    masks = subset_masks(len(y), args.subsets, args.seed)
    saved = None
    if args.cache is not None:
        saved = args.cache / f"lds-{args.arch}-s{args.seed}-m{args.subsets}-q{args.queries}-e{args.epochs}.pt"
    if saved is not None and saved.exists():
        losses = torch.load(saved)
    else:
        losses = torch.stack(
            [
                query_losses(
                    train(arch, x[mask], y[mask], seed=args.seed + 1 + j, epochs=args.epochs), *queries
                )
                for j, mask in enumerate(masks)
            ]
        )
        if saved is not None:
            saved.parent.mkdir(parents=True, exist_ok=True)
            torch.save(losses, saved)
    print(
        f"{args.subsets} models retrained on halves ({train_seconds:.1f} s to train one on all)", flush=True
    )

    rows = []
    first: list[float] | None = None  # the first method's per-query LDS, for the paired Δ column
    for name, run in scorers.items():
        if run is None:
            rows.append([name, "—", "—", "—", "not installed"])
            continue
        run(model, (x[:WARM_UP], y[:WARM_UP]), (queries[0][:2], queries[1][:2]))  # one-time costs: untimed
        start = time.perf_counter()
        scores = run(model, (x, y), queries)
        seconds = time.perf_counter() - start
        values = lds(scores, masks, losses)
        error = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0
        first = values if first is None else first
        rows.append(
            [
                name,
                f"{seconds:.2f}",
                f"{statistics.mean(values):.3f} ± {error:.3f}",
                paired(values, first),
                "",
            ]
        )
        print(f"  {name}: {seconds:.2f} s, LDS {statistics.mean(values):.3f}", flush=True)
    print(f"\n{machine_description()}; digits {args.arch}, {len(y)} training samples, {args.queries} queries, "
          f"{args.subsets} subsets of α = {ALPHA}, seed {args.seed}\n")  # fmt: skip
    print(markdown_table(["method", "seconds", "LDS", f"Δ vs {next(iter(scorers))}", "note"], rows))


def paired(values: list[float], first: list[float]) -> str:
    """Mean per-query difference of two methods' LDS ± its standard error: both are judged on the
    same queries and retrained models, so this error is far below either LDS's own."""
    if values is first:
        return ""
    diffs = [a - b for a, b in zip(values, first, strict=True)]
    error = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else 0.0
    return f"{statistics.mean(diffs):+.3f} ± {error:.3f}"


if __name__ == "__main__":
    main()
