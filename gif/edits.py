"""Model edits: remove training samples (or a whole class), relabel training samples.

This module checks what the caller asks for and states it as a :class:`gif.newton.Task`;
:class:`gif.newton.Edit` does the work (Newton steps restricted to the selected parameters
T, each solved by an influence method: docs/method.md, "The edit as a Newton step").
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable

import torch
from torch import nn

from . import tail_edit
from ._util import as_tensor, check_callables, eval_mode
from .cache import Cache
from .config import EditConfig, resolve
from .data import DataLike, as_pair, check_class_labels
from .errors import IndexOutOfRangeError, InvalidArgumentError, UnknownClassError
from .hessian import LossFn, cross_entropy
from .inputs import Inputs, call_on, take, to
from .loo_head import named_head
from .method_choice import (
    CHECK_FRACTION,
    choose_method,
    guarded,
    head_dampings,
    head_first,
    last_layers_attempt,
    most_runs,
)
from .newton import AuditInputs, Edit, EditResult, Request, Task, relabel_loss
from .progress import Progress, ProgressCallback, StopCheck
from .solvers import LowRankHessian

__all__ = ["EditResult", "class_indices", "relabel", "remove"]


def remove(
    model: nn.Module,
    train: DataLike,
    forget: torch.Tensor | list[int] | dict,
    *,
    config: EditConfig | None = None,
    validation: DataLike | None = None,
    holdout: DataLike | None = None,
    reference: nn.Module | None = None,
    loss_fn: LossFn | None = None,
    lowrank: LowRankHessian | None = None,
    callback: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    cache: Cache | None = None,
    **options: object,
) -> EditResult:
    """Unlearn training samples: ``forget`` is a LongTensor of indices or ``{"class": c}``.

    Options are a :class:`gif.EditConfig` (``config``) and/or its fields as keywords (method,
    selection, ratio, damping, solver, hessian_samples, step, newton_steps, seed, ...), which
    replace the config's; unset ones come from the method — by default ``auto``: FIF on the
    classifier's head for a whole class, GIF otherwise (gif/method_choice.py) — and that
    method's measured defaults (docs/engine.md, "Defaults").

    ``cache`` (a :class:`gif.cache.Cache`) stores the selection, gradients, influence solves
    and curvature fits under digests of their inputs; a repeated request then computes no
    gradient or HVP and returns the same result bit for bit, and ``report["cache"]`` lists the
    entries that hit and missed.

    ``holdout`` (samples from the training distribution the model never saw) and ``reference``
    (a model retrained without the forget set) turn on the forgetting audit, ``report["audit"]``:
    membership-inference figures, accuracies and the gaps to the reference before and after the
    edit (gif/audit.py, docs/audit.md). Without either the audit only says what it could not compute.
    """
    opts = resolve("remove", EditConfig, config, options)
    _check_hooks(loss_fn, callback, should_stop, cache)
    x, y = as_pair(train, what="train")
    num_classes = _num_classes(model, x)
    validation = _check_labels(model, y, validation, num_classes, loss_fn)
    index, forget_class = _forget_indices(forget, y, num_classes)
    audit = _audit_inputs(model, x, holdout, reference, num_classes)
    if index.numel() >= len(y):
        raise IndexOutOfRangeError("`forget` covers the whole training set; nothing would remain")
    base = loss_fn or cross_entropy
    task = Task(
        kind="remove",
        index=index,
        target=(take(x, index), y[index]),
        target_loss=base,
        scale=-index.numel() / (len(y) - index.numel()),
        forget_class=forget_class,
    )
    return _run(
        Request(model, (x, y), task, base, validation, lowrank, callback, should_stop, cache, audit), opts
    )


def relabel(
    model: nn.Module,
    train: DataLike,
    indices: torch.Tensor | list[int],
    new_labels: torch.Tensor | list[int],
    *,
    config: EditConfig | None = None,
    validation: DataLike | None = None,
    holdout: DataLike | None = None,
    reference: nn.Module | None = None,
    loss_fn: LossFn | None = None,
    lowrank: LowRankHessian | None = None,
    callback: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    cache: Cache | None = None,
    **options: object,
) -> EditResult:
    """Correct labels: training sample ``indices[k]`` gets label ``new_labels[k]``.

    Options, ``cache``, ``holdout`` and ``reference`` as for :func:`remove` (the audit's forget
    set is the relabelled samples under their old labels). The default here is ``auto``: FIF on
    the classifier's head where that edit generalises to relabelled samples held out of it, else
    ``if`` over all parameters with ``solver="auto"`` — Kronecker-factored curvature where the
    model allows it, redone with CG when the K-FAC edit's validation objective falls short
    (gif/method_choice.py; docs/benchmarks.md, "A relabel by the head first").
    """
    opts = resolve("relabel", EditConfig, config, options)
    _check_hooks(loss_fn, callback, should_stop, cache)
    x, y = as_pair(train, what="train")
    num_classes = _num_classes(model, x)
    validation = _check_labels(model, y, validation, num_classes, loss_fn)
    index = _check_indices(indices, len(y), "indices")
    audit = _audit_inputs(model, x, holdout, reference, num_classes)
    new = as_tensor(new_labels, "`new_labels` must be integer labels, one per index")
    if new.dtype.is_floating_point or new.ndim != 1 or new.numel() != index.numel():
        raise InvalidArgumentError("`new_labels` must be integer labels, one per index")
    new = new.long().cpu()
    if bool(((new < 0) | (new >= num_classes)).any()):
        raise UnknownClassError(f"`new_labels` must be in [0, {num_classes}); got {new.min()}..{new.max()}")
    old = y[index].long().cpu()
    if bool((new == old).any()):
        k = int(torch.nonzero(new == old)[0])
        raise InvalidArgumentError(f"`new_labels[{k}]` equals the current label of sample {int(index[k])}")
    if index.numel() >= len(y):
        raise IndexOutOfRangeError("`indices` covers the whole training set; no clean data would remain")
    base = loss_fn or cross_entropy
    task = Task(
        kind="relabel",
        index=index,
        target=(take(x, index), torch.stack([old, new], dim=1).to(y.device)),
        target_loss=relabel_loss(base),
        scale=index.numel() / len(y),
        new_labels=new,
    )
    return _run(
        Request(model, (x, y), task, base, validation, lowrank, callback, should_stop, cache, audit), opts
    )


def class_indices(labels: torch.Tensor, cls: int) -> torch.Tensor:
    """Indices of the samples labelled ``cls``."""
    return torch.nonzero(torch.as_tensor(labels).cpu() == cls).flatten()


# -- internals ------------------------------------------------------------------------------------


def _run(request: Request, opts: EditConfig) -> EditResult:
    """The edit with its method chosen and its ``solver="auto"`` guarded (gif/method_choice.py), on
    its tail's features alone where that is the same computation (gif/tail_edit.py)."""
    x = request.train[0]
    if request.lowrank is not None and opts.solver != "lowrank":  # it would go unused
        raise InvalidArgumentError(
            f"a `lowrank` fit is used by solver='lowrank' only: pass that solver with it, got solver={opts.solver!r}"
        )
    found = named_head(request.model, x)  # the logits' Linear layer, looked up once per request
    chosen, choice = choose_method(opts, found, request.task, lowrank_given=request.lowrank is not None)
    computed: dict[tuple[str, bool], tail_edit.Features] = {}
    tails: dict[tuple, tail_edit.Tail | None] = {}

    def tail(config: EditConfig, whole_network: bool) -> tail_edit.Tail | None:
        key = (*tail_edit.tail_key(config), whole_network)
        if key not in tails:  # once per request: a traced tail costs a trace, its size a forward pass
            found_tail = tail_edit.frozen_tail(request.model, found, config, whole_network=whole_network)
            fitting = found_tail is not None and tail_edit.fits(found_tail, request)
            tails[key] = found_tail if fitting else None
        return tails[key]

    last = None
    if choice is not None and "fallback" in choice:
        fallback = opts.replace(method=choice["fallback"])
        last = _last_layers_attempt(opts, request, tail, fallback=fallback, choice=choice)
    attempts, started = most_runs(opts, chosen, choice, last_layers=last is not None), itertools.count(1)

    def features(on: tail_edit.Tail, config: EditConfig) -> tail_edit.Features:
        key = (on.path, on.flatten)
        if key not in computed:  # once per request, whichever edits run on them
            computed[key] = tail_edit.features(on, request, config)
        return computed[key]

    def run(config: EditConfig) -> EditResult:
        attempt = _in_attempt(request, next(started), attempts)
        on = tail(config, whole_network=request.lowrank is not None)
        if on is not None:
            return tail_edit.run(features(on, config), attempt, config)
        return Edit(attempt, config).run()

    def check(config: EditConfig) -> dict:
        on = tail(config, whole_network=False)
        assert on is not None  # head_first runs the head, and the last layers only where they are a tail
        return tail_edit.held_out_check(features(on, config), request, config, CHECK_FRACTION)

    if choice is not None and "fallback" in choice:
        result = head_first(run, check, chosen, fallback, choice, head_dampings(opts), last)
    else:
        result = guarded(run, chosen)
    if choice is not None:
        result.report["method_choice"] = choice
    if request.callback is not None:  # once, after every run the choice and the guard made
        request.callback(Progress("done"))
    return result


def _last_layers_attempt(
    requested: EditConfig,
    request: Request,
    tail: Callable[[EditConfig, bool], tail_edit.Tail | None],
    *,
    fallback: EditConfig,
    choice: dict,
) -> EditConfig | None:
    """A relabel's attempt over the model's last layers (gif/method_choice.py,
    ``last_layers_config``) where they form a tail that runs on its features — over the whole
    network, FIF's gradients and products cost as much as IF's — and the ``fallback``'s curvature
    is not fitted already (a further request of the same checkpoint with the same cache, whose
    fallback is then a solve on the cached fit: cheaper than the attempt). Else None, and where
    the fit decided it, ``choice["last_layers"]`` says so."""
    attempt = last_layers_attempt(requested, request.model)
    if attempt is None or tail(attempt, False) is None:
        return None
    if request.cache is not None:  # else nothing can be cached
        edit = Edit(request, fallback)
        if edit.has_fit():
            choice["last_layers"] = f"not tried: {fallback.method}'s {edit.config.solver} fit is in the cache"
            return None
    return attempt


def _in_attempt(request: Request, attempt: int, attempts: int) -> Request:
    """``request`` whose progress events say which of ``attempts`` runs they belong to (as is
    when there can be only one)."""
    callback = request.callback
    if callback is None or attempts == 1:
        return request
    return dataclasses.replace(
        request,
        callback=lambda event: callback(dataclasses.replace(event, attempt=attempt, attempts=attempts)),
    )


def _check_hooks(loss_fn: object, callback: object, should_stop: object, cache: object) -> None:
    check_callables(loss_fn=loss_fn, callback=callback, should_stop=should_stop)
    if cache is not None and not isinstance(cache, Cache):
        raise InvalidArgumentError(
            f"`cache` must be a gif.MemoryCache, gif.DiskCache or another gif.cache.Cache, got {type(cache).__name__}"
        )


def _num_classes(model: nn.Module, x: Inputs, what: str = "train") -> int:
    """The model's class count, from its logits on the first sample of ``x`` (the argument ``what``)."""
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    first = next(model.parameters(), None)
    if first is None:  # a bare next() raised StopIteration
        raise InvalidArgumentError("model has no trainable parameters")
    device = first.device
    with torch.no_grad(), eval_mode(model):
        return int(call_on(model, to(take(x, slice(0, 1)), device), what).shape[-1])


def _check_labels(
    model: nn.Module,
    labels: torch.Tensor,
    validation: DataLike | None,
    num_classes: int,
    loss_fn: LossFn | None,
) -> DataLike | None:
    """``validation`` as one pair (None if not given), once non-empty and, with the default
    cross-entropy, once it and the training ``labels`` hold classes of the model."""
    pair = None if validation is None else as_pair(validation, what="validation")
    if pair is not None and len(pair[1]) == 0:
        raise InvalidArgumentError("`validation` is empty; pass samples or leave it out to carve them")
    if pair is not None:
        _num_classes(model, pair[0], "validation")  # the model runs on it
    if loss_fn is None:
        check_class_labels(labels, num_classes, "train")
        if pair is not None:
            check_class_labels(pair[1], num_classes, "validation")
    return pair


def _audit_inputs(
    model: nn.Module, x: Inputs, holdout: DataLike | None, reference: nn.Module | None, num_classes: int
) -> AuditInputs:
    """The audit's holdout as one pair, and the reference model once checked to give as many
    classes as the edited one (gif/audit.py)."""
    data = as_pair(holdout, what="holdout") if holdout is not None else None
    if data is not None:
        if len(data[1]) == 0:
            raise InvalidArgumentError(
                "`holdout` is empty; pass samples the model never saw, or leave it out"
            )
        _num_classes(model, data[0], "holdout")  # the model runs on it
        check_class_labels(data[1], num_classes, "holdout")
    if reference is not None:
        if not isinstance(reference, nn.Module):
            raise InvalidArgumentError(
                f"`reference` must be a torch.nn.Module, got {type(reference).__name__}"
            )
        classes = _num_classes(reference, x, "train, by `reference`")
        if classes != num_classes:
            raise InvalidArgumentError(
                f"`reference` gives {classes} classes but the model {num_classes}; it must be the same model retrained"
            )
    return AuditInputs(data, reference)


def _check_indices(indices: object, n: int, what: str) -> torch.Tensor:
    idx = as_tensor(indices, f"`{what}` must be a 1-D tensor or list of integer sample indices")
    if idx.dtype.is_floating_point or idx.dtype == torch.bool or idx.ndim != 1:
        raise InvalidArgumentError(f"`{what}` must be a 1-D tensor or list of integer sample indices")
    idx = idx.long().cpu()
    if idx.numel() == 0:
        raise IndexOutOfRangeError(f"`{what}` is empty")
    low, high = int(idx.min()), int(idx.max())
    if low < 0 or high >= n:
        raise IndexOutOfRangeError(f"`{what}` has indices in [{low}, {high}], outside [0, {n})")
    if torch.unique(idx).numel() != idx.numel():
        raise IndexOutOfRangeError(f"`{what}` contains duplicated indices")
    return idx


def _forget_indices(
    forget: object, labels: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, int | None]:
    if isinstance(forget, dict):
        if set(forget) != {"class"}:
            raise InvalidArgumentError("`forget` as a dict must be {'class': c}")
        cls = forget["class"]
        if isinstance(cls, bool) or not isinstance(cls, int) or not 0 <= cls < num_classes:
            raise UnknownClassError(
                f"class {cls!r} does not exist: the model has classes 0..{num_classes - 1}"
            )
        index = class_indices(labels, cls)
        if index.numel() == 0:
            raise UnknownClassError(f"class {cls} has no samples in the training data")
        return index, cls
    index = _check_indices(forget, len(labels), "forget")
    classes = torch.unique(labels[index].cpu())
    if classes.numel() == 1 and index.numel() == class_indices(labels, int(classes)).numel():
        return index, int(classes)  # the indices are exactly one whole class
    return index, None
