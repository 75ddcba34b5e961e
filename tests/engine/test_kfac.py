"""K-FAC and EK-FAC against the dense float64 Hessian on models where the Gauss-Newton matrix is
the Hessian (the network is linear in its parameters): exact for one sample, and EK-FAC's
eigenvalues equal the Hessian's diagonal in the Kronecker eigenbasis for any number."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers
from torch import nn

import gif
from gif.config import SolveConfig
from gif.errors import InvalidArgumentError
from gif.hessian import HessianOperator, cross_entropy
from gif.inverse import KroneckerInverse, inverse_for
from gif.solvers import Monitor

from .reference import dense_hessian


def linear_layer(seed=0):
    torch.manual_seed(seed)
    return nn.Linear(5, 3).double()


def conv_layer(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Flatten(), nn.Linear(3 * 4 * 4, 4)).double()


def conv1d_layer(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv1d(2, 3, 3, padding=1, stride=2), nn.Flatten(), nn.Linear(3 * 4, 4)).double()


def samples(shape, n, classes, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, dtype=torch.float64, generator=gen), torch.randint(
        0, classes, (n,), generator=gen
    )


def to_matrix_layout(layer: nn.Module) -> torch.Tensor:
    """θ indices of a layer's [out, in + 1] block (weights row-major, then the bias column)."""
    out, inp = layer.weight.shape[0], layer.weight[0].numel()
    index = torch.empty(out, inp + 1, dtype=torch.long)
    index[:, :inp] = torch.arange(out * inp).reshape(out, inp)
    index[:, inp] = out * inp + torch.arange(out)
    return index.reshape(-1)


@pytest.mark.parametrize("corrected", [False, True])
def test_exact_for_a_linear_layer_on_one_sample(corrected):
    model = linear_layer()
    data = samples((5,), 1, 3)
    h = dense_hessian(model, *data)
    damping = 0.05
    inverse = KroneckerInverse(HessianOperator(model, data), damping, corrected=corrected)
    b = torch.randn(h.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    expected = torch.linalg.solve(h + damping * torch.eye(h.shape[0], dtype=torch.float64), b)
    assert torch.allclose(inverse.solve(b, Monitor()).x, expected, rtol=1e-8, atol=1e-10)
    assert torch.allclose(inverse.matvec(b), h @ b, rtol=1e-8, atol=1e-10)


def test_a_damped_solve_keeps_the_directions_of_zero_curvature():
    """(G + λI)⁻¹ divides every direction by at least λ: none is dropped, however small λ is next
    to the largest eigenvalue (a float32 layer on one sample: rank-one factors, mostly zero
    eigenvalues, each kept at 1/λ)."""
    model = linear_layer()
    x, y = samples((5,), 1, 3)
    damping = 1e-6
    h = dense_hessian(model, x, y)
    assert float(torch.linalg.eigvalsh(h).max()) > 1e5 * damping
    b = torch.randn(h.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    expected = torch.linalg.solve(h + damping * torch.eye(h.shape[0], dtype=torch.float64), b)
    model.float()
    inverse = KroneckerInverse(HessianOperator(model, (x.float(), y)), damping, corrected=False)
    solved = inverse.solve(b.float(), Monitor()).x.double()
    assert float((solved - expected).norm() / expected.norm()) < 1e-2


@pytest.mark.parametrize(
    ("build", "shape", "classes"),
    [(linear_layer, (5,), 3), (conv_layer, (2, 4, 4), 4), (conv1d_layer, (2, 8), 4)],
)
def test_ekfac_eigenvalues_are_the_hessian_diagonal_in_the_kronecker_basis(build, shape, classes):
    model = build()
    data = samples(shape, 12, classes)
    h = dense_hessian(model, *data)
    inverse = KroneckerInverse(HessianOperator(model, data, chunk_size=5), 0.0, corrected=True)
    inverse.prepare()
    layer = model if isinstance(model, nn.Linear) else model[0]
    block = inverse.blocks[0]
    assert block.module is layer
    index = to_matrix_layout(layer)
    basis = torch.kron(block.q_out, block.q_in)  # column j * (in + 1) + k = vec(q_out[:, j] q_in[:, k]ᵀ)
    in_basis = basis.T @ h[index][:, index] @ basis
    assert torch.allclose(block.eigen.reshape(-1), torch.diagonal(in_basis), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("corrected", [False, True])
def test_a_float32_model_is_fitted_to_float32_accuracy(corrected):
    """The factors' products run in the activations' precision and are summed in float64: a
    float32 copy of a model gives the float64 fit's solves to ~1e-5."""
    model = conv_layer()
    x, y = samples((2, 4, 4), 300, 4)
    damping = 0.01
    exact = KroneckerInverse(HessianOperator(model, (x, y), chunk_size=64), damping, corrected=corrected)
    single = KroneckerInverse(
        HessianOperator(copy.deepcopy(model).float(), (x.float(), y), chunk_size=64),
        damping,
        corrected=corrected,
    )
    b = torch.randn(exact.size, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    expected = exact.solve(b, Monitor()).x
    got = single.solve(b.float(), Monitor()).x.double()
    assert float((got - expected).norm() / expected.norm()) < 1e-4
    for fitted32, fitted64 in zip(single.fitted.eigen, exact.fitted.eigen, strict=True):
        assert fitted32.dtype == torch.float32 and fitted64.dtype == torch.float64  # the model's
        assert torch.allclose(fitted32.double(), fitted64, rtol=1e-4, atol=1e-6 * float(fitted64.max()))


@pytest.mark.parametrize("corrected", [False, True])
def test_a_float32_fit_is_kept_in_float32_and_solves_as_its_float64_entry_did(corrected):
    """Factors decomposed in float64 are kept in the model's precision (solves cast to it
    anyway): half the bytes, and a fit cached in float64 before gives the same solves."""
    model, data = trained_mlp()
    config = SolveConfig(method="if", solver="ekfac" if corrected else "kfac", damping=0.1, layer_damping=0.1)
    fitted = inverse_for(HessianOperator(model, data), config)
    fit = fitted.fitted
    assert {t.dtype for t in fit.state_dict().values()} == {torch.float32}
    wide = {k: t.double() for k, t in fit.state_dict().items()}  # an entry written before
    old = inverse_for(
        HessianOperator(model, data), config, fit=gif.inverse.KroneckerFit.from_state(wide, fit.meta())
    )
    rows = torch.randn(3, fitted.size, generator=torch.Generator().manual_seed(5))
    assert torch.equal(old.solve_rows(rows, Monitor())[0], fitted.solve_rows(rows, Monitor())[0])
    assert torch.equal(old.matvec(rows[0]), fitted.matvec(rows[0]))


def test_influence_scores_and_edits_run_on_the_factored_curvature():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = samples((6,), 40, 3)
    x = x.float()
    for method in ("if", "fif", "gif"):
        out = gif.influence(model, (x, y), (x[:4], y[:4]), method=method, solver="ekfac", damping=0.1,
                            params={"strategy": "highest_gradients", "ratio": 0.2} if method != "if" else None)  # fmt: skip
        assert out.solver == "ekfac" and torch.isfinite(out.vector).all() and out.hvps == 0
    scores = gif.scores_with_report(model, (x, y), (x[:3], y[:3]), solver="kfac", include_self_influence=True)
    assert scores.scores.shape == (3, 40) and scores.hvps == 0
    assert torch.isfinite(scores.self_influence).all()
    edit = gif.remove(model, (x, y), torch.arange(4), solver="ekfac", newton_steps=1)
    assert edit.report["solver"]["solver"] == "ekfac" and edit.report["hvps"] == 0


def test_uncovered_parameters_get_the_damping_only_and_other_losses_are_refused():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 3)).double()
    data = samples((4,), 10, 3)
    hessian = HessianOperator(model, data)
    inverse = inverse_for(hessian, SolveConfig(method="if", solver="kfac", damping=0.5))
    b = torch.ones(hessian.size, dtype=torch.float64)
    x = inverse.solve(b, Monitor()).x
    norm = slice(4 * 6 + 6, 4 * 6 + 6 + 12)  # LayerNorm weight and bias
    assert torch.allclose(x[norm], b[norm] / 0.5)
    with pytest.raises(InvalidArgumentError, match="cross-entropy"):
        KroneckerInverse(HessianOperator(model, data, loss_fn=nn.functional.mse_loss), 0.1, corrected=True)


def trained_mlp(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    x, y = samples((6,), 90, 3, seed=2)
    x = x.float()
    optimiser = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(150):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimiser.step()
    return model.eval(), (x, y)


@pytest.mark.parametrize("corrected", [False, True])
def test_a_given_fit_replaces_the_pass_over_the_data_and_gives_the_same_solves(corrected):
    model, data = trained_mlp()
    config = SolveConfig(method="if", solver="ekfac" if corrected else "kfac", damping=0.1)
    fitted = inverse_for(HessianOperator(model, data), config)
    fitted.prepare()
    fit = fitted.fit
    assert fit is not None and fit.passes > 0
    again = gif.inverse.KroneckerFit.from_state(fit.state_dict(), fit.meta())
    operator = HessianOperator(model, data)
    reused = inverse_for(operator, config, fit=again)
    b = torch.randn(operator.size, generator=torch.Generator().manual_seed(5))
    assert torch.equal(reused.solve(b, Monitor()).x, fitted.solve(b, Monitor()).x)
    assert operator.work.gradients == 0  # nothing recomputed
    other = SolveConfig(method="if", solver="kfac" if corrected else "ekfac", damping=0.1)
    with pytest.raises(InvalidArgumentError, match="not one of this model"):
        inverse_for(HessianOperator(model, data), other, fit=again)


def test_an_edit_fits_the_factors_once_and_a_further_edit_reuses_them(monkeypatch):
    from gif.inverse import kfac

    model, (x, y) = trained_mlp()
    fits = []
    real = kfac._factors
    monkeypatch.setattr(kfac, "_factors", lambda *a: fits.append(1) or real(*a))
    cache = gif.MemoryCache()
    first = gif.remove(model, (x, y), {"class": 0}, method="gif", solver="kfac", newton_steps=3, cache=cache)
    assert len(first.report["newton_steps"]) >= 2 and len(fits) == 1  # one fit for every Newton step
    # another deletion request on the same checkpoint: the factors come from the cache
    second = gif.remove(model, (x, y), {"class": 1}, method="gif", solver="kfac", newton_steps=3, cache=cache)
    assert len(fits) == 1
    assert any(h["kind"] == "kfac" for h in second.report["cache"]["hits"])
    assert second.report["options"]["hessian_pool"] == "all"


def test_factors_with_nan_are_a_numerical_error_not_a_lapack_failure():
    from gif.inverse.kfac import _eigh

    with pytest.raises(gif.errors.NumericalError, match=r"layer '0'.*NaN or Inf"):
        _eigh(torch.tensor([[float("nan"), 0.0], [0.0, 1.0]], dtype=torch.float64), "0")
    values, _ = _eigh(torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64), "0")
    torch.testing.assert_close(values, torch.tensor([1.0, 3.0], dtype=torch.float64))


# -- solver="auto": K-FAC where the curvature can be factored ---------------------------------------


def _embedding_classifier() -> nn.Module:
    class Bag(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(500, 16)
            self.head = nn.Linear(16, 3)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.head(self.embed(tokens).mean(dim=1))

    return Bag().double().eval()


def test_auto_takes_kfac_where_linear_layers_hold_the_parameters_under_cross_entropy():
    from gif.inverse.kfac import unfactorable

    # 40 + 27 of 83 parameters in Linear layers (81%): LayerNorm's 16 would get no curvature
    small = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 3))
    assert "hold 81%" in str(unfactorable(small, cross_entropy))
    # 3,280 + 243 of 3,683 (96%)
    bigger = nn.Sequential(nn.Linear(40, 80), nn.LayerNorm(80), nn.Tanh(), nn.Linear(80, 3))
    assert unfactorable(bigger, cross_entropy) is None
    assert "cross-entropy" in str(unfactorable(bigger, torch.nn.functional.mse_loss))
    assert "hold 1%" in str(unfactorable(_embedding_classifier(), cross_entropy))


def test_auto_does_not_take_kfac_for_attention():
    """Linear layers hold > 90% of a transformer's parameters, but attention multiplies two of
    their outputs: `auto` keeps the method's solver (measured: K-FAC removes poorly on a ViT)."""
    from gif.inverse.kfac import unfactorable
    from gif.models import huggingface

    class Attend(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(40, 4, batch_first=True)
            self.head = nn.Linear(40, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.attn(x, x, x)[0].mean(dim=1))

    assert "attention (MultiheadAttention)" in str(unfactorable(Attend(), cross_entropy))
    config = transformers.ViTConfig(
        image_size=8, patch_size=4, num_channels=1, hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, num_labels=3,
    ).to_dict()  # fmt: skip
    vit = huggingface.build(config)
    assert "attention (ViT" in str(unfactorable(vit, cross_entropy))
    x, y = torch.rand(24, 1, 8, 8), torch.randint(0, 3, (24,))
    out = gif.remove(
        vit.eval(), ({"pixel_values": x}, y), {"class": 0}, method="gif", solver="auto", newton_steps=1
    )
    assert (
        out.report["solver_choice"]["chosen"] == "lsqr"
        and "attention" in out.report["solver_choice"]["reason"]
    )


def test_auto_chooses_kfac_or_falls_back_to_the_methods_solver():
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    x, y = torch.randn(60, 1, 8, 8), torch.randint(0, 3, (60,))
    idx = torch.tensor([0, 1, 2])
    out = gif.relabel(cnn, (x, y), idx, (y[idx] + 1) % 3, newton_steps=1, solver="auto")
    assert out.report["solver_choice"]["chosen"] == "kfac"
    assert out.report["options"]["solver"] == "kfac" and out.report["options"]["hessian_pool"] == "all"
    bag = _embedding_classifier()
    tokens, labels = torch.randint(0, 500, (60, 5)), torch.randint(0, 3, (60,))
    out = gif.relabel(bag, (tokens, labels), idx, (labels[idx] + 1) % 3, newton_steps=1, solver="auto")
    assert out.report["solver_choice"]["chosen"] == "cg" and "hold" in out.report["solver_choice"]["reason"]
    assert out.report["options"]["solver"] == "cg" and out.report["options"]["hessian_pool"] == "untouched"
    # a solver named by the caller is used as named, and reported without a choice
    named = gif.relabel(cnn, (x, y), idx, (y[idx] + 1) % 3, newton_steps=1, solver="cg")
    assert "solver_choice" not in named.report and named.report["options"]["solver"] == "cg"
    removed = gif.remove(bag, (tokens, labels), idx, newton_steps=1, solver="auto")  # GIF's own: LSQR
    assert removed.report["solver_choice"]["chosen"] == "lsqr"


def test_scores_take_kfac_with_layer_damping_by_default_and_fall_back_to_minres(monkeypatch):
    from gif.inverse import choice

    model, (x, y) = trained_mlp()
    # a model of Linear layers this small takes the low-rank fit (tests/engine/test_scores.py);
    # past the size limit, K-FAC
    monkeypatch.setattr(choice, "LINEAR_LOWRANK_PARAMS", sum(p.numel() for p in model.parameters()) - 1)
    auto = gif.scores_with_report(model, (x, y), (x[:3], y[:3]))
    assert auto.solver == "kfac" and auto.hvps == 0 and "solver auto: kfac" in auto.note
    expected = gif.scores(model, (x, y), (x[:3], y[:3]), solver="kfac", damping=0.01, layer_damping=0.01)
    assert torch.equal(auto.scores, expected)
    monkeypatch.undo()

    def mse(out, target):  # not the cross-entropy: K-FAC does not model it
        return nn.functional.mse_loss(out, nn.functional.one_hot(target, 3).float())

    fallback = gif.scores_with_report(model, (x, y), (x[:3], y[:3]), loss_fn=mse)
    assert fallback.solver == "minres" and fallback.hvps > 0 and "cross-entropy" in fallback.note
    named = gif.scores(model, (x, y), (x[:3], y[:3]), loss_fn=mse, solver="minres", damping=0.01)
    assert torch.allclose(fallback.scores, named, rtol=0, atol=0)
    # gif.influence takes auto too: the method's own solver where K-FAC does not apply
    out = gif.influence(model, (x, y), (x[:3], y[:3]), method="if", solver="auto", damping=0.1, loss_fn=mse)
    assert out.solver == "minres"


def _dense_kfac(inverse: KroneckerInverse) -> torch.Tensor:
    """The factored curvature as a dense matrix, one matvec per column."""
    eye = torch.eye(inverse.size, dtype=torch.float64)
    return torch.stack([inverse.matvec(eye[:, j]) for j in range(inverse.size)], dim=1)


@pytest.mark.parametrize("corrected", [False, True])
def test_layer_damping_damps_each_layer_by_its_mean_eigenvalue(corrected):
    """(G + D)⁻¹b with D diagonal: ρ × the mean eigenvalue of each factored layer on its
    parameters, `damping` on the parameters outside them (LayerNorm)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 3)).double()
    data = samples((4,), 30, 3)
    rho, damping = 0.3, 0.5
    inverse = KroneckerInverse(HessianOperator(model, data), damping, corrected=corrected, layer_damping=rho)
    g = _dense_kfac(inverse)
    eigen = torch.linalg.eigvalsh(g)
    d = torch.full((inverse.size,), damping, dtype=torch.float64)
    first, second = slice(0, 4 * 6 + 6), slice(4 * 6 + 6 + 12, inverse.size)  # the two Linear layers
    for layer, block in zip((first, second), inverse.blocks, strict=True):
        block_eigen = torch.linalg.eigvalsh(g[layer, layer])  # the layer's block of G
        assert torch.allclose(block_eigen.mean(), block.eigen.mean(), rtol=1e-8)
        d[layer] = rho * block_eigen.mean()
    assert inverse.layer_dampings() == pytest.approx([float(d[first][0]), float(d[second][0])])
    assert float(eigen.min()) > -1e-10
    b = torch.randn(inverse.size, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    expected = torch.linalg.solve(g + torch.diag(d), b)
    assert torch.allclose(inverse.solve(b, Monitor()).x, expected, rtol=1e-8, atol=1e-10)
    with pytest.raises(InvalidArgumentError, match="layer_damping"):
        inverse.least_squares(b, torch.arange(5), Monitor())
    with pytest.raises(InvalidArgumentError, match="layer_damping"):
        SolveConfig(method="gif", solver="kfac", layer_damping=0.1)


@pytest.mark.parametrize("corrected", [False, True])
@pytest.mark.parametrize("layer_damping", [0.0, 0.1])
def test_rows_are_solved_at_once_as_each_alone(corrected, layer_damping):
    """solve_rows batches the rotations over rows: the same as one solve per row, LayerNorm
    parameters (no curvature) included; bilinear forms follow."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 3)).double()
    data = samples((4,), 20, 3)
    inverse = KroneckerInverse(
        HessianOperator(model, data), 0.2, corrected=corrected, layer_damping=layer_damping
    )
    rows = torch.randn(5, inverse.size, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    solved, solutions = inverse.solve_rows(rows, Monitor())
    assert len(solutions) == 5 and all(s.x.numel() == 0 for s in solutions)
    each = torch.stack([inverse.solve(r, Monitor()).x for r in rows])
    assert torch.allclose(solved, each, rtol=1e-12, atol=1e-12)
    values, _ = inverse.bilinear(rows.flip(0), rows, Monitor())
    assert torch.allclose(values, (rows.flip(0) * each).sum(dim=1), rtol=1e-12, atol=1e-12)


def test_self_influence_takes_the_factored_curvature_without_exact():
    """gᵢᵀ(G + λI)⁻¹gᵢ with G the dense matrix of the fitted factors and gᵢ autograd's gradients."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    data = samples((4,), 12, 3)
    values = gif.self_influence(model, data, solver="kfac", damping=0.2, measure="loss")
    inverse = KroneckerInverse(HessianOperator(model, data), 0.2, corrected=False)
    g = _dense_kfac(inverse)
    params = list(model.parameters())
    grads = []
    for i in range(12):
        loss = nn.functional.cross_entropy(model(data[0][i : i + 1]), data[1][i : i + 1])
        grads.append(torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, params)]))
    rows = torch.stack(grads)
    expected = (rows * torch.linalg.solve(g + 0.2 * torch.eye(g.shape[0], dtype=g.dtype), rows.T).T).sum(
        dim=1
    )
    assert torch.allclose(values, expected, rtol=1e-8, atol=1e-10)
