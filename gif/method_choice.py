"""What an edit chooses per request: ``method="auto"`` (FIF on the classifier's head where that
forgets as well as retraining at a small fraction of its cost, else the verb's own method), and
the validation guard on ``solver="auto"`` (:func:`guarded`).

Removing a whole class is a change of what the classifier outputs, and the logits' Linear layer
(the head) carries it: FIF restricted to the head — (H[T,T] + λI)⁻¹ g[T] over the head's weight
and bias, then Newton steps walked by validation — removes the class to 0% while keeping the
retained accuracy at retraining's, on every model measured (an MLP and TinyNet on digits, TinyNet
and ResNet-18 on MNIST-5k, a ViT, an exported CNN), and it runs on features computed once
(gif/head_edit.py): 1–10% of retraining's time where GIF's 5% of every layer took 50–250%
(docs/benchmarks.md, "Class removal at the defaults"). A linear probe finds the class in the features afterwards, as it does in the
model GIF edits and in the model retrained without it (bench/feature_probe.py): the head edit
changes what the model answers, not what its backbone computes.

Samples (not a class) are remembered throughout the network, so their removal keeps GIF, and a
relabel keeps IF over every parameter (a head-only relabel misses the digits backdoor's targets).

``solver="auto"`` takes K-FAC where the model's curvature can be Kronecker-factored
(gif/inverse/choice.py): fitted once, it makes a relabel 3–30× cheaper than CG on CNNs, but on
some seeds its direction is worse (backdoor relabels, digits CNN and MLP and MNIST-5k TinyNet:
four runs of nine missed a target where CG met it, and CG missed by 8.5 points on one where
K-FAC did not). The edit's own validation objective mostly tells them apart: unless the K-FAC
edit ends near the objective's maximum (:data:`ACCEPT_OBJECTIVE`), the edit is redone with the
method's own solver and the better of the two kept (docs/benchmarks.md, "A relabel default
guarded by validation"). It buys quality, not time: most relabels then run both.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .config import EDIT_PRESETS, EditConfig
from .inputs import Inputs
from .loo_head import named_head
from .newton import EditResult

#: The validation objective (F1 of the edit's two goals, gif/steps.py) below which an edit whose
#: ``solver="auto"`` took K-FAC is redone with the method's own solver (module docstring).
ACCEPT_OBJECTIVE = 0.98

#: What ``auto`` falls back to, per edit verb.
FALLBACK = {"remove": "gif", "relabel": "if"}


def choose_method(
    config: EditConfig, model: nn.Module, inputs: Inputs, verb: str, whole_class: bool
) -> tuple[EditConfig, dict | None]:
    """The configuration with a concrete method and, for ``auto``, what was chosen and why.

    ``auto`` becomes ``fif`` with ``selection="head"`` for the removal of a whole class from a
    model whose logits a trainable Linear layer computes, unless the request names the
    parameters to change itself (``selection``, ``ratio`` or ``param_names``); else the verb's
    fallback (:data:`FALLBACK`). Any other method is kept, with no choice to report."""
    if config.method != "auto":
        return config, None
    fallback = FALLBACK[verb]
    reason = _why_not_head(config, model, inputs, verb, whole_class)
    if reason is None:
        chosen = config.replace(method="fif", selection="head")
        why = "a whole class removed from a model whose logits a Linear layer computes: FIF on that head"
    else:
        chosen, why = config.replace(method=fallback), reason
    return chosen, {
        "requested": "auto",
        "chosen": chosen.method,
        "selection": chosen.selection,
        "reason": why,
    }


def _why_not_head(
    config: EditConfig, model: nn.Module, inputs: Inputs, verb: str, whole_class: bool
) -> str | None:
    if verb != "remove":
        return f"{verb}: {FALLBACK[verb]} over the model's parameters (a head-only relabel misses the backdoor targets)"
    if not whole_class:
        return "a removal of samples, not of a whole class: they are remembered throughout the network"
    named = [n for n in ("selection", "ratio", "param_names") if getattr(config, n) is not None]
    if named:
        return f"the request names the parameters to change ({', '.join(named)})"
    found = named_head(model, inputs)
    if found is None or not found[0]:
        return "no Linear layer inside the model computes its logits"
    if not all(p.requires_grad for p in found[1].parameters()):
        return "the Linear layer computing the logits is frozen"
    return None


def guarded(run: Callable[[EditConfig], EditResult], config: EditConfig) -> EditResult:
    """``run(config)``; when ``solver="auto"`` took K-FAC and the edit's validation objective ends
    below :data:`ACCEPT_OBJECTIVE`, also ``run`` with the method's own solver (from the input model
    again) and keep the edit with the higher objective. The kept report's ``solver_choice`` says
    what was compared (``guard``); its ``work``, ``gradients`` and ``hvps`` count both runs."""
    first = run(config)
    choice = first.report.get("solver_choice")
    if config.solver != "auto" or choice is None or choice["chosen"] != "kfac":
        return first
    objective = _objective(first)
    guard: dict = {"threshold": ACCEPT_OBJECTIVE, "objectives": {"kfac": objective}}
    if objective >= ACCEPT_OBJECTIVE:
        choice["guard"] = {**guard, "kept": "kfac"}
        return first
    own = str(EDIT_PRESETS[config.method]["solver"])
    second = run(config.replace(solver=own))
    guard["objectives"][own] = _objective(second)
    kept, other = (second, first) if _objective(second) > objective else (first, second)
    solver = kept.report["options"]["solver"]
    kept.report["solver_choice"] = {**choice, "chosen": solver, "guard": {**guard, "kept": solver}}
    for name, count in other.report["work"].items():
        kept.report["work"][name] += count
    kept.report["gradients"], kept.report["hvps"] = (
        kept.report["work"]["gradients"],
        kept.report["work"]["hvps"],
    )
    return kept


def _objective(result: EditResult) -> float:
    return float(result.report["metrics"]["after"]["objective"])
