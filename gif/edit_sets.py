"""The data an edit works with: where its Hessian sample and validation data come from
(:func:`split`), and how a step along an update is judged (:class:`Objective`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .cache import loss_id
from .config import EditConfig
from .errors import InvalidArgumentError
from .inputs import Inputs, concat, count, take
from .memory import HVP_FREE_SOLVERS
from .metrics import Scores, evaluate, f1, predict
from .params import ParamSpace
from .progress import Progress

if TYPE_CHECKING:
    from .newton import Edit

#: Samples evaluated per set during the step search and in reports (a seeded subsample above it;
#: docs/benchmarks.md, "A larger training set").
EVAL_CAP = 1_000
#: A sample removal judged against unseen data may lose this much validation (and unseen)
#: accuracy freely ...
ACCURACY_TOLERANCE = 0.01
#: ... and below it the objective is multiplied by (accuracy / floor) to this power, so a step that
#: keeps the accuracies beats nearly any that does not (docs/benchmarks.md, "Forgetting audit of a
#: sample removal").
ACCURACY_PENALTY = 200


@dataclass
class Splits:
    hessian: torch.Tensor  # the curvature sample
    val: torch.Tensor
    retained: torch.Tensor | None = None  # its untouched part, when it holds edited samples
    subset: torch.Tensor | None = None  # the part of it the HVPs run over, when not all of it

    @property
    def drift(self) -> torch.Tensor:
        """Where the retained loss's gradient drift is estimated: never on edited samples."""
        return self.hessian if self.retained is None else self.retained

    @property
    def products(self) -> torch.Tensor:
        """What each HVP runs over: the Hessian sample, or its ``hvp_samples`` subset."""
        return self.hessian if self.subset is None else self.subset


def split(n: int, edited: torch.Tensor, carve: bool, opts: EditConfig, gen: torch.Generator) -> Splits:
    """Shuffle the untouched samples; carve validation off them (if none given), then the Hessian
    sample, and the subset of it the HVPs run over (:func:`product_subset`)."""
    untouched = torch.ones(n, dtype=torch.bool)
    untouched[edited] = False
    if opts.pool == "all":
        splits = _split_shared(untouched, carve, opts)
    else:
        splits = _split_untouched(untouched, carve, opts, gen)
    splits.subset = product_subset(splits.hessian, opts)
    return splits


def _split_untouched(untouched: torch.Tensor, carve: bool, opts: EditConfig, gen: torch.Generator) -> Splits:
    """``hessian_pool="untouched"``: validation, then the Hessian sample, off a shuffle of the
    samples the edit leaves alone."""
    pool = torch.nonzero(untouched).flatten()
    pool = pool[torch.randperm(len(pool), generator=gen)]
    n_val = min(opts.max_validation, max(1, int(opts.validation_fraction * len(pool)))) if carve else 0
    if carve and len(pool) - n_val < 1:
        raise InvalidArgumentError("too few untouched samples to carve validation data; pass `validation`")
    return Splits(torch.sort(pool[n_val:][: opts.hessian_size]).values, torch.sort(pool[:n_val]).values)


def product_subset(hessian: torch.Tensor, opts: EditConfig) -> torch.Tensor | None:
    """The ``hvp_samples`` of the Hessian sample (sorted indices) that each HVP runs over: drawn
    with a generator of the edit's seed of their own, so the rest of the edit draws as without
    it; None where that is all of them, or where the solver takes no HVP (a Kronecker fit: one
    pass over its data, whose quality wants every sample; docs/benchmarks.md, "Stopping a
    relabel at the guard's bar")."""
    size = opts.hvp_samples
    if size is None or size >= hessian.numel() or opts.solver in HVP_FREE_SOLVERS:
        return None
    pick = torch.randperm(hessian.numel(), generator=torch.Generator().manual_seed(opts.seed))[:size]
    return torch.sort(hessian[pick]).values


def _split_shared(untouched: torch.Tensor, carve: bool, opts: EditConfig) -> Splits:
    """``hessian_pool="all"``: one seeded permutation of all n samples, whatever is edited. Its
    head is reserved for validation (its untouched samples); the Hessian sample comes after, so it
    and its curvature fit are the same for every edit of this training set with this seed. It may
    hold edited samples (``Splits.drift`` leaves them out; docs/engine.md, "Edits")."""
    n = len(untouched)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(opts.seed))
    reserved = min(opts.max_validation, max(1, int(opts.validation_fraction * n))) if carve else 0
    head, tail = order[:reserved], order[reserved:]
    val = head[untouched[head]]
    if carve and 2 * val.numel() < reserved:
        # most of the head is edited (say, samples drawn by the same seeded permutation): top the
        # validation up from the permutation's far end, outside the Hessian sample where n allows
        spare = tail[untouched[tail]].flip(0)[: reserved - val.numel()]
        val, tail = torch.cat([val, spare]), tail[~torch.isin(tail, spare)]
    if carve and val.numel() == 0:
        raise InvalidArgumentError("no untouched samples to carve validation data from; pass `validation`")
    if tail.numel() == 0:
        raise InvalidArgumentError("no training samples left for the Hessian after carving validation data")
    hessian = torch.sort(tail[: opts.hessian_size]).values
    retained = hessian[untouched[hessian]]
    if retained.numel() == 0:
        raise InvalidArgumentError("the Hessian sample holds only edited samples; raise `hessian_samples`")
    return Splits(hessian, torch.sort(val).values, None if retained.numel() == hessian.numel() else retained)


class Objective:
    """t ↦ (objective, metrics) at θ_T = θ_T⁰ + t·d, on validation data and the edited samples.

    Objectives (all in [0, 1], higher is better, F1 = harmonic mean):
    class removal F1(1 − accuracy on the class, validation accuracy on the other classes);
    sample removal F1(min(1, loss on the removed / loss on validation), validation accuracy),
    i.e. removed samples should end up looking unseen; relabel F1(accuracy of the edited
    samples under their new labels, validation accuracy).

    With ``unseen`` (the audit's holdout: samples the model never saw, unlike carved validation)
    the sample-removal objective is instead min(1, loss on the removed / loss on ``unseen``
    *before the edit*), × (accuracy / floor)^:data:`ACCURACY_PENALTY` for each of the validation
    and ``unseen`` accuracies below its floor, its value before the edit less
    :data:`ACCURACY_TOLERANCE` (docs/benchmarks.md, "Forgetting audit of a sample removal").

    With a cache a measurement is an ``evaluation`` entry: a repeated step search runs no forward pass.
    """

    def __init__(self, edit: Edit, space: ParamSpace, params: torch.Tensor) -> None:
        """On ``edit``'s model, task, data (``unseen``: the audit's holdout), loss, cache and counters."""
        model, task, loss_fn, memo, gen = edit.model, edit.task, edit.loss_fn, edit.memo, edit.gen
        self.model, self.task, self.loss_fn, self.notify, self.memo = model, task, loss_fn, edit.notify, memo
        self.work, self.space, self.params = edit.work, space, params
        self.chunk = edit.config.chunk_size  # samples per forward pass of an evaluation
        self.theta_t = space.gather(model, params)
        self.direction = torch.zeros_like(self.theta_t)
        self.calls = 0
        (vx, vy), train, unseen = edit.val, edit.train, edit.request.audit.holdout
        ex, ey = take(train[0], task.index), train[1][task.index]
        if task.kind == "relabel":
            assert task.new_labels is not None
            ey, self.old_y = task.new_labels.to(vy.device), ey
        elif task.forget_class is not None:
            # forgetting is judged on the class's training samples plus its validation samples
            in_class = vy == task.forget_class
            ex = concat([ex, take(vx, in_class)])
            ey = torch.full((count(ex),), task.forget_class, dtype=vy.dtype, device=vy.device)
            vx, vy = take(vx, ~in_class), vy[~in_class]
        pick = cap_index(count(ex), gen)
        self.edited = (take(ex, pick), ey[pick])
        if task.kind == "relabel":
            self.old_y = self.old_y[pick]
        pick = cap_index(len(vy), gen)
        self.val = (take(vx, pick), vy[pick])
        self.unseen, self.accuracy_floor, self.unseen_floor, self.unseen_loss = None, 0.0, 0.0, 0.0
        if unseen is not None and task.kind == "remove" and task.forget_class is None:
            pick = cap_index(len(unseen[1]), gen)
            self.unseen = (take(unseen[0], pick), unseen[1][pick])
            self.accuracy_floor = self._scores(*self.val).accuracy - ACCURACY_TOLERANCE
            before = self._scores(*self.unseen)
            self.unseen_floor, self.unseen_loss = before.accuracy - ACCURACY_TOLERANCE, before.loss
            self.work.forward_evaluations += 2
        self.key: dict = {}  # what a measurement depends on besides the model
        if memo.enabled:
            self.key = {
                "task": task.kind,
                "forget_class": task.forget_class is not None,
                "loss": loss_id(loss_fn),
                "validation": memo.data(*self.val),
                "edited": memo.data(*self.edited),
                "old_labels": memo.data(self.old_y) if task.kind == "relabel" else None,
                "unseen": None if self.unseen is None else memo.data(*self.unseen),
                "accuracy_floor": self.accuracy_floor,
                "unseen_before": (self.unseen_floor, self.unseen_loss),
            }

    def start(self, direction: torch.Tensor) -> None:
        """Walk along ``direction`` from the model's current θ_T."""
        self.theta_t = self.space.gather(self.model, self.params)
        self.direction = direction

    def __call__(self, t: float) -> tuple[float, dict]:
        self.space.set_(self.model, self.params, self.theta_t + t * self.direction)
        value, metrics = self.current()
        self.calls += 1
        self.notify(Progress("step_search", iteration=self.calls, scale=t, objective=value))
        return value, metrics

    def current(self) -> tuple[float, dict]:
        """(objective, metrics) at the model's current θ."""
        if not self.memo.enabled:
            return self._evaluate()
        key = {"model": self.memo.model(self.model), **self.key}
        out = self.memo.meta(
            "evaluation", key, lambda: dict(zip(("objective", "metrics"), self._evaluate(), strict=True))
        )
        return out["objective"], out["metrics"]

    def _scores(self, inputs: Inputs, labels: torch.Tensor, logits: torch.Tensor | None = None) -> Scores:
        return evaluate(
            self.model, inputs, labels, loss_fn=self.loss_fn, logits=logits, chunk_size=self.chunk
        )

    def _evaluate(self) -> tuple[float, dict]:
        val = self._scores(*self.val)
        logits = predict(self.model, self.edited[0], chunk_size=self.chunk)
        edited = self._scores(*self.edited, logits=logits)
        self.work.forward_evaluations += 2
        metrics = {"validation": val.as_dict()}
        if self.task.kind == "relabel":  # the same samples under their old labels: the same logits
            old = self._scores(self.edited[0], self.old_y, logits=logits)
            metrics["edited_new_labels"], metrics["edited_old_labels"] = edited.as_dict(), old.as_dict()
            return f1(edited.accuracy, val.accuracy), metrics
        metrics["forget"] = edited.as_dict()
        if self.task.forget_class is not None:
            value = f1(1.0 - edited.accuracy, val.accuracy)
        elif self.unseen is None:
            value = f1(min(1.0, edited.loss / max(val.loss, 1e-12)), val.accuracy)
        else:
            unseen = self._scores(*self.unseen)
            self.work.forward_evaluations += 1
            metrics["unseen"] = unseen.as_dict()
            value = min(1.0, edited.loss / max(self.unseen_loss, 1e-12))
            for accuracy, floor in (
                (val.accuracy, self.accuracy_floor),
                (unseen.accuracy, self.unseen_floor),
            ):
                if accuracy < floor:
                    value *= (accuracy / floor) ** ACCURACY_PENALTY
        return value, metrics


def cap_index(n: int, gen: torch.Generator) -> torch.Tensor:
    """All of range(n), or a seeded sorted subsample of EVAL_CAP of them."""
    if n <= EVAL_CAP:
        return torch.arange(n)
    return torch.sort(torch.randperm(n, generator=gen)[:EVAL_CAP]).values
