"""The edit loop: Newton steps on the edited training objective, restricted to T.

With θ a (near-)stationary point of the mean training loss over n samples and U the edited
samples (docs/method.md, "The edit as a Newton step"):

* removal:  the retained loss has gradient ∇L_{S∖U}(θ) = −(|U| / (n − |U|)) ∇L_U(θ);
* relabel:  the new loss L_S + (1/n) Σ_U [ℓ(x, y_new) − ℓ(x, y_old)] has gradient
            (|U| / n) ∇ mean_U [ℓ(x, y_new) − ℓ(x, y_old)]   (the paper's target loss).

Calling that gradient g_new, the update is Δθ_T = −t · v where v is the influence vector of
g_new (``gif.influence`` semantics: v = (H + λI)⁻¹ g_new for ``if``, the least-squares solution
for ``gif``, ...), H the Hessian of the mean loss on a sample of retained/clean training data,
and t the step scale (1 for ``newton``; chosen on validation data for ``search``). Each step
re-estimates the gradient at the new point (:class:`_EditedGradient`) and stops when no step
along the update improves the objective.

Caching: docs/engine.md, "Where caching happens". One :class:`gif.hessian.Work` counts what the
edit computed.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ._util import Stopwatch, eval_mode
from .audit import audit_sets, run_audit, skipped
from .cache import Cache, CachedSolves, Memo, loss_id
from .config import EDIT_PRESETS, EditConfig
from .data import Batch, DataLike, as_pair
from .edit_sets import Objective, split
from .hessian import HessianOperator, LossFn, Work
from .inputs import take
from .inverse.choice import choose_solver
from .methods import InfluenceResult
from .params import ParamSpace
from .progress import Progress, ProgressCallback, StopCheck
from .selection import select, selection_summary
from .solvers import LowRankHessian, Monitor
from .steps import StepOutcome, newton_step, search_step

#: The report's ``stopped``: why the Newton loop ended — no step along the last direction improved
#: the validation objective; a step reached ``stop_objective`` (at 1, the objective's maximum);
#: the first step stayed below ``give_up_objective`` (a tentative edit: gif/method_choice.py); the
#: last steps each raised it by less than ``stall_gain`` (:func:`stalled`: another would cost a
#: solve and a step search for as little); or ``newton_steps`` were taken.
STOP_NO_STEP, STOP_REACHED, STOP_GAVE_UP, STOP_STALLED, STOP_STEPS = (
    "no step improves", "stop_objective reached", "gave up", "stalled", "newton_steps taken",
)  # fmt: skip
STOP_REASONS = (STOP_NO_STEP, STOP_REACHED, STOP_GAVE_UP, STOP_STALLED, STOP_STEPS)
#: Steps in a row that each raised the objective by less than ``stall_gain`` and end the loop:
#: one such step is often followed by a large one (the step search kept it short where the
#: direction was poor; the next, from a new gradient, is not): docs/benchmarks.md, "Stopping a
#: relabel whose steps stall".
STALL_PATIENCE = 2


def stalled(history: list[float], gain: float) -> bool:
    """Whether the last :data:`STALL_PATIENCE` Newton steps each raised the validation objective
    by less than ``gain`` (``history``: the objective before the edit, then after each step; the
    first step, from the unedited model, does not count); never where ``gain`` is 0."""
    rises = [after - before for before, after in itertools.pairwise(history[1:])]
    recent = rises[-STALL_PATIENCE:]
    return gain > 0 and len(recent) == STALL_PATIENCE and all(rise < gain for rise in recent)


#: The report's ``validation_source``: validation data the request gave, or carved from the training data.
VALIDATION_GIVEN = "given"
VALIDATION_CARVED = "carved from retained training data"


@dataclass
class EditResult:
    """An edited copy of the model and what happened.

    Attributes:
        model: the edited model (a deep copy; the input model is untouched).
        delta: θ_new − θ as a flat vector over all trainable parameters (zero outside T).
        params: T, the flat indices that were allowed to change.
        report: JSON-ready dict: options, selection, solver diagnostics, step search, metrics
            before/after, delta norms, the work done (``work``: gradients, HVPs, forward
            evaluations), timings.
        lowrank: the curvature fit when ``solver="lowrank"`` (reuse it for related requests).
    """

    model: nn.Module
    delta: torch.Tensor
    params: torch.Tensor
    report: dict
    lowrank: LowRankHessian | None = None


@dataclass
class Task:
    """What an edit changes: the edited samples, their target loss and its scale (module docstring)."""

    kind: str
    index: torch.Tensor
    target: Batch
    target_loss: LossFn
    scale: float
    forget_class: int | None = None
    new_labels: torch.Tensor | None = None


@dataclass
class AuditInputs:
    """What the forgetting audit gets beside the edit (gif/audit.py): held-out samples and a
    model retrained without the edited samples, each optional."""

    holdout: Batch | None = None
    reference: nn.Module | None = None


def relabel_loss(base: LossFn) -> LossFn:
    def loss(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # labels[:, 0] = old, labels[:, 1] = new; a difference of batch means is the mean difference
        return base(outputs, labels[:, 1]) - base(outputs, labels[:, 0])

    return loss


@dataclass
class Request:
    """What one edit request brings besides its configuration: the model and training data, the
    task, and the optional validation data, loss, curvature fit, progress hooks, cache and audit
    inputs. Every way of running an edit (the whole network, the head's features) takes one."""

    model: nn.Module
    train: Batch
    task: Task
    loss_fn: LossFn
    validation: DataLike | None = None
    lowrank: LowRankHessian | None = None
    callback: ProgressCallback | None = None
    should_stop: StopCheck | None = None
    cache: Cache | None = None
    audit: AuditInputs = field(default_factory=AuditInputs)


class Edit:
    """One edit: its data, caches and counters, the Newton loop (:meth:`run`), and the report."""

    def __init__(self, request: Request, config: EditConfig) -> None:
        model, task, loss_fn, validation = request.model, request.task, request.loss_fn, request.validation
        config, self.solver_choice = choose_solver(
            config, model, loss_fn, EDIT_PRESETS[config.method]["solver"]
        )
        self.request, self.task, self.config, self.loss_fn = request, task, config, loss_fn
        self.notify: ProgressCallback = request.callback or (lambda event: None)
        self.clock, self.work = Stopwatch(), Work()
        x, y = self.train = request.train
        self.gen = torch.Generator().manual_seed(config.seed)
        self.splits = split(len(y), task.index, validation is None, config, self.gen)

        def rows(index: torch.Tensor) -> Batch:
            return take(x, index), y[index]

        self.val = rows(self.splits.val) if validation is None else as_pair(validation, what="validation")
        self.hessian_data = rows(self.splits.hessian)
        # the drift's and the products' rows are often the Hessian sample itself: no second copy of it
        splits = self.splits
        self.drift_data = self.hessian_data if splits.retained is None else rows(splits.drift)
        self.product_data = self.hessian_data if splits.subset is None else rows(splits.products)
        self.model = copy.deepcopy(model)
        self.memo = Memo(
            request.cache, disabled=None if loss_id(loss_fn) else "loss_fn has no `cache_key` attribute"
        )
        self.solves = CachedSolves(self.memo, request.lowrank)  # one curvature fit serves every Newton step
        self.ids = Ids.of(
            self.memo, self.model, task, (self.hessian_data, self.drift_data, self.product_data), loss_fn
        )
        # later Newton steps' products start with the back end ``auto`` chose for the first solve's:
        # neither timing plain products again nor retrying a linearisation that failed
        self.products_backend: str = config.hvp_backend

    def run(self) -> EditResult:
        """Edit the copy of the model by Newton steps on the task (module docstring)."""
        model = self.model
        with eval_mode(model):
            self.notify(Progress("selecting_parameters"))
            with self.clock("selection"):
                params = self._select()
            space = ParamSpace(model)
            theta0 = space.vector(model)
            objective = Objective(self, space, params)
            metrics = dict.fromkeys(("before", "after"), objective.current())  # (objective, its figures)
            gradient = _EditedGradient(self)
            steps: list[dict] = []
            stopped, history = STOP_STEPS, [metrics["before"][0]]
            for k in range(self.config.newton_steps):
                infl = self._solve(k, gradient, params)
                outcome = self._step(objective, infl)
                steps.append({"newton_step": k + 1, "solver": infl.diagnostics(), "step": outcome.as_dict()})
                if outcome.scale > 0.0:
                    metrics["after"] = (outcome.objective, outcome.metrics)
                history.append(outcome.objective)
                reason = self._stop_reason(k, outcome, history)
                if reason is not None:
                    stopped = reason
                    break
            delta = space.vector(model) - theta0
            audit = self._audit()
            report = {**self._report(params, steps, stopped, metrics, delta, theta0), "audit": audit}
        fit = self.solves.fit
        return EditResult(model, delta, params, report, fit if isinstance(fit, LowRankHessian) else None)

    def _stop_reason(self, k: int, outcome: StepOutcome, history: list[float]) -> str | None:
        """Why the Newton loop ends after its step ``k`` (0-based; ``history``: the objective
        before the edit and after each step), or None to go on (:data:`STOP_REASONS`)."""
        config = self.config
        assert config.stop_objective is not None and config.stall_gain is not None  # from the method's preset
        if outcome.scale == 0.0:
            return STOP_NO_STEP
        if outcome.objective >= config.stop_objective:
            return STOP_REACHED
        if k == 0 and outcome.objective < config.give_up_objective:
            return STOP_GAVE_UP
        if stalled(history, config.stall_gain):
            return STOP_STALLED
        return None

    def has_fit(self) -> bool:
        """Whether the curvature this edit's solver fits (lowrank, kfac, ekfac) is cached already
        (or was given): its solves then cost no fit (gif/method_choice.py weighs attempts by it)."""
        products = self._operator(self.product_data)
        ids = self.ids
        return self.solves.has_fit(products, self.config, model=ids.theta0, data=ids.products, loss=ids.loss)

    def _select(self) -> torch.Tensor:
        """T: scored on the edited samples under the loss being changed (relabel: new minus old)."""
        model, task, opts, ids, loss_fn = self.model, self.task, self.config, self.ids, self.loss_fn
        assert opts.selection is not None and opts.ratio is not None  # resolved from the method's preset
        loss, loss_key = (loss_fn, ids.loss) if task.kind == "remove" else (task.target_loss, ids.target_loss)
        how: dict[str, Any] = {
            "strategy": opts.selection, "ratio": opts.ratio, "seed": opts.seed, "names": opts.param_names
        }  # fmt: skip
        key = {"model": ids.theta0, "data": ids.target, "loss": loss_key, **how}
        return self.memo.tensor(
            "selection",
            key,
            device="cpu",
            compute=lambda: select(model, task.target, loss_fn=loss, chunk_size=opts.chunk_size, **how),
        )

    def _audit(self) -> dict:
        """The forgetting audit of the input model and the edited copy (gif/audit.py)."""
        holdout, reference = self.request.audit.holdout, self.request.audit.reference
        if holdout is None and reference is None:
            return skipped()
        self.notify(Progress("auditing"))
        with self.clock("audit"):
            # the training labels: for a relabel, the old labels the model should stop fitting
            sets = audit_sets(self.train, self.task.index, holdout, seed=self.config.seed)
            return run_audit(
                self.request.model, self.model, sets, reference, self.work, self.config.chunk_size
            )

    def _operator(self, data: Batch, backend: str | None = None) -> HessianOperator:
        config = self.config
        return HessianOperator(
            self.model, data, loss_fn=self.loss_fn, chunk_size=config.chunk_size,
            backend=backend or config.hvp_backend, work=self.work, memory_budget=config.memory_budget,
            check=False, curvature=config.curvature_name,
        )  # fmt: skip

    def _solve(self, k: int, gradient: _EditedGradient, params: torch.Tensor) -> InfluenceResult:
        """The influence vector of the edited objective's gradient at the current θ_k."""
        config, task, ids = self.config, self.task, self.ids
        self.notify(Progress("computing_gradients", newton_step=k + 1))
        with self.clock("gradients"):
            model_id = ids.theta0 if k == 0 else self.memo.model(self.model)
            hessian = self._operator(self.hessian_data)
            drift = hessian if self.splits.retained is None else self._operator(self.drift_data)
            g, target_hvp = gradient(hessian, drift, model=model_id)
        if k > 0:  # a correction: solved to correction_tol (never tighter than tol)
            assert config.correction_tol is not None  # resolved from the method's preset
            config = config.replace(tol=max(config.tol, config.correction_tol))
        with self.clock("solve"):
            # the HVPs over the ``hvp_samples`` subset, where there is one (gif/edit_sets.py)
            products = self._products(hessian)
            infl = self.solves.solve(
                products, g, params, config, model=model_id, data=ids.products, loss=ids.loss,
                extra=ids.sif_target(task) if config.method == "sif" else {},
                monitor=Monitor(self.request.callback, self.request.should_stop, stage="solving_ihvp"),
                target_hvp=target_hvp, group_fraction=task.index.numel() / len(self.train[1]),
            )  # fmt: skip
            self._settle(products)
            for operator in (hessian, drift, products):
                operator.release()
        return infl

    def _products(self, hessian: HessianOperator) -> HessianOperator:
        """The operator of a solve's products: the Hessian sample's, or that of its ``hvp_samples``
        subset on the back end the first solve settled on (:meth:`_settle`)."""
        if self.splits.subset is None:
            return hessian
        return self._operator(self.product_data, self.products_backend)

    def _settle(self, products: HessianOperator) -> None:
        """Keep the back end ``hvp_backend="auto"`` chose for ``products`` once it has chosen (at
        its second product, gif/hessian.py), for the products of later Newton steps."""
        if products.hvps > 1 and products.backend in ("func", "linearized"):
            self.products_backend = products.backend

    def _step(self, objective: Objective, infl: InfluenceResult) -> StepOutcome:
        """Walk along −v by the step policy and leave the model at the chosen point."""
        config = self.config
        with self.clock("step"):
            objective.start(-infl.vector)
            if config.step == "newton":
                outcome = newton_step(objective)
            else:
                # the grid is over relative step norms, so it does not matter how long d is
                unit = float(objective.theta_t.norm()) / max(float(infl.vector.norm()), 1e-30)
                outcome = search_step(
                    objective, min_scale=config.min_step * unit, max_scale=config.max_step * unit,
                    growth=config.growth, patience=config.patience, should_stop=self.request.should_stop,
                )  # fmt: skip
            objective(outcome.scale)
        return outcome

    def _report(
        self,
        params: torch.Tensor,
        steps: list[dict],
        stopped: str,
        metrics: dict,
        delta: torch.Tensor,
        theta0: torch.Tensor,
    ) -> dict:
        task, y = self.task, self.train[1]
        report = {
            "task": task.kind,
            "n_train": len(y),
            "n_edited": int(task.index.numel()),
            "forget_class": task.forget_class,
            "options": self.config.to_dict(),
            "selection": selection_summary(self.model, params),
            "hessian_samples": int(self.splits.hessian.numel()),
            "hvp_samples": int(self.splits.products.numel()),
            "validation_samples": len(self.val[1]),
            "validation_source": VALIDATION_CARVED if self.request.validation is None else VALIDATION_GIVEN,
            "solver": _solver_summary(steps),
            "newton_steps": steps,
            "stopped": stopped,
            "metrics": {k: {"objective": value, **figures} for k, (value, figures) in metrics.items()},
            "delta_norm": float(delta.norm()),
            "relative_delta_norm": float(
                delta.norm() / theta0[params.to(theta0.device)].norm().clamp_min(1e-30)
            ),
            "gradients": self.work.gradients,
            "hvps": self.work.hvps,
            "work": self.work.as_dict(),
            "timings": {k: round(v, 4) for k, v in self.clock.seconds.items()},
        }
        if self.solver_choice is not None:
            report["solver_choice"] = self.solver_choice
        if self.request.cache is not None:
            report["cache"] = self.memo.report()
        return report


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

    def __init__(self, edit: Edit) -> None:
        self.task, self.n, self.memo, self.ids = edit.task, len(edit.train[1]), edit.memo, edit.ids
        self.chunk_size, self.more = edit.config.chunk_size, edit.config.newton_steps > 1
        self.base: torch.Tensor | None = None  # the constant term fixed at θ₀
        self.hessian0: torch.Tensor | None = None  # ∇L_h(θ₀)

    def __call__(
        self, hessian: HessianOperator, drift: HessianOperator, *, model: str
    ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        """(g_k, v ↦ H_U v) at the θ of ``hessian`` (θ₀ at the first call), ``model`` that θ's
        digest; ``drift`` is the retained loss L_h (the Hessian sample, or its untouched part). H_U
        is the Hessian of the *scaled* target loss, for ``sif`` (the official code passes its
        target loss already multiplied by |U|/|S|)."""
        task, f, ids = self.task, self.task.index.numel() / self.n, self.ids
        ex, ey = task.target

        def edited(labels: torch.Tensor, loss_fn: LossFn | None = None) -> HessianOperator:
            """The edited samples under ``labels`` (their loss: ``loss_fn``, else the training loss)."""
            return HessianOperator(
                hessian.flat, (ex, labels), loss_fn=loss_fn, chunk_size=self.chunk_size, what="edited samples",
                work=hessian.work, check=False, curvature=hessian.curvature,
            )  # fmt: skip

        def grad(op: HessianOperator, data: str, loss: str) -> torch.Tensor:
            return self.memo.gradient(op, model=model, data=data, loss=loss)

        target = edited(ey, task.target_loss)
        if self.base is None:  # at θ₀
            g = task.scale * grad(target, ids.target, ids.target_loss)
            self.base = g if task.kind == "remove" else -f * grad(edited(ey[:, 0]), ids.old, ids.loss)
            if self.more:
                self.hessian0 = grad(drift, ids.drift, ids.loss)
        else:
            assert self.hessian0 is not None
            change = grad(drift, ids.drift, ids.loss) - self.hessian0
            if task.kind == "remove":
                g = change + self.base
            else:
                g = (1 - f) * change + f * grad(edited(ey[:, 1]), ids.new, ids.loss) + self.base
        scale = abs(task.scale)
        return g, lambda v: scale * target.hvp(v)


@dataclass(frozen=True)
class Ids:
    """Digests of an edit's fixed inputs, for cache keys (all "" when caching is off)."""

    theta0: str  # the model at θ₀
    loss: str  # the training loss
    target_loss: str  # the edited samples' loss (relabel: new minus old)
    target: str  # the edited samples with their target labels
    hessian: str  # the Hessian sample
    drift: str  # where the retained loss's gradient drift is estimated (often the Hessian sample)
    products: str  # what the HVPs run over (often the Hessian sample)
    old: str = ""  # relabel: the edited samples with their old / new labels
    new: str = ""

    @classmethod
    def of(
        cls, memo: Memo, model: nn.Module, task: Task, data: tuple[Batch, Batch, Batch], loss_fn: LossFn
    ) -> Ids:
        """``data``: the Hessian sample, where the drift is estimated, and what the HVPs run over."""
        if not memo.enabled:
            return cls("", "", "", "", "", "", "")
        loss, (ex, ey), relabel = loss_id(loss_fn) or "", task.target, task.kind == "relabel"
        hessian_data, drift_data, product_data = data
        hessian = memo.data(*hessian_data)

        def part(rows: Batch) -> str:  # a part of the Hessian sample: the same digest where it is all of it
            return hessian if rows[1].numel() == hessian_data[1].numel() else memo.data(*rows)

        old, new = (memo.data(ex, ey[:, 0]), memo.data(ex, ey[:, 1])) if relabel else ("", "")
        target_loss = f"relabel({loss})" if relabel else loss
        return cls(
            memo.model(model), loss, target_loss, memo.data(ex, ey), hessian, part(drift_data),
            part(product_data), old, new,
        )  # fmt: skip

    def sif_target(self, task: Task) -> dict:
        """What ``sif``'s target Hessian (H_U, scaled) adds to a solve's inputs."""
        return {"target": self.target, "target_loss": self.target_loss, "scale": task.scale}
