"""Influence vectors: IF, FIF, GIF and second-order group IF, written once over any inverse.

Notation (docs/method.md): θ ∈ R^p all trainable parameters, T ⊂ {0..p−1} the selected
indices, H the Hessian of the mean loss on the Hessian data, g the gradient of the (target)
loss, λ ≥ 0. With an :class:`gif.inverse.InverseHessian` for H and λ:

* ``if``  — z = (H + λI)⁻¹ g over all parameters; returns z[T].
* ``fif`` — x = (H[T,T] + λI)⁻¹ g[T]: non-T parameters frozen (docs/method.md, "FIF").
* ``gif`` — x = argmin ‖H[:,T] x − g‖² + λ‖x‖², i.e. (H[:,T]ᵀH[:,T] + λI) x = H[:,T]ᵀ g:
  move only θ_T, but cancel the gradient change in *every* coordinate (docs/method.md, "GIF").
* ``sif`` — second-order group influence (Basu et al. 2020) with the official code's H⁻² fixed
  (docs/method.md, "Second-order group influence"): z + (p/(1−p)) (H + λI)⁻¹ (H − H_U) z with
  z = (H + λI)⁻¹ g, H_U the Hessian of the target loss and p the group's fraction of the data;
  returns it restricted to T.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from ._util import check_callables, eval_mode
from .config import SolveConfig, resolve
from .data import DataLike
from .errors import InvalidArgumentError, NumericalError
from .hessian import HessianOperator, LossFn
from .inverse import CurvatureFit, InverseHessian, Solution, inverse_for
from .inverse.base import finite_rows
from .params import ParamSpace
from .progress import ProgressCallback, StopCheck
from .solvers import LowRankHessian, MatVec, Monitor

ParamsSpec = torch.Tensor | list[int] | str | dict | None

#: The :func:`gif.select` keyword arguments a ``params`` dict may hold (its data and loss are the call's).
SELECT_OPTIONS = ("strategy", "ratio", "seed", "threshold", "names")

#: ‖second-order term‖ / ‖first-order term‖ of ``sif`` above which the result says so.
SECOND_ORDER_LIMIT = 1.0


@dataclass
class InfluenceResult:
    """An influence vector over the selected parameters, with the solve's diagnostics."""

    vector: torch.Tensor
    params: torch.Tensor
    method: str
    solver: str
    converged: bool
    iterations: int
    hvps: int
    grads: int
    residual: float
    history: list[float] = field(default_factory=list)
    note: str = ""
    seconds: float = 0.0
    fit: CurvatureFit | None = None  # the curvature fit of a lowrank / kfac / ekfac solve

    @property
    def lowrank(self) -> LowRankHessian | None:
        """The ``lowrank`` solver's fit (pass it back as ``lowrank=`` to reuse it)."""
        return self.fit if isinstance(self.fit, LowRankHessian) else None

    def diagnostics(self) -> dict:
        """JSON-ready summary of the solve (no tensors)."""
        return {
            "method": self.method,
            "solver": self.solver,
            "converged": self.converged,
            "iterations": self.iterations,
            "hvps": self.hvps,
            "gradients": self.grads,
            "work": {"gradients": self.grads, "hvps": self.hvps, "forward_evaluations": 0},
            "residual": self.residual,
            "residual_history": self.history,
            "selected_params": int(self.params.numel()),
            "note": self.note,
            "seconds": round(self.seconds, 4),
        }


def influence(
    model: nn.Module, hessian_data: DataLike, target_data: DataLike, *, config: SolveConfig | None = None,
    params: ParamsSpec = None, loss_fn: LossFn | None = None, lowrank: LowRankHessian | None = None,
    group_fraction: float | None = None, callback: ProgressCallback | None = None,
    should_stop: StopCheck | None = None, **options: Any,
) -> InfluenceResult:  # fmt: skip
    """Influence of the target data's mean loss, through the Hessian of the Hessian data's mean loss.

    Args:
        model: the trained model (used in eval mode; left unchanged).
        hessian_data: ``(inputs, targets)`` or batches; H is the Hessian of their mean loss.
        target_data: ``(inputs, targets)`` or batches; g is the gradient of their mean loss.
        config: a :class:`gif.SolveConfig`; keyword ``options`` (its field names, and solver
            extras such as ``normalizer``) replace its fields. The defaults are ``influence``'s
            column of docs/engine.md's table.
        params: flat indices (LongTensor), a selection strategy name, a dict of
            :func:`gif.select` keyword arguments, or None for all parameters.
        lowrank: a previously fitted :class:`LowRankHessian` to reuse (solver ``lowrank``).
        group_fraction: p for ``sif``; default |target| / (|target| + |hessian data|).
        callback: gets a :class:`gif.Progress` per solver iteration.
        should_stop: polled every iteration; True raises :class:`gif.errors.Cancelled`.

    Returns:
        :class:`InfluenceResult` with ``.vector`` aligned with ``.params``.
    """
    config = resolve("influence", SolveConfig, config, options)
    check_callables(loss_fn=loss_fn, callback=callback, should_stop=should_stop)
    if group_fraction is not None and (
        isinstance(group_fraction, bool) or not isinstance(group_fraction, (int, float))
        or not 0.0 <= group_fraction < 1.0
    ):  # fmt: skip
        raise InvalidArgumentError(f"`group_fraction` must be a number in [0, 1), got {group_fraction!r}")
    with eval_mode(model):
        hessian = HessianOperator(
            model, hessian_data, loss_fn=loss_fn, chunk_size=config.chunk_size, backend=config.hvp_backend,
            memory_budget=config.memory_budget, curvature=config.curvature,
        )  # fmt: skip
        target = HessianOperator(
            hessian.flat,
            target_data,
            chunk_size=config.chunk_size,
            what="target_data",
            curvature=config.curvature,
        )
        index = resolve_params(
            params, model, target_data, loss_fn=loss_fn, seed=config.seed, space=hessian.flat.space
        )
        g = target.gradient()
        if group_fraction is None:
            group_fraction = target.num_samples / (target.num_samples + hessian.num_samples)
        result = solve_influence(
            hessian, g, index, config, target_hvp=target.hvp if config.method == "sif" else None,
            group_fraction=group_fraction, fit=lowrank, monitor=Monitor(callback, should_stop),
        )  # fmt: skip
        result.grads += target.grads
        result.hvps += target.hvps
        hessian.release()
        return result


def resolve_params(
    params: ParamsSpec, model: nn.Module, data: DataLike, *, loss_fn: LossFn | None, seed: int,
    space: ParamSpace,
) -> torch.Tensor:  # fmt: skip
    """Turn a ``params`` argument into sorted, validated flat indices of ``space`` (the model's)."""
    if params is None:
        return torch.arange(space.size)
    if isinstance(params, (str, dict)):
        from .selection import select

        spec = {"strategy": params} if isinstance(params, str) else dict(params)
        unknown = sorted(map(str, set(spec) - set(SELECT_OPTIONS)))
        if unknown:
            raise InvalidArgumentError(
                f"`params`: unknown gif.select option(s) {', '.join(unknown)}; known: {', '.join(SELECT_OPTIONS)}"
            )
        spec.setdefault("seed", seed)
        return select(model, data, loss_fn=loss_fn, **spec)
    return torch.sort(space.check_indices(params)).values


def solve_influence(
    hessian: HessianOperator, g: torch.Tensor, index: torch.Tensor, config: SolveConfig, *,
    target_hvp: MatVec | None = None, group_fraction: float = 0.0, monitor: Monitor | None = None,
    fit: CurvatureFit | None = None,
) -> InfluenceResult:  # fmt: skip
    """Influence vector for a given target gradient ``g`` (the engine-internal entry point).

    Edits call this directly because their target loss is not a plain mean loss (relabelling
    subtracts two losses). ``target_hvp`` (v ↦ H_U v) is needed only for ``sif``.
    """
    if config.method == "sif" and (target_hvp is None or not 0.0 <= group_fraction < 1.0):
        raise InvalidArgumentError("method 'sif' needs the target Hessian and a group fraction in [0, 1)")
    if not bool(torch.isfinite(g).all()):
        raise NumericalError("the target gradient contains NaN or Inf (check the model weights and data)")
    monitor = monitor or Monitor()
    index = index.to(g.device)
    start, hvps0, grads0 = time.perf_counter(), hessian.hvps, hessian.grads
    inverse = inverse_for(hessian, config, fit=fit)
    outcome = influence_vector(inverse, g, index, config.method, target_hvp, group_fraction, monitor)
    return InfluenceResult(
        vector=finite_rows(outcome.x, inverse.name), params=index.cpu(), method=config.method,
        solver=inverse.name, converged=outcome.converged, iterations=outcome.iterations,
        hvps=hessian.hvps - hvps0, grads=hessian.grads - grads0, residual=outcome.residual,
        history=outcome.history, note=outcome.note, seconds=time.perf_counter() - start,
        fit=getattr(inverse, "fit", None),
    )  # fmt: skip


def influence_vector(
    inverse: InverseHessian, g: torch.Tensor, index: torch.Tensor, method: str, target_hvp: MatVec | None,
    group_fraction: float, monitor: Monitor,
) -> Solution:  # fmt: skip
    """The four methods over one inverse: the solve's diagnostics, its ``x`` the vector over T."""
    if method == "fif":
        return inverse.solve_restricted(g[index], index, monitor)
    if method == "gif":
        return inverse.least_squares(g, index, monitor)
    first = inverse.solve(g, monitor)
    if method == "if":
        return replace(first, x=first.x[index])
    assert target_hvp is not None
    z = first.x
    rhs = group_fraction / (1.0 - group_fraction) * (inverse.hessian.hvp(z) - target_hvp(z))
    second = inverse.solve(rhs, monitor.fresh(stage="second_order"))
    notes = [first.note, second.note, second_order_note(z, second.x)]
    return Solution(
        (z + second.x)[index], first.converged and second.converged, first.iterations + second.iterations,
        max(first.residual, second.residual), first.history + second.history,
        "; ".join(dict.fromkeys(n for n in notes if n)),
    )  # fmt: skip


def second_order_note(first: torch.Tensor, second: torch.Tensor) -> str:
    """A warning when ``sif``'s correction outweighs its first-order term.

    The group expansion assumes p·‖(H + λI)⁻¹ H_U‖ ≪ 1. A relabel target's Hessian H_U is
    indefinite and, for confidently fitted labels, as large as H, so the correction can dominate
    and the direction stops decreasing the edited loss (measured on the backdoor task: no
    improving step); the diagnostic makes that visible instead of silent.
    """
    ratio = float(second.norm()) / max(float(first.norm()), 1e-30)
    if ratio <= SECOND_ORDER_LIMIT:
        return ""
    return (
        f"second-order term is {ratio:.1f}x the first-order one: the group expansion is outside "
        "its range (method 'if' uses the first-order term alone)"
    )
