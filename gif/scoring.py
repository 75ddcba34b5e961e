"""Pairwise influence scores, self-influence and top-k proponents / opponents.

For one sample z let ℓ(z) be its loss (``loss_fn`` on a batch of one) and ∇ℓ(z) its gradient over
all trainable parameters θ; H is the Hessian of the *mean* loss over the Hessian data (by default
the training data) and λ ≥ 0 the damping. Then

    score[q, i] = ∇ℓ(z_q)ᵀ (H + λI)⁻¹ ∇ℓ(z_i),        self[i] = ∇ℓ(z_i)ᵀ (H + λI)⁻¹ ∇ℓ(z_i).

Sign convention. If θ minimises (1/n) Σ_j ℓ(z_j) (+ (λ/2)‖θ‖² when λ is the weight decay), then
dropping z_i moves θ by ≈ (1/n)(H + λI)⁻¹ ∇ℓ(z_i), so the query loss changes by ≈ score[q, i]/n:
a positive score means z_i *supports* the query (a proponent: removing it raises the query loss),
a negative one that it works against it (an opponent).

Cost. The inverse (:mod:`gif.inverse`) is applied to the queries, S = G_q (H + λI)⁻¹ [n_queries, p];
one pass over the training data then fills S G_chunkᵀ chunk by chunk, by forward-mode derivatives
along the rows of S (:func:`directional_derivatives`), or from per-sample gradients where
self-influence is wanted, the model applies its weights at many positions (:data:`BY_LAYER_REUSE`)
or it has no forward-mode derivative. At most ``chunk_size`` × p
entries are alive at a time (docs/engine.md, "Scores (`gif.scores`)").
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import jvp, vmap

from ._util import check_callables, check_positive_int, eval_mode
from .config import SOLVE_SOLVER, SolveConfig, check_choice, resolve
from .data import Batch, Chunk, Chunks, DataLike, as_pair
from .errors import InvalidArgumentError, NumericalError
from .hessian import FlatModel, HessianOperator, LossFn, cross_entropy
from .inputs import Inputs, call_on, count, take, to
from .inverse import InverseHessian, Solution, choose_scores_solver, inverse_for
from .loo_head import head_of, loo_margins
from .memory import per_sample_gradient_chunk
from .per_sample import gradient_rows, per_row, per_sample_gradients, weight_reuse
from .progress import Progress, ProgressCallback, StopCheck
from .solvers import LowRankHessian, Monitor


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
        gradients: per-sample gradients computed: the queries', and the training samples' when
            self-influence is wanted or the model has no forward-mode derivative (module docstring).
        seconds: wall-clock time.
        self_influence: [n_train] self-influence (on the loss) when requested, else None.
        lowrank: the curvature fit (solver ``lowrank``), to reuse in later requests.
        note: solver notes (e.g. CG stopping on negative curvature), deduplicated.
        normalize: how ``scores`` was normalised (:data:`NORMALIZATIONS`; ``none``: raw).
        query_self_influence: [n_queries] ∇ℓ_qᵀ(H + λI)⁻¹∇ℓ_q (None without queries).
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
    normalize: str = "none"
    query_self_influence: torch.Tensor | None = None

    def diagnostics(self) -> dict:
        """JSON-ready summary (no tensors)."""
        return {
            "solver": self.solver,
            "converged": self.converged,
            "iterations": list(self.iterations),
            "residuals": list(self.residuals),
            "hvps": self.hvps,
            "gradients": self.gradients,
            "work": {"gradients": self.gradients, "hvps": self.hvps, "forward_evaluations": 0},
            "num_queries": int(self.scores.shape[0]),
            "num_train": int(self.scores.shape[1]),
            "note": self.note,
            "normalize": self.normalize,
            "seconds": round(self.seconds, 4),
        }


#: How :func:`scores_with_report` may normalise scores.
NORMALIZATIONS = ("none", "relative", "cosine")


def scores(
    model: nn.Module,
    train: DataLike,
    queries: DataLike,
    *,
    config: SolveConfig | None = None,
    loss_fn: LossFn | None = None,
    hessian_data: DataLike | None = None,
    lowrank: LowRankHessian | None = None,
    callback: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    normalize: str = "none",
    **options: Any,
) -> torch.Tensor:
    """Influence of every training sample on every query: a [n_queries, n_train] tensor (CPU).

    ``score[q, i] = ∇ℓ(z_q)ᵀ (H + λI)⁻¹ ∇ℓ(z_i)``; positive = training sample i supports query q
    (removing it would raise the query loss by about score/n). ``normalize`` (``relative``,
    ``cosine``) divides by the samples' own influence: see :func:`scores_with_report` for it, the
    other arguments and the diagnostics.
    """
    return scores_with_report(
        model, train, queries, config=config, loss_fn=loss_fn, hessian_data=hessian_data, lowrank=lowrank,
        callback=callback, should_stop=should_stop, normalize=normalize, **options,
    ).scores  # fmt: skip


def scores_with_report(
    model: nn.Module,
    train: DataLike,
    queries: DataLike,
    *,
    config: SolveConfig | None = None,
    loss_fn: LossFn | None = None,
    hessian_data: DataLike | None = None,
    lowrank: LowRankHessian | None = None,
    callback: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    include_self_influence: bool = False,
    normalize: str = "none",
    **options: Any,
) -> ScoresResult:
    """Pairwise influence scores with diagnostics (the engine behind :func:`scores`).

    Args:
        model: the trained model (evaluated in eval mode; left unchanged).
        train: ``(inputs, targets)`` or batches: the columns of the score matrix.
        queries: ``(inputs, targets)`` or batches: the rows.
        config: a :class:`gif.SolveConfig` (``method`` must be ``if``); keyword ``options``
            replace its fields. Defaults: ``scores``'s column of docs/engine.md's table (solver
            ``lowrank`` when a ``lowrank`` fit is given); the training weight decay as ``damping``
            gives the score/n reading; a per-sample-gradient pass holds ``chunk_size`` × p
            gradient entries, so lower it for large models.
        loss_fn: batch-mean loss ``loss_fn(outputs, targets)``; cross-entropy by default.
        hessian_data: data whose mean-loss Hessian is H; the training data by default.
        lowrank: a previous :class:`LowRankHessian` fit to reuse (solver ``lowrank``).
        callback: receives :class:`gif.Progress` events: ``fitting_curvature`` / ``solving``
            per solver iteration (``solving`` carries ``query``/``num_queries``, per-sample
            self-influence solves ``sample``/``num_samples``), ``scoring`` after each training
            chunk (``iteration`` = chunk, ``max_iter`` = chunks).
        should_stop: polled every solver iteration and every training chunk; returning True
            raises :class:`gif.errors.Cancelled`.
        include_self_influence: also compute the training samples' self-influence with the same
            inverse (vectorised for ``lowrank``/``direct``; one solve per sample otherwise, whose
            convergence then also counts in ``converged``).
        normalize: ``none`` (raw scores), ``relative`` or ``cosine``. With s_i = ∇ℓ_iᵀ(H + λI)⁻¹∇ℓ_i
            the training samples' self-influence and s_q the queries' own,
            relative[q, i] = score[q, i] / √|s_i| (RelatIF: a training sample with a huge
            gradient, typically an outlier or a wrong label, no longer tops every query's list)
            and cosine[q, i] = score[q, i] / √(|s_q| |s_i|), the cosine of the two gradients in
            the (H + λI)⁻¹ inner product: in [−1, 1] when H + λI is positive definite, and
            comparable across queries and models. A zero self-influence gives 0. Needs the
            training self-influence (its cost: ``include_self_influence``).

    Raises:
        InvalidArgumentError: bad data, damping, solver, options or fit.
        NumericalError: NaN/Inf in gradients or solutions.
        Cancelled: ``should_stop`` returned True.
    """
    check_choice("normalize", normalize, NORMALIZATIONS)
    if lowrank is not None and config is None:
        options = {"solver": "lowrank", **options}
    config = _scores_config("scores", config, options)
    check_callables(loss_fn=loss_fn, callback=callback, should_stop=should_stop)
    if not isinstance(include_self_influence, bool):
        raise InvalidArgumentError(
            f"`include_self_influence` must be True or False, got {include_self_influence!r}"
        )
    wanted = include_self_influence or normalize != "none"
    result = _run(
        model, train, queries, config, measure="loss" if wanted else None, loss_fn=loss_fn,
        hessian_data=hessian_data, lowrank=lowrank, monitor=Monitor(callback, should_stop),
    )  # fmt: skip
    if normalize == "none":
        return result
    assert result.self_influence is not None and result.query_self_influence is not None
    scale = _inverse_root(result.self_influence)[None, :]
    if normalize == "cosine":
        scale = scale * _inverse_root(result.query_self_influence)[:, None]
    return dataclasses.replace(
        result, scores=result.scores * scale, normalize=normalize,
        self_influence=result.self_influence if include_self_influence else None,
    )  # fmt: skip


def _inverse_root(values: torch.Tensor) -> torch.Tensor:
    """1/√|v|, and 0 where v = 0 (a sample with no gradient has no influence to normalise)."""
    root = values.abs().sqrt()
    return torch.where(root > 0, 1.0 / root, torch.zeros_like(root))


def self_influence(
    model: nn.Module,
    train: DataLike,
    *,
    config: SolveConfig | None = None,
    exact: bool = False,
    loss_fn: LossFn | None = None,
    hessian_data: DataLike | None = None,
    lowrank: LowRankHessian | None = None,
    callback: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    measure: str = "auto",
    **options: Any,
) -> torch.Tensor:
    """Self-influence of every training sample, shape [n_train] (CPU); higher = more suspicious.

    ``measure`` says what the sample's own influence is measured on:

    * ``"loss"``: self_i = ∇ℓ_iᵀ (H + λI)⁻¹ ∇ℓ_i, n times the rise of the sample's own loss
      when it is left out (the classic self-influence);
    * ``"margin"``: self_i = −∇m_iᵀ (H + λI)⁻¹ ∇ℓ_i with m_i = log p_y − log(1 − p_y) the
      log-odds of the sample's (given) label: n times the fall of that log-odds when the sample is
      left out, i.e. how much the model's belief in the label rests on the sample itself. It
      finds fitted wrong labels better (docs/benchmarks.md, "Mislabel triage") and needs
      single-label classification (the default cross-entropy over integer labels);
    * ``"head"``: no Hessian of the network: the exact leave-one-out margin of a ridge head
      refitted on the model's penultimate features (:mod:`gif.loo_head`): positive when the head,
      refitted without the sample, would give it another class. The best ranking of fitted wrong
      labels measured (docs/benchmarks.md, "Mislabel triage"); needs single-label classification
      with logits computed by a last Linear layer, and ignores every curvature option;
    * ``"auto"`` (default): ``head`` where it applies and the call asks for no curvature (no
      ``exact``, ``lowrank``, ``hessian_data``, ``config`` or option of :data:`CURVATURE_OPTIONS`),
      else ``margin`` where it applies, else ``loss`` (:func:`self_influence_measure`).

    By default (``exact=False``) the inverse is a fitted curvature applied to a chunk of
    gradients at once, at the price of the gradients: the low-rank model
    (:meth:`gif.inverse.LowRankInverse.bilinear`; the given ``lowrank`` fit, or a new one of
    ``rank`` eigenpairs) or, with ``solver="kfac"`` / ``"ekfac"``, the Kronecker factors.
    ``exact=True`` instead solves per sample with ``solver`` (default ``minres``; ``direct`` for a
    dense pseudo-inverse), up to ``max_iter`` HVPs per sample. Other arguments as in
    :func:`scores_with_report`.
    """
    if not isinstance(exact, bool):
        raise InvalidArgumentError(f"`exact` must be True or False, got {exact!r}")
    named = options.get("solver", None if config is None else config.solver)
    if exact:
        if lowrank is not None or named == "lowrank":
            raise InvalidArgumentError("`exact=True` solves per sample; it does not use a `lowrank` fit")
        options = {**options, "solver": named or "minres"}
    elif named not in (None, "lowrank", "kfac", "ekfac"):
        raise InvalidArgumentError(
            f"`solver={named!r}` needs `exact=True`; the default (exact=False) uses a fitted curvature "
            "(lowrank, kfac or ekfac)"
        )
    check_choice("measure", measure, MEASURES)
    curvature = exact or lowrank is not None or hessian_data is not None or config is not None
    curvature = curvature or any(name in CURVATURE_OPTIONS for name in options)
    config = _scores_config("self_influence", config, options)
    check_callables(loss_fn=loss_fn, callback=callback, should_stop=should_stop)
    pair = as_pair(train, what="train")
    measure = self_influence_measure(model, pair, measure, loss_fn=loss_fn, curvature=curvature)
    if measure == "head":  # the other measures' run checks the data
        with eval_mode(model):  # after the measure, whose own refusal names it
            flat = FlatModel(model, loss_fn)
            flat.check_data(*pair, "train")
        return loo_margins(model, pair, chunk_size=config.chunk_size).to(flat.dtype)
    result = _run(
        model, pair, None, config, measure=measure, loss_fn=loss_fn, hessian_data=hessian_data,
        lowrank=lowrank, monitor=Monitor(callback, should_stop),
    )  # fmt: skip
    assert result.self_influence is not None
    return result.self_influence


#: What :func:`self_influence` measures each sample's influence on.
MEASURES = ("auto", "loss", "margin", "head")

#: Options of :func:`self_influence` that ask for a curvature of the network (so ``auto`` does not
#: pick the ``head`` measure, which has none).
CURVATURE_OPTIONS = tuple(
    f.name for f in dataclasses.fields(SolveConfig) if f.name not in ("seed", "chunk_size", "memory_budget")
)


def self_influence_measure(
    model: nn.Module,
    train: DataLike,
    measure: str = "auto",
    *,
    loss_fn: LossFn | None = None,
    curvature: bool = False,
) -> str:
    """The measure :func:`self_influence` uses for this model and data (its ``auto`` rule;
    ``curvature``: the call asks for a curvature of the network); an explicit ``head`` or
    ``margin`` where it does not apply is an error."""
    check_choice("measure", measure, MEASURES)
    with eval_mode(model):
        flat = FlatModel(model, loss_fn)
        inputs, targets = as_pair(train, what="train")
        if measure == "loss":
            return measure
        single_label = flat.loss_fn is cross_entropy and targets.ndim == 1 and not targets.is_floating_point()
        first = to(take(inputs, slice(0, 1)), flat.device)
        if single_label:
            with torch.no_grad():
                logits = call_on(model, first, "train")
            single_label = logits.ndim == 2 and logits.shape[1] >= 2
    if measure in ("margin", "head") and not single_label:
        raise InvalidArgumentError(
            f"`measure={measure!r}` needs single-label classification (the default cross-entropy over "
            "integer labels, at least 2 logits); use measure='loss'"
        )
    if measure == "head" or (measure == "auto" and single_label and not curvature):
        if head_of(model, first) is not None:
            return "head"
        if measure == "head":
            raise InvalidArgumentError(
                "`measure='head'` needs logits computed by a last Linear layer; use measure='margin'"
            )
    return "margin" if single_label else "loss"


def top_k(scores: torch.Tensor, k: int, *, ids: torch.Tensor | None = None) -> dict:
    """The k most positive (proponents) and k most negative (opponents) training samples per query.

    Args:
        scores: [n_queries, n_train] as returned by :func:`scores`.
        k: how many of each (capped at n_train).
        ids: the training samples' own ids (int [n_train], e.g. a dataset's ``sample_ids``):
            each entry then carries ``"id"`` beside its row ``"index"``.

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
    values = _finite(scores.detach().to("cpu", torch.float64), "`scores` contains NaN or Inf")
    names = None if ids is None else _sample_ids(ids, num_train)
    k = min(k, num_train)
    # Stable sorts keep ties in index order, so the result is deterministic.
    down = torch.sort(values, dim=1, descending=True, stable=True).indices[:, :k]
    up = torch.sort(values, dim=1, stable=True).indices[:, :k]

    def entries(row: int, order: torch.Tensor) -> list[dict]:
        if names is None:
            return [{"index": i, "score": float(values[row, i])} for i in order.tolist()]
        return [{"index": i, "id": names[i], "score": float(values[row, i])} for i in order.tolist()]

    queries = [
        {"query": q, "proponents": entries(q, down[q]), "opponents": entries(q, up[q])}
        for q in range(num_queries)
    ]
    return {"k": k, "num_queries": num_queries, "num_train": num_train, "queries": queries}


# -- internals ------------------------------------------------------------------------------------


def _scores_config(verb: str, config: SolveConfig | None, options: dict[str, Any]) -> SolveConfig:
    resolved = resolve(verb, SolveConfig, config, options)
    if resolved.method != "if":
        raise InvalidArgumentError(
            f"scores apply (H + λI)⁻¹ (method 'if'); `method` cannot be {resolved.method!r}"
        )
    return resolved


def _finite(values: torch.Tensor, message: str) -> torch.Tensor:
    """``values``, unless they hold NaN or Inf (then a :class:`NumericalError` saying ``message``)."""
    if not bool(torch.isfinite(values).all()):
        raise NumericalError(message)
    return values


def _gradients(
    flat: FlatModel, inputs: Inputs, targets: torch.Tensor, what: str, of: str = "loss"
) -> torch.Tensor:
    """Checked per-sample gradients of a chunk of ``what`` (``train`` / ``queries``), [n, p]."""
    g = per_sample_gradients(flat, inputs, targets, of=of)
    return _finite(g, f"the per-sample gradients of `{what}` contain NaN or Inf (check weights, data)")


def _run(
    model: nn.Module, train: DataLike, queries: DataLike | None, config: SolveConfig, *, measure: str | None,
    loss_fn: LossFn | None, hessian_data: DataLike | None, lowrank: LowRankHessian | None, monitor: Monitor,
) -> ScoresResult:  # fmt: skip
    start = time.perf_counter()
    train_pair = as_pair(train, what="train")  # materialised once: read by H and by the scoring pass
    query_pair = None if queries is None else as_pair(queries, what="queries")
    with eval_mode(model):
        flat = FlatModel(model, loss_fn)
        flat.check_data(*train_pair, "train")
        if query_pair is not None:
            flat.check_data(*query_pair, "queries")
        chunk_size = config.chunk_size
        if config.memory_budget is not None:  # lowered to fit: a sample holds a p-vector and activations
            per_sample = flat.sample_bytes(to(take(train_pair[0], slice(0, 1)), flat.device))
            chunk_size = per_sample_gradient_chunk(
                chunk_size, per_sample, flat.space.size, flat.theta.element_size(), config.memory_budget
            )
        train_chunks = Chunks(train_pair, chunk_size=chunk_size, device=flat.device, what="train")
        # H over the training data reuses the scoring pass's chunks (no second copy on the device).
        hessian = HessianOperator(
            flat, [(c.inputs, c.targets) for c in train_chunks] if hessian_data is None else hessian_data,
            chunk_size=chunk_size, backend=config.hvp_backend, memory_budget=config.memory_budget,
            what="train" if hessian_data is None else "hessian_data", check=hessian_data is not None,
            curvature=config.curvature,
        )  # fmt: skip
        config, choice = choose_scores_solver(config, model, flat.loss_fn, SOLVE_SOLVER[config.method])
        inverse = inverse_for(hessian, config, fit=lowrank)
        notes = [] if choice is None else [f"solver auto: {choice['chosen']} ({choice['reason']})"]
        try:
            out, self_values, query_self, solutions, gradients = _score(
                inverse, flat, train_chunks, query_pair, config, measure, monitor
            )
        finally:
            hessian.release()
    n_queries, fit = int(out.shape[0]), getattr(inverse, "fit", None)
    return ScoresResult(
        scores=out, solver=inverse.name, converged=all(s.converged for s in solutions),
        iterations=[s.iterations for s in solutions[:n_queries]],
        residuals=[float(s.residual) for s in solutions[:n_queries]],
        hvps=hessian.hvps, gradients=gradients, seconds=time.perf_counter() - start,
        self_influence=self_values, lowrank=fit if isinstance(fit, LowRankHessian) else None,
        note="; ".join(dict.fromkeys(notes + [s.note for s in solutions if s.note])),
        query_self_influence=query_self,
    )  # fmt: skip


def _score(
    inverse: InverseHessian, flat: FlatModel, train_chunks: Chunks, query_pair: Batch | None,
    config: SolveConfig, measure: str | None, monitor: Monitor,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, list[Solution], int]:  # fmt: skip
    """S = G_q (H + λI)⁻¹, then one pass over the training chunks: S G_chunkᵀ (and self-influence
    on ``measure``, when given). Also returns the queries' own gᵀ(H + λI)⁻¹g, every solve's
    solution (the queries' first) and how many per-sample gradients were computed."""
    gradients = 0
    query_self = None
    solutions: list[Solution] = []
    if query_pair is None:
        solved = torch.zeros(0, inverse.size, dtype=flat.dtype, device=flat.device)
    else:
        largest = max(len(c) for c in train_chunks)
        query_chunks = Chunks(query_pair, chunk_size=largest, device=flat.device, what="queries")
        g_queries = torch.cat([_gradients(flat, c.inputs, c.targets, "queries") for c in query_chunks])
        gradients += int(g_queries.shape[0])
        inverse.prepare(monitor)
        solved, solutions = inverse.solve_rows(g_queries, monitor.fresh(stage="solving"))  # S, [n_q, p]
        query_self = (g_queries * solved).sum(dim=1).cpu()
        del g_queries
    if measure is not None and query_pair is None:
        inverse.prepare(monitor)
    n_train, n_chunks = train_chunks.total, len(train_chunks.chunks)
    out = torch.empty(solved.shape[0], n_train, dtype=flat.dtype)
    self_values = torch.empty(n_train, dtype=flat.dtype) if measure is not None else None
    offset = 0
    forward = measure is None and solved.shape[0] > 0 and not _gradients_cheaper(flat, train_chunks)
    rows = gradient_rows(flat.space.size, flat.theta.element_size())  # a piece: one vmapped pass
    for index, chunk in enumerate(train_chunks):
        monitor.check_cancel()
        block = _forward_block(flat, solved, chunk, config.memory_budget) if forward else None
        if block is not None:
            out[:, offset : offset + len(chunk)] = block.cpu()
            offset += len(chunk)
        else:
            forward = False  # no forward-mode derivative for this model: gradients from here on
            for i in range(0, len(chunk), rows):
                piece = take(chunk.inputs, slice(i, i + rows)), chunk.targets[i : i + rows]
                n = len(piece[1])
                g = _gradients(flat, *piece, "train")
                gradients += n
                out[:, offset : offset + n] = (solved @ g.T).cpu()
                if self_values is not None:
                    values, more = _self_values(inverse, flat, piece, g, measure, monitor, offset, n_train)
                    gradients += n if measure == "margin" else 0
                    self_values[offset : offset + n] = values.cpu()
                    solutions += more
                offset += n
        if monitor.callback is not None:
            monitor.callback(Progress("scoring", iteration=index + 1, max_iter=n_chunks))
    return out, self_values, query_self, solutions, gradients


def _self_values(
    inverse: InverseHessian, flat: FlatModel, piece: Batch, g: torch.Tensor, measure: str | None,
    monitor: Monitor, offset: int, total: int,
) -> tuple[torch.Tensor, list[Solution]]:  # fmt: skip
    """A piece's self-influence: gᵀ(H + λI)⁻¹g on the loss, −∇mᵀ(H + λI)⁻¹g on the margin."""
    solving = monitor.fresh(stage="solving")
    if measure == "loss":
        values, solutions = inverse.quadratic(g, solving, offset=offset, total=total)
    else:
        g_margin = _gradients(flat, *piece, "train", of="margin")
        values, solutions = inverse.bilinear(g_margin, g, solving, offset=offset, total=total)
        values = -values
    return _finite(values, f"the {inverse.name} self-influence produced NaN/Inf; add damping"), solutions


#: The training side takes per-sample gradients by layer, not forward-mode derivatives, where the
#: model applies each weight at least this many times per sample on average (convolutions over
#: many positions): forward-mode then pays a pass of the chunk per query, against one backward
#: pass and a product (docs/benchmarks.md, "Scores: the training side by layer or forward-mode").
BY_LAYER_REUSE = 2.0


def _gradients_cheaper(flat: FlatModel, train_chunks: Chunks) -> bool:
    reuse = weight_reuse(flat, train_chunks.chunks[0].inputs)
    return reuse is not None and reuse >= BY_LAYER_REUSE


#: How PyTorch says an operation has no forward-mode derivative ("... not implemented", a custom
#: autograd.Function: "You must implement the jvp function ... forward mode AD").
_NO_FORWARD_MODE = ("not implemented", "forward mode", "forward ad", "jvp")


def _forward_block(
    flat: FlatModel, solved: torch.Tensor, chunk: Chunk, budget: int | None
) -> torch.Tensor | None:
    """S G_chunkᵀ by forward-mode derivatives, or None when the model has none (an operation
    without a forward-mode formula): the caller then takes per-sample gradients."""
    try:
        block = directional_derivatives(flat, solved, chunk.inputs, chunk.targets, memory_budget=budget)
    except (RuntimeError, NotImplementedError) as exc:
        if not any(words in str(exc).lower() for words in _NO_FORWARD_MODE):
            raise
        return None
    return _finite(block, "the scores of `train` contain NaN or Inf (check weights, data)")


def directional_derivatives(
    flat: FlatModel,
    directions: torch.Tensor,
    inputs: Inputs,
    targets: torch.Tensor,
    *,
    memory_budget: int | None = None,
) -> torch.Tensor:
    """D[j, i] = ∇θ ℓ(z_i) · d_j for the rows d_j of ``directions`` [m, p] and the samples z_i of
    a chunk: [m, len(chunk)].

    Row j is the forward-mode derivative (a JVP) of the per-sample losses (ℓ(z_1), …, ℓ(z_c)) at
    θ along d_j, the model run once on the whole chunk; directions are batched with ``vmap``, as
    many at a time as ``memory_budget`` allows."""

    def losses(theta: torch.Tensor) -> torch.Tensor:
        return per_row(flat, "loss")(flat.outputs(theta, inputs), targets)

    def along(direction: torch.Tensor) -> torch.Tensor:
        return jvp(losses, (flat.theta,), (direction,))[1]

    m = step = int(directions.shape[0])
    if memory_budget is not None:  # per direction: the chunk's activations, their tangents and a p-vector
        activations = 2 * count(inputs) * flat.sample_bytes(inputs)
        per_direction = activations + flat.space.size * flat.theta.element_size()
        step = max(1, min(m, memory_budget // max(per_direction, 1)))
    return torch.cat([vmap(along)(directions[j : j + step]) for j in range(0, m, step)])


__all__ = [
    "MEASURES",
    "NORMALIZATIONS",
    "ScoresResult",
    "per_sample_gradients",
    "scores",
    "scores_with_report",
    "self_influence",
    "self_influence_measure",
    "top_k",
]


def _sample_ids(ids: torch.Tensor, num_train: int) -> list[int]:
    integer = isinstance(ids, torch.Tensor) and not ids.dtype.is_floating_point and ids.dtype != torch.bool
    if not integer or ids.ndim != 1:
        raise InvalidArgumentError("`ids` must be a 1-D integer tensor, one id per training sample")
    if ids.numel() != num_train:
        raise InvalidArgumentError(f"`ids` holds {ids.numel()} ids for {num_train} training samples")
    return ids.tolist()
