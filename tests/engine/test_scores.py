"""gif.scores: pairwise scores, self-influence and top-k against dense float64 references.

The key sanity check of the sign and 1/n conventions is ``test_score_over_n_predicts_retraining``:
on a tiny network trained to stationarity with weight decay λ (so H + λI is the Hessian of the
training objective), down-weighting or removing a training sample and retraining changes the
query loss by ≈ score/n.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from gif.errors import Cancelled, InvalidArgumentError, NumericalError
from gif.scoring import (
    ScoresResult,
    directional_derivatives,
    per_sample_gradients,
    scores,
    scores_with_report,
    self_influence,
    self_influence_measure,
    top_k,
)
from gif.solvers import LowRankHessian

from .conftest import BUILDERS, make_data, tiny_mlp
from .reference import dense_gradient, dense_hessian, label_log_odds

TIGHT = {"tol": 1e-12, "max_iter": 3000}
N_TRAIN, N_QUERIES = 24, 3


def setup(kind: str):
    return BUILDERS[kind](), make_data(kind, N_TRAIN, 10), make_data(kind, N_QUERIES, 11)


def dense_grads(model, data) -> torch.Tensor:
    x, y = data
    return torch.stack([dense_gradient(model, x[i : i + 1], y[i : i + 1]) for i in range(len(y))])


def dense_inverse(model, hdata, damping) -> torch.Tensor:
    h = dense_hessian(model, *hdata)
    return torch.linalg.pinv(h + damping * torch.eye(h.shape[0], dtype=h.dtype))


def dense_scores(model, train, queries, damping) -> torch.Tensor:
    return dense_grads(model, queries) @ dense_inverse(model, train, damping) @ dense_grads(model, train).T


def rel_err(actual, expected) -> float:
    return float(torch.linalg.norm(actual - expected) / torch.linalg.norm(expected))


def pd_damping(model, hdata) -> float:
    low = float(torch.linalg.eigvalsh(dense_hessian(model, *hdata)).min())
    return max(0.05, -low + 0.05)


def exact_fit(model, hdata) -> LowRankHessian:
    """A full-rank 'low-rank' fit from the dense eigendecomposition (no Lanczos)."""
    e, u = torch.linalg.eigh(dense_hessian(model, *hdata))
    order = torch.argsort(e.abs(), descending=True)
    return LowRankHessian(e[order], u[:, order].T.contiguous(), torch.zeros(e.numel(), dtype=e.dtype))


# -- agreement with dense algebra -----------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(BUILDERS))
@pytest.mark.parametrize("solver", ["minres", "cg", "lowrank", "direct"])
def test_scores_match_dense_reference(kind, solver):
    model, train, queries = setup(kind)
    damping = pd_damping(model, train) if solver == "cg" else 0.01
    if solver != "cg":  # indefinite: make sure the reference is well posed
        eig = torch.linalg.eigvalsh(dense_hessian(model, *train))
        assert bool((eig < 0).any()) and float((eig + damping).abs().min()) > 1e-6
    expected = dense_scores(model, train, queries, damping)
    backend = "graph" if kind == "cnn" else "func"  # the graph back end is ~10x faster per HVP
    out = scores_with_report(
        model, train, queries, damping=damping, solver=solver, rank=10_000, hvp_backend=backend, **TIGHT
    )
    assert isinstance(out, ScoresResult)
    assert out.scores.shape == (N_QUERIES, N_TRAIN) and out.scores.dtype == torch.float64
    assert out.scores.device.type == "cpu"
    assert out.converged, out.note
    assert rel_err(out.scores, expected) <= 1e-6
    assert len(out.iterations) == len(out.residuals) == N_QUERIES
    assert out.gradients == N_QUERIES  # the training side runs forward-mode, no per-sample gradient
    if solver in ("minres", "cg"):
        assert all(i > 0 for i in out.iterations) and max(out.residuals) <= TIGHT["tol"]
        assert out.hvps == sum(out.iterations)
    if solver == "lowrank":
        assert out.lowrank is not None and out.hvps == out.lowrank.hvps
    diagnostics = json.loads(json.dumps(out.diagnostics()))
    assert diagnostics["work"] == {
        "gradients": N_QUERIES,
        "hvps": out.hvps,
        "forward_evaluations": 0,
    }


def test_hessian_data_defaults_to_train_and_can_differ():
    model, train, queries = setup("mlp")
    other = make_data("mlp", 40, 12)
    default = scores(model, train, queries, solver="direct")
    explicit = scores(model, train, queries, solver="direct", hessian_data=train)
    assert torch.allclose(default, explicit, rtol=0, atol=1e-12)
    expected = dense_grads(model, queries) @ dense_inverse(model, other, 0.01) @ dense_grads(model, train).T
    assert rel_err(scores(model, train, queries, solver="direct", hessian_data=other), expected) <= 1e-6


def test_custom_loss_fn_is_per_sample():
    """loss_fn is applied to batches of one; H is the Hessian of its mean over the data."""
    model, train, queries = setup("mlp")

    def loss_fn(out, y):
        return nn.functional.cross_entropy(out, y, label_smoothing=0.1)

    params = list(model.parameters())

    def grads(data):
        rows = []
        for i in range(len(data[1])):
            loss = loss_fn(model(data[0][i : i + 1]), data[1][i : i + 1])
            rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
        return torch.stack(rows)

    h = dense_hessian(model, *train, loss_fn=loss_fn)
    inv = torch.linalg.pinv(h + 0.01 * torch.eye(h.shape[0], dtype=h.dtype))
    expected = grads(queries) @ inv @ grads(train).T
    assert rel_err(scores(model, train, queries, solver="direct", loss_fn=loss_fn), expected) <= 1e-6


def test_scores_is_the_report_tensor_and_rows_are_independent():
    model, train, queries = setup("embed")
    full = scores(model, train, queries, solver="minres", **TIGHT)
    report = scores_with_report(model, train, queries, solver="minres", **TIGHT)
    assert torch.equal(full, report.scores)
    one = scores(model, train, (queries[0][1:2], queries[1][1:2]), solver="minres", **TIGHT)
    assert torch.allclose(one[0], full[1], rtol=1e-9, atol=1e-12)


# -- sign and scale: score / n predicts retraining ------------------------------------------------


def _trained_net():
    """A tanh MLP at a stationary point of (1/n) Σ ℓ_j + (λ/2)‖θ‖² (full-batch LBFGS, float64)."""
    n, lam = 30, 0.1
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    teacher = torch.randn(3, 3, generator=gen, dtype=torch.float64)
    y = (x @ teacher + 0.7 * torch.randn(n, 3, generator=gen, dtype=torch.float64)).argmax(1)
    xq = torch.randn(3, 3, generator=gen, dtype=torch.float64)
    yq = (xq @ teacher).argmax(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    assert _fit(model, x, y, torch.ones(n, dtype=torch.float64), lam) < 1e-7
    return model, (x, y), (xq, yq), lam


def _fit(model, x, y, weights, lam, rounds=5) -> float:
    """Minimise (1/n) Σ_j w_j ℓ_j + (λ/2)‖θ‖² from the current θ; returns the final gradient norm."""
    n = len(y)
    opt = torch.optim.LBFGS(
        model.parameters(),
        lr=1,
        max_iter=500,
        history_size=50,
        tolerance_grad=1e-13,
        tolerance_change=0,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        per = nn.functional.cross_entropy(model(x), y, reduction="none")
        loss = (weights * per).sum() / n + lam / 2 * sum((p * p).sum() for p in model.parameters())
        loss.backward()
        return loss

    for _ in range(rounds):
        opt.step(closure)
    return float(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).norm())


def _query_losses(model, queries) -> torch.Tensor:
    with torch.no_grad():
        return nn.functional.cross_entropy(model(queries[0]), queries[1], reduction="none")


def test_score_over_n_predicts_retraining():
    model, train, queries, lam = _trained_net()
    n = len(train[1])
    predicted = scores(model, train, queries, damping=lam, solver="direct") / n  # [3, n]
    base = _query_losses(model, queries)

    # Infinitesimal: giving sample i weight 1 − ε changes the query losses by ε·score/n (first order).
    eps = 1e-3
    probe = [int(i) for i in predicted.abs().sum(0).argsort(descending=True)[:4]]
    rates = []
    for i in probe:
        weights = torch.ones(n, dtype=torch.float64)
        weights[i] = 1 - eps
        retrained = copy.deepcopy(model)
        assert _fit(retrained, *train, weights, lam) < 1e-7
        rates.append((_query_losses(retrained, queries) - base) / eps)
    assert rel_err(torch.stack(rates, dim=1), predicted[:, probe]) < 0.03

    # Leave-one-out: removing sample i changes the query losses by ≈ score/n (same sign, same scale).
    actual = torch.zeros_like(predicted)
    for i in range(n):
        weights = torch.ones(n, dtype=torch.float64)
        weights[i] = 0.0
        retrained = copy.deepcopy(model)
        _fit(retrained, *train, weights, lam, rounds=3)
        actual[:, i] = _query_losses(retrained, queries) - base
    for q in range(len(queries[1])):
        a, p = actual[q], predicted[q]
        assert float(torch.corrcoef(torch.stack([a, p]))[0, 1]) > 0.95
        big = p.abs() >= p.abs().median()
        assert bool((a[big].sign() == p[big].sign()).all()), "sign convention broken"
        slope = float(a @ p / (p @ p))  # the influence function slightly underestimates removals
        assert 0.8 < slope < 1.6, slope


# -- chunking, batches, model state ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["cnn", "embed"])
def test_chunk_size_and_batching_invariance(kind):
    model, train, queries = setup(kind)
    fit = exact_fit(model, train)
    reference = scores(model, train, queries, lowrank=fit)
    for chunk_size in (1, 5, 256):
        out = scores(model, train, queries, lowrank=fit, chunk_size=chunk_size)
        assert torch.allclose(out, reference, rtol=0, atol=1e-12 * float(reference.abs().max()))
    batches = [(train[0][s : s + 7], train[1][s : s + 7]) for s in range(0, N_TRAIN, 7)]
    out = scores(model, batches, [queries], lowrank=fit, chunk_size=4)
    assert torch.allclose(out, reference, rtol=0, atol=1e-12 * float(reference.abs().max()))


def test_gradients_computed_a_few_samples_at_a_time_give_the_same_scores(monkeypatch):
    """Per-sample gradients run in passes of GRADIENT_PASS_BYTES (here: one sample per pass)."""
    from gif import per_sample

    model, train, queries = setup("cnn")
    fit = exact_fit(model, train)
    whole = scores_with_report(model, train, queries, lowrank=fit, include_self_influence=True)
    monkeypatch.setattr(per_sample, "GRADIENT_PASS_BYTES", 1)
    assert per_sample.gradient_rows(10**6, 4) == 1
    pieces = scores_with_report(model, train, queries, lowrank=fit, include_self_influence=True)
    assert pieces.gradients == whole.gradients == N_QUERIES + N_TRAIN
    assert torch.allclose(pieces.scores, whole.scores, rtol=0, atol=1e-12 * float(whole.scores.abs().max()))
    assert pieces.self_influence is not None and whole.self_influence is not None
    largest = float(whole.self_influence.abs().max())  # a value near 0 holds the others' rounding
    assert torch.allclose(pieces.self_influence, whole.self_influence, rtol=1e-12, atol=1e-12 * largest)


def test_hessian_chunking_invariance():
    """Iterative solvers read H through HVPs over chunks of ``chunk_size`` samples."""
    model, train, queries = setup("mlp")
    one = (queries[0][:1], queries[1][:1])
    a = scores(model, train, one, solver="minres", chunk_size=5, **TIGHT)
    b = scores(model, train, one, solver="minres", chunk_size=256, **TIGHT)
    assert rel_err(a, b) < 1e-9


def test_model_is_used_in_eval_mode_and_left_unchanged():
    model, train, queries = setup("cnn")  # BatchNorm + Dropout
    expected = dense_scores(model.eval(), train, queries, 0.01)
    state = copy.deepcopy(model.state_dict())
    model.train()
    out = scores(model, train, queries, solver="direct")
    assert model.training, "training mode must be restored"
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert rel_err(out, expected) <= 1e-6


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_directional_derivatives_are_gradients_along_each_direction(kind):
    """D[j, i] = ∇ℓ(z_i)·d_j: the forward-mode block equals the per-sample gradients' product, also
    when the memory budget allows one direction per batched pass."""
    from gif.hessian import FlatModel

    model, train, _ = setup(kind)
    flat = FlatModel(model.eval())
    directions = torch.randn(
        5, flat.space.size, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    expected = directions @ dense_grads(model, train).T
    for budget in (None, 1):
        out = directional_derivatives(flat, directions, *train, memory_budget=budget)
        assert out.shape == (5, N_TRAIN)
        assert rel_err(out, expected) < 1e-12


class _DoubleWithoutJvp(torch.autograd.Function):
    """2x, with a backward and a vmap rule but no forward-mode (jvp) formula."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return 2 * x

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad):
        return 2 * grad


class _NoForwardMode(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return _DoubleWithoutJvp.apply(self.inner(x))


def test_a_model_without_forward_mode_is_scored_from_per_sample_gradients():
    model, train, queries = setup("mlp")
    wrapped = _NoForwardMode(model)
    expected = dense_scores(wrapped, train, queries, 0.01)
    # the inverse from the dense eigendecomposition: the engine's HVPs would need the formula too
    out = scores_with_report(wrapped, train, queries, lowrank=exact_fit(wrapped, train), damping=0.01)
    assert rel_err(out.scores, expected) <= 1e-6
    assert out.gradients == N_QUERIES + N_TRAIN


def test_per_sample_gradients_match_loops():
    from gif.hessian import FlatModel

    model, train, _ = setup("embed")
    assert rel_err(per_sample_gradients(FlatModel(model), *train), dense_grads(model, train)) < 1e-12


# -- self-influence -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_self_influence_lowrank_exact_and_dense_agree(kind):
    model, train, _ = setup(kind)
    g = dense_grads(model, train)
    expected = torch.einsum("ip,pq,iq->i", g, dense_inverse(model, train, 0.01), g)
    on_loss = {"measure": "loss"}
    fitted = self_influence(model, train, rank=10_000, **on_loss)  # default: lowrank, full rank here
    given = self_influence(model, train, lowrank=exact_fit(model, train), **on_loss)
    dense = self_influence(model, train, exact=True, solver="direct", **on_loss)
    results = [fitted, given, dense]
    if kind != "cnn":  # one solve per sample: keep it to the small models
        results.append(self_influence(model, train, exact=True, hvp_backend="graph", **TIGHT, **on_loss))
    for out in results:
        assert out.shape == (N_TRAIN,) and out.dtype == torch.float64
        assert rel_err(out, expected) <= 1e-6


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_margin_self_influence_matches_dense_reference(kind):
    """self_i = −∇m_iᵀ (H + λI)⁻¹ ∇ℓ_i, m_i the label's log-odds; `auto` picks it for these
    cross-entropy classifiers once a curvature is asked for."""
    model, train, _ = setup(kind)
    x, y = train
    g = dense_grads(model, train)
    g_margin = torch.stack(
        [dense_gradient(model, x[i : i + 1], y[i : i + 1], label_log_odds) for i in range(len(y))]
    )
    expected = -torch.einsum("ip,pq,iq->i", g_margin, dense_inverse(model, train, 0.01), g)
    assert bool((expected > 0).any()) and bool((expected < 0).any())  # a bilinear form, not a square
    results = [
        self_influence(model, train, rank=10_000),
        self_influence(model, train, lowrank=exact_fit(model, train), measure="margin", chunk_size=5),
        self_influence(model, train, exact=True, solver="direct", measure="margin"),
    ]
    if kind != "cnn":
        results.append(
            self_influence(model, train, exact=True, hvp_backend="graph", measure="margin", **TIGHT)
        )
    for out in results:
        assert out.shape == (N_TRAIN,) and out.dtype == torch.float64
        assert rel_err(out, expected) <= 1e-6
    assert self_influence_measure(model, train, curvature=True) == "margin"


def test_self_influence_measure_falls_back_to_the_loss():
    """A loss other than the default cross-entropy (or float targets) has no label log-odds:
    `auto` measures the loss, an explicit `margin` is refused."""
    model, train, _ = setup("mlp")
    x, y = train
    soft = (x, torch.nn.functional.one_hot(y, 3).double())
    mse = lambda out, t: ((out - t) ** 2).sum(dim=1).mean()  # noqa: E731
    assert self_influence_measure(model, soft, loss_fn=mse) == "loss"
    assert self_influence_measure(model, train, "loss") == "loss"
    auto = self_influence(model, soft, loss_fn=mse, rank=10_000)
    assert torch.allclose(auto, self_influence(model, soft, loss_fn=mse, rank=10_000, measure="loss"))
    for call in (
        lambda: self_influence(model, soft, loss_fn=mse, measure="margin"),
        lambda: self_influence_measure(model, (x, y.double()), "margin"),
        lambda: self_influence(model, train, measure="log_odds"),
    ):
        with pytest.raises(InvalidArgumentError, match="measure"):
            call()


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_normalized_scores_match_dense_reference(kind):
    """relative[q, i] = score / √|s_i|, cosine[q, i] = score / √(|s_q| |s_i|) with s the samples'
    own gᵀ(H + λI)⁻¹g; with a positive-definite H + λI the cosine lies in [−1, 1] and is 1 for a
    query that is a training sample."""
    model, train, queries = setup(kind)
    damping = pd_damping(model, train)
    inverse = dense_inverse(model, train, damping)
    g_train, g_query = dense_grads(model, train), dense_grads(model, queries)
    raw = g_query @ inverse @ g_train.T
    s_train = torch.einsum("ip,pq,iq->i", g_train, inverse, g_train)
    s_query = torch.einsum("ip,pq,iq->i", g_query, inverse, g_query)
    common = {"damping": damping, "solver": "direct"}
    relative = scores_with_report(model, train, queries, normalize="relative", **common)
    assert relative.normalize == "relative" and relative.self_influence is None
    assert rel_err(relative.scores, raw / s_train.sqrt()) <= 1e-8
    cosine = scores(model, train, queries, normalize="cosine", **common)
    assert rel_err(cosine, raw / torch.outer(s_query.sqrt(), s_train.sqrt())) <= 1e-8
    assert float(cosine.abs().max()) <= 1.0 + 1e-9
    both = (torch.cat([queries[0], train[0]]), torch.cat([queries[1], train[1]]))
    own = scores(model, both, queries, normalize="cosine", hessian_data=train, **common)
    assert torch.allclose(own[:, :N_QUERIES].diagonal(), torch.ones(N_QUERIES, dtype=own.dtype))
    lowrank = scores_with_report(
        model, train, queries, normalize="cosine", damping=damping, lowrank=exact_fit(model, train),
        include_self_influence=True,
    )  # fmt: skip
    assert rel_err(lowrank.scores, cosine) <= 1e-6 and rel_err(lowrank.self_influence, s_train) <= 1e-6
    assert lowrank.diagnostics()["normalize"] == "cosine"


def test_a_sample_without_gradient_normalizes_to_zero():
    """Under a squared error, a sample whose target equals the model's output has no gradient,
    no self-influence and no influence: its normalised column is 0, not NaN."""
    model, (x, _), (xq, _) = setup("mlp")
    with torch.no_grad():
        fitted, fitted_q = model(x), model(xq)
    noise = torch.randn(fitted.shape, generator=torch.Generator().manual_seed(3), dtype=fitted.dtype)
    noise[-1] = 0.0
    mse = lambda out, t: ((out - t) ** 2).sum(dim=1).mean()  # noqa: E731
    train, queries = (x, fitted + noise), (xq, fitted_q + 1.0)
    out = scores(model, train, queries, normalize="cosine", solver="direct", damping=0.1, loss_fn=mse)
    assert bool(torch.isfinite(out).all()) and bool((out[:, -1] == 0).all())
    assert bool((out[:, :-1] != 0).all())
    with pytest.raises(InvalidArgumentError, match="normalize"):
        scores(model, train, queries, normalize="l2", loss_fn=mse)


@pytest.mark.parametrize("damping", [0.0, 0.01, 1.0])
def test_self_influence_mirrors_lowrank_solve_if(damping):
    """With a truncated fit, self = gᵀ fit.solve_if(g) exactly (complement term included)."""
    model, train, _ = setup("mlp")
    fit = exact_fit(model, train)
    fit = LowRankHessian(fit.eigenvalues[:6], fit.eigenvectors[:6], fit.residuals[:6])
    g = dense_grads(model, train)
    expected = torch.stack([row @ fit.solve_if(row, damping) for row in g])
    out = self_influence(model, train, lowrank=fit, damping=damping, chunk_size=5, measure="loss")
    assert torch.allclose(out, expected, rtol=1e-10, atol=1e-12)
    # ... and the pairwise scores use the same model: score[q, i] = g_qᵀ solve_if(g_i).
    _, _, queries = setup("mlp")
    gq = dense_grads(model, queries)
    pair = torch.stack([gq @ fit.solve_if(row, damping) for row in g], dim=1)
    out = scores(model, train, queries, lowrank=fit, damping=damping)
    assert torch.allclose(out, pair, rtol=1e-10, atol=1e-12)


def test_scores_report_with_self_influence_and_fit_reuse():
    model, train, queries = setup("mlp")
    first = scores_with_report(
        model, train, queries, solver="lowrank", rank=10_000, include_self_influence=True
    )
    assert first.lowrank is not None and first.hvps > 0
    again = scores_with_report(model, train, queries, lowrank=first.lowrank, include_self_influence=True)
    assert again.hvps == 0 and again.solver == "lowrank"
    assert torch.allclose(again.scores, first.scores, rtol=0, atol=1e-12)
    alone = self_influence(model, train, lowrank=first.lowrank, measure="loss")
    assert torch.allclose(first.self_influence, alone, rtol=0, atol=1e-12)
    exact = scores_with_report(
        model, train, queries, solver="minres", include_self_influence=True, hvp_backend="graph", **TIGHT
    )
    assert exact.self_influence is not None and len(exact.iterations) == N_QUERIES
    assert rel_err(exact.self_influence, first.self_influence) <= 1e-6
    assert scores_with_report(model, train, queries, solver="direct").self_influence is None


# -- top-k ----------------------------------------------------------------------------------------


def test_top_k_orders_and_ties():
    s = torch.tensor([[0.5, -1.0, 2.0, 0.5, -3.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    out = top_k(s, 2)
    assert out["k"] == 2 and out["num_queries"] == 2 and out["num_train"] == 5
    q0 = out["queries"][0]
    assert [e["index"] for e in q0["proponents"]] == [2, 0]  # tie 0.5 at 0 and 3: lower index first
    assert [e["score"] for e in q0["proponents"]] == [2.0, 0.5]
    assert [e["index"] for e in q0["opponents"]] == [4, 1]
    assert [e["score"] for e in q0["opponents"]] == [-3.0, -1.0]
    assert [e["index"] for e in out["queries"][1]["proponents"]] == [0, 1]
    assert json.loads(json.dumps(out)) == out
    capped = top_k(s, 10)
    assert capped["k"] == 5 and len(capped["queries"][0]["opponents"]) == 5


def test_top_k_names_each_sample_by_its_id_when_given():
    s = torch.tensor([[0.5, -1.0, 2.0, 0.5, -3.0]])
    ids = torch.tensor([900, 17, 2**40, -5, 3])
    q0 = top_k(s, 2, ids=ids)["queries"][0]
    assert q0["proponents"] == [
        {"index": 2, "id": 2**40, "score": 2.0},
        {"index": 0, "id": 900, "score": 0.5},
    ]
    assert [(e["index"], e["id"]) for e in q0["opponents"]] == [(4, 3), (1, 17)]
    assert "id" not in top_k(s, 2)["queries"][0]["proponents"][0]
    with pytest.raises(InvalidArgumentError, match="holds 4 ids for 5 training samples"):
        top_k(s, 2, ids=ids[:4])
    with pytest.raises(InvalidArgumentError, match="1-D integer"):
        top_k(s, 2, ids=ids.double())


def test_top_k_on_real_scores():
    model, train, queries = setup("mlp")
    s = scores(model, train, queries, solver="direct")
    out = top_k(s, 3)
    for q, entry in enumerate(out["queries"]):
        assert [e["index"] for e in entry["proponents"]] == s[q].argsort(descending=True)[:3].tolist()
        assert [e["index"] for e in entry["opponents"]] == s[q].argsort()[:3].tolist()
        assert all(isinstance(e["score"], float) for e in entry["proponents"])


# -- progress and cancellation --------------------------------------------------------------------


def test_progress_reports_solving_and_scoring():
    model, train, queries = setup("mlp")
    seen: list = []
    out = scores_with_report(model, train, queries, solver="minres", chunk_size=10, callback=seen.append)
    solving = [e for e in seen if e.stage == "solving"]
    scoring = [e for e in seen if e.stage == "scoring"]
    assert len(solving) == sum(out.iterations)
    assert {e.query for e in solving} == set(range(N_QUERIES)) and solving[0].num_queries == N_QUERIES
    assert all(e.max_iter == 100 and e.residual is not None for e in solving)
    assert [(e.iteration, e.max_iter) for e in scoring] == [(1, 3), (2, 3), (3, 3)]
    assert seen.index(scoring[0]) > seen.index(solving[-1])
    fitting: list = []
    scores(model, train, queries, solver="lowrank", rank=5, callback=fitting.append)
    assert {e.stage for e in fitting} == {"fitting_curvature", "scoring"}


@pytest.mark.parametrize("solver", ["minres", "lowrank"])
def test_cancel_while_solving(solver):
    model, train, queries = setup("mlp")
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) >= 3

    with pytest.raises(Cancelled):
        scores(model, train, queries, solver=solver, rank=5, should_stop=stop)
    assert len(calls) == 3


def test_cancel_while_scoring():
    model, train, queries = setup("mlp")
    fit = exact_fit(model, train)
    seen: list = []
    with pytest.raises(Cancelled):
        scores(
            model,
            train,
            queries,
            lowrank=fit,
            chunk_size=5,
            callback=seen.append,
            should_stop=lambda: len(seen) >= 2,
        )
    assert [e.iteration for e in seen] == [1, 2] and all(e.stage == "scoring" for e in seen)


# -- validation -----------------------------------------------------------------------------------


def test_invalid_arguments():
    model, train, queries = setup("mlp")
    fit = exact_fit(model, train)
    wrong_size = LowRankHessian(fit.eigenvalues[:2], torch.ones(2, 7, dtype=torch.float64), fit.residuals[:2])
    cases = [
        (lambda: scores(model, train, queries, damping=-1.0), "damping"),
        (lambda: scores(model, train, queries, damping=float("nan")), "damping"),
        (lambda: scores(model, train, queries, damping=float("inf")), "damping"),
        (lambda: scores(model, "nope", queries), "train"),
        (lambda: scores(model, train, (queries[0], queries[1][:2])), "queries"),
        (lambda: scores(model, train, (queries[0][:0], queries[1][:0])), "queries"),
        (lambda: scores(model, train, queries, solver="magic"), "unknown solver"),
        (lambda: scores(model, train, queries, solver="minres", lowrank=fit), "lowrank"),
        (lambda: scores(model, train, queries, lowrank=wrong_size), "parameters"),
        (lambda: scores(model, train, queries, lowrank="fit"), "lowrank"),
        (lambda: scores(model, train, queries, solver="minres", normalizer=2.0), "normalizer"),
        (lambda: scores(model, train, queries, tol=0.0), "tol"),
        (lambda: scores(model, train, queries, max_iter=0), "max_iter"),
        (lambda: scores(model, train, queries, chunk_size=0), "chunk_size"),
        (lambda: scores(model, train, queries, solver="lowrank", rank=0), "rank"),
        (lambda: self_influence(model, train, exact=True, lowrank=fit), "exact"),
        (lambda: self_influence(model, train, solver="minres"), "exact=True"),
        (lambda: self_influence(model, train, exact="yes"), "exact"),
        (lambda: top_k(torch.zeros(3), 1), "2-D"),
        (lambda: top_k(torch.zeros(2, 3), 0), "k"),
        (lambda: top_k(torch.zeros(2, 3), 1.5), "k"),
        (lambda: top_k(torch.zeros(2, 0), 1), "no training"),
        # labels the default cross-entropy cannot take (torch raised IndexError / RuntimeError)
        (lambda: scores(model, (train[0], train[1] + 10), queries), "`train` has labels"),
        (lambda: scores(model, train, (queries[0], queries[1].float())), "`queries`: labels must be"),
        (lambda: scores(model, train, queries, hessian_data=(train[0], train[1] - 10)), "`hessian_data` has"),
        (lambda: self_influence(model, (train[0], train[1] + 10)), "`train` has labels"),
        # inputs the model cannot run on (its own RuntimeError escaped)
        (lambda: scores(model, train, (queries[0][:, :-1], queries[1])), "the model cannot run on `queries`"),
        (lambda: self_influence(model, (train[0][:, :-1], train[1])), "the model cannot run on `train`"),
        (lambda: self_influence(model, (train[0], train[1][:, None]), measure="loss"), "`train`: labels"),
    ]
    for call, needle in cases:
        with pytest.raises(InvalidArgumentError, match=needle):
            call()
    with pytest.raises(NumericalError):
        top_k(torch.tensor([[0.0, float("nan")]]), 1)
    broken = tiny_mlp()
    with torch.no_grad():
        broken[0].weight[0, 0] = float("nan")
    with pytest.raises(NumericalError):
        scores(broken, train, queries, solver="direct")


@pytest.mark.parametrize("solver", ["minres", "lowrank", "direct"])
def test_float32_model_keeps_its_dtype(solver):
    model, train, queries = setup("mlp")
    expected = dense_scores(model, train, queries, 0.1)
    train32, queries32 = (train[0].float(), train[1]), (queries[0].float(), queries[1])
    out = scores(model.float(), train32, queries32, damping=0.1, solver=solver, rank=10_000, tol=1e-6)
    assert out.dtype == torch.float32
    assert rel_err(out.double(), expected) < 1e-4


def test_auto_takes_a_lowrank_fit_on_a_model_of_linear_layers_up_to_a_size(monkeypatch):
    """Scores' ``auto`` on a model of Linear layers alone is the low-rank fit: rank 128 up to
    SMALL_LINEAR_PARAMS parameters (a rank the request sets is kept), the default rank up to
    LINEAR_LOWRANK_PARAMS; past that, and on a convolutional model, K-FAC (docs/benchmarks.md,
    "Across architectures, and the default for small MLPs")."""
    from gif.inverse import choice

    model, train, queries = setup("mlp")
    out = scores_with_report(model, train, queries)
    assert out.solver == "lowrank" and "a model of Linear layers alone" in out.note and "rank-128" in out.note
    assert torch.equal(
        out.scores, scores(model, train, queries, solver="lowrank", rank=choice.SMALL_LINEAR_RANK)
    )
    assert "rank-5 Lanczos" in scores_with_report(model, train, queries, rank=5).note
    size = sum(p.numel() for p in model.parameters())
    monkeypatch.setattr(choice, "SMALL_LINEAR_PARAMS", size - 1)
    larger = scores_with_report(model, train, queries)
    assert larger.solver == "lowrank" and "rank-64" in larger.note
    assert torch.equal(larger.scores, scores(model, train, queries, solver="lowrank", rank=64))
    monkeypatch.setattr(choice, "LINEAR_LOWRANK_PARAMS", size - 1)
    assert scores_with_report(model, train, queries).solver == "kfac"
    conv_model, conv_train, conv_queries = setup("cnn")
    assert scores_with_report(conv_model, conv_train, conv_queries).solver == "kfac"


def test_the_training_side_takes_gradients_by_layer_where_weights_are_reused(monkeypatch):
    """A convolution applies each weight at many positions: there the scoring pass takes
    per-sample gradients by layer (one backward pass) instead of a forward-mode pass per query;
    an MLP applies each weight once and keeps forward-mode. Both give the same scores."""
    from gif import scoring
    from gif.hessian import FlatModel
    from gif.per_sample import weight_reuse

    torch.manual_seed(0)
    conv = (
        nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 36, 3))
        .double()
        .eval()
    )
    x, y = torch.randn(20, 1, 6, 6, dtype=torch.float64), torch.randint(0, 3, (20,))
    assert weight_reuse(FlatModel(conv), x) >= scoring.BY_LAYER_REUSE
    calls = []
    original = scoring._forward_block
    monkeypatch.setattr(scoring, "_forward_block", lambda *a, **k: calls.append(1) or original(*a, **k))
    by_layer = scores(conv, (x, y), (x[:4], y[:4]), solver="minres", **TIGHT)
    assert not calls
    monkeypatch.setattr(scoring, "BY_LAYER_REUSE", float("inf"))
    forward = scores(conv, (x, y), (x[:4], y[:4]), solver="minres", **TIGHT)
    assert calls
    torch.testing.assert_close(by_layer, forward, rtol=1e-9, atol=1e-12)
    model, train, queries = setup("mlp")
    assert weight_reuse(FlatModel(model), train[0]) == 1.0
    calls.clear()
    monkeypatch.setattr(scoring, "BY_LAYER_REUSE", 2.0)
    scores(model, train, queries)
    assert calls
