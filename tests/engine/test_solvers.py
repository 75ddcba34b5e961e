"""Solvers on explicit float64 matrices, against torch.linalg."""

import math

import numpy as np
import pytest
import torch

import gif
from gif.errors import Cancelled, InvalidArgumentError
from gif.solvers import Monitor, Problem, fit_lowrank, solve


def spd(n, cond, seed=0):
    q, _ = torch.linalg.qr(
        torch.randn(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    )
    return q @ torch.diag(torch.logspace(0, math.log10(cond), n, dtype=torch.float64)) @ q.T


def indefinite(n, seed=0):
    q, _ = torch.linalg.qr(
        torch.randn(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    )
    eig = torch.linspace(-3, 5, n, dtype=torch.float64)
    eig[eig.abs() < 0.3] = 0.5
    return q @ torch.diag(eig) @ q.T


def rhs(n, seed=1):
    return torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def symmetric(a, b, damping=0.0):
    return Problem("symmetric", lambda x: a @ x, lambda x: a @ x, b, damping, a.shape[1])


def lstsq_problem(a, b, damping=0.0):
    return Problem("lstsq", lambda x: a @ x, lambda y: a.T @ y, b, damping, a.shape[1])


def run(problem, name, tol=1e-12, max_iter=500, **kw):
    return solve(problem, name, tol=tol, max_iter=max_iter, monitor=Monitor(), **kw)


@pytest.mark.parametrize("name", ["cg", "minres", "lsqr"])
@pytest.mark.parametrize("damping", [0.0, 0.3])
def test_spd_systems(name, damping):
    a, b = spd(30, 1e3), rhs(30)
    out = run(symmetric(a, b, damping), name)
    expected = torch.linalg.solve(a + damping * torch.eye(30, dtype=torch.float64), b)
    assert out.converged and out.residual <= 1e-10
    torch.testing.assert_close(out.x, expected, rtol=1e-8, atol=1e-10)
    true_residual = (
        torch.linalg.norm(b - (a + damping * torch.eye(30, dtype=torch.float64)) @ out.x) / b.norm()
    )
    assert float(true_residual) <= 1e-9


@pytest.mark.parametrize("name", ["minres", "lsqr"])
def test_indefinite_systems(name):
    a, b = indefinite(25), rhs(25)
    out = run(symmetric(a, b), name)
    assert out.converged
    torch.testing.assert_close(out.x, torch.linalg.solve(a, b), rtol=1e-8, atol=1e-10)


def test_cg_reports_indefiniteness_instead_of_failing_silently():
    out = run(symmetric(indefinite(25), rhs(25)), "cg")
    assert not out.converged
    assert "non-positive curvature" in out.note


def test_cg_negative_curvature_at_first_step_returns_steepest_descent():
    a = -spd(10, 10.0)  # negative definite: the very first pᵀAp < 0
    b = rhs(10)
    out = run(symmetric(a, b), "cg")
    assert not out.converged and out.iterations == 0
    cos = float(out.x @ b / (out.x.norm() * b.norm()))
    assert cos == pytest.approx(1.0) and float(out.x.norm()) > 0
    true = float(torch.linalg.norm(b - a @ out.x) / b.norm())
    assert out.residual == pytest.approx(true)


@pytest.mark.parametrize("name", ["cg", "minres", "lsqr"])
@pytest.mark.parametrize("damping", [0.0, 0.5])
def test_least_squares(name, damping):
    a = torch.randn(40, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    b = rhs(40)
    out = run(lstsq_problem(a, b, damping), name)
    expected = torch.linalg.solve(a.T @ a + damping * torch.eye(12, dtype=torch.float64), a.T @ b)
    assert out.converged
    torch.testing.assert_close(out.x, expected, rtol=1e-8, atol=1e-10)
    # the reported residual is the normal-equation residual
    normal = a.T @ (b - a @ out.x) - damping * out.x
    assert float(normal.norm() / (a.T @ b).norm()) <= 1e-9


def _ill_posed(n=40, seed=7):
    """A tall least-squares problem with singular values spread over 1e0..1e-8 and a right-hand
    side partly outside the range: its optimum lies far out along the tiny directions."""
    gen = torch.Generator().manual_seed(seed)
    q1, _ = torch.linalg.qr(torch.randn(2 * n, 2 * n, dtype=torch.float64, generator=gen))
    q2, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=gen))
    a = (q1[:, :n] * torch.logspace(0, -8, n, dtype=torch.float64)) @ q2.T
    return a, torch.randn(2 * n, dtype=torch.float64, generator=gen)


def test_lsqr_says_when_an_undamped_least_squares_problem_is_ill_posed():
    a, b = _ill_posed()
    out = run(lstsq_problem(a, b), "lsqr", tol=1e-10, max_iter=15)
    assert not out.converged
    assert "ill-conditioned" in out.note and "damping" in out.note
    condition = float(out.note.split("condition estimate ")[1].split(",")[0])
    assert condition > 1e2  # the estimate grows with the directions taken; the true cond is 1e8
    # damped, the same problem is well posed: it converges and says nothing
    damped = run(lstsq_problem(a, b, 1e-2), "lsqr", tol=1e-8, max_iter=500)
    assert damped.converged and damped.note == ""
    # a capped damped solve is merely unconverged: no ill-posedness claim
    assert run(lstsq_problem(a, b, 1e-2), "lsqr", tol=1e-14, max_iter=3).note == ""


def test_the_ill_posed_note_reaches_an_influence_result():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).double()
    x = torch.randn(30, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (30,))
    out = gif.influence(model, (x, y), (x[:5], y[:5]), method="gif", tol=1e-12, max_iter=1)
    assert not out.converged and "ill-conditioned" in out.note


def backward_error(a, b, x):
    """x is the exact least-squares solution of A + E, E = −r rᵀA/‖r‖² (r = b − Ax): returns
    ‖E‖_F/‖A‖_F and the normal-equation residual of the perturbed problem (≈ 0)."""
    r = b - a @ x
    e = -torch.outer(r, a.T @ r) / (r @ r)
    perturbed = a + e
    normal = perturbed.T @ (b - perturbed @ x)
    return float(e.norm() / a.norm()), float(normal.norm() / (perturbed.T @ b).norm())


@pytest.mark.parametrize("accuracy", [1e-2, 1e-4])
def test_lsqr_stops_at_the_accuracy_of_the_data(accuracy):
    a, b = _ill_posed()
    problem = lstsq_problem(a, b)
    problem.accuracy = accuracy
    out = run(problem, "lsqr", tol=1e-12, max_iter=400)
    assert out.converged and "accuracy of the data" in out.note
    relative_e, perturbed_normal = backward_error(a, b, out.x)
    # x solves, to rounding, a least-squares problem whose matrix is within ≈ `accuracy` of A (the
    # stop uses LSQR's estimate of ‖A‖_F, which loss of orthogonality can inflate a little) ...
    assert relative_e <= 2 * accuracy and perturbed_normal < 1e-8
    # ... and the stop is not premature: one iteration earlier it did not
    earlier = run(problem, "lsqr", tol=1e-12, max_iter=out.iterations - 1)
    assert backward_error(a, b, earlier.x)[0] > accuracy / 10
    # without an accuracy the same solve runs on to its tolerance or cap
    exact = run(lstsq_problem(a, b), "lsqr", tol=1e-12, max_iter=out.iterations + 5)
    assert exact.iterations == out.iterations + 5 and "accuracy" not in exact.note


def test_lsqr_accuracy_stop_accounts_for_damping_rows():
    a, b = _ill_posed()
    problem = lstsq_problem(a, b, 1e-3)
    problem.accuracy = 1e-3
    out = run(problem, "lsqr", tol=1e-14, max_iter=400)
    # the damped problem is min ‖[A; √λI]x − [b; 0]‖: its backward error is what the stop bounds
    n = a.shape[1]
    a_bar = torch.cat([a, math.sqrt(1e-3) * torch.eye(n, dtype=a.dtype)])
    b_bar = torch.cat([b, torch.zeros(n, dtype=b.dtype)])
    assert out.converged and backward_error(a_bar, b_bar, out.x)[0] <= 2e-3


def test_lsqr_residual_estimate_tracks_truth():
    a = torch.randn(60, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    b = rhs(60)
    out = run(lstsq_problem(a, b, 0.2), "lsqr", tol=1e-20, max_iter=8)
    normal = a.T @ (b - a @ out.x) - 0.2 * out.x
    truth = float(normal.norm() / (a.T @ b).norm())
    assert out.residual == pytest.approx(truth, rel=1e-6)


@pytest.mark.parametrize("name", ["cg", "minres", "lsqr"])
def test_symmetric_residual_is_the_true_relative_residual(name):
    a, b = spd(40, 1e4), rhs(40)
    out = run(symmetric(a, b, 0.1), name, tol=1e-20, max_iter=6)
    truth = float(torch.linalg.norm(b - (a + 0.1 * torch.eye(40, dtype=torch.float64)) @ out.x) / b.norm())
    assert out.residual == pytest.approx(truth, rel=1e-6)


def test_unconverged_is_reported():
    a, b = spd(50, 1e6), rhs(50)
    for name in ("cg", "minres", "lsqr", "neumann"):
        out = run(symmetric(a, b), name, tol=1e-12, max_iter=3)
        assert not out.converged, name
        assert out.residual > 1e-12


def paper_iphvp(a, b, tol, max_iter, normalizer, step):
    """Numpy transcription of the official iteration for a least-squares A (docs/method.md,
    "The paper's solver")."""
    a, b = a.numpy(), b.numpy()
    c = normalizer
    while True:
        rhs_ = a.T @ b / c**2
        x = rhs_.copy()
        prev, diverged = np.inf, False
        for k in range(max_iter):
            x_new = rhs_ + x - a.T @ (a @ x) / c**2
            diff = np.linalg.norm(x_new - x)
            x = x_new
            if k % 2 == 0:
                if diff > prev:
                    diverged = True
                    break
                prev = diff
            if diff <= tol * math.sqrt(a.shape[1]):
                break
        if not diverged:
            return x, c
        c += step


def test_neumann_reproduces_the_papers_iteration():
    a = 2.0 * torch.randn(30, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    b = rhs(30)
    expected, c = paper_iphvp(a, b, tol=1e-9, max_iter=60, normalizer=1.0, step=3.0)
    out = run(lstsq_problem(a, b), "neumann", tol=1e-9, max_iter=60, normalizer=1.0, step=3.0)
    assert c > 1.0, "the test must exercise the divergence restart"
    assert f"c={c:g}" in out.note
    torch.testing.assert_close(out.x, torch.from_numpy(expected), rtol=1e-12, atol=1e-14)


def test_neumann_converges_to_least_squares():
    a = torch.randn(30, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    b = rhs(30)
    out = run(lstsq_problem(a, b), "neumann", tol=1e-9, max_iter=20000, normalizer=10.0, step=1.0)
    torch.testing.assert_close(
        out.x, torch.linalg.lstsq(a, b.unsqueeze(1)).solution.squeeze(1), rtol=1e-6, atol=1e-8
    )
    # The paper's stopping rule (small steps) fired, but `converged` is judged on the residual.
    assert "stopped by the paper's rule" in out.note
    assert out.residual < 1e-6 and out.converged == (out.residual <= 1e-9)


def test_progress_and_cancellation_every_iteration():
    a, b = spd(40, 1e4), rhs(40)
    seen = []
    out = solve(symmetric(a, b), "cg", tol=1e-14, max_iter=7, monitor=Monitor(seen.append))
    assert [e.iteration for e in seen] == list(range(1, out.iterations + 1))
    assert seen[0].stage == "solving" and seen[-1].residual == out.history[-1]
    for name in ("cg", "minres", "lsqr", "neumann"):
        calls = []

        def stop():
            calls.append(1)
            return len(calls) >= 3

        with pytest.raises(Cancelled):
            solve(symmetric(a, b), name, tol=1e-14, max_iter=100, monitor=Monitor(should_stop=stop))
        assert len(calls) == 3, name


def test_lowrank_exact_at_full_rank_and_top_k_by_magnitude():
    a = indefinite(20)
    fit = fit_lowrank(lambda v: a @ v, 20, rank=20, like=torch.zeros(20, dtype=torch.float64))
    rebuilt = fit.eigenvectors.T @ torch.diag(fit.eigenvalues) @ fit.eigenvectors
    torch.testing.assert_close(rebuilt, a, rtol=1e-8, atol=1e-9)
    top = fit_lowrank(lambda v: a @ v, 20, rank=3, steps=20, like=torch.zeros(20, dtype=torch.float64))
    eig = torch.linalg.eigvalsh(a)
    expected = eig[torch.argsort(eig.abs(), descending=True)[:3]]
    torch.testing.assert_close(top.eigenvalues, expected, rtol=1e-8, atol=1e-9)
    assert top.converged(1e-6)


def test_unknown_solver_and_bad_tolerances():
    p = symmetric(spd(5, 10), rhs(5))
    with pytest.raises(InvalidArgumentError, match="unknown solver"):
        run(p, "magic")
    with pytest.raises(InvalidArgumentError, match="tol > 0"):
        run(p, "cg", tol=0.0)
