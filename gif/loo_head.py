"""Leave-one-out margins of a ridge head refitted on the model's penultimate features.

A classifier whose logits are the output of a last Linear layer reads each sample's label off its
penultimate features f_i (that layer's input). Refit that last layer as a ridge regression of the
one-hot labels Y on f̃_i = [f_i, 1], the features held fixed:

    W = (F̃ᵀF̃ + λI)⁻¹ F̃ᵀY,        ŷ_i = Wᵀf̃_i,        h_i = f̃_iᵀ (F̃ᵀF̃ + λI)⁻¹ f̃_i.

For a quadratic loss the influence function is exact, and Sherman–Morrison gives the prediction
of the head refitted *without* sample i in closed form:

    ŷ_{−i} = (ŷ_i − h_i y_i) / (1 − h_i).

The score is that prediction's margin against the sample's own label,
s_i = max_{k≠y_i} ŷ_{−i,k} − ŷ_{−i,y_i}: positive when the head, had it not seen the sample, would
give it another class. A wrong label that the network memorised leaves its features among those of
its true class, so its left-out prediction disagrees with it, whatever its training loss
(docs/audit.md, "Mislabel triage"; docs/benchmarks.md "Mislabel triage": 0.93 of the flipped
digits labels in the top 10% on a CNN that fits all of them, against 0.63 for the loss).

λ = :data:`RIDGE` × the largest eigenvalue of F̃ᵀF̃ (scale-free). Cost: two forward passes over
the data and one d×d solve (d the penultimate width + 1), in float64; memory d² + d·k, never
n × d.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from ._util import ForwardHook, eval_mode, forward_hooks
from .data import Batch
from .errors import InvalidArgumentError
from .inputs import Inputs, call, count, take, to

#: The ridge λ relative to the largest eigenvalue of F̃ᵀF̃ (digits CNN and MLP, 3 seeds: flipped
#: labels found in the top 10% were within 0.03 of their best from 1e-7 to 1e-3; 1e-4 was best
#: on average).
RIDGE = 1e-4

#: The widest penultimate layer a head is refitted on (d² float64 entries: 512 MiB).
MAX_FEATURES = 8192


def head_of(model: nn.Module, inputs: Inputs) -> nn.Linear | None:
    """The Linear layer whose output is the model's logits on ``inputs``, or None when the logits
    are not a Linear layer's output, that layer runs more than once per forward pass, or it is
    wider than :data:`MAX_FEATURES`."""
    calls: list[tuple[nn.Module, torch.Tensor]] = []
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    record: ForwardHook = lambda mod, args, out: calls.append((mod, out))  # noqa: E731
    with forward_hooks((m, record) for m in linears), torch.no_grad(), eval_mode(model):
        logits = call(model, inputs)
    for module, out in reversed(calls):
        if out.shape == logits.shape and torch.equal(out, logits):
            once = sum(m is module for m, _ in calls) == 1  # its input is then the logits' features
            assert isinstance(module, nn.Linear)
            return module if once and module.in_features + 1 <= MAX_FEATURES else None
    return None


def named_head(model: nn.Module, inputs: Inputs) -> tuple[str, nn.Linear] | None:
    """The head (:func:`head_of`, found on the first sample of ``inputs``, moved to the model's
    device) and its name in ``model`` (``""`` when the model is the layer)."""
    device = next(model.parameters()).device
    head = head_of(model, to(take(inputs, slice(0, 1)), device))
    if head is None:
        return None
    return next(name for name, m in model.named_modules() if m is head), head


def head_parameter_names(path: str, head: nn.Module) -> set[str]:
    """The names in the model of the parameters of ``head`` (``path``: its name there)."""
    return {f"{path}.{name}" if path else name for name, _ in head.named_parameters()}


def loo_margins(
    model: nn.Module, train: Batch, *, chunk_size: int = 512, ridge: float = RIDGE
) -> torch.Tensor:
    """s_i = max_{k≠y_i} ŷ_{−i,k} − ŷ_{−i,y_i} for every training sample (module docstring), [n] on
    the CPU in float64; higher = more suspicious.

    Raises:
        InvalidArgumentError: the labels are not class indices, or the logits are not the output of
            a Linear layer (no head to refit).
    """
    inputs, labels = train
    if labels.ndim != 1 or labels.is_floating_point():
        raise InvalidArgumentError("the leave-one-out head needs integer class labels, one per sample")
    device = next(model.parameters()).device
    head = head_of(model, to(take(inputs, slice(0, 1)), device))
    if head is None:
        raise InvalidArgumentError(
            "the leave-one-out head needs logits computed by a last Linear layer "
            f"(at most {MAX_FEATURES - 1} inputs); use measure='margin' or 'loss'"
        )
    classes = head.out_features
    if int(labels.min()) < 0 or int(labels.max()) >= classes:
        raise InvalidArgumentError(f"labels must lie in [0, {classes}) for this model's {classes} logits")
    d = head.in_features + 1
    gram = torch.zeros(d, d, dtype=torch.float64)
    cross = torch.zeros(d, classes, dtype=torch.float64)
    for f, y in _features(model, head, train, chunk_size, device):
        gram += f.T @ f
        cross += f.T @ nn.functional.one_hot(y, classes).to(torch.float64)
    lam = ridge * float(torch.linalg.eigvalsh(gram)[-1])
    inverse = torch.linalg.inv(gram + lam * torch.eye(d, dtype=torch.float64))
    weights = inverse @ cross
    out = []
    for f, y in _features(model, head, train, chunk_size, device):
        leverage = ((f @ inverse) * f).sum(dim=1, keepdim=True)
        own_onehot = nn.functional.one_hot(y, classes).to(torch.float64)
        left_out = (f @ weights - leverage * own_onehot) / (1 - leverage)
        own = left_out.gather(1, y.unsqueeze(1)).squeeze(1)
        others = left_out.masked_fill(own_onehot.bool(), float("-inf")).amax(dim=1)
        out.append(others - own)
    return torch.cat(out)


def feature_chunks(
    model: nn.Module,
    layer: nn.Module,
    inputs: Inputs,
    chunk_size: int,
    device: torch.device,
    *,
    flatten: bool = True,
) -> Iterator[torch.Tensor]:
    """The input of ``layer`` (the head, or a tail's first module; as computed, on ``device``;
    flattened to [chunk, d] unless ``flatten`` is false) for each chunk of ``inputs``, the model
    in eval mode and without gradients."""
    seen: list[torch.Tensor] = []
    record: ForwardHook = lambda mod, args, out: seen.append(args[0])  # noqa: E731
    with forward_hooks([(layer, record)]), torch.no_grad(), eval_mode(model):
        for start in range(0, count(inputs), chunk_size):
            seen.clear()
            call(model, to(take(inputs, slice(start, start + chunk_size)), device))
            found = seen[-1].detach()
            yield found.flatten(1) if flatten else found


def _features(
    model: nn.Module, head: nn.Linear, train: Batch, chunk_size: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """[f_i, 1] in float64 on the CPU and the labels, chunk by chunk."""
    inputs, labels = train
    chunks = feature_chunks(model, head, inputs, chunk_size, device)
    for start, f in zip(range(0, count(inputs), chunk_size), chunks, strict=True):
        ones = torch.ones(len(f), 1, dtype=torch.float64)
        yield torch.cat([f.to("cpu", torch.float64), ones], dim=1), labels[start : start + chunk_size].cpu()
