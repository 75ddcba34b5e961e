"""``method="auto"`` for edits: FIF on the classifier's head where that forgets as well as
retraining at a small fraction of its cost, else the verb's own method.

Removing a whole class is a change of what the classifier outputs, and the logits' Linear layer
(the head) carries it: FIF restricted to the head — (H[T,T] + λI)⁻¹ g[T] over the head's weight
and bias, then Newton steps walked by validation — removes the class to 0% while keeping the
retained accuracy at retraining's, on every model measured (an MLP and TinyNet on digits, TinyNet
and ResNet-18 on MNIST-5k, a ViT), and it runs on features computed once (gif/head_edit.py): 1–4%
of retraining's time where GIF's 5% of every layer took 60–145% (docs/benchmarks.md,
"Edit ÷ retraining"). A linear probe finds the class in the features afterwards, as it does in the
model GIF edits and in the model retrained without it (bench/feature_probe.py): the head edit
changes what the model answers, not what its backbone computes.

Samples (not a class) are remembered throughout the network, so their removal keeps GIF, and a
relabel keeps IF over every parameter (a head-only relabel misses the digits backdoor's targets).
"""

from __future__ import annotations

from torch import nn

from .config import EditConfig
from .inputs import Inputs, take, to
from .loo_head import named_head

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
    device = next(model.parameters()).device
    found = named_head(model, to(take(inputs, slice(0, 1)), device))
    if found is None or not found[0]:
        return "no Linear layer inside the model computes its logits"
    if not all(p.requires_grad for p in found[1].parameters()):
        return "the Linear layer computing the logits is frozen"
    return None
