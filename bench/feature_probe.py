"""Does a class removal take the class out of the features? A linear probe's answer, next to retraining.

Protocol: the class-removal protocols of examples/class_removal.py (digits, the TinyNet CNN) and
examples/mnist_protocols.py (``--data mnist``: MNIST-5k, TinyNet at 28×28). Per seed: train the
model, retrain it without class ``--cls``, and edit the original with the engine's default
removal and with FIF on the head alone (``method="fif", selection="head"``). For each model a
multinomial logistic regression (scikit-learn) is fitted on its penultimate features of the
training set (every class, the removed one included) and scored on the test split: its accuracy
on the removed class says how well a linear read-out can still find that class in the features.
A head-only edit leaves the features as they were, so its row is the original's.

    python bench/feature_probe.py [--data digits|mnist] [--seeds 3] [--cls 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import warnings
from pathlib import Path

import torch
from sklearn.linear_model import LogisticRegression

import gif
from gif.loo_head import feature_chunks, head_of

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from digits import CNN, accuracy, load_digits, train
from mnist import TINYNET, load_mnist

DATA = {"digits": (load_digits, CNN, 40), "mnist": (load_mnist, TINYNET, 15)}
EDITS = {"default edit": {}, "FIF on the head": {"method": "fif", "selection": "head"}}


def features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    head = head_of(model, x[:1])
    return torch.cat(list(feature_chunks(model, head, x, 512, torch.device("cpu"))))


def probe(model: torch.nn.Module, s, cls: int) -> tuple[float, float]:
    """Probe accuracy on the removed class and on the others (test split)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted = LogisticRegression(max_iter=3000).fit(features(model, s.x_train).numpy(), s.y_train.numpy())
    predicted = torch.as_tensor(fitted.predict(features(model, s.x_test).numpy()))
    removed = s.y_test == cls
    return (
        float((predicted[removed] == cls).double().mean()),
        float((predicted[~removed] == s.y_test[~removed]).double().mean()),
    )


def run(seed: int, data: str, cls: int) -> dict[str, list[float]]:
    load, arch, epochs = DATA[data]
    s = load(seed)
    model = train(arch, s.x_train, s.y_train, seed=seed, epochs=epochs)
    keep = s.y_train != cls
    models = {
        "original": model,
        "retrained": train(arch, s.x_train[keep], s.y_train[keep], seed=seed, epochs=epochs),
    }
    for name, options in EDITS.items():
        models[name] = gif.remove(model, (s.x_train, s.y_train), {"class": cls}, seed=seed, **options).model
    kept = s.y_test != cls
    rows = {}
    for name, m in models.items():
        rows[name] = [accuracy(m, s.x_test[~kept], s.y_test[~kept]), *(100 * v for v in probe(m, s, cls))]
        print(f"  seed {seed} {name:16s} model on the class {rows[name][0]:6.2f}  probe {rows[name][1]:6.2f} / "
              f"{rows[name][2]:6.2f}", flush=True)  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=sorted(DATA), default="digits")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--cls", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runs = [run(seed, args.data, args.cls) for seed in range(args.seeds)]
    print(
        f"\n### Linear probe of the features, {args.data}, class {args.cls} removed, {args.seeds} seed(s)\n"
    )
    print(
        "| model | the model's accuracy on the class | probe accuracy on the class | probe accuracy on the others |"
    )
    print("|---|---|---|---|")
    for name in runs[0]:
        cells = []
        for column in range(3):
            values = [r[name][column] for r in runs]
            spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
            cells.append(f"{statistics.mean(values):.2f}{spread}")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
