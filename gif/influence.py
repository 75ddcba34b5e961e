"""Influence vectors: IF, FIF, GIF and second-order group IF, over any solver.

Notation (design.md): θ ∈ R^p all trainable parameters, T ⊂ {0..p−1} the selected indices,
H the Hessian of the mean loss on the Hessian data, g the gradient of the (target) loss, λ ≥ 0.

* ``if``  — z = (H + λI)⁻¹ g over all parameters; returns z[T].
* ``fif`` — x = (H[T,T] + λI)⁻¹ g[T]: non-T parameters frozen (gif-method.md §1.3).
* ``gif`` — x = argmin ‖H[:,T] x − g‖² + λ‖x‖², i.e. (H[:,T]ᵀH[:,T] + λI) x = H[:,T]ᵀ g:
  move only θ_T, but cancel the gradient change in *every* coordinate (§1.2).
* ``sif`` — second-order group influence (Basu et al. 2020) with the official code's H⁻² fixed
  (§1.6): z + (p/(1−p)) (H + λI)⁻¹ (H − H_U) z with z = (H + λI)⁻¹ g, H_U the Hessian of the
  target loss and p the group's fraction of the data; returns it restricted to T.

Each H·v costs one HVP; the GIF least-squares operator costs two per iteration (H[:,T]x and
H[T,:]y = (H y)[T], using H = Hᵀ).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ._util import check_nonnegative, eval_mode
from .data import DataLike
from .errors import InvalidArgumentError, NumericalError
from .hessian import HessianOperator, LossFn
from .params import ParamSpace
from .solvers import SOLVERS, LowRankHessian, Monitor, Problem, SolveResult, fit_lowrank, solve
from .solvers import direct as dense

METHODS = ("if", "fif", "gif", "sif")

#: Defaults picked by bench/solvers.py (see docs/benchmarks.md): LSQR for the GIF least squares,
#: MINRES for the symmetric (indefinite) systems.
DEFAULT_SOLVER = {"if": "minres", "fif": "minres", "gif": "lsqr", "sif": "minres"}
DEFAULT_TOL = 1e-4
DEFAULT_MAX_ITER = 100
DEFAULT_RANK = 64

ParamsSpec = torch.Tensor | list[int] | str | dict | None


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
    lowrank: LowRankHessian | None = None

    def diagnostics(self) -> dict:
        """JSON-ready summary of the solve (no tensors)."""
        return {
            "method": self.method,
            "solver": self.solver,
            "converged": self.converged,
            "iterations": self.iterations,
            "hvps": self.hvps,
            "gradients": self.grads,
            "residual": self.residual,
            "residual_history": self.history,
            "selected_params": int(self.params.numel()),
            "note": self.note,
            "seconds": round(self.seconds, 4),
        }


def influence(
    model: nn.Module,
    hessian_data: DataLike,
    target_data: DataLike,
    *,
    method: str = "gif",
    params: ParamsSpec = None,
    loss_fn: LossFn | None = None,
    damping: float = 0.0,
    solver: str | None = None,
    tol: float | None = None,
    max_iter: int | None = None,
    chunk_size: int = 1024,
    hvp_backend: str = "auto",
    lowrank: LowRankHessian | None = None,
    rank: int = DEFAULT_RANK,
    group_fraction: float | None = None,
    seed: int = 0,
    callback: Callable[[dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    **solver_options: float,
) -> InfluenceResult:
    """Influence of the target data's mean loss, through the Hessian of the Hessian data's mean loss.

    Args:
        model: the trained model (used in eval mode; left unchanged).
        hessian_data: ``(inputs, targets)`` or batches; H is the Hessian of their mean loss.
        target_data: ``(inputs, targets)`` or batches; g is the gradient of their mean loss.
        method: ``"if"``, ``"fif"``, ``"gif"`` or ``"sif"`` (module docstring).
        params: flat indices (LongTensor), a selection strategy name, a dict of
            :func:`gif.select` keyword arguments, or None for all parameters.
        damping: λ ≥ 0.
        solver: ``cg``, ``minres``, ``lsqr``, ``neumann``, ``direct`` or ``lowrank``.
        tol, max_iter: relative residual tolerance and iteration cap of iterative solvers.
        lowrank: a previously fitted :class:`LowRankHessian` to reuse (solver ``lowrank``).
        rank: eigenpairs to fit when ``solver="lowrank"`` and none is given.
        group_fraction: p for ``sif``; default |target| / (|target| + |hessian data|).
        callback: gets ``{"stage", "iteration", "max_iter", "residual"}`` per iteration.
        should_stop: polled every iteration; True raises :class:`gif.errors.Cancelled`.
        solver_options: ``normalizer`` and ``step`` for ``neumann``; ``steps`` for ``lowrank``.

    Returns:
        :class:`InfluenceResult` with ``.vector`` aligned with ``.params``.
    """
    with eval_mode(model):
        hessian = HessianOperator(
            model, hessian_data, loss_fn=loss_fn, chunk_size=chunk_size, backend=hvp_backend
        )
        target = HessianOperator(hessian.flat, target_data, chunk_size=chunk_size, what="target_data")
        index = resolve_params(
            params, model, target_data, loss_fn=loss_fn, seed=seed, space=hessian.flat.space
        )
        g = target.gradient()
        if group_fraction is None:
            group_fraction = target.num_samples / (target.num_samples + hessian.num_samples)
        result = solve_influence(
            hessian,
            g,
            index,
            method=method,
            damping=damping,
            solver=solver,
            tol=tol,
            max_iter=max_iter,
            target_hvp=target.hvp if method == "sif" else None,
            group_fraction=group_fraction,
            lowrank=lowrank,
            rank=rank,
            seed=seed,
            monitor=Monitor(callback, should_stop),
            **solver_options,
        )
        result.grads += target.grads
        result.hvps += target.hvps
        hessian.release()
        return result


def resolve_params(
    params: ParamsSpec,
    model: nn.Module,
    data: DataLike,
    *,
    loss_fn: LossFn | None = None,
    seed: int = 0,
    space: ParamSpace | None = None,
) -> torch.Tensor:
    """Turn a ``params`` argument into sorted, validated flat indices."""
    space = space or ParamSpace(model)
    if params is None:
        return torch.arange(space.size)
    if isinstance(params, (str, dict)):
        from .selection import select

        spec = {"strategy": params} if isinstance(params, str) else dict(params)
        spec.setdefault("seed", seed)
        return select(model, data, loss_fn=loss_fn, **spec)
    return torch.sort(space.check_indices(torch.as_tensor(params))).values


def solve_influence(
    hessian: HessianOperator,
    g: torch.Tensor,
    index: torch.Tensor,
    *,
    method: str = "gif",
    damping: float = 0.0,
    solver: str | None = None,
    tol: float | None = None,
    max_iter: int | None = None,
    target_hvp: Callable[[torch.Tensor], torch.Tensor] | None = None,
    group_fraction: float = 0.0,
    lowrank: LowRankHessian | None = None,
    rank: int = DEFAULT_RANK,
    seed: int = 0,
    monitor: Monitor | None = None,
    **solver_options: float,
) -> InfluenceResult:
    """Influence vector for a given target gradient ``g`` (the engine-internal entry point).

    Edits call this directly because their target loss is not a plain mean loss (relabelling
    subtracts two losses). ``target_hvp`` (v ↦ H_U v) is needed only for ``sif``.
    """
    if method not in METHODS:
        raise InvalidArgumentError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    solver = solver or DEFAULT_SOLVER[method]
    if solver not in SOLVERS:
        raise InvalidArgumentError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    damping = check_nonnegative("damping", damping)
    if method == "sif" and (target_hvp is None or not 0.0 <= group_fraction < 1.0):
        raise InvalidArgumentError("method 'sif' needs the target Hessian and a group fraction in [0, 1)")
    if not bool(torch.isfinite(g).all()):
        raise NumericalError("the target gradient contains NaN or Inf (check the model weights and data)")
    monitor = monitor or Monitor()
    index = index.to(g.device)
    start, hvps0, grads0 = time.perf_counter(), hessian.hvps, hessian.grads
    ctx = _Context(hessian, g, index, damping, target_hvp, group_fraction)
    if solver == "direct":
        vector, outcome = _direct(ctx, method)
    elif solver == "lowrank":
        vector, outcome, lowrank = _lowrank(ctx, method, lowrank, rank, seed, monitor, **solver_options)
    else:
        tol = DEFAULT_TOL if tol is None else float(tol)
        max_iter = DEFAULT_MAX_ITER if max_iter is None else int(max_iter)
        vector, outcome = _iterative(ctx, method, solver, tol, max_iter, monitor, solver_options)
    if not bool(torch.isfinite(vector).all()):
        raise NumericalError(f"the {solver} solve produced NaN/Inf; add damping or use another solver")
    return InfluenceResult(
        vector=vector,
        params=index.cpu(),
        method=method,
        solver=solver,
        converged=outcome.converged,
        iterations=outcome.iterations,
        hvps=hessian.hvps - hvps0,
        grads=hessian.grads - grads0,
        residual=outcome.residual,
        history=outcome.history,
        note=outcome.note,
        seconds=time.perf_counter() - start,
        lowrank=lowrank if solver == "lowrank" else None,
    )


@dataclass
class _Context:
    hessian: HessianOperator
    g: torch.Tensor
    index: torch.Tensor
    damping: float
    target_hvp: Callable[[torch.Tensor], torch.Tensor] | None
    group_fraction: float

    def scatter(self, x_t: torch.Tensor) -> torch.Tensor:
        full = torch.zeros_like(self.g)
        full[self.index] = x_t
        return full

    @property
    def second_order_weight(self) -> float:
        return self.group_fraction / (1.0 - self.group_fraction)

    def sif_rhs(self, z: torch.Tensor) -> torch.Tensor:
        assert self.target_hvp is not None
        return self.second_order_weight * (self.hessian.hvp(z) - self.target_hvp(z))


#: ‖second-order term‖ / ‖first-order term‖ of ``sif`` above which the result says so.
SECOND_ORDER_LIMIT = 1.0


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


def _problem(ctx: _Context, method: str, rhs: torch.Tensor | None = None) -> Problem:
    h, idx = ctx.hessian.hvp, ctx.index
    if method in ("if", "sif"):
        return Problem("symmetric", h, h, ctx.g if rhs is None else rhs, ctx.damping, ctx.g.numel())

    def restricted(x_t: torch.Tensor) -> torch.Tensor:
        return h(ctx.scatter(x_t))[idx]

    if method == "fif":
        return Problem("symmetric", restricted, restricted, ctx.g[idx], ctx.damping, idx.numel())
    return Problem(
        "lstsq", lambda x_t: h(ctx.scatter(x_t)), lambda y: h(y)[idx], ctx.g, ctx.damping, idx.numel()
    )


def _iterative(
    ctx: _Context, method: str, solver: str, tol: float, max_iter: int, monitor: Monitor, options: dict
) -> tuple[torch.Tensor, SolveResult]:
    out = solve(_problem(ctx, method), solver, tol=tol, max_iter=max_iter, monitor=monitor, **options)
    if method in ("fif", "gif"):
        return out.x, out
    if method == "if":
        return out.x[ctx.index], out
    second = solve(
        _problem(ctx, method, rhs=ctx.sif_rhs(out.x)),
        solver,
        tol=tol,
        max_iter=max_iter,
        monitor=Monitor(monitor.callback, monitor.should_stop, stage="second_order"),
        **options,
    )
    merged = SolveResult(
        out.x + second.x,
        out.converged and second.converged,
        out.iterations + second.iterations,
        max(out.residual, second.residual),
        out.history + second.history,
        solver,
        "; ".join(n for n in (out.note, second.note, second_order_note(out.x, second.x)) if n),
    )
    return merged.x[ctx.index], merged


def _direct(ctx: _Context, method: str) -> tuple[torch.Tensor, SolveResult]:
    h = ctx.hessian.dense()
    g = ctx.g.to(torch.float64).cpu()
    idx = ctx.index.cpu()
    note = ""
    if method == "if":
        x = dense.solve_symmetric(h, g, ctx.damping)[idx]
    elif method == "fif":
        x = dense.solve_symmetric(h[idx][:, idx], g[idx], ctx.damping)
    elif method == "gif":
        x = dense.solve_least_squares(h[:, idx], g, ctx.damping)
    else:
        z = dense.solve_symmetric(h, g, ctx.damping)
        rhs = ctx.sif_rhs(z.to(ctx.g)).to(torch.float64).cpu()
        correction = dense.solve_symmetric(h, rhs, ctx.damping)
        x = (z + correction)[idx]
        note = second_order_note(z, correction)
    return x.to(ctx.g), SolveResult(x, True, 0, 0.0, [], "direct", note)


def fit_curvature(
    hessian: HessianOperator,
    *,
    like: torch.Tensor,
    rank: int = DEFAULT_RANK,
    seed: int = 0,
    monitor: Monitor | None = None,
    steps: int | None = None,
) -> LowRankHessian:
    """The ``lowrank`` solver's curvature fit of ``hessian`` (progress stage ``fitting_curvature``)."""
    monitor = monitor or Monitor()
    return fit_lowrank(
        hessian.hvp,
        hessian.size,
        rank=rank,
        like=like,
        seed=seed,
        steps=steps,
        monitor=Monitor(monitor.callback, monitor.should_stop, stage="fitting_curvature"),
    )


def _lowrank(
    ctx: _Context,
    method: str,
    fit: LowRankHessian | None,
    rank: int,
    seed: int,
    monitor: Monitor,
    **options: float,
) -> tuple[torch.Tensor, SolveResult, LowRankHessian]:
    fitted_now = fit is None
    if fit is None:
        fit = fit_curvature(
            ctx.hessian,
            like=ctx.g,
            rank=rank,
            seed=seed,
            monitor=monitor,
            steps=int(options["steps"]) if "steps" in options else None,
        )
    elif fit.size != ctx.g.numel():
        raise InvalidArgumentError(
            f"the lowrank fit has {fit.size} parameters but the model has {ctx.g.numel()}"
        )
    idx = ctx.index
    if method == "if":
        x = fit.solve_if(ctx.g, ctx.damping)[idx]
    elif method == "fif":
        x = fit.solve_fif(ctx.g[idx], idx, ctx.damping)
    elif method == "gif":
        x = fit.solve_gif(ctx.g, idx, ctx.damping)
    else:
        z = fit.solve_if(ctx.g, ctx.damping)
        correction = fit.solve_if(ctx.sif_rhs(z), ctx.damping)
        x = (z + correction)[idx]
    note = f"rank {fit.rank}; max Ritz residual {float(fit.residuals.max()):.2e}"
    if method == "sif":
        note = "; ".join(n for n in (note, second_order_note(z, correction)) if n)
    iterations = fit.hvps if fitted_now else 0
    outcome = SolveResult(x, fit.converged(), iterations, float(fit.residuals.max()), [], "lowrank", note)
    return x, outcome, fit
