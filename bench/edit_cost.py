"""What an edit costs next to retraining from scratch, and where its time goes.

The digits class-removal protocol (examples/class_removal.py: the CNN of examples/digits.py, 40
epochs of SGD; remove class ``--cls``), or with ``--data mnist`` the MNIST-5k one
(examples/mnist_protocols.py: TinyNet at 28×28, 15 epochs). Per seed: train the model, time retraining it without the
class (the same recipe: the reference every edit is compared with), then time
``gif.remove(model, train, {"class": cls}, **variant)`` for each variant:

* cold — an empty cache (``gif.MemoryCache``) per variant;
* further edit — the same checkpoint and cache, another class (``--cls2``): what a service pays
  for the second deletion request against a production checkpoint.

Columns: edit seconds and edit ÷ retraining, test accuracy on the retained classes and on the
removed class, the engine's work counters (gradients, HVPs, forward evaluations) and its
timings by stage (selection, gradients, solve, step search).

    python bench/edit_cost.py [--data digits|mnist] [--seeds 1] [--cls 3] [--cls2 5] [--threads 1] [--variants default,kfac]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

import gif
from gif.loo_head import named_head

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
from digits import CNN, accuracy, load_digits, train  # noqa: E402
from mnist import TINYNET, load_mnist  # noqa: E402

#: --data -> (loader, architecture, training epochs): the recipes of examples/class_removal.py
#: and examples/mnist_protocols.py
DATA = {"digits": (load_digits, CNN, 40), "mnist": (load_mnist, TINYNET, 15)}

#: name -> gif.remove options ({} = the engine's defaults: FIF on the head since 2026-12-06; the
#: GIF variants keep the names they had when GIF was the default, so earlier commands in
#: docs/benchmarks.md still measure what they measured)
VARIANTS: dict[str, dict] = {
    "default": {},
    "gif": {"method": "gif"},
    "hessian 512": {"method": "gif", "hessian_samples": 512},
    "lowrank": {"method": "gif", "solver": "lowrank"},
    "kfac": {"method": "gif", "solver": "kfac"},
    "ekfac": {"method": "gif", "solver": "ekfac"},
    "if + kfac": {"method": "if", "solver": "kfac"},
    "if + ekfac": {"method": "if", "solver": "ekfac"},
    "1 Newton step": {"method": "gif", "newton_steps": 1},
    # FIF on the logits' Linear layer alone (its name filled in per model): runs on its features
    # (gif/head_edit.py)
    "fif head": {"method": "fif", "ratio": 1.0, "param_names": "head"},
}


def head_names(model, x) -> list[str]:
    """``[<name of the logits' Linear layer>.*]``."""
    found = named_head(model, x)
    assert found is not None, "the model's logits are not a Linear layer's output"
    return [f"{found[0]}.*"]


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def quality(model, split, cls: int) -> tuple[float, float]:
    keep = split.y_test != cls
    return (
        accuracy(model, split.x_test[keep], split.y_test[keep]),
        accuracy(model, split.x_test[~keep], split.y_test[~keep]),
    )


def run_seed(seed: int, args, names: list[str]) -> list[dict]:
    load, arch, epochs = DATA[args.data]
    s = load(seed)
    model = train(arch, s.x_train, s.y_train, seed=seed, epochs=epochs)
    keep = s.y_train != args.cls
    _, retrain = timed(lambda: train(arch, s.x_train[keep], s.y_train[keep], seed=seed, epochs=epochs))
    rows = [{"variant": "retraining from scratch", "seconds": retrain, "ratio": 1.0}]
    for name in names:
        cache = gif.MemoryCache()
        options = dict(VARIANTS[name])
        if options.get("param_names") == "head":
            options["param_names"] = head_names(model, s.x_train)
        for label, cls in (("cold", args.cls), ("further edit", args.cls2)):
            result, seconds = timed(
                lambda cls=cls, cache=cache, options=options: gif.remove(
                    model, (s.x_train, s.y_train), {"class": cls}, seed=seed, cache=cache, **options
                )
            )
            retained, removed = quality(result.model, s, cls)
            report = result.report
            rows.append(
                {
                    "variant": f"{name}, {label}",
                    "seconds": seconds,
                    "ratio": seconds / retrain,
                    "retained": retained,
                    "removed": removed,
                    "work": report["work"],
                    "timings": report["timings"],
                }
            )
            print(f"  seed {seed} {name}, {label}: {seconds:.2f}s ({seconds / retrain:.2f}×)", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--data", choices=sorted(DATA), default="digits")
    ap.add_argument("--cls", type=int, default=3)
    ap.add_argument("--cls2", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {sorted(VARIANTS)}")
    runs = [run_seed(seed, args, names) for seed in range(args.seeds)]
    print(
        f"\n### Edit vs retraining, {args.data} TinyNet, remove class {args.cls} (further edit: class {args.cls2}), "
        f"{args.seeds} seed(s), {args.threads} thread(s)\n"
    )
    print(
        "| variant | seconds | edit ÷ retraining | retained (test) | removed class (test) | gradients / HVPs / "
        "forward evals | selection / gradients / solve / step s |"
    )
    print("|---|---|---|---|---|---|---|")
    for i, first in enumerate(runs[0]):
        rows = [r[i] for r in runs]
        seconds = statistics.mean(r["seconds"] for r in rows)
        ratio = statistics.mean(r["ratio"] for r in rows)
        if "work" not in first:
            print(f"| {first['variant']} | {seconds:.2f} | 1 | | | | |")
            continue
        work, timings = first["work"], first["timings"]
        print(
            f"| {first['variant']} | {seconds:.2f} | {ratio:.2f}× | "
            f"{statistics.mean(r['retained'] for r in rows):.2f} | {statistics.mean(r['removed'] for r in rows):.2f} | "
            f"{work['gradients']} / {work['hvps']} / {work['forward_evaluations']} | "
            + " / ".join(f"{timings.get(k, 0.0):.2f}" for k in ("selection", "gradients", "solve", "step"))
            + " |"
        )


if __name__ == "__main__":
    main()
