"""Chunk sizes from a memory budget (gif/memory.py): smaller chunks, the same mathematics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gif
from gif.hessian import HessianOperator
from gif.memory import FACTOR, fitting_chunk, per_sample_gradient_chunk


def wide_cnn() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(16 * 12 * 12, 3)
    ).double()
    gen = torch.Generator().manual_seed(1)
    return model, (torch.randn(40, 1, 12, 12, generator=gen, dtype=torch.float64), torch.arange(40) % 3)


def test_the_chunk_is_the_largest_that_fits():
    assert fitting_chunk(1024, 1000, None) == 1024
    assert fitting_chunk(1024, 1000, FACTOR * 1000 * 37) == 37
    assert fitting_chunk(1024, 1000, 10) == 1  # never below one sample
    assert fitting_chunk(16, 1000, 1 << 40) == 16  # the cap holds
    assert per_sample_gradient_chunk(256, 100, 1000, 8, (1000 * 8 + FACTOR * 100) * 5) == 5


def test_a_small_budget_shrinks_the_chunks_and_changes_no_hessian_vector_product():
    model, data = wide_cnn()
    plain = HessianOperator(model, data, chunk_size=1024)
    per_sample = plain.sample_bytes()
    # the leaf modules' outputs for one sample: conv 16·12·12, tanh the same, flatten, logits 3
    assert per_sample == (3 * 16 * 144 + 3) * 8
    budget = FACTOR * per_sample * 7
    small = HessianOperator(model, data, chunk_size=1024, memory_budget=budget)
    assert small.chunk_size == 7 and max(len(c) for c in small.data) == 7 and len(small.data.chunks) == 6
    v = torch.randn(plain.size, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(small.hvp(v), plain.hvp(v), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(small.gradient(), plain.gradient(), rtol=1e-10, atol=1e-12)
    # a budget the cap already fits leaves the chunks alone (and the results bit-identical)
    assert HessianOperator(model, data, chunk_size=16, memory_budget=1 << 30).chunk_size == 16


def test_influence_and_scores_under_a_small_budget_equal_the_unbudgeted_ones():
    model, (x, y) = wide_cnn()
    tight = {"tol": 1e-12, "max_iter": 500, "damping": 0.1}
    budget = 3 * FACTOR * (3 * 16 * 144 + 3) * 8  # three samples per chunk for HVPs
    params = sum(p.numel() for p in model.parameters())
    assert per_sample_gradient_chunk(256, (3 * 16 * 144 + 3) * 8, params, 8, budget) < 12  # scores chunk too
    a = gif.influence(model, (x, y), (x[:4], y[:4]), method="if", memory_budget=None, **tight)
    b = gif.influence(model, (x, y), (x[:4], y[:4]), method="if", memory_budget=budget, **tight)
    torch.testing.assert_close(b.vector, a.vector, rtol=1e-8, atol=1e-12)
    s = gif.scores(model, (x[:12], y[:12]), (x[:3], y[:3]), solver="minres", memory_budget=None, **tight)
    t = gif.scores(model, (x[:12], y[:12]), (x[:3], y[:3]), solver="minres", memory_budget=budget, **tight)
    torch.testing.assert_close(t, s, rtol=1e-8, atol=1e-12)


def test_the_estimate_adds_parameters_a_differentiated_chunk_and_the_data():
    from gif.errors import MemoryBudgetError
    from gif.memory import EDIT_VECTORS, check_fits, estimate

    model, (x, _) = wide_cnn()
    p = sum(t.numel() for t in model.parameters())
    per_sample = (3 * 16 * 144 + 3) * 8
    est = estimate(model, x, 40, chunk_size=16, memory_budget=None)
    assert est.parameters == (EDIT_VECTORS + 1) * p * 8 and est.chunk == 16
    assert est.activations == FACTOR * 16 * per_sample and est.data == 40 * 144 * 8
    assert est.as_dict()["total"] == est.parameters + est.activations + est.data
    # a per-chunk budget shrinks the chunk the estimate assumes
    assert estimate(model, x, 40, chunk_size=16, memory_budget=FACTOR * per_sample * 4).chunk == 4
    check_fits(est, est.total)
    with pytest.raises(MemoryBudgetError, match="hessian_samples") as info:
        check_fits(est, est.total - 1)
    assert info.value.code == "memory_budget_exceeded"


def test_a_lowrank_fit_is_sized_with_its_lanczos_basis():
    """The Lanczos fit holds one p-vector per step (2·rank + 20 unless set, at most p): a scores or
    edit job at solver lowrank must be sized with them, not with a Krylov solver's dozen."""
    from gif.config import EditConfig, SolveConfig
    from gif.memory import EDIT_VECTORS, estimate, solver_vectors

    assert solver_vectors(SolveConfig(solver="minres"), 10_000) == EDIT_VECTORS
    assert solver_vectors(SolveConfig(solver="kfac"), 10_000) == EDIT_VECTORS
    assert solver_vectors(SolveConfig(solver="lowrank", rank=8), 10_000) == EDIT_VECTORS + 36
    assert solver_vectors(SolveConfig(solver="lowrank", rank=8), 30) == EDIT_VECTORS + 30
    steps = SolveConfig(solver="lowrank", rank=8, solver_options={"steps": 50})
    assert solver_vectors(steps, 10_000) == EDIT_VECTORS + 50
    assert solver_vectors(EditConfig(method="gif", solver="lowrank"), 10_000) == EDIT_VECTORS + 2 * 64 + 20
    model, (x, _) = wide_cnn()
    p = sum(t.numel() for t in model.parameters())
    est = estimate(model, x, 40, chunk_size=16, memory_budget=None, vectors=EDIT_VECTORS + 36)
    assert est.parameters == (EDIT_VECTORS + 37) * p * 8


def test_the_estimate_holds_the_hvp_graph_where_the_back_end_takes_it():
    """``auto`` takes the cached graph where it fits GRAPH_BUDGET_BYTES (gif/hessian.py): then the
    job holds every chunk's graph, which the estimate counts in place of one chunk's peak."""
    from gif.memory import GRAPH_BUDGET_BYTES, estimate, graph_bytes

    model, (x, y) = wide_cnn()
    p = sum(t.numel() for t in model.parameters())
    per_sample = (3 * 16 * 144 + 3) * 8
    func = estimate(model, x, 40, chunk_size=8, memory_budget=None)
    auto = estimate(model, x, 40, chunk_size=8, memory_budget=None, hvp_backend="auto")
    assert func.activations == FACTOR * 8 * per_sample
    assert auto.activations == graph_bytes(per_sample, 40, p, 8, 5) > func.activations
    operator = HessianOperator(model, (x, y), chunk_size=8, backend="auto")
    assert operator.backend == "graph" and operator.estimate_graph_bytes() == auto.activations
    assert estimate(model, x, 40, chunk_size=8, memory_budget=None, hvp_backend="graph") == auto
    # a graph over the budget: auto takes forward-over-reverse, one chunk at a time
    many = GRAPH_BUDGET_BYTES // per_sample
    big = estimate(model, x, many, chunk_size=8, memory_budget=None, hvp_backend="auto")
    assert big.activations == FACTOR * 8 * per_sample


@pytest.mark.parametrize(
    "edit",
    [
        lambda model, train, **o: gif.remove(model, train, {"class": 1}, **o),  # FIF on the head
        lambda model, train, **o: gif.remove(model, train, torch.arange(0, 40, 4), method="gif", **o),
        lambda model, train, **o: gif.relabel(
            model, train, torch.arange(0, 40, 8), (torch.arange(0, 40, 8) % 3 + 1) % 3, **o
        ),
    ],
    ids=["class removal", "sample removal", "relabel"],
)
def test_every_forward_pass_of_an_edit_holds_at_most_chunk_size_samples(edit):
    """Selection, gradients, HVPs, curvature fits, the head's features, the step search's
    evaluations and the audit all pass ``chunk_size`` samples at a time (a worker reruns a job that
    ran out of CUDA memory with it halved: workers/cuda_memory.py)."""
    model, train = wide_cnn()
    seen: list[int] = []

    def record(module, args):
        if args[0].dim() == 4:  # under vmap a sample has no batch dimension
            seen.append(args[0].shape[0])

    handle = model.register_forward_pre_hook(record)
    try:
        out = edit(model, train, chunk_size=6, newton_steps=2, holdout=train, reference=model)
    finally:
        handle.remove()
    assert seen and max(seen) <= 6, sorted(set(seen))
    assert out.report["audit"]["samples"]
