"""Every method × solver against dense float64 linear algebra on tiny models (1e-6 relative)."""

import pytest
import torch

import gif
from gif.errors import InvalidArgumentError, NumericalError

from .reference import dense_gradient, dense_hessian, reference_influence

ITERATIVE = ["cg", "minres", "lsqr"]
TIGHT = {"tol": 1e-13, "max_iter": 3000}


def selected(p: int) -> torch.Tensor:
    return torch.arange(1, p, 3)  # a third of the parameters, spread over every tensor


def reference(tiny, method, damping):
    _, model, hdata, tdata = tiny
    h, g = dense_hessian(model, *hdata), dense_gradient(model, *tdata)
    index = selected(h.shape[0])
    h_target = dense_hessian(model, *tdata) if method == "sif" else None
    fraction = len(tdata[1]) / (len(tdata[1]) + len(hdata[1]))
    return index, reference_influence(method, h, g, index, damping, h_target, fraction)


def assert_rel_close(actual, expected, rel=1e-6):
    err = float(torch.linalg.norm(actual - expected) / torch.linalg.norm(expected))
    assert err <= rel, f"relative error {err:.2e}"


def damping_for_pd(tiny):
    """A damping that makes H + λI (and H[T,T] + λI) positive definite, so CG applies."""
    _, model, hdata, _ = tiny
    low = float(torch.linalg.eigvalsh(dense_hessian(model, *hdata)).min())
    return max(0.05, -low + 0.05)


@pytest.mark.parametrize("method", ["if", "fif", "gif", "sif"])
@pytest.mark.parametrize("solver", [*ITERATIVE, "direct", "lowrank"])
def test_method_solver_matrix_matches_dense(tiny, method, solver):
    damping = damping_for_pd(tiny)
    index, expected = reference(tiny, method, damping)
    _, model, hdata, tdata = tiny
    out = gif.influence(
        model,
        hdata,
        tdata,
        method=method,
        params=index,
        damping=damping,
        solver=solver,
        rank=10_000,
        **TIGHT,
    )
    assert torch.equal(out.params, index)
    assert out.converged, out.note
    assert_rel_close(out.vector, expected)


@pytest.mark.parametrize("method", ["if", "fif", "gif", "sif"])
@pytest.mark.parametrize("solver", ["minres", "lsqr", "direct", "lowrank"])
def test_indefinite_hessian_small_damping(tiny, method, solver):
    _, model, hdata, _ = tiny
    h = dense_hessian(model, *hdata)
    eig = torch.linalg.eigvalsh(h)
    damping = 1e-3
    if method != "gif" and bool(((eig + damping).abs() < 1e-6).any()):
        pytest.skip("singular damped Hessian")  # never happens for these seeds; guards the reference
    index, expected = reference(tiny, method, damping)
    out = gif.influence(
        model,
        hdata,
        tiny[3],
        method=method,
        params=index,
        damping=damping,
        solver=solver,
        rank=10_000,
        **TIGHT,
    )
    assert_rel_close(out.vector, expected)
    assert bool((eig < 0).any()), "these tiny models must have indefinite Hessians"


@pytest.mark.parametrize("method", ["if", "fif", "gif"])
def test_neumann_agrees_when_it_converges(method):
    from .conftest import make_data, tiny_mlp

    tiny = ("mlp", tiny_mlp(), make_data("mlp", 24, 10), make_data("mlp", 5, 11))
    damping = 0.5
    index, expected = reference(tiny, method, damping)
    out = gif.influence(
        tiny[1],
        tiny[2],
        tiny[3],
        method=method,
        params=index,
        damping=damping,
        solver="neumann",
        tol=1e-12,
        max_iter=20000,
        normalizer=1.0,
        step=0.5,
    )
    assert_rel_close(out.vector, expected)


def test_default_path_and_diagnostics(tiny):
    _, model, hdata, tdata = tiny
    events = []
    out = gif.influence(model, hdata, tdata, damping=0.1, callback=events.append)
    assert out.method == "gif" and out.solver == "lsqr"
    assert out.params.numel() == out.vector.numel() == sum(p.numel() for p in model.parameters())
    assert out.hvps == 2 * out.iterations + 1 and out.grads == 1
    assert len(events) == out.iterations and events[-1].residual == pytest.approx(out.residual)
    diag = out.diagnostics()
    assert diag["converged"] == out.converged and diag["hvps"] == out.hvps
    assert diag["work"] == {"gradients": 1, "hvps": 2 * out.iterations + 1, "forward_evaluations": 0}
    if not out.converged:
        assert out.residual > 1e-4


def test_model_mode_and_weights_untouched(tiny):
    _, model, hdata, tdata = tiny
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gif.influence(model, hdata, tdata, damping=0.1, max_iter=3)
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_lowrank_fit_is_reusable():
    from .conftest import make_data, tiny_mlp

    model, hdata = tiny_mlp(), make_data("mlp", 24, 10)
    first = gif.influence(model, hdata, make_data("mlp", 5, 11), solver="lowrank", rank=10, damping=0.1)
    assert first.lowrank is not None and first.lowrank.rank == 10 and first.hvps >= 20
    second = gif.influence(
        model, hdata, make_data("mlp", 5, 12), solver="lowrank", lowrank=first.lowrank, damping=0.1
    )
    assert second.hvps == 0 and second.grads == 1
    assert second.lowrank is first.lowrank


def test_lowrank_save_load_roundtrip(tmp_path):
    from .conftest import make_data, tiny_mlp

    model, hdata, tdata = tiny_mlp(), make_data("mlp", 24, 10), make_data("mlp", 5, 11)
    fit = gif.influence(model, hdata, tdata, solver="lowrank", rank=8, damping=0.1).lowrank
    fit.meta["checkpoint"] = "abc"
    fit.save(str(tmp_path / "fit.safetensors"))
    loaded = gif.LowRankHessian.load(str(tmp_path / "fit.safetensors"))
    assert loaded.meta == {"checkpoint": "abc"} and loaded.hvps == fit.hvps
    a = gif.influence(model, hdata, tdata, solver="lowrank", lowrank=fit, damping=0.1).vector
    b = gif.influence(model, hdata, tdata, solver="lowrank", lowrank=loaded, damping=0.1).vector
    torch.testing.assert_close(a, b)


def test_argument_errors():
    from .conftest import make_data, tiny_mlp

    model, data = tiny_mlp(), make_data("mlp", 8, 1)
    with pytest.raises(InvalidArgumentError, match="unknown method"):
        gif.influence(model, data, data, method="xif")
    with pytest.raises(InvalidArgumentError, match="unknown solver"):
        gif.influence(model, data, data, solver="magic")
    with pytest.raises(InvalidArgumentError, match="damping"):
        gif.influence(model, data, data, damping=-1.0)
    with pytest.raises(InvalidArgumentError, match="damping"):
        gif.influence(model, data, data, damping=float("nan"))
    with pytest.raises(InvalidArgumentError, match="outside"):
        gif.influence(model, data, data, params=torch.tensor([0, 10_000]))
    with pytest.raises(InvalidArgumentError, match="duplicated"):
        gif.influence(model, data, data, params=torch.tensor([1, 1]))
    with pytest.raises(InvalidArgumentError, match="empty"):
        gif.influence(model, data, data, params=torch.tensor([], dtype=torch.long))
    # what torch cannot turn into indices, a select option gif.select does not take, a group
    # fraction that is no number (torch's or Python's TypeError / ValueError escaped before)
    for bad in (["a"], [None], [2**70]):
        with pytest.raises(InvalidArgumentError, match="`params` must be integer flat indices"):
            gif.influence(model, data, data, params=bad)
    with pytest.raises(InvalidArgumentError, match=r"`params`: unknown gif\.select option"):
        gif.influence(model, data, data, params={"strategy": "random", "ratoi": 0.5})
    for fraction in ("0.5", [0.5], 1.0, -0.1, float("nan")):
        with pytest.raises(InvalidArgumentError, match="`group_fraction` must be a number in"):
            gif.influence(model, data, data, method="sif", group_fraction=fraction)
    broken = tiny_mlp()
    with torch.no_grad():
        broken[0].weight[0, 0] = float("inf")
    with pytest.raises(NumericalError):
        gif.influence(broken, data, data)


def test_labels_the_default_loss_cannot_take_name_their_argument():
    """Under the default cross-entropy, labels outside the model's classes or of another dtype or
    shape are refused naming the data they came in (torch raised a bare IndexError / RuntimeError)."""
    from gif.errors import UnknownClassError

    from .conftest import make_data, tiny_mlp

    model, (x, y) = tiny_mlp(), make_data("mlp", 8, 1)
    classes = int(model(x[:1]).shape[-1])
    with pytest.raises(
        UnknownClassError, match=rf"`hessian_data` has labels .* outside the model's \[0, {classes}\)"
    ):
        gif.influence(model, (x, y + classes), (x, y))
    with pytest.raises(UnknownClassError, match="`target_data` has labels"):
        gif.influence(model, (x, y), (x, y - classes))
    for bad in (y.float(), y.int(), y > 0, y[:, None]):
        with pytest.raises(InvalidArgumentError, match="`hessian_data`: labels must be a 1-D int64 tensor"):
            gif.influence(model, (x, bad), (x, y))
    gif.influence(model, (x, y.float()), (x, y.float()), loss_fn=lambda z, t: ((z[:, 0] - t) ** 2).mean())
    wide = torch.cat([x, x], dim=-1)
    with pytest.raises(InvalidArgumentError, match="the model cannot run on `hessian_data`: RuntimeError"):
        gif.influence(model, (wide, y), (x, y))
    with pytest.raises(InvalidArgumentError, match="the model cannot run on `target_data`"):
        gif.influence(model, (x, y), (wide, y))


def test_second_order_note_thresholds():
    from gif.methods import second_order_note

    first = torch.tensor([3.0, 4.0])  # norm 5
    assert second_order_note(first, torch.tensor([0.0, 4.0])) == ""
    assert "3.0x the first-order one" in second_order_note(first, torch.tensor([9.0, 12.0]))


@pytest.mark.parametrize("solver", ["minres", "direct", "lowrank"])
@pytest.mark.parametrize("fraction", [0.02, 0.95])
def test_sif_says_when_its_correction_dominates(tiny, solver, fraction):
    """The note appears exactly when ‖z₂‖ > ‖z‖ by the dense reference (z = (H+λI)⁻¹g,
    z₂ = p/(1−p)·(H+λI)⁻¹(H − H_U)z)."""
    _, model, hdata, tdata = tiny
    damping = damping_for_pd(tiny)
    h, g, h_u = dense_hessian(model, *hdata), dense_gradient(model, *tdata), dense_hessian(model, *tdata)
    inverse = torch.linalg.inv(h + damping * torch.eye(h.shape[0], dtype=h.dtype, device=h.device))
    z = inverse @ g
    ratio = float((fraction / (1 - fraction) * inverse @ ((h - h_u) @ z)).norm() / z.norm())
    out = gif.influence(
        model,
        hdata,
        tdata,
        method="sif",
        params=selected(h.shape[0]),
        damping=damping,
        solver=solver,
        group_fraction=fraction,
        rank=10_000,
        **TIGHT,
    )
    assert (ratio > 1.0) == (fraction > 0.5), ratio  # both branches are exercised
    assert ("second-order term is" in out.note) == (ratio > 1.0), (ratio, out.note)
    if ratio > 1.0:
        assert f"{ratio:.1f}x" in out.note


def test_undamped_gif_at_its_defaults_stops_at_the_accuracy_of_its_sampled_hessian(tiny):
    """λ = 0: min ‖H[:,T] x − g‖ over a Hessian averaged over m samples stops once x is the exact
    solution for a matrix within ≈ 1/√m of H[:,T] (checked on the dense float64 Hessian)."""
    _, model, hdata, tdata = tiny
    index = selected(sum(p.numel() for p in model.parameters()))
    out = gif.influence(model, hdata, tdata, method="gif", params=index)
    accuracy = len(hdata[1]) ** -0.5
    assert out.converged and out.iterations < 100 and "accuracy of the data" in out.note
    a, g = dense_hessian(model, *hdata)[:, index], dense_gradient(model, *tdata)
    r = g - a @ out.vector
    relative_e = float((a.T @ r).norm() / r.norm() / a.norm())  # ‖E‖_F/‖A‖_F, E = −r rᵀA/‖r‖²
    assert relative_e <= 2 * accuracy
    # the damped default of edits is well posed and still solved to `tol`
    damped = gif.influence(model, hdata, tdata, method="gif", params=index, damping=0.01)
    assert damped.converged and damped.residual <= 1e-4 and damped.note == ""
