"""What an edit costs next to retraining from scratch, and where its time goes.

The digits protocols (examples/class_removal.py, examples/backdoor_relabel.py: the CNN of
examples/digits.py, 40 epochs of SGD), or with ``--data mnist`` the MNIST-5k ones
(examples/mnist_protocols.py: TinyNet at 28×28, 15 epochs). Per seed: train the model, time
retraining it with the edit applied to the data (the same recipe: the reference every edit is
compared with), then time the edit for each variant:

* ``--protocol removal``: ``gif.remove(model, train, {"class": cls}, **variant)``;
  cold — an empty cache (``gif.MemoryCache``) per variant; further edit — the same checkpoint and
  cache, another class (``--cls2``): what a service pays for the second deletion request against a
  production checkpoint.
* ``--protocol relabel``: the backdoor protocol (10% of the training images triggered and
  labelled 4) on a checkpoint with a second defect, ``--flipped`` (default 5%) of the other
  training samples given a wrong label; cold — ``gif.relabel`` of every poisoned sample to its true label, an empty cache;
  further edit — the same checkpoint and cache, a relabel of the flipped samples (the second
  request against the checkpoint; the backdoor stays, so its attack column stays high; none with
  ``--flipped 0``). Retraining: the same recipe with the backdoor's labels fixed.

``--copies K`` (default 1) trains on each training image and K − 1 copies shifted by up to
:data:`SHIFT` pixels (seeded; the test split is unchanged): a training set K times larger, for how
the ratio moves with the data. The edit's own cost is set by its Hessian sample, validation and
edited samples, not by the training set, while retraining grows with it (docs/benchmarks.md, "A
larger training set"). ``--arch mlp`` (one hidden layer of 64), ``--arch resnet18 --width W``,
``--arch vgg11 --width W`` (with BatchNorm) or ``--arch lenet`` swaps the model, with the same
training recipe.

Columns: edit seconds and edit ÷ retraining, test accuracies (removal: retained classes, removed
class; relabel: clean, relabel, attack success), the engine's work counters (gradients, HVPs,
forward evaluations) and its timings by stage (selection, gradients, solve, step search).

    python bench/edit_cost.py [--protocol removal|relabel] [--data digits|mnist] [--arch default|mlp|resnet18|vgg11|lenet] [--width 16] [--copies 1] [--seeds 1] [--first-seed 0] [--cls 3] [--cls2 5] [--flipped 0.05] [--threads 1] [--steps] [--variants default,kfac]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

import gif
import gif.config
import gif.hessian
import gif.method_choice
import gif.newton
from gif.loo_head import named_head
from gif.models.zoo import trainable_layers

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import digits  # noqa: E402
import mnist  # noqa: E402
from digits import CNN, accuracy, load_digits, poison, train  # noqa: E402
from mnist import TINYNET, load_mnist  # noqa: E402

#: --data -> (loader, architecture, training epochs, backdoor trigger): the recipes of
#: examples/class_removal.py, examples/backdoor_relabel.py and examples/mnist_protocols.py
DATA = {
    "digits": (load_digits, CNN, 40, digits.add_trigger),
    "mnist": (load_mnist, TINYNET, 15, mnist.add_trigger),
}
#: --data -> the model's name in the table's title
MODEL_NAMES = {"digits": "CNN", "mnist": "TinyNet"}
#: --data -> the image side (for ``--arch mlp``'s input shape)
IMAGE_SIDE = {"digits": 8, "mnist": 28}


def architecture(args) -> tuple[dict, str]:
    """(the registry architecture, its name in the table) of ``--arch``: the protocol's own
    (``default``), an MLP of one hidden layer of 64, ResNet-18 or VGG11 at ``--width``, or
    LeNet-5 (three Linear layers after its convolutions)."""
    side = IMAGE_SIDE[args.data]
    if args.arch == "mlp":
        return {"name": "mlp", "input_shape": [1, side, side], "hidden_sizes": [64], "num_classes": 10}, "MLP"
    if args.arch == "resnet18":
        return mnist.resnet18(args.width), f"ResNet-18 (width {args.width})"
    image = {"name": args.arch, "in_channels": 1, "num_classes": 10, "image_size": side}
    if args.arch == "vgg11":
        return {**image, "width": args.width}, f"VGG11 with BatchNorm (width {args.width})"
    if args.arch == "lenet":
        return image, "LeNet-5"
    return DATA[args.data][1], MODEL_NAMES[args.data]


#: the backdoor's target label (examples/backdoor_relabel.py)
TARGET = 4

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
    # what a relabel's fallback CG (method "if") runs on: the default since 2026-12-07 is the
    # Gauss–Newton matrix truncated at 10 iterations; before, the Hessian to convergence or negative
    # curvature (K-FAC approximates the Gauss–Newton matrix either way; the head is linear: G = H)
    "hessian cg": {"curvature": "hessian", "max_iter": 100},
    "gauss-newton untruncated": {"curvature": "gauss_newton", "max_iter": 100},
    # the Newton loop run until a step cannot improve the validation objective or it reaches its
    # maximum (before 2026-12-07 for every method; the ``if`` preset now stops at 0.98)
    "objective 1": {"stop_objective": 1.0},
    # the ``if`` preset's Hessian sample at 1,024 (measured, not adopted: docs/benchmarks.md,
    # "Stopping a relabel at the guard's bar"); a preset, not a request option, so that FIF's head
    # attempts keep their own 2,048
    "if 1024": {"presets": {"if": {"hessian_samples": 1024}}},
    # the ``if`` preset before ``hvp_samples`` (2026-12-07): every product over the whole Hessian
    # sample
    "hvp all": {"presets": {"if": {"hvp_samples": None}}},
    # the ``if`` preset's products over 1,024 of its samples (the default from ``hvp_samples``'s
    # introduction until it became 512, 2026-12-07), and over 256 (measured, not adopted)
    "hvp 1024": {"presets": {"if": {"hvp_samples": 1024}}},
    "hvp 256": {"presets": {"if": {"hvp_samples": 256}}},
    # the relabel's ``auto`` without its attempt over the last layers (before 2026-12-07), and with
    # it giving up at another first-step objective (gif/method_choice.py)
    "no last layers": {"patch": {"gif.method_choice.LAST_LAYERS": 0}},
    "give up 0.95": {"patch": {"gif.method_choice.LAST_LAYERS_GIVE_UP": 0.95}},
    "last layers cg 5": {"patch": {"gif.method_choice.LAST_LAYERS_SOLVE": {"max_iter": 5}}},
    # the ``if`` preset without the stop on stalled Newton steps (before 2026-12-07: the loop went on
    # until a step could not improve the objective or reached the bar), with a larger gain, and
    # stopping at the first stalled step instead of the second in a row
    "no stall stop": {"presets": {"if": {"stall_gain": 0.0}}},
    "stall 0.01": {"presets": {"if": {"stall_gain": 0.01}}},
    "stall once": {"patch": {"gif.newton.STALL_PATIENCE": 1}},
    # the Gauss–Newton products one chunk at a time, as before 2026-12-07 (``auto`` never linearises)
    "plain products": {"patch": {"gif.hessian.LINEARIZE_AFTER_SECONDS": float("inf")}},
    # FIF on the logits' Linear layer alone (its name filled in per model): runs on its features
    # (gif/tail_edit.py)
    "fif head": {"method": "fif", "ratio": 1.0, "param_names": "head"},
    # FIF on the last two trainable layers (the head and the one before it, names filled in per
    # model): at FIF's preset, with K-FAC, and with the ``if`` preset's truncated Gauss–Newton CG
    "fif suffix": {"method": "fif", "ratio": 1.0, "param_names": "suffix"},
    "fif suffix kfac": {"method": "fif", "ratio": 1.0, "param_names": "suffix", "solver": "kfac"},
    "fif suffix gn": {
        "method": "fif",
        "ratio": 1.0,
        "param_names": "suffix",
        "solver": "cg",
        "curvature": "gauss_newton",
        "damping": 0.03,
        "max_iter": 10,
        "hvp_samples": 1024,
        "stop_objective": 0.98,
    },
}


@contextlib.contextmanager
def patched_presets(presets: dict[str, dict]):
    """``gif.config.EDIT_PRESETS`` with a variant's ``presets`` entries changed, while it runs."""
    saved = {method: dict(gif.config.EDIT_PRESETS[method]) for method in presets}
    for method, changes in presets.items():
        gif.config.EDIT_PRESETS[method].update(changes)
    try:
        yield
    finally:
        for method, preset in saved.items():
            gif.config.EDIT_PRESETS[method].clear()
            gif.config.EDIT_PRESETS[method].update(preset)


@contextlib.contextmanager
def patched(constants: dict[str, object]):
    """The engine's module constants named in a variant's ``patch`` (``"gif.module.NAME": value``)
    set to its values, while it runs."""
    targets = {name: name.rpartition(".") for name in constants}
    saved = {name: getattr(sys.modules[module], attr) for name, (module, _, attr) in targets.items()}
    for name, (module, _, attr) in targets.items():
        setattr(sys.modules[module], attr, constants[name])
    try:
        yield
    finally:
        for name, (module, _, attr) in targets.items():
            setattr(sys.modules[module], attr, saved[name])


def head_names(model, x) -> list[str]:
    """``[<name of the logits' Linear layer>.*]``."""
    found = named_head(model, x)
    assert found is not None, "the model's logits are not a Linear layer's output"
    return [f"{found[0]}.*"]


#: --copies: the largest shift of a copy, in pixels along each axis
SHIFT = 2


def load(seed: int, args) -> digits.Split:
    """The split of ``--data`` for ``seed``, its training part with ``--copies`` (module docstring)."""
    s = DATA[args.data][0](seed)
    if args.copies == 1:
        return s
    gen = torch.Generator().manual_seed(FLIP_SEED + seed)
    copies = [s.x_train] + [shifted(s.x_train, gen) for _ in range(args.copies - 1)]
    return digits.Split(torch.cat(copies), s.y_train.repeat(args.copies), s.x_test, s.y_test)


def shifted(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Each image of ``x`` [n, c, h, w] moved by its own integer offset in [−SHIFT, SHIFT]² (zeros
    shifted in)."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (SHIFT, SHIFT, SHIFT, SHIFT))
    dy, dx = (torch.randint(0, 2 * SHIFT + 1, (n,), generator=gen) for _ in range(2))
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :]
    return padded[
        torch.arange(n)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None], rows, cols
    ]


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def removal_quality(model, split, cls: int) -> list[float]:
    keep = split.y_test != cls
    return [
        accuracy(model, split.x_test[keep], split.y_test[keep]),
        accuracy(model, split.x_test[~keep], split.y_test[~keep]),
    ]


def removal(seed: int, args):
    """(model, training inputs, retrained model, retraining seconds, [(label, edit(cache, options)
    -> result, quality(model) -> test accuracies)]): the first edit is what retraining did."""
    _, _, epochs, _ = DATA[args.data]
    arch = architecture(args)[0]
    s = load(seed, args)
    model = train(arch, s.x_train, s.y_train, seed=seed, epochs=epochs)
    keep = s.y_train != args.cls
    retrained, retrain = timed(
        lambda: train(arch, s.x_train[keep], s.y_train[keep], seed=seed, epochs=epochs)
    )

    def edit(cls: int):
        return lambda cache, options: gif.remove(
            model, (s.x_train, s.y_train), {"class": cls}, seed=seed, cache=cache, **options
        )

    return (
        model,
        s.x_train,
        retrained,
        retrain,
        [
            ("cold", edit(args.cls), lambda m: removal_quality(m, s, args.cls)),
            ("further edit", edit(args.cls2), lambda m: removal_quality(m, s, args.cls2)),
        ],
    )


def relabel(seed: int, args):
    """As :func:`removal`, for a checkpoint with two defects: the backdoor, and ``--flipped`` of
    the other training samples with a wrong label. The cold edit relabels the poisoned samples,
    the further one the flipped samples (another request against the same checkpoint; none with
    ``--flipped 0``, the backdoor protocol of examples/backdoor_relabel.py alone)."""
    _, _, epochs, trigger = DATA[args.data]
    arch = architecture(args)[0]
    s = load(seed, args)
    xp, yp, idx = poison(s.x_train, s.y_train, seed, trigger, TARGET)
    # a generator of its own: the engine draws its validation carve-out with ``seed`` from the
    # same untouched samples, and flips drawn alike would fill it
    gen = torch.Generator().manual_seed(FLIP_SEED + seed)
    clean = torch.nonzero(torch.isin(torch.arange(len(yp)), idx, invert=True)).flatten()
    flipped = torch.sort(
        clean[torch.randperm(len(clean), generator=gen)[: int(args.flipped * len(yp))]]
    ).values
    yp[flipped] = (yp[flipped] + torch.randint(1, 10, (len(flipped),), generator=gen)) % 10
    model = train(arch, xp, yp, seed=seed, epochs=epochs)
    fixed = yp.clone()
    fixed[idx] = s.y_train[idx]
    retrained, retrain = timed(lambda: train(arch, xp, fixed, seed=seed, epochs=epochs))
    not_target = s.y_test != TARGET
    x_trig, y_true = trigger(s.x_test[not_target]), s.y_test[not_target]

    def edit(rows: torch.Tensor):
        return lambda cache, options: gif.relabel(
            model, (xp, yp), rows, s.y_train[rows], seed=seed, cache=cache, **options
        )

    def quality(m) -> list[float]:
        attack = accuracy(m, x_trig, torch.full_like(y_true, TARGET))
        return [accuracy(m, s.x_test, s.y_test), accuracy(m, x_trig, y_true), attack]

    edits = [("cold (the backdoor)", edit(idx), quality)]
    if len(flipped):
        edits.append(("further edit (the flipped labels)", edit(flipped), quality))
    return model, xp, retrained, retrain, edits


#: The relabel protocol's flips (``--flipped``) are drawn with a generator of this seed + the seed.
FLIP_SEED = 1_000


PROTOCOLS = {"removal": removal, "relabel": relabel}
COLUMNS = {
    "removal": "retained (test) | removed class (test)",
    "relabel": "clean (test) | relabel (test) | attack success (test)",
}


def run_seed(seed: int, args, names: list[str]) -> list[dict]:
    model, x_train, retrained, retrain, edits = PROTOCOLS[args.protocol](seed, args)
    rows = [
        {
            "variant": "retraining from scratch",
            "seconds": retrain,
            "ratio": 1.0,
            "quality": edits[0][2](retrained),
        }
    ]
    for name in names:
        cache = gif.MemoryCache()
        options = dict(VARIANTS[name])
        presets = options.pop("presets", {})
        constants = options.pop("patch", {})
        if options.get("param_names") == "head":
            options["param_names"] = head_names(model, x_train)
        if options.get("param_names") == "suffix":
            options["param_names"] = [f"{layer}.*" for layer, _ in trainable_layers(model)[-2:]]
        for label, edit, quality in edits:
            with patched_presets(presets), patched(constants):
                result, seconds = timed(lambda edit=edit, cache=cache, options=options: edit(cache, options))
            report = result.report
            rows.append(
                {
                    "variant": f"{name}, {label}",
                    "seconds": seconds,
                    "ratio": seconds / retrain,
                    "quality": quality(result.model),
                    "work": report["work"],
                    "timings": report["timings"],
                }
            )
            kept = report["options"]["method"] + ", " + report["options"]["solver"] + _why_kept(report)
            print(
                f"  seed {seed} {name}, {label}: {seconds:.2f}s ({_times(seconds / retrain)}), "
                f"{_figures(rows[-1])}, kept {kept} (retrained: {_figures(rows[0])})",
                flush=True,
            )
            if args.steps:
                print(_newton_steps(report), flush=True)
    return rows


def _newton_steps(report: dict) -> str:
    """The kept edit's Newton steps: each solve's iterations and HVPs, the scale the step policy
    took and the validation objective there (the objective before the edit first), and why the
    loop stopped (gif/newton.py, ``STOP_REASONS``)."""
    steps = [f"objective before {report['metrics']['before']['objective']:.4f}"]
    for step in report["newton_steps"]:
        solver, walk = step["solver"], step["step"]
        steps.append(
            f"step {step['newton_step']}: {solver['iterations']} iterations, {solver['hvps']} HVPs, "
            f"scale {walk['scale']:.3g}, objective {walk['objective']:.4f}"
        )
    return "    " + "; ".join(steps) + f"; stopped: {report['stopped']}"


def _why_kept(report: dict) -> str:
    """Why ``auto`` kept the edit it kept (gif/method_choice.py, ``accepted``), where it chose."""
    last = (report.get("method_choice") or {}).get("head_first")
    guard = (report.get("solver_choice") or {}).get("guard")
    verdicts = [*last.get("earlier", []), last] if last is not None else []
    heads = [v for v in verdicts if v.get("tier", "head") == "head"]
    tails = [v for v in verdicts if v.get("tier") == "last_layers"]
    tried = ", head tried at λ " + "/".join(f"{v['damping']:g}" for v in heads) if len(heads) > 1 else ""
    for v in tails:  # the attempt over the last layers: its check's objective and gap, then its own
        held = v["held_out_check"]
        tried += f", last layers' check {held['objective']:.3f} after {held['newton_steps']} steps, gap {held['gap']:.3f}"
        if v.get("ran", True):
            tried += f", last layers {v['objective']:.3f} after {v['newton_steps']} steps"
    if last is not None and last["kept"] == "fif":
        if last.get("tier") == "last_layers":
            return f" (last layers accepted on its {last['accepted']}{tried})"
        why = f"accepted on its {last['accepted']}, held-out gap {last['held_out_check']['gap']:.3f}"
        return f" (λ {last['damping']:g} {why}{tried})"
    if guard is not None:
        why = guard.get("accepted_by")
        kept = guard["kept"]
        tried_by_guard = "/".join(f"{name} {v:.3f}" for name, v in guard["objectives"].items())
        verdict = f"{kept} accepted on its {why}" if why else f"{kept}, the highest objective"
        return f" (guard: {verdict}; {tried_by_guard}{tried})"
    return f" ({tried[2:]})" if tried else ""


def _times(ratio: float) -> str:
    """An edit ÷ retraining ratio, to three decimals below 0.1 (the ≤ 0.02× target is read there)."""
    return f"{ratio:.3f}×" if ratio < 0.1 else f"{ratio:.2f}×"


def _figures(row: dict) -> str:
    return " / ".join(f"{v:.2f}" for v in row["quality"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protocol", choices=sorted(PROTOCOLS), default="removal")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--data", choices=sorted(DATA), default="digits")
    ap.add_argument("--copies", type=int, default=1)
    ap.add_argument(
        "--arch",
        choices=["default", "mlp", "resnet18", "vgg11", "lenet"],
        default="default",
        help="the model: the protocol's own (default), an MLP, ResNet-18 or VGG11 at --width, or LeNet-5",
    )
    ap.add_argument("--width", type=int, default=16, help="--arch resnet18 | vgg11: its width (64: full)")
    ap.add_argument("--cls", type=int, default=3)
    ap.add_argument("--cls2", type=int, default=5)
    ap.add_argument(
        "--flipped",
        type=float,
        default=0.05,
        help="relabel protocol: the share of the other training labels made wrong (0: the backdoor alone)",
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", action="store_true", help="print each kept edit's Newton steps")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {sorted(VARIANTS)}")
    runs = [run_seed(seed, args, names) for seed in range(args.first_seed, args.first_seed + args.seeds)]
    what = (
        f"remove class {args.cls} (further edit: class {args.cls2})"
        if args.protocol == "removal"
        else f"backdoor relabel, {args.flipped:.0%} of the other labels flipped (further edit: those)"
    )
    print(
        f"\n### Edit vs retraining, {args.data} {architecture(args)[1]} ×{args.copies} training set, {what}, {args.seeds} seed(s), {args.threads} thread(s)\n"
    )
    columns = COLUMNS[args.protocol]
    print(
        f"| variant | seconds | edit ÷ retraining | {columns} | gradients / HVPs / "
        "forward evals | selection / gradients / solve / step s |"
    )
    print("|---|---|---|" + "---|" * (columns.count("|") + 1) + "---|---|")
    for i, first in enumerate(runs[0]):
        rows = [r[i] for r in runs]
        seconds = statistics.mean(r["seconds"] for r in rows)
        ratio = statistics.mean(r["ratio"] for r in rows)
        quality = "".join(
            f"{statistics.mean(r['quality'][j] for r in rows):.2f} | " for j in range(len(first["quality"]))
        )
        if "work" not in first:
            print(f"| {first['variant']} | {seconds:.2f} | 1 | {quality}| |")
            continue
        work, timings = first["work"], first["timings"]
        print(
            f"| {first['variant']} | {seconds:.2f} | {_times(ratio)} | "
            + quality
            + f"{work['gradients']} / {work['hvps']} / {work['forward_evaluations']} | "
            + " / ".join(f"{timings.get(k, 0.0):.2f}" for k in ("selection", "gradients", "solve", "step"))
            + " |"
        )


if __name__ == "__main__":
    main()
