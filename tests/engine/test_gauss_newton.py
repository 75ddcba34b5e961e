"""``curvature="gauss_newton"``: products with Jᵀ H_z J against the dense float64 reference
(tests/engine/reference.py), on every tiny architecture and every HVP back end."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gif
from gif.config import SolveConfig
from gif.errors import InvalidArgumentError
from gif.hessian import HessianOperator

from .reference import dense_gauss_newton, dense_hessian, reference_influence


def _vector(size: int, device: torch.device, seed: int = 3) -> torch.Tensor:
    return torch.randn(size, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)).to(device)


@pytest.mark.parametrize("backend", ["func", "graph", "linearized"])
def test_products_match_the_dense_gauss_newton_matrix(tiny, backend):
    _, model, data, _ = tiny
    op = HessianOperator(model, data, backend=backend, curvature="gauss_newton")
    v = _vector(op.size, data[0].device)
    torch.testing.assert_close(op.hvp(v), dense_gauss_newton(model, *data) @ v, rtol=1e-10, atol=1e-12)
    assert (op.hvps, op.grads) == (1, 0)


def test_dense_is_the_reference_and_positive_semi_definite_where_the_hessian_is_not(tiny):
    _, model, data, _ = tiny
    g = HessianOperator(model, data, curvature="gauss_newton").dense()
    torch.testing.assert_close(g, dense_gauss_newton(model, *data), rtol=1e-10, atol=1e-12)
    scale = float(g.abs().max())
    assert float(torch.linalg.eigvalsh(g).min()) >= -1e-10 * scale
    h = dense_hessian(model, *data)
    assert float(torch.linalg.eigvalsh(h).min()) < -1e-6 * scale  # these models are not at a minimum
    assert not torch.allclose(g, h)


def test_it_is_the_hessian_where_the_outputs_are_linear_in_the_parameters():
    torch.manual_seed(0)
    model = nn.Linear(4, 3).double()
    data = (torch.randn(9, 4, dtype=torch.float64), torch.randint(0, 3, (9,)))
    g = HessianOperator(model, data, curvature="gauss_newton").dense()
    torch.testing.assert_close(g, dense_hessian(model, *data), rtol=1e-10, atol=1e-12)


def test_any_loss_chunked_or_not():
    """A custom loss (squared error to one-hot targets) through the loss's own H_z; chunking
    weights each chunk's mean by its size, as the Hessian's products do."""

    def squared_error(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ((z - nn.functional.one_hot(y, z.shape[-1]).to(z.dtype)) ** 2).sum(-1).mean()

    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x, y = torch.randn(17, 4, dtype=torch.float64), torch.randint(0, 3, (17,))
    reference = dense_gauss_newton(model, x, y, loss_fn=squared_error)
    v = _vector(reference.shape[0], x.device)
    for chunk_size, backend in [(17, "func"), (5, "func"), (5, "graph"), (5, "linearized")]:
        op = HessianOperator(model, (x, y), loss_fn=squared_error, chunk_size=chunk_size, backend=backend,
                             curvature="gauss_newton")  # fmt: skip
        torch.testing.assert_close(op.hvp(v), reference @ v, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ["if", "fif", "gif"])
def test_influence_solves_with_the_gauss_newton_matrix(tiny, method):
    _, model, data, target = tiny
    index = torch.arange(0, sum(p.numel() for p in model.parameters()), 3)
    result = gif.influence(model, data, target, method=method, params=index, damping=0.05, solver="direct",
                           curvature="gauss_newton")  # fmt: skip
    g = HessianOperator(model, target).gradient()
    fraction = target[1].numel() / (target[1].numel() + data[1].numel())
    expected = reference_influence(
        method, dense_gauss_newton(model, *data), g, index.to(g.device), 0.05, fraction=fraction
    )
    torch.testing.assert_close(result.vector, expected, rtol=1e-7, atol=1e-9)


def test_cg_runs_to_its_tolerance_on_the_gauss_newton_matrix(tiny):
    """No negative curvature to stop at: CG converges where the Hessian's stops early."""
    _, model, data, target = tiny
    result = gif.influence(model, data, target, method="if", damping=1e-3, solver="cg", tol=1e-8, max_iter=500,
                           curvature="gauss_newton")  # fmt: skip
    assert result.converged and result.residual <= 1e-8
    g = HessianOperator(model, target).gradient()
    expected = reference_influence("if", dense_gauss_newton(model, *data), g, torch.arange(g.numel()), 1e-3)
    torch.testing.assert_close(result.vector, expected.to(result.vector.device), rtol=1e-5, atol=1e-7)


def test_an_unknown_curvature_is_refused():
    with pytest.raises(InvalidArgumentError, match="curvature"):
        SolveConfig(curvature="fisher")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="curvature"):
        HessianOperator(nn.Linear(2, 2), (torch.randn(3, 2), torch.tensor([0, 1, 0])), curvature="fisher")


def test_auto_holds_every_chunk_for_either_curvature_where_it_fits_and_sizing_counts_it(tiny):
    """``auto`` takes the Hessian's cached graph and the Gauss–Newton matrix's linearisation where
    every chunk's intermediates fit the graph budget; a job's sizing resolves it by the same rule
    and counts them, and one chunk at a time where they do not fit."""
    _, model, data, _ = tiny
    assert HessianOperator(model, data, backend="auto").backend == "graph"
    assert HessianOperator(model, data, backend="auto", curvature="gauss_newton").backend == "linearized"
    x = data[0]

    def sized(curvature: str, backend: str = "auto") -> int:
        return gif.memory.estimate(
            model, x, len(x), chunk_size=4, memory_budget=None, hvp_backend=backend, curvature=curvature
        ).activations

    one_chunk = sized("hessian", "func")
    # a linearisation's build peaks higher than a cached graph (gif/memory.py)
    assert sized("gauss_newton") == sized("gauss_newton", "linearized") > sized("hessian") > one_chunk
    assert sized("gauss_newton", "func") == one_chunk
    op = HessianOperator(model, data, backend="auto", curvature="gauss_newton", chunk_size=4)
    assert op.estimate_graph_bytes() == sized("gauss_newton")


def test_auto_linearises_after_a_slow_second_product_and_stays_plain_after_a_fast_one(tiny, monkeypatch):
    """``auto`` takes the linearised product for the Gauss–Newton matrix where its intermediates
    fit the budget, but builds it only after a second plain product that took at least
    ``LINEARIZE_AFTER_SECONDS``; every product is the dense matrix's either way."""
    import gif.hessian

    _, model, data, _ = tiny
    reference = dense_gauss_newton(model, *data)
    vectors = [_vector(reference.shape[0], data[0].device, seed) for seed in (3, 4, 5)]

    def products(op: HessianOperator, count: int = 3) -> list[str]:
        backends = []
        for v in vectors[:count]:
            torch.testing.assert_close(op.hvp(v), reference @ v, rtol=1e-10, atol=1e-12)
            backends.append(op.backend)
        return backends

    monkeypatch.setattr(gif.hessian, "LINEARIZE_AFTER_SECONDS", 1e9)  # no product is this slow
    fast = HessianOperator(model, data, backend="auto", curvature="gauss_newton")
    assert fast.backend == "linearized"
    # undecided after the first product (it may pay one-time warm-ups), plain from the second on
    assert products(fast) == ["linearized", "func", "func"] and fast._linearized is None
    monkeypatch.setattr(gif.hessian, "LINEARIZE_AFTER_SECONDS", 1e-9)  # every product is
    slow = HessianOperator(model, data, backend="auto", curvature="gauss_newton")
    assert products(slow, 2) == ["linearized"] * 2 and slow._linearized is None  # two plain products
    assert products(slow) == ["linearized"] * 3 and slow._linearized is not None  # then the build
    assert slow.hvps == 5
    slow.release()
    assert slow._linearized is None
    tight = HessianOperator(model, data, backend="auto", curvature="gauss_newton", graph_budget_bytes=1)
    assert tight.backend == "func"
