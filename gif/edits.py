"""Model edits: remove training samples (or a whole class), relabel training samples.

Both are one Newton step on the edited training objective, restricted to parameters T and
solved by an influence method (docs/method.md, "The edit as a Newton step"). With θ a (near-)stationary point of the
mean training loss over n samples and U the edited samples:

* removal:  the retained loss has gradient ∇L_{S∖U}(θ) = −(|U| / (n − |U|)) ∇L_U(θ);
* relabel:  the new loss L_S + (1/n) Σ_U [ℓ(x, y_new) − ℓ(x, y_old)] has gradient
            (|U| / n) ∇ mean_U [ℓ(x, y_new) − ℓ(x, y_old)]   (the paper's target loss).

Calling that gradient g_new, the update is Δθ_T = −t · v where v is the influence vector of
g_new (``gif.influence`` semantics: v = (H + λI)⁻¹ g_new for ``if``, the least-squares solution
for ``gif``, ...), H the Hessian of the mean loss on a sample of retained/clean training data,
and t the step scale (1 for ``newton``; chosen on validation data for ``search``).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from ._util import Stopwatch, eval_mode
from .cache import Cache, CachedSolves, Memo, loss_id
from .config import EditConfig, resolve
from .data import DataLike, as_pair
from .errors import IndexOutOfRangeError, InvalidArgumentError, UnknownClassError
from .hessian import HessianOperator, LossFn, cross_entropy
from .metrics import evaluate, f1
from .params import ParamSpace
from .progress import Progress, ProgressCallback, StopCheck
from .selection import select, selection_summary
from .solvers import LowRankHessian, Monitor
from .steps import newton_step, search_step

#: Samples evaluated per set during the step search and in reports (seeded subsample above it).
EVAL_CAP = 4096


@dataclass
class EditResult:
    """An edited copy of the model and what happened.

    Attributes:
        model: the edited model (a deep copy; the input model is untouched).
        delta: θ_new − θ as a flat vector over all trainable parameters (zero outside T).
        params: T, the flat indices that were allowed to change.
        report: JSON-ready dict: options, selection, solver diagnostics, step search, metrics
            before/after, delta norms, timings.
        lowrank: the curvature fit when ``solver="lowrank"`` (reuse it for related requests).
    """

    model: nn.Module
    delta: torch.Tensor
    params: torch.Tensor
    report: dict
    lowrank: LowRankHessian | None = None


def remove(
    model: nn.Module,
    train: DataLike,
    forget: torch.Tensor | list[int] | dict,
    *,
    config: EditConfig | None = None,
    validation: DataLike | None = None,
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
    replace the config's; unset ones come from the task's default method (``gif``) and that
    method's measured defaults (docs/engine.md, "Defaults").

    ``cache`` (a :class:`gif.cache.Cache`) stores the selection, gradients, influence solves
    and curvature fits under digests of their inputs; a repeated request then computes no
    gradient or HVP and returns the same result bit for bit, and ``report["cache"]`` lists the
    entries that hit and missed.
    """
    opts = resolve("remove", EditConfig, config, options)
    x, y = as_pair(train, what="train")
    num_classes = _num_classes(model, x)
    index, forget_class = _forget_indices(forget, y, num_classes)
    if index.numel() >= len(y):
        raise IndexOutOfRangeError("`forget` covers the whole training set; nothing would remain")
    base = loss_fn or cross_entropy
    task = _Task(
        kind="remove",
        index=index,
        target=(x[index], y[index]),
        target_loss=base,
        scale=-index.numel() / (len(y) - index.numel()),
        forget_class=forget_class,
    )
    return _edit(model, (x, y), task, opts, validation, base, lowrank, callback, should_stop, cache)


def relabel(
    model: nn.Module,
    train: DataLike,
    indices: torch.Tensor | list[int],
    new_labels: torch.Tensor | list[int],
    *,
    config: EditConfig | None = None,
    validation: DataLike | None = None,
    loss_fn: LossFn | None = None,
    lowrank: LowRankHessian | None = None,
    callback: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    cache: Cache | None = None,
    **options: object,
) -> EditResult:
    """Correct labels: training sample ``indices[k]`` gets label ``new_labels[k]``.

    Options and ``cache`` as for :func:`remove`; the default method here is ``if`` over all parameters, which
    measured best on the backdoor-repair protocol (docs/benchmarks.md).
    """
    opts = resolve("relabel", EditConfig, config, options)
    x, y = as_pair(train, what="train")
    num_classes = _num_classes(model, x)
    index = _check_indices(indices, len(y), "indices")
    new = torch.as_tensor(new_labels)
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
    task = _Task(
        kind="relabel",
        index=index,
        target=(x[index], torch.stack([old, new], dim=1).to(y.device)),
        target_loss=_relabel_loss(base),
        scale=index.numel() / len(y),
        new_labels=new,
    )
    return _edit(model, (x, y), task, opts, validation, base, lowrank, callback, should_stop, cache)


def class_indices(labels: torch.Tensor, cls: int) -> torch.Tensor:
    """Indices of the samples labelled ``cls``."""
    return torch.nonzero(torch.as_tensor(labels).cpu() == cls).flatten()


# -- internals ------------------------------------------------------------------------------------


@dataclass
class _Task:
    kind: str
    index: torch.Tensor
    target: tuple[torch.Tensor, torch.Tensor]
    target_loss: LossFn
    scale: float
    forget_class: int | None = None
    new_labels: torch.Tensor | None = None


def _relabel_loss(base: LossFn) -> LossFn:
    def loss(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # labels[:, 0] = old, labels[:, 1] = new; a difference of batch means is the mean difference
        return base(outputs, labels[:, 1]) - base(outputs, labels[:, 0])

    return loss


def _edit(
    model: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    task: _Task,
    opts: EditConfig,
    validation: DataLike | None,
    loss_fn: LossFn,
    lowrank: LowRankHessian | None,
    callback: ProgressCallback | None,
    should_stop: StopCheck | None,
    cache: Cache | None,
) -> EditResult:
    clock = Stopwatch()
    notify: ProgressCallback = callback or (lambda event: None)
    x, y = train
    gen = torch.Generator().manual_seed(opts.seed)
    splits = _split(len(y), task.index, validation is None, opts, gen)
    val = as_pair(validation, what="validation") if validation is not None else (x[splits.val], y[splits.val])
    hessian_data = (x[splits.hessian], y[splits.hessian])
    drift_data = (x[splits.drift], y[splits.drift])
    edited = copy.deepcopy(model)
    memo = Memo(cache, disabled=None if loss_id(loss_fn) else "loss_fn has no `cache_key` attribute")
    with eval_mode(edited):
        ids = _Ids.of(memo, edited, task, hessian_data, drift_data, loss_fn)
        notify(Progress("selecting_parameters"))
        with clock("selection"):
            params = _select(edited, task, opts, loss_fn, memo, ids)
        space = ParamSpace(edited)
        theta0 = space.vector(edited)
        objective = _Objective(edited, task, (x, y), val, loss_fn, space, params, gen, notify, memo)
        before, before_metrics = objective.current()
        gradient = _EditedGradient(task, len(y), opts.chunk_size, memo, ids)
        solves = CachedSolves(memo, lowrank)  # one curvature fit serves every Newton step
        steps: list[dict] = []
        work = {"gradients": 0, "hvps": 0}  # computed by this call (cached solves cost nothing)
        after, after_metrics = before, before_metrics
        for k in range(opts.newton_steps):
            notify(Progress("computing_gradients", newton_step=k + 1))
            with clock("gradients"):
                model_id = ids.theta0 if k == 0 else memo.model(edited)
                hessian = HessianOperator(
                    edited,
                    hessian_data,
                    loss_fn=loss_fn,
                    chunk_size=opts.chunk_size,
                    backend=opts.hvp_backend,
                )
                drift = (
                    hessian
                    if splits.retained is None
                    else HessianOperator(
                        edited,
                        drift_data,
                        loss_fn=loss_fn,
                        chunk_size=opts.chunk_size,
                        backend=opts.hvp_backend,
                    )
                )
                g, target_hvp = gradient(
                    hessian, drift, first=k == 0, more=opts.newton_steps > 1, model=model_id
                )
            with clock("solve"):
                infl, fresh = solves.solve(
                    hessian,
                    g,
                    params,
                    opts,
                    model=model_id,
                    data=ids.hessian,
                    loss=ids.loss,
                    extra=ids.sif_target(task) if opts.method == "sif" else {},
                    monitor=Monitor(callback, should_stop, stage="solving_ihvp"),
                    target_hvp=target_hvp,
                    group_fraction=task.index.numel() / len(y),
                )
                hessian.release()
                drift.release()
                if fresh:
                    work["gradients"] += infl.grads
                    work["hvps"] += infl.hvps
            with clock("step"):
                objective.start(-infl.vector)
                if opts.step == "newton":
                    outcome = newton_step(objective)
                else:
                    # the grid is over relative step norms, so it does not matter how long d is
                    unit = float(objective.theta_t.norm()) / max(float(infl.vector.norm()), 1e-30)
                    outcome = search_step(
                        objective,
                        min_scale=opts.min_step * unit,
                        max_scale=opts.max_step * unit,
                        growth=opts.growth,
                        patience=opts.patience,
                        should_stop=should_stop,
                    )
                objective(outcome.scale)  # leave the model at the chosen step
            steps.append({"newton_step": k + 1, "solver": infl.diagnostics(), "step": outcome.as_dict()})
            if outcome.scale == 0.0:
                break  # no step along this direction improves the objective: done
            after, after_metrics = outcome.objective, outcome.metrics
    delta = space.vector(edited) - theta0
    report = {
        "task": task.kind,
        "n_train": len(y),
        "n_edited": int(task.index.numel()),
        "forget_class": task.forget_class,
        "options": opts.to_dict(),
        "selection": selection_summary(edited, params),
        "hessian_samples": int(splits.hessian.numel()),
        "validation_samples": len(val[1]),
        "validation_source": "given" if validation is not None else "carved from retained training data",
        "solver": _solver_summary(steps),
        "newton_steps": steps,
        "metrics": {
            "before": {"objective": before, **before_metrics},
            "after": {"objective": after, **after_metrics},
        },
        "delta_norm": float(delta.norm()),
        "relative_delta_norm": float(delta.norm() / theta0[params.to(theta0.device)].norm().clamp_min(1e-30)),
        "gradients": gradient.count + work["gradients"],
        "hvps": gradient.hvps + work["hvps"] + solves.hvps,
        "timings": {k: round(v, 4) for k, v in clock.seconds.items()},
    }
    if cache is not None:
        report["cache"] = memo.report()
    notify(Progress("done"))
    return EditResult(edited, delta, params, report, solves.fit)


def _select(
    model: nn.Module, task: _Task, opts: EditConfig, loss_fn: LossFn, memo: Memo, ids: _Ids
) -> torch.Tensor:
    """T: scored on the edited samples under the loss being changed (relabel: new minus old)."""
    loss, loss_key = (loss_fn, ids.loss) if task.kind == "remove" else (task.target_loss, ids.target_loss)
    key = {
        "model": ids.theta0,
        "data": ids.target,
        "loss": loss_key,
        "strategy": opts.selection,
        "ratio": opts.ratio,
        "seed": opts.seed,
    }
    return memo.tensor(
        "selection",
        key,
        device="cpu",
        compute=lambda: select(
            model, task.target, strategy=opts.selection, ratio=opts.ratio, seed=opts.seed, loss_fn=loss
        ),
    )


def _solver_summary(steps: list[dict]) -> dict:
    first = steps[0]["solver"]
    return {
        "method": first["method"],
        "solver": first["solver"],
        "converged": all(s["solver"]["converged"] for s in steps),
        "iterations": sum(s["solver"]["iterations"] for s in steps),
        "hvps": sum(s["solver"]["hvps"] for s in steps),
        "residual": max(s["solver"]["residual"] for s in steps),
        "newton_steps": len(steps),
    }


class _EditedGradient:
    """g_k, the gradient of the edited objective at the current θ_k (module docstring: g_new).

    At θ₀ the training loss is assumed stationary, which gives the closed forms of the module
    docstring. At later Newton steps θ_k is no longer special, so the retained ("clean") part is
    estimated on the Hessian sample *as a difference* from θ₀ (the same samples at both points,
    so the sampling noise cancels):

        removal: g_k = [∇L_h(θ_k) − ∇L_h(θ₀)] − (|U|/(n − |U|)) ∇L_U(θ₀)
        relabel: g_k = (1 − f)[∇L_h(θ_k) − ∇L_h(θ₀)] + f[∇L_U,new(θ_k) − ∇L_U,old(θ₀)],  f = |U|/n

    with L_h the mean loss on the Hessian sample; both reduce to g_new at k = 0.
    """

    def __init__(self, task: _Task, n: int, chunk_size: int, memo: Memo, ids: _Ids) -> None:
        self.task, self.n, self.chunk_size, self.memo, self.ids = task, n, chunk_size, memo, ids
        self.count = 0  # gradients computed (cached ones are free)
        self.hvps = 0
        self.base: torch.Tensor | None = None  # the constant term fixed at θ₀
        self.hessian0: torch.Tensor | None = None  # ∇L_h(θ₀)

    def __call__(
        self, hessian: HessianOperator, drift: HessianOperator, *, first: bool, more: bool, model: str
    ):
        """g_k at the θ of ``hessian``; ``model`` is that θ's digest (cache key). ``drift`` is
        the retained loss L_h (the Hessian sample, or its untouched part)."""
        task, u, ids = self.task, self.task.index.numel(), self.ids
        target = HessianOperator(
            hessian.flat,
            task.target,
            loss_fn=task.target_loss,
            chunk_size=self.chunk_size,
            what="edited samples",
        )
        ops = [target, hessian] if drift is hessian else [target, hessian, drift]

        def grad(op: HessianOperator, data: str, loss: str) -> torch.Tensor:
            return self.memo.gradient(op, model=model, data=data, loss=loss)

        def labelled(column: int) -> HessianOperator:
            ops.append(
                HessianOperator(
                    hessian.flat,
                    (task.target[0], task.target[1][:, column]),
                    chunk_size=self.chunk_size,
                    what="edited samples",
                )
            )
            return ops[-1]

        if first:
            g = task.scale * grad(target, ids.target, ids.target_loss)
            if task.kind == "remove":
                self.base = g
            else:
                self.base = -(u / self.n) * grad(labelled(0), ids.old, ids.loss)
            if more:
                self.hessian0 = grad(drift, ids.drift, ids.loss)
        else:
            assert self.base is not None and self.hessian0 is not None
            change = grad(drift, ids.drift, ids.loss) - self.hessian0
            if task.kind == "remove":
                g = change + self.base
            else:
                g = (
                    (1 - u / self.n) * change
                    + (u / self.n) * grad(labelled(1), ids.new, ids.loss)
                    + self.base
                )
        self.count += sum(op.grads for op in ops)
        hessian.grads = drift.grads = 0
        return g, _CountingHvp(target, self, abs(task.scale))


@dataclass(frozen=True)
class _Ids:
    """Digests of an edit's fixed inputs, for cache keys (all "" when caching is off)."""

    theta0: str  # the model at θ₀
    loss: str  # the training loss
    target_loss: str  # the edited samples' loss (relabel: new minus old)
    target: str  # the edited samples with their target labels
    hessian: str  # the Hessian sample
    drift: str  # where the retained loss's gradient drift is estimated (often the Hessian sample)
    old: str = ""  # relabel: the edited samples with their old / new labels
    new: str = ""

    @classmethod
    def of(cls, memo: Memo, model: nn.Module, task: _Task, hessian_data, drift_data, loss_fn: LossFn) -> _Ids:
        if not memo.enabled:
            return cls("", "", "", "", "", "")
        loss = loss_id(loss_fn) or ""
        ex, ey = task.target
        hessian = memo.data(*hessian_data)
        drift = hessian if drift_data[1].numel() == hessian_data[1].numel() else memo.data(*drift_data)
        ids = cls(
            memo.model(model),
            loss,
            loss if task.kind == "remove" else f"relabel({loss})",
            memo.data(ex, ey),
            hessian,
            drift,
        )
        if task.kind == "relabel":
            ids = dataclasses.replace(ids, old=memo.data(ex, ey[:, 0]), new=memo.data(ex, ey[:, 1]))
        return ids

    def sif_target(self, task: _Task) -> dict:
        """What ``sif``'s target Hessian (H_U, scaled) adds to a solve's inputs."""
        return {"target": self.target, "target_loss": self.target_loss, "scale": task.scale}


class _CountingHvp:
    """H_tgt·v for ``sif``: the Hessian of the *scaled* target loss (the official code passes
    its target loss already multiplied by |U|/|S|), counted into the edit's HVP total."""

    def __init__(self, op: HessianOperator, owner: _EditedGradient, scale: float) -> None:
        self.op, self.owner, self.scale = op, owner, scale

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        self.owner.hvps += 1
        return self.scale * self.op.hvp(v)


@dataclass
class _Splits:
    hessian: torch.Tensor  # the curvature sample
    val: torch.Tensor
    retained: torch.Tensor | None = None  # its untouched part, when it holds edited samples

    @property
    def drift(self) -> torch.Tensor:
        """Where the retained loss's gradient drift is estimated: never on edited samples."""
        return self.hessian if self.retained is None else self.retained


def _split(n: int, edited: torch.Tensor, carve: bool, opts: EditConfig, gen: torch.Generator) -> _Splits:
    """Shuffle the untouched samples; carve validation off them (if none given), then the Hessian sample."""
    if opts.pool == "all":
        return _split_shared(n, edited, carve, opts)
    keep = torch.ones(n, dtype=torch.bool)
    keep[edited] = False
    pool = torch.nonzero(keep).flatten()
    pool = pool[torch.randperm(len(pool), generator=gen)]
    n_val = min(opts.max_validation, max(1, int(opts.validation_fraction * len(pool)))) if carve else 0
    if carve and len(pool) - n_val < 1:
        raise InvalidArgumentError("too few untouched samples to carve validation data; pass `validation`")
    val, rest = pool[:n_val], pool[n_val:]
    return _Splits(torch.sort(rest[: opts.hessian_samples]).values, torch.sort(val).values)


def _split_shared(n: int, edited: torch.Tensor, carve: bool, opts: EditConfig) -> _Splits:
    """``hessian_pool="all"``: one seeded permutation of all n samples, whatever is edited. Its
    head is reserved for validation (the untouched samples in it are used); the Hessian sample
    comes after, so it is the same for every edit of this training set with this seed — and so
    are its digest and a ``lowrank`` fit of it. It may hold edited samples: for a small edited
    set (|U| ≪ n) the Hessian of the mean loss barely changes. The retained loss's gradient
    (later Newton steps) is still estimated on its untouched samples only (``_Splits.drift``)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(opts.seed))
    reserved = min(opts.max_validation, max(1, int(opts.validation_fraction * n))) if carve else 0
    head, tail = order[:reserved], order[reserved:]
    untouched = torch.ones(n, dtype=torch.bool)
    untouched[edited] = False
    val = head[untouched[head]]
    if carve and val.numel() == 0:
        raise InvalidArgumentError("too few untouched samples to carve validation data; pass `validation`")
    if tail.numel() == 0:
        raise InvalidArgumentError("no training samples left for the Hessian after carving validation data")
    hessian = torch.sort(tail[: opts.hessian_samples]).values
    retained = hessian[untouched[hessian]]
    if retained.numel() == 0:
        raise InvalidArgumentError("the Hessian sample holds only edited samples; raise `hessian_samples`")
    return _Splits(hessian, torch.sort(val).values, None if retained.numel() == hessian.numel() else retained)


class _Objective:
    """t ↦ (objective, metrics) at θ_T = θ_T⁰ + t·d, on validation data and the edited samples.

    Objectives (all in [0, 1], higher is better, F1 = harmonic mean):
    class removal F1(1 − accuracy on the class, validation accuracy on the other classes);
    sample removal F1(min(1, loss on the removed / validation loss), validation accuracy),
    i.e. removed samples should end up looking unseen; relabel F1(accuracy of the edited
    samples under their new labels, validation accuracy).

    A measurement is a pure function of the model and the evaluated sets, so with a cache it is
    an ``evaluation`` entry: a repeated request's step search then runs no forward pass.
    """

    def __init__(self, model, task, train, val, loss_fn, space, params, gen, notify, memo: Memo) -> None:
        self.model, self.task, self.loss_fn, self.notify, self.memo = model, task, loss_fn, notify, memo
        self.space, self.params = space, params
        self.theta_t = space.gather(model, params)
        self.direction = torch.zeros_like(self.theta_t)
        self.calls = 0
        vx, vy = val
        ex = train[0][task.index]
        if task.kind == "relabel":
            ey, self.old_y = task.new_labels.to(vy.device), train[1][task.index]
        elif task.forget_class is not None:
            # forgetting is judged on the class's training samples plus its validation samples
            in_class = vy == task.forget_class
            ex = torch.cat([ex, vx[in_class]])
            ey = torch.full((len(ex),), task.forget_class, dtype=vy.dtype, device=vy.device)
            vx, vy = vx[~in_class], vy[~in_class]
        else:
            ey = train[1][task.index]
        pick = _cap_index(len(ex), gen)
        self.edited = (ex[pick], ey[pick])
        if task.kind == "relabel":
            self.old_y = self.old_y[pick]
        pick = _cap_index(len(vy), gen)
        self.val = (vx[pick], vy[pick])
        self.key = (
            {  # what a measurement depends on besides the model
                "task": task.kind,
                "forget_class": task.forget_class is not None,
                "loss": loss_id(loss_fn),
                "validation": memo.data(*self.val),
                "edited": memo.data(*self.edited),
                "old_labels": memo.data(self.old_y) if task.kind == "relabel" else None,
            }
            if memo.enabled
            else {}
        )

    def start(self, direction: torch.Tensor) -> None:
        """Walk along ``direction`` from the model's current θ_T."""
        self.theta_t = self.space.gather(self.model, self.params)
        self.direction = direction

    def current(self) -> tuple[float, dict]:
        return self._measure()

    def __call__(self, t: float) -> tuple[float, dict]:
        self.space.set_(self.model, self.params, self.theta_t + t * self.direction)
        value, metrics = self._measure()
        self.calls += 1
        self.notify(Progress("step_search", iteration=self.calls, scale=t, objective=value))
        return value, metrics

    def _measure(self) -> tuple[float, dict]:
        if not self.memo.enabled:
            return self._evaluate()
        key = {"model": self.memo.model(self.model), **self.key}
        out = self.memo.meta(
            "evaluation", key, lambda: dict(zip(("objective", "metrics"), self._evaluate(), strict=True))
        )
        return out["objective"], out["metrics"]

    def _evaluate(self) -> tuple[float, dict]:
        val = evaluate(self.model, *self.val, loss_fn=self.loss_fn)
        edited = evaluate(self.model, *self.edited, loss_fn=self.loss_fn)
        metrics = {"validation": val.as_dict()}
        if self.task.kind == "relabel":
            old = evaluate(self.model, self.edited[0], self.old_y, loss_fn=self.loss_fn)
            metrics["edited_new_labels"], metrics["edited_old_labels"] = edited.as_dict(), old.as_dict()
            value = f1(edited.accuracy, val.accuracy)
        elif self.task.forget_class is not None:
            metrics["forget"] = edited.as_dict()
            value = f1(1.0 - edited.accuracy, val.accuracy)
        else:
            metrics["forget"] = edited.as_dict()
            value = f1(min(1.0, edited.loss / max(val.loss, 1e-12)), val.accuracy)
        return value, metrics


def _cap_index(n: int, gen: torch.Generator) -> torch.Tensor:
    """All of range(n), or a seeded sorted subsample of EVAL_CAP of them."""
    if n <= EVAL_CAP:
        return torch.arange(n)
    return torch.sort(torch.randperm(n, generator=gen)[:EVAL_CAP]).values


def _num_classes(model: nn.Module, x: torch.Tensor) -> int:
    device = next(model.parameters()).device
    with torch.no_grad(), eval_mode(model):
        return int(model(x[:1].to(device)).shape[-1])


def _check_indices(indices: object, n: int, what: str) -> torch.Tensor:
    idx = torch.as_tensor(indices)
    if idx.dtype.is_floating_point or idx.dtype == torch.bool or idx.ndim != 1:
        raise InvalidArgumentError(f"`{what}` must be a 1-D tensor or list of integer sample indices")
    idx = idx.long().cpu()
    if idx.numel() == 0:
        raise IndexOutOfRangeError(f"`{what}` is empty")
    if int(idx.min()) < 0 or int(idx.max()) >= n:
        raise IndexOutOfRangeError(
            f"`{what}` has indices in [{int(idx.min())}, {int(idx.max())}], outside [0, {n})"
        )
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
