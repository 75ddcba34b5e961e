"""The paper's MNIST protocols at 28×28 on real data (MNIST-5k), against retraining, with the cost.

Two protocols (docs/method.md, "The paper's protocols"), each per seed against a model retrained
from scratch with the same recipe on the same machine:

* ``relabel`` — Table 3: 10% of the training images (true label ≠ 4) get a 4×4 checkerboard
  trigger and the label 4; TinyNet is trained on that poisoned set; the edit relabels the
  poisoned samples to their true labels. Columns: clean accuracy (untouched test images), relabel
  accuracy (triggered test images, true label ≠ 4, classified as their true label), attack
  success (triggered test images classified as 4).
* ``removal`` — Tables 2-3: remove class ``--cls``. Columns: accuracy on the retained classes and
  on the removed class (test).

Both add the edit's wall time and edit ÷ retraining time (retraining timed in the same run).
Training: SGD with momentum and weight decay, ``--epochs`` epochs, batch 64 (examples/digits.py).
CPU-feasible sizes: 4,000 training images; TinyNet at full size (398k parameters); ResNet-18 at
``--width`` (64 is the paper's 11.2 M parameters; 16 gives 0.7 M and is what a 2-core CPU run
can afford).

    python examples/mnist_protocols.py --protocol relabel [--seeds 3] [--arch tinynet]
    python examples/mnist_protocols.py --protocol removal --arch resnet18 --width 16 --seeds 1
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from digits import accuracy, poison, report, train
from mnist import TINYNET, add_trigger, load_mnist, resnet18

import gif

TARGET = 4

#: name -> options of the edit ({} = the engine's defaults)
METHODS: dict[str, dict] = {
    "default": {},
    "GIF 5%": {"method": "gif"},
    "IF + CG": {"method": "if", "solver": "cg"},
    "IF, guarded K-FAC": {"method": "if"},
    "hessian 512": {"hessian_samples": 512},
    "IF + K-FAC": {"method": "if", "solver": "kfac"},
    "IF + EK-FAC": {"method": "if", "solver": "ekfac"},
    "FIF head": {"method": "fif", "selection": "head"},
}


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def relabel(seed: int, arch: dict, epochs: int, methods: dict) -> dict[str, list[float]]:
    s = load_mnist(seed)
    xp, yp, idx = poison(s.x_train, s.y_train, seed, add_trigger, TARGET)
    model = train(arch, xp, yp, seed=seed, epochs=epochs)
    fixed = yp.clone()
    fixed[idx] = s.y_train[idx]
    retrained, retrain_seconds = timed(lambda: train(arch, xp, fixed, seed=seed, epochs=epochs))
    keep = s.y_test != TARGET
    x_trig, y_true = add_trigger(s.x_test[keep]), s.y_test[keep]
    rows: dict[str, list[float]] = {}

    def record(name: str, m: torch.nn.Module, seconds: float) -> None:
        clean = accuracy(m, s.x_test, s.y_test)
        fixed_acc = accuracy(m, x_trig, y_true)
        attack = accuracy(m, x_trig, torch.full_like(y_true, TARGET))
        rows[name] = [clean, fixed_acc, attack, seconds, seconds / retrain_seconds]
        print(f"  seed {seed} {name:28s} clean {clean:6.2f} relabel {fixed_acc:6.2f} attack {attack:6.2f} "
              f"({seconds:.1f}s, {seconds / retrain_seconds:.2f}× retraining)", flush=True)  # fmt: skip

    record("poisoned (original)", model, 0.0)
    record("retrained on fixed labels", retrained, retrain_seconds)
    for name, options in methods.items():
        result, seconds = timed(
            lambda o=options: gif.relabel(model, (xp, yp), idx, s.y_train[idx], seed=seed, **o)
        )
        record(name, result.model, seconds)
    return rows


def removal(seed: int, arch: dict, epochs: int, methods: dict, cls: int) -> dict[str, list[float]]:
    s = load_mnist(seed)
    model = train(arch, s.x_train, s.y_train, seed=seed, epochs=epochs)
    keep_train = s.y_train != cls
    retrained, retrain_seconds = timed(
        lambda: train(arch, s.x_train[keep_train], s.y_train[keep_train], seed=seed, epochs=epochs)
    )
    keep = s.y_test != cls
    rows: dict[str, list[float]] = {}

    def record(name: str, m: torch.nn.Module, seconds: float) -> None:
        retained = accuracy(m, s.x_test[keep], s.y_test[keep])
        removed = accuracy(m, s.x_test[~keep], s.y_test[~keep])
        rows[name] = [retained, removed, seconds, seconds / retrain_seconds]
        print(f"  seed {seed} {name:28s} retained {retained:6.2f} removed {removed:6.2f} "
              f"({seconds:.1f}s, {seconds / retrain_seconds:.2f}× retraining)", flush=True)  # fmt: skip

    record("original", model, 0.0)
    record("retrained from scratch", retrained, retrain_seconds)
    for name, options in methods.items():
        result, seconds = timed(
            lambda o=options: gif.remove(model, (s.x_train, s.y_train), {"class": cls}, seed=seed, **o)
        )
        record(name, result.model, seconds)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=["relabel", "removal"], default="relabel")
    parser.add_argument("--arch", choices=["tinynet", "resnet18"], default="tinynet")
    parser.add_argument("--width", type=int, default=16, help="ResNet-18 width (64: the paper's)")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--cls", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated names of METHODS")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "output")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    arch = TINYNET if args.arch == "tinynet" else resnet18(args.width)
    methods = {n: METHODS[n] for n in (m.strip() for m in args.methods.split(",")) if n}
    name = f"{args.arch}" + (f" (width {args.width})" if args.arch == "resnet18" else "")
    if args.protocol == "relabel":
        runs = [relabel(seed, arch, args.epochs, methods) for seed in range(args.seeds)]
        columns = ["clean acc", "relabel acc", "attack success", "seconds", "÷ retraining"]
        title = f"Backdoor relabelling, MNIST-5k 28×28, {name}"
    else:
        runs = [removal(seed, arch, args.epochs, methods, args.cls) for seed in range(args.seeds)]
        columns = ["retained acc", "removed-class acc", "seconds", "÷ retraining"]
        title = f"Class {args.cls} removal, MNIST-5k 28×28, {name}"
    report(runs, title=title, columns=columns, out=args.out, stem=f"mnist_{args.protocol}_{args.arch}",
           plotted=len(columns) - 2)  # fmt: skip


if __name__ == "__main__":
    main()
