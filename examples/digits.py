"""Shared pieces of the digits examples: data, training, the backdoor trigger, tables.

scikit-learn's digits (1,797 8×8 grey images, 10 classes) ship inside the package, so these
examples run offline. Pixels are scaled to [0, 1]; a fixed seeded split gives 1,200 training and
597 test images. The test split is only ever used for the final tables, never to pick a step.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import gif

N_TRAIN = 1200
CNN = {"name": "tinynet", "in_channels": 1, "num_classes": 10, "image_size": 8}
MLP = {"name": "mlp", "input_shape": [1, 8, 8], "hidden_sizes": [64], "num_classes": 10}


@dataclass
class Split:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits(seed: int = 0) -> Split:
    from sklearn.datasets import load_digits as sk_digits

    data = sk_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    return Split(x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:])


def build(arch: dict | Callable[[], nn.Module]) -> nn.Module:
    """A registry architecture (``{"name": ..., **config}``) or a user's module factory."""
    if callable(arch):
        return arch()
    config = dict(arch)
    return gif.models.build(config.pop("name"), **config)


def train(
    arch: dict | Callable[[], nn.Module], x: torch.Tensor, y: torch.Tensor, *, seed: int, epochs: int = 40
) -> nn.Module:
    """SGD with momentum and weight decay (the paper's recipe, shortened), batch 64."""
    torch.manual_seed(seed)
    model = build(arch)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), 64):
            b = perm[i : i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[b]), y[b]).backward()
            opt.step()
        sched.step()
    return model.eval()


def poison(
    x: torch.Tensor,
    y: torch.Tensor,
    seed: int,
    trigger: Callable[[torch.Tensor], torch.Tensor],
    target: int = 4,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``trigger`` + label ``target`` on 10% of the training set, drawn from samples whose label
    is not ``target``: (poisoned inputs, poisoned labels, poisoned indices)."""
    gen = torch.Generator().manual_seed(seed)
    candidates = torch.nonzero(y != target).flatten()
    idx = torch.sort(candidates[torch.randperm(len(candidates), generator=gen)[: len(y) // 10]]).values
    xp, yp = x.clone(), y.clone()
    xp[idx] = trigger(xp[idx])
    yp[idx] = target
    return xp, yp, idx


def add_trigger(x: torch.Tensor) -> torch.Tensor:
    """A 3×3 checkerboard patch in the bottom-right corner (the backdoor trigger)."""
    out = x.clone()
    pattern = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    out[..., 5:8, 5:8] = pattern
    return out


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return 100.0 * gif.metrics.evaluate(model, x, y).accuracy


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def print_table(title: str, header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"  # noqa: E731
    text = "\n".join([f"### {title}", "", line(header), line(["-" * w for w in widths]), *map(line, rows)])
    print(text + "\n")
    return text


def report(
    runs: list[dict[str, list[float]]],
    *,
    title: str,
    columns: list[str],
    out: Path,
    stem: str,
    plotted: int | None = None,
) -> None:
    """Print the mean ± std table over seeds, save it as markdown and as a grouped bar plot (PNG).

    ``runs``: one dict per seed, method name -> values in ``columns`` order; the plot shows the
    first ``plotted`` columns (default: all but the last, the edit time).
    """
    names = list(runs[0])
    table = [[n, *(mean_std([r[n][k] for r in runs]) for k in range(len(columns)))] for n in names]
    text = print_table(f"{title}, {len(runs)} seeds (mean ± std)", ["method", *columns], table)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text(text + "\n")
    _plot(
        runs, names, columns[: len(columns) - 1 if plotted is None else plotted], title, out / f"{stem}.png"
    )


def _plot(runs: list[dict], names: list[str], series: list[str], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(9, 4))
    for k, label in enumerate(series):
        means = [sum(r[n][k] for r in runs) / len(runs) for n in names]
        ax.bar([i + width * k for i in range(len(names))], means, width=width, label=label)
    ax.set_xticks(
        [i + 0.4 - width / 2 for i in range(len(names))], names, rotation=25, ha="right", fontsize=8
    )
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"saved {path}")
