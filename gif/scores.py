"""Pairwise influence scores, self-influence and top-k proponents / opponents.

For one sample z let ℓ(z) be its loss (``loss_fn`` on a batch of one) and ∇ℓ(z) its gradient over
all trainable parameters θ; H is the Hessian of the *mean* loss over the Hessian data (by default
the training data) and λ ≥ 0 the damping. Then

    score[q, i] = ∇ℓ(z_q)ᵀ (H + λI)⁻¹ ∇ℓ(z_i),        self[i] = ∇ℓ(z_i)ᵀ (H + λI)⁻¹ ∇ℓ(z_i).

Sign convention. If θ minimises (1/n) Σ_j ℓ(z_j) (+ (λ/2)‖θ‖² when λ is the weight decay), then
dropping z_i moves θ by ≈ (1/n)(H + λI)⁻¹ ∇ℓ(z_i), so the query loss changes by ≈ score[q, i]/n:
a positive score means z_i *supports* the query (a proponent: removing it raises the query loss),
a negative one that it works against it (an opponent).

Cost. The inverse is applied to the *queries*, not to the training samples: one solve per query
(iterative solvers: ≤ ``max_iter`` HVPs each; ``lowrank``: one Lanczos fit, then k×p products for
all queries; ``direct``: one dense eigendecomposition), giving S = G_q (H + λI)⁻¹ of shape
[n_queries, p]. Then a single pass over the training data computes per-sample gradients with
``torch.func.vmap`` chunk by chunk and fills the block S G_chunkᵀ, so at most ``chunk_size`` × p
gradient entries are alive at a time, never n_train × p.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import grad, vmap

from ._util import check_nonnegative, check_positive_int, eval_mode
from .data import Chunks, DataLike, as_pair
from .errors import Cancelled, InvalidArgumentError, NumericalError
from .hessian import FlatModel, HessianOperator, LossFn
from .influence import DEFAULT_MAX_ITER, DEFAULT_RANK, DEFAULT_SOLVER, DEFAULT_TOL
from .solvers import SOLVERS, LowRankHessian, Monitor, Problem, fit_lowrank, solve

#: Extra keyword options each solver accepts (anything else is rejected up front).
_SOLVER_OPTIONS = {"neumann": {"normalizer", "step"}, "lowrank": {"steps"}}

#: Progress-dict keys naming the vector being solved for: ``{"query": q, "num_queries": n}``.
_PLURAL = {"query": "num_queries", "sample": "num_samples"}

ProgressCallback = Callable[[dict], None]
StopCheck = Callable[[], bool]


@dataclass
class ScoresResult:
    """Influence scores with the solves' diagnostics.

    Attributes:
        scores: [n_queries, n_train] on the CPU, in the model's dtype.
        solver: the solver used for (H + λI)⁻¹.
        converged: True when every solve converged (``lowrank``: every kept Ritz pair has a
            relative residual ≤ 1e-3; ``direct``: always).
        iterations: solver iterations per query (0 for ``lowrank`` and ``direct``).
        residuals: final relative residual per query (``lowrank``: the fit's max Ritz residual).
        hvps: Hessian-vector products spent (fit + solves).
        gradients: per-sample gradients computed (queries + training samples).
        seconds: wall-clock time.
        self_influence: [n_train] self-influence when requested, else None.
        lowrank: the curvature fit (solver ``lowrank``), to reuse in later requests.
        note: solver notes (e.g. CG stopping on negative curvature), deduplicated.
    """

    scores: torch.Tensor
    solver: str
    converged: bool
    iterations: list[int]
    residuals: list[float]
    hvps: int
    gradients: int
    seconds: float
    self_influence: torch.Tensor | None = None
    lowrank: LowRankHessian | None = None
    note: str = ""

    def diagnostics(self) -> dict:
        """JSON-ready summary (no tensors)."""
        return {
            "solver": self.solver,
            "converged": self.converged,
            "iterations": list(self.iterations),
            "residuals": list(self.residuals),
            "hvps": self.hvps,
            "gradients": self.gradients,
            "num_queries": int(self.scores.shape[0]),
            "num_train": int(self.scores.shape[1]),
            "note": self.note,
            "seconds": round(self.seconds, 4),
        }


def scores(
    model: nn.Module,
    train: DataLike,
    queries: DataLike,
    *,
    damping: float = 0.01,
    solver: str | None = None,
    tol: float | None = None,
    max_iter: int | None = None,
    loss_fn: LossFn | None = None,
    hessian_data: DataLike | None = None,
    chunk_size: int = 256,
    lowrank: LowRankHessian | None = None,
    rank: int = DEFAULT_RANK,
    seed: int = 0,
    callback: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    **solver_options: float,
) -> torch.Tensor:
    """Influence of every training sample on every query: a [n_queries, n_train] tensor (CPU).

    ``score[q, i] = ∇ℓ(z_q)ᵀ (H + λI)⁻¹ ∇ℓ(z_i)``; positive = training sample i supports query q
    (removing it would raise the query loss by about score/n). See :func:`scores_with_report`
    for the arguments and the diagnostics.
    """
    return scores_with_report(
        model,
        train,
        queries,
        damping=damping,
        solver=solver,
        tol=tol,
        max_iter=max_iter,
        loss_fn=loss_fn,
        hessian_data=hessian_data,
        chunk_size=chunk_size,
        lowrank=lowrank,
        rank=rank,
        seed=seed,
        callback=callback,
        should_stop=should_stop,
        **solver_options,
    ).scores


def scores_with_report(
    model: nn.Module,
    train: DataLike,
    queries: DataLike,
    *,
    damping: float = 0.01,
    solver: str | None = None,
    tol: float | None = None,
    max_iter: int | None = None,
    loss_fn: LossFn | None = None,
    hessian_data: DataLike | None = None,
    chunk_size: int = 256,
    lowrank: LowRankHessian | None = None,
    rank: int = DEFAULT_RANK,
    seed: int = 0,
    callback: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    include_self_influence: bool = False,
    hvp_backend: str = "auto",
    **solver_options: float,
) -> ScoresResult:
    """Pairwise influence scores with diagnostics (the engine behind :func:`scores`).

    Args:
        model: the trained model (evaluated in eval mode; left unchanged).
        train: ``(inputs, targets)`` or batches: the columns of the score matrix.
        queries: ``(inputs, targets)`` or batches: the rows.
        damping: λ ≥ 0 added to H (use the training weight decay for the score/n reading).
        solver: ``minres`` (default; H is indefinite), ``cg`` (needs H + λI positive definite),
            ``lsqr``, ``neumann``, ``direct`` (dense, small models) or ``lowrank`` (default
            when ``lowrank`` is given).
        tol, max_iter: relative residual tolerance and iteration cap per query solve.
        loss_fn: batch-mean loss ``loss_fn(outputs, targets)``; cross-entropy by default.
        hessian_data: data whose mean-loss Hessian is H; the training data by default.
        chunk_size: samples per vmapped per-sample-gradient pass and per Hessian chunk; the
            pass holds chunk_size × p gradient entries, so lower it for large models.
        lowrank: a previous :class:`LowRankHessian` fit to reuse (solver ``lowrank``).
        rank: eigenpairs to fit when ``solver="lowrank"`` and no fit is given.
        seed: seeds the Lanczos start vector.
        callback: receives progress dicts: ``{"stage": "fitting_curvature" | "solving",
            "iteration", "max_iter", "residual"}`` per solver iteration (solving also carries
            ``"query"``, ``"num_queries"``; per-sample self-influence solves carry ``"sample"``,
            ``"num_samples"``), and ``{"stage": "scoring", "iteration": chunk, "max_iter":
            num_chunks}`` after each training chunk.
        should_stop: polled every solver iteration and every training chunk; returning True
            raises :class:`gif.errors.Cancelled`.
        include_self_influence: also compute the training samples' self-influence with the same
            solver (vectorised for ``lowrank``/``direct``; one solve per sample otherwise, whose
            convergence then also counts in ``converged``).
        hvp_backend: ``"auto"``, ``"func"`` or ``"graph"`` (see :class:`gif.hessian.HessianOperator`).
        solver_options: ``normalizer``/``step`` for ``neumann``; ``steps`` for ``lowrank``.

    Raises:
        InvalidArgumentError: bad data, damping, solver, options or fit.
        NumericalError: NaN/Inf in gradients or solutions.
        Cancelled: ``should_stop`` returned True.
    """
    return _run(
        model,
        train,
        queries,
        want_self=bool(include_self_influence),
        damping=damping,
        solver=_resolve_solver(solver, lowrank),
        tol=tol,
        max_iter=max_iter,
        loss_fn=loss_fn,
        hessian_data=hessian_data,
        chunk_size=chunk_size,
        lowrank=lowrank,
        rank=rank,
        seed=seed,
        callback=callback,
        should_stop=should_stop,
        hvp_backend=hvp_backend,
        options=solver_options,
    )


def self_influence(
    model: nn.Module,
    train: DataLike,
    *,
    damping: float = 0.01,
    lowrank: LowRankHessian | None = None,
    rank: int = DEFAULT_RANK,
    exact: bool = False,
    solver: str | None = None,
    tol: float | None = None,
    max_iter: int | None = None,
    loss_fn: LossFn | None = None,
    hessian_data: DataLike | None = None,
    chunk_size: int = 256,
    seed: int = 0,
    callback: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    hvp_backend: str = "auto",
    **solver_options: float,
) -> torch.Tensor:
    """Self-influence ``∇ℓ(z_i)ᵀ (H + λI)⁻¹ ∇ℓ(z_i)`` of every training sample, shape [n_train] (CPU).

    By default (``exact=False``) the inverse is the low-rank model of
    :meth:`LowRankHessian.solve_if` (the given ``lowrank`` fit, or a new one of ``rank``
    eigenpairs): self = Σ_k c_k²/(μ_k + λ) + gᵀ(g − Vᵀc)/λ with c = V g (the last term only for
    λ > 0), vectorised over a chunk of gradients — exactly gᵀ solve_if(g), at the price of the
    gradients. ``exact=True`` instead solves per sample with ``solver`` (default ``minres``;
    ``direct`` for a dense pseudo-inverse), which costs up to ``max_iter`` HVPs per sample.
    Other arguments as in :func:`scores_with_report`.
    """
    if not isinstance(exact, bool):
        raise InvalidArgumentError(f"`exact` must be True or False, got {exact!r}")
    if exact:
        if lowrank is not None or solver == "lowrank":
            raise InvalidArgumentError("`exact=True` solves per sample; it does not use a `lowrank` fit")
        solver = _resolve_solver(solver, None)
    else:
        if solver not in (None, "lowrank"):
            raise InvalidArgumentError(
                f"`solver={solver!r}` needs `exact=True`; the default (exact=False) uses the lowrank fit"
            )
        solver = "lowrank"
    result = _run(
        model,
        train,
        None,
        want_self=True,
        damping=damping,
        solver=solver,
        tol=tol,
        max_iter=max_iter,
        loss_fn=loss_fn,
        hessian_data=hessian_data,
        chunk_size=chunk_size,
        lowrank=lowrank,
        rank=rank,
        seed=seed,
        callback=callback,
        should_stop=should_stop,
        hvp_backend=hvp_backend,
        options=solver_options,
    )
    assert result.self_influence is not None
    return result.self_influence


def top_k(scores: torch.Tensor, k: int) -> dict:
    """The k most positive (proponents) and k most negative (opponents) training samples per query.

    Args:
        scores: [n_queries, n_train] as returned by :func:`scores`.
        k: how many of each (capped at n_train).

    Returns:
        JSON-ready ``{"k", "num_queries", "num_train", "queries": [{"query": q, "proponents":
        [{"index": i, "score": s}, ...], "opponents": [...]}, ...]}``. Proponents are in
        decreasing score order, opponents in increasing order (most negative first); ties go
        to the lower training index. With few positive (negative) scores a list can hold
        scores of the other sign: it is a ranking, not a filter.
    """
    if not isinstance(scores, torch.Tensor) or scores.ndim != 2:
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise InvalidArgumentError(f"`scores` must be a 2-D tensor [n_queries, n_train], got {shape}")
    k = check_positive_int("k", k)
    num_queries, num_train = (int(s) for s in scores.shape)
    if num_train == 0:
        raise InvalidArgumentError("`scores` has no training columns")
    values = scores.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(values).all()):
        raise NumericalError("`scores` contains NaN or Inf")
    k = min(k, num_train)
    # Stable sorts keep ties in index order, so the result is deterministic.
    down = torch.sort(values, dim=1, descending=True, stable=True).indices[:, :k]
    up = torch.sort(values, dim=1, stable=True).indices[:, :k]

    def entries(row: int, order: torch.Tensor) -> list[dict]:
        return [{"index": int(i), "score": float(values[row, i])} for i in order.tolist()]

    return {
        "k": k,
        "num_queries": num_queries,
        "num_train": num_train,
        "queries": [
            {"query": q, "proponents": entries(q, down[q]), "opponents": entries(q, up[q])}
            for q in range(num_queries)
        ],
    }


# -- internals ------------------------------------------------------------------------------------


def _resolve_solver(solver: str | None, lowrank: LowRankHessian | None) -> str:
    if solver is None:
        solver = "lowrank" if lowrank is not None else DEFAULT_SOLVER["if"]
    if solver not in SOLVERS:
        raise InvalidArgumentError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    if lowrank is not None and solver != "lowrank":
        raise InvalidArgumentError(f"a `lowrank` fit is only used with solver='lowrank', not {solver!r}")
    return solver


def per_sample_gradients(flat: FlatModel, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """∇θ ℓ(z) for every sample of a chunk, [len(chunk), p], one vmapped pass."""
    return vmap(grad(flat.per_sample_loss), in_dims=(None, 0, 0))(flat.theta, inputs, targets)


def _check_finite(g: torch.Tensor, what: str) -> torch.Tensor:
    if not bool(torch.isfinite(g).all()):
        raise NumericalError(f"the per-sample gradients of `{what}` contain NaN or Inf (check weights, data)")
    return g


class _Inverse:
    """(H + λI)⁻¹ applied to the rows of a [m, p] matrix with one solver, plus its diagnostics."""

    def __init__(
        self,
        hessian: HessianOperator,
        *,
        damping: float,
        solver: str,
        tol: float,
        max_iter: int,
        lowrank: LowRankHessian | None,
        rank: int,
        seed: int,
        callback: ProgressCallback | None,
        should_stop: StopCheck | None,
        options: dict,
    ) -> None:
        self.hessian = hessian
        self.damping = damping
        self.solver = solver
        self.tol = tol
        self.max_iter = max_iter
        self.lowrank = lowrank
        self.rank = rank
        self.seed = seed
        self.callback = callback
        self.should_stop = should_stop
        self.options = options
        self.iterations: list[int] = []
        self.residuals: list[float] = []
        self.converged = True
        self.notes: list[str] = []
        self._eig: tuple[torch.Tensor, torch.Tensor] | None = None  # direct: (U, pseudo-inverse of e)
        self._pairs: tuple[torch.Tensor, torch.Tensor] | None = None  # lowrank: kept (V, μ), cast once

    def prepare(self) -> None:
        """Fit the curvature once (``lowrank``) or factor the dense H + λI (``direct``)."""
        theta = self.hessian.flat.theta
        if self.solver == "lowrank":
            if self.lowrank is None:
                self.lowrank = fit_lowrank(
                    self.hessian.hvp,
                    theta.numel(),
                    rank=self.rank,
                    like=theta,
                    seed=self.seed,
                    steps=int(self.options["steps"]) if "steps" in self.options else None,
                    monitor=Monitor(self.callback, self.should_stop, stage="fitting_curvature"),
                )
            elif self.lowrank.size != theta.numel():
                raise InvalidArgumentError(
                    f"the lowrank fit has {self.lowrank.size} parameters but the model has {theta.numel()}"
                )
            self.converged = self.lowrank.converged()
        elif self.solver == "direct":
            h = self.hessian.dense()
            e, u = torch.linalg.eigh(h + self.damping * torch.eye(h.shape[0], dtype=h.dtype, device=h.device))
            # Pseudo-inverse: drop eigenvalues below the usual rcond = eps · p · max|e|.
            keep = e.abs() > torch.finfo(e.dtype).eps * e.numel() * e.abs().max()
            inv = torch.where(keep, 1.0 / torch.where(keep, e, torch.ones_like(e)), torch.zeros_like(e))
            self._eig = (u.to(theta.device), inv.to(theta.device))  # float64, applied in float64

    def _lowrank_coords(self, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        assert self.lowrank is not None
        if self._pairs is None or self._pairs[0].dtype != g.dtype:
            self._pairs = self.lowrank._cast(g)  # the same kept pairs as LowRankHessian.solve_if
        v, mu = self._pairs
        return v, mu, g @ v.T  # coords c = V g per row, [m, k]

    def solve(self, g: torch.Tensor, key: str, offset: int, total: int) -> torch.Tensor:
        """Rows of g ↦ rows of (H + λI)⁻¹ g, [m, p]; ``key`` names the rows in progress reports."""
        m = int(g.shape[0])
        if self.solver == "lowrank":
            self._check_stop()
            v, mu, c = self._lowrank_coords(g)
            out = (c / (mu + self.damping)) @ v
            if self.damping != 0.0:
                out = out + (g - c @ v) / self.damping
            self._record([0] * m, [float(self.lowrank.residuals.max())] * m)  # type: ignore[union-attr]
        elif self.solver == "direct":
            self._check_stop()
            u, inv = self._eig  # type: ignore[misc]
            out = (((g.to(u.dtype) @ u) * inv) @ u.T).to(g.dtype)
            self._record([0] * m, [0.0] * m)
        else:
            out = torch.empty_like(g)
            for j in range(m):
                out[j] = self._iterative(g[j], {key: offset + j, _PLURAL[key]: total})
        if not bool(torch.isfinite(out).all()):
            raise NumericalError(f"the {self.solver} solve produced NaN/Inf; add damping or change solver")
        return out

    def quadratic(self, g: torch.Tensor, offset: int, total: int) -> torch.Tensor:
        """Row-wise gᵀ (H + λI)⁻¹ g, [m], vectorised where the inverse is explicit."""
        if self.solver == "lowrank":
            self._check_stop()
            v, mu, c = self._lowrank_coords(g)
            out = (c * c / (mu + self.damping)).sum(dim=1)
            if self.damping != 0.0:  # gᵀ (g − Vᵀ V g) / λ: the flat complement of the fitted subspace
                out = out + (g * (g - c @ v)).sum(dim=1) / self.damping
            if not bool(torch.isfinite(out).all()):
                raise NumericalError("the lowrank self-influence produced NaN/Inf; add damping")
            return out
        if self.solver == "direct":
            u, inv = self._eig  # type: ignore[misc]
            coords = g.to(u.dtype) @ u
            return (coords * coords * inv).sum(dim=1).to(g.dtype)
        return (g * self.solve(g, "sample", offset, total)).sum(dim=1)

    def _iterative(self, b: torch.Tensor, context: dict) -> torch.Tensor:
        callback = self.callback
        wrapped = None if callback is None else (lambda info: callback({**info, **context}))
        problem = Problem("symmetric", self.hessian.hvp, self.hessian.hvp, b, self.damping, b.numel())
        out = solve(
            problem,
            self.solver,
            tol=self.tol,
            max_iter=self.max_iter,
            monitor=Monitor(wrapped, self.should_stop, stage="solving"),
            **self.options,
        )
        self._record([out.iterations], [float(out.residual)], out.converged, out.note)
        return out.x

    def _record(
        self, iterations: list[int], residuals: list[float], converged: bool = True, note: str = ""
    ) -> None:
        self.iterations += iterations
        self.residuals += residuals
        self.converged = self.converged and converged
        if note and note not in self.notes:
            self.notes.append(note)

    def _check_stop(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise Cancelled("cancelled by the caller")


def _validate(
    damping: float,
    solver: str,
    tol: float | None,
    max_iter: int | None,
    chunk_size: int,
    lowrank: LowRankHessian | None,
    rank: int,
    options: dict,
) -> tuple[float, float, int]:
    damping = check_nonnegative("damping", damping)
    check_positive_int("chunk_size", chunk_size)
    tol = DEFAULT_TOL if tol is None else float(tol)
    if not (math.isfinite(tol) and tol > 0):
        raise InvalidArgumentError(f"`tol` must be a finite number > 0, got {tol}")
    max_iter = check_positive_int("max_iter", DEFAULT_MAX_ITER if max_iter is None else max_iter)
    if lowrank is not None and not isinstance(lowrank, LowRankHessian):
        raise InvalidArgumentError(f"`lowrank` must be a LowRankHessian fit, got {type(lowrank).__name__}")
    if solver == "lowrank" and lowrank is None:
        check_positive_int("rank", rank)
    unknown = sorted(set(options) - _SOLVER_OPTIONS.get(solver, set()))
    if unknown:
        allowed = sorted(_SOLVER_OPTIONS.get(solver, set()))
        raise InvalidArgumentError(
            f"unknown option(s) {', '.join(unknown)} for solver {solver!r}"
            + (f"; it accepts {', '.join(allowed)}" if allowed else "; it takes no extra options")
        )
    return damping, tol, max_iter


def _run(
    model: nn.Module,
    train: DataLike,
    queries: DataLike | None,
    *,
    want_self: bool,
    damping: float,
    solver: str,
    tol: float | None,
    max_iter: int | None,
    loss_fn: LossFn | None,
    hessian_data: DataLike | None,
    chunk_size: int,
    lowrank: LowRankHessian | None,
    rank: int,
    seed: int,
    callback: ProgressCallback | None,
    should_stop: StopCheck | None,
    hvp_backend: str,
    options: dict,
) -> ScoresResult:
    start = time.perf_counter()
    damping, tol, max_iter = _validate(damping, solver, tol, max_iter, chunk_size, lowrank, rank, options)
    train_pair = as_pair(train, what="train")  # materialised once: read by H and by the scoring pass
    query_pair = None if queries is None else as_pair(queries, what="queries")
    with eval_mode(model):
        flat = FlatModel(model, loss_fn)
        train_chunks = Chunks(train_pair, chunk_size=chunk_size, device=flat.device, what="train")
        # H over the training data reuses the scoring pass's chunks (no second copy on the device).
        shared = [(c.inputs, c.targets) for c in train_chunks]
        hessian = HessianOperator(
            flat,
            shared if hessian_data is None else hessian_data,
            chunk_size=chunk_size,
            backend=hvp_backend,
            what="train" if hessian_data is None else "hessian_data",
        )
        inverse = _Inverse(
            hessian,
            damping=damping,
            solver=solver,
            tol=tol,
            max_iter=max_iter,
            lowrank=lowrank,
            rank=rank,
            seed=seed,
            callback=callback,
            should_stop=should_stop,
            options=options,
        )
        gradients = 0
        try:
            if query_pair is None:
                solved = torch.zeros(0, hessian.size, dtype=flat.dtype, device=flat.device)
            else:
                query_chunks = Chunks(query_pair, chunk_size=chunk_size, device=flat.device, what="queries")
                g_queries = torch.cat(
                    [
                        _check_finite(per_sample_gradients(flat, c.inputs, c.targets), "queries")
                        for c in query_chunks
                    ]
                )
                gradients += int(g_queries.shape[0])
                inverse.prepare()
                solved = inverse.solve(g_queries, "query", 0, int(g_queries.shape[0]))  # S, [n_q, p]
                del g_queries
            if want_self and query_pair is None:
                inverse.prepare()
            n_train, n_chunks = train_chunks.total, len(train_chunks.chunks)
            out = torch.empty(solved.shape[0], n_train, dtype=flat.dtype)
            self_values = torch.empty(n_train, dtype=flat.dtype) if want_self else None
            offset = 0
            for index, chunk in enumerate(train_chunks):
                inverse._check_stop()
                g = _check_finite(per_sample_gradients(flat, chunk.inputs, chunk.targets), "train")  # [c, p]
                gradients += len(chunk)
                out[:, offset : offset + len(chunk)] = (solved @ g.T).cpu()
                if self_values is not None:
                    self_values[offset : offset + len(chunk)] = inverse.quadratic(g, offset, n_train).cpu()
                offset += len(chunk)
                if callback is not None:
                    callback({"stage": "scoring", "iteration": index + 1, "max_iter": n_chunks})
        finally:
            hessian.release()
    return ScoresResult(
        scores=out,
        solver=solver,
        converged=inverse.converged,
        iterations=inverse.iterations[: out.shape[0]],
        residuals=inverse.residuals[: out.shape[0]],
        hvps=hessian.hvps,
        gradients=gradients,
        seconds=time.perf_counter() - start,
        self_influence=self_values,
        lowrank=inverse.lowrank if solver == "lowrank" else None,
        note="; ".join(inverse.notes),
    )


__all__ = ["ScoresResult", "per_sample_gradients", "scores", "scores_with_report", "self_influence", "top_k"]
