"""``method="auto"`` (gif/method_choice.py): FIF on the head for a whole class, the verb's method
everywhere else, and the choice in the report."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

import gif
from gif._util import forward_hooks
from gif.errors import InvalidArgumentError
from gif.newton import VALIDATION_CARVED, VALIDATION_GIVEN, EditResult

from .conftest import BUILDERS, make_data

N = 90


def changed(model: nn.Module, edited: nn.Module) -> set[str]:
    return {n for n, p in edited.named_parameters() if not torch.equal(p, model.get_parameter(n))}


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_a_class_removal_by_default_is_fif_on_the_head(kind):
    model, train = BUILDERS[kind](), make_data(kind, N, 5)
    out = gif.remove(model, train, {"class": 2}, newton_steps=2)
    choice = out.report["method_choice"]
    assert (choice["requested"], choice["chosen"], choice["selection"]) == ("auto", "fif", "head")
    assert out.report["options"]["method"] == "fif" and out.report["options"]["selection"] == "head"
    assert out.report["options"]["damping"] == gif.config.EDIT_PRESETS["fif"]["damping"]
    head = out.report["head_features"]["layer"]
    assert changed(model, out.model) <= {f"{head}.weight", f"{head}.bias"}
    explicit = gif.remove(model, train, {"class": 2}, method="fif", selection="head", newton_steps=2)
    assert torch.equal(out.delta, explicit.delta) and "method_choice" not in explicit.report


def test_indices_that_are_exactly_one_class_are_a_class_removal():
    model, (x, y) = BUILDERS["mlp"](), make_data("mlp", N, 5)
    out = gif.remove(model, (x, y), torch.nonzero(y == 1).flatten(), newton_steps=1)
    assert out.report["method_choice"]["chosen"] == "fif"


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"selection": "highest_outputs"}, "names the parameters to change (selection)"),
        ({"ratio": 0.1}, "(ratio)"),
        ({"param_names": ["0.*"]}, "(param_names)"),
    ],
)
def test_a_request_that_names_its_parameters_gets_gif(options, reason):
    model, train = BUILDERS["mlp"](), make_data("mlp", N, 5)
    out = gif.remove(model, train, {"class": 2}, newton_steps=1, **options)
    assert out.report["method_choice"]["chosen"] == "gif" and reason in out.report["method_choice"]["reason"]
    assert out.report["options"]["method"] == "gif" and "head_features" not in out.report


def test_a_sample_removal_gets_gif_and_a_relabel_if():
    model, (x, y) = BUILDERS["mlp"](), make_data("mlp", N, 5)
    samples = gif.remove(model, (x, y), [0, 1, 2], newton_steps=1)
    assert samples.report["method_choice"]["chosen"] == "gif"
    assert "not of a whole class" in samples.report["method_choice"]["reason"]
    assert samples.report["options"]["damping"] == gif.config.EDIT_PRESETS["gif"]["damping"]
    rows = torch.tensor([0, 1])
    relabel = gif.relabel(model, (x, y), rows, (y[rows] + 1) % 3, newton_steps=1)  # the default: auto
    assert (
        relabel.report["method_choice"]["chosen"] == "if"
        and "head_first" not in relabel.report["method_choice"]
    )
    assert "fewer than 20 samples relabelled" in relabel.report["method_choice"]["reason"]
    explicit = gif.relabel(model, (x, y), rows, (y[rows] + 1) % 3, method="if", newton_steps=1)
    assert "method_choice" not in explicit.report and torch.equal(explicit.delta, relabel.delta)


def test_a_job_is_sized_for_the_whole_network_sample_its_request_can_take():
    """workers/sizing.py sizes an ``auto`` edit by its verb's fallback: a removal never takes IF's
    2,048 samples of the network's inputs (its head edit runs on features, else GIF's 512)."""
    from gif.method_choice import most_hessian_samples

    model, (x, y) = BUILDERS["mlp"](), make_data("mlp", 2_600, 5)
    auto = gif.EditConfig()
    removal = gif.remove(model, (x, y), [0, 1, 2], newton_steps=1)
    assert removal.report["hessian_samples"] == most_hessian_samples(auto, "remove") == 512
    rows = torch.tensor([0, 1])  # too few for the head: IF over the network
    relabel = gif.relabel(model, (x, y), rows, (y[rows] + 1) % 3, newton_steps=1, solver="cg")
    assert relabel.report["hessian_samples"] == most_hessian_samples(auto, "relabel") == 2_048
    assert most_hessian_samples(gif.EditConfig(hessian_samples=100), "relabel") == 100
    assert most_hessian_samples(gif.EditConfig(method="if"), "remove") == 2_048


class Scaled(nn.Module):
    """Logits that are not a Linear layer's output (scaled after it)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = BUILDERS["mlp"]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2.0 * self.body(x)


def test_without_a_linear_head_or_with_a_frozen_one_it_is_gif():
    train = make_data("mlp", N, 5)
    out = gif.remove(Scaled(), train, {"class": 2}, newton_steps=1)
    assert (
        out.report["method_choice"]["chosen"] == "gif"
        and "no Linear layer" in out.report["method_choice"]["reason"]
    )
    frozen = BUILDERS["mlp"]()
    frozen[2].requires_grad_(False)
    out = gif.remove(frozen, train, {"class": 2}, newton_steps=1)
    assert (
        out.report["method_choice"]["chosen"] == "gif" and "frozen" in out.report["method_choice"]["reason"]
    )


def test_forward_hooks_see_only_their_own_threads_passes():
    """Two threads computing with one model at once: each hook records its own thread's inputs."""
    model = nn.Linear(3, 2)
    seen: dict[str, list[torch.Tensor]] = {"a": [], "b": []}
    barrier = threading.Barrier(2)

    def work(name: str, value: float) -> None:
        with forward_hooks([(model, lambda m, args, out: seen[name].append(args[0]))]):
            barrier.wait()
            for _ in range(20):
                model(torch.full((1, 3), value))
            barrier.wait()

    threads = [threading.Thread(target=work, args=(n, v)) for n, v in (("a", 1.0), ("b", 2.0))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(seen["a"]) == len(seen["b"]) == 20
    assert all(bool((t == 1.0).all()) for t in seen["a"]) and all(bool((t == 2.0).all()) for t in seen["b"])


def _relabel(model, train, **options):
    y = train[1]
    rows = torch.tensor([0, 1, 2, 3])
    return gif.relabel(model, train, rows, (y[rows] + 1) % 3, newton_steps=2, **options)


@pytest.mark.parametrize("accept", [0.0, float("inf")])
def test_solver_auto_is_guarded_by_the_validation_objective(monkeypatch, accept):
    """K-FAC kept when its validation objective reaches the threshold; else the method's own solver
    is run too and the edit with the higher objective kept, both runs' work counted."""
    from gif import method_choice

    model, train = BUILDERS["mlp"](), make_data("mlp", N, 5)
    kfac, cg = _relabel(model, train, solver="kfac"), _relabel(model, train, solver="cg")
    monkeypatch.setattr(method_choice, "ACCEPT_OBJECTIVE", accept)
    out = _relabel(model, train)  # the relabel default: solver="auto"
    guard = out.report["solver_choice"]["guard"]
    objective = {r.report["options"]["solver"]: r.report["metrics"]["after"]["objective"] for r in (kfac, cg)}
    if accept == 0.0:
        assert guard == {
            "threshold": 0.0,
            "objectives": {"kfac": objective["kfac"]},
            "accepted_by": "objective",
            "kept": "kfac",
        }
        assert torch.equal(out.delta, kfac.delta) and out.report["work"] == kfac.report["work"]
        return
    assert guard["objectives"] == objective
    best = max(
        (kfac, cg), key=lambda r: (r.report["metrics"]["after"]["objective"], r is kfac)
    )  # a tie keeps K-FAC
    assert guard["kept"] == out.report["solver_choice"]["chosen"] == best.report["options"]["solver"]
    assert torch.equal(out.delta, best.delta)
    assert out.report["work"] == {
        k: kfac.report["work"][k] + cg.report["work"][k] for k in kfac.report["work"]
    }
    assert out.report["hvps"] == out.report["work"]["hvps"] > 0


def test_the_relabel_fallback_runs_cg_on_the_gauss_newton_matrix_truncated_at_ten_iterations():
    """The ``if`` preset (what the guard falls back to): CG on Jᵀ H_z J, at most 10 iterations per
    solve; a request's own ``curvature`` / ``max_iter`` win, and the other methods keep the Hessian."""
    model, train = BUILDERS["cnn"](), make_data("cnn", N, 5)
    out = _relabel(model, train, method="if", damping=1e-4, tol=1e-12, correction_tol=1e-12)
    options, steps = out.report["options"], out.report["newton_steps"]
    assert (options["solver"], options["curvature"], options["max_iter"]) == ("cg", "gauss_newton", 10)
    assert [s["solver"]["iterations"] for s in steps] == [10] * len(steps)  # tol unreachable: the cap
    assert all(s["solver"]["hvps"] == 10 and not s["solver"]["converged"] for s in steps)
    own = _relabel(model, train, method="if", damping=1e-4, tol=1e-12, correction_tol=1e-12, max_iter=12,
                   curvature="hessian")  # fmt: skip
    assert (own.report["options"]["curvature"], own.report["options"]["max_iter"]) == ("hessian", 12)
    assert not torch.equal(own.delta, out.delta)
    for method in ("gif", "fif", "sif"):
        config = gif.EditConfig(method=method)
        assert (config.curvature, config.max_iter) == ("hessian", 100), method


def test_a_solver_named_by_the_request_is_not_guarded():
    model, train = BUILDERS["mlp"](), make_data("mlp", N, 5)
    assert "solver_choice" not in _relabel(model, train, solver="kfac").report


def _relabel_many(model, train, **options):
    """A relabel of 24 samples: enough for the head-first default's held-out check."""
    y = train[1]
    rows = torch.arange(0, 72, 3)
    return rows, gif.relabel(model, train, rows, (y[rows] + 1) % 3, newton_steps=2, **options)


def _work_sum(*reports):
    return {k: sum(r["work"][k] for r in reports) for k in reports[0]["work"]}


def test_a_relabel_keeps_the_head_edit_when_it_generalises(monkeypatch):
    from gif import method_choice

    monkeypatch.setattr(method_choice, "ACCEPT_OBJECTIVE", 0.0)
    monkeypatch.setattr(method_choice, "MAX_GENERALISATION_GAP", 1.0)
    model, train = BUILDERS["mlp"](), make_data("mlp", N, 5)
    _, out = _relabel_many(model, train)
    choice = out.report["method_choice"]
    assert (choice["chosen"], choice["selection"], choice["head_first"]["kept"]) == ("fif", "head", "fif")
    check = choice["head_first"]["held_out_check"]
    assert check["samples"] == [18, 6] and check["gap"] == pytest.approx(check["edited"] - check["held_out"])
    _, head = _relabel_many(model, train, method="fif", selection="head", solver="minres")
    assert torch.equal(out.delta, head.delta)
    assert changed(model, out.model) <= {"2.weight", "2.bias"} and out.report["options"]["solver"] == "minres"
    assert (
        out.report["work"]["forward_evaluations"] > head.report["work"]["forward_evaluations"]
    )  # + the check


@pytest.mark.parametrize(("accept", "gap", "checked"), [(float("inf"), 1.0, False), (0.0, -1.0, True)])
def test_a_relabel_falls_back_to_if_when_the_head_edit_falls_short(monkeypatch, accept, gap, checked):
    """Below the objective threshold (no check run) or failing the held-out check, the edit is IF's
    (solver auto, guarded) and counts the head attempt's work too."""
    from gif import method_choice

    monkeypatch.setattr(method_choice, "ACCEPT_OBJECTIVE", accept)
    monkeypatch.setattr(method_choice, "MAX_GENERALISATION_GAP", gap)
    model, train = BUILDERS["mlp"](), make_data("mlp", N, 5)
    _, out = _relabel_many(model, train)
    choice = out.report["method_choice"]
    assert (choice["chosen"], choice["head_first"]["kept"]) == ("if", "if")
    assert ("held_out_check" in choice["head_first"]) is checked
    assert out.report["options"]["method"] == "if" and "head_features" not in out.report
    _, fallback = _relabel_many(model, train, method="if")
    # the head at FIF's own damping, then at each retry damping
    heads = [
        _relabel_many(model, train, method="fif", selection="head", solver="minres", damping=d)[1].report
        for d in (0.1, *method_choice.HEAD_RETRY_DAMPINGS)
    ]
    assert [v["damping"] for v in (*choice["head_first"]["earlier"], choice["head_first"])] == [
        pytest.approx(d) for d in (0.1, *method_choice.HEAD_RETRY_DAMPINGS)
    ]
    assert torch.equal(out.delta, fallback.delta)
    if not checked:
        assert out.report["work"] == _work_sum(fallback.report, *heads)
    else:
        assert out.report["work"]["gradients"] > _work_sum(fallback.report, *heads)["gradients"]


def test_the_held_out_check_is_the_edit_without_the_held_out_samples(monkeypatch):
    """The check's figures are those of the same head edit on the training data with the held-out
    relabelled samples dropped, evaluated on them and on the samples it relabelled."""
    from gif import method_choice

    monkeypatch.setattr(method_choice, "ACCEPT_OBJECTIVE", 0.0)
    model, (x, y) = BUILDERS["mlp"](), make_data("mlp", N, 5)
    rows, out = _relabel_many(model, (x, y), seed=3)
    check = out.report["method_choice"]["head_first"]["held_out_check"]
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(3))
    held, kept = torch.sort(order[:6]).values, torch.sort(order[6:]).values
    keep = torch.ones(N, dtype=torch.bool)
    keep[rows[held]] = False
    position = torch.cumsum(keep, 0) - 1
    new = (y[rows] + 1) % 3
    solver = out.report["options"]["solver"]  # the check runs with the solver the head edit kept
    reduced = gif.relabel(
        model, (x[keep], y[keep]), position[rows[kept]], new[kept], method="fif", selection="head",
        newton_steps=2, seed=3, solver=solver,
    )  # fmt: skip
    edited = gif.metrics.evaluate(reduced.model, x[rows[kept]], new[kept]).accuracy
    held_out = gif.metrics.evaluate(reduced.model, x[rows[held]], new[held]).accuracy
    assert (check["edited"], check["held_out"]) == pytest.approx((edited, held_out))


def test_a_relabel_given_a_whole_network_fit_skips_the_head():
    model, train = BUILDERS["mlp"](), make_data("mlp", N, 5)
    rows, fitted = _relabel_many(model, train, method="if", solver="lowrank")
    assert fitted.lowrank is not None
    y = train[1]
    out = gif.relabel(
        model, train, rows, (y[rows] + 1) % 3, newton_steps=2, solver="lowrank", lowrank=fitted.lowrank
    )
    choice = out.report["method_choice"]
    assert choice["chosen"] == "if" and "lowrank fit" in choice["reason"] and "head_first" not in choice
    assert torch.equal(out.delta, fitted.delta)


def test_a_class_removal_given_a_whole_network_fit_skips_the_head():
    """The fit is the whole network's curvature: the edit that uses it is the fallback's, not FIF
    on the head (which ignored the fit)."""
    model, train = BUILDERS["mlp"](), make_data("mlp", N, 5)
    fitted = gif.remove(model, train, {"class": 1}, method="gif", solver="lowrank", newton_steps=1)
    out = gif.remove(model, train, {"class": 1}, solver="lowrank", newton_steps=1, lowrank=fitted.lowrank)
    choice = out.report["method_choice"]
    assert choice["chosen"] == "gif" and "lowrank fit" in choice["reason"]
    assert torch.equal(out.delta, fitted.delta)


def test_a_fit_the_edits_solver_would_not_use_is_refused():
    """A ``lowrank`` fit beside another solver was ignored without a word."""
    model, train = BUILDERS["mlp"](), make_data("mlp", N, 5)
    fit = gif.remove(model, train, [1, 2], method="gif", solver="lowrank", newton_steps=1).lowrank
    for solver in (None, "cg", "kfac", "auto"):
        options = {} if solver is None else {"solver": solver}
        with pytest.raises(InvalidArgumentError, match="a `lowrank` fit is used by solver='lowrank' only"):
            gif.remove(model, train, [1, 2], lowrank=fit, **options)
        with pytest.raises(InvalidArgumentError, match="pass that solver with it"):
            gif.relabel(model, train, [1], [(int(train[1][1]) + 1) % 3], lowrank=fit, **options)


def test_an_edit_that_runs_twice_reports_done_once_at_the_end(monkeypatch):
    """The head attempt and the guard's first run are tentative: ``done`` comes once, last."""
    from gif import method_choice

    monkeypatch.setattr(method_choice, "ACCEPT_OBJECTIVE", float("inf"))  # head rejected, then K-FAC and CG
    model, train = BUILDERS["mlp"](), make_data("mlp", N, 5)
    events = []
    _, out = _relabel_many(model, train, callback=events.append)
    assert (
        out.report["method_choice"]["head_first"]["kept"] == "if" and "guard" in out.report["solver_choice"]
    )
    stages = [e.stage for e in events]
    assert stages.count("done") == 1 and stages[-1] == "done"
    assert stages.count("selecting_parameters") == 4  # the head at two dampings, K-FAC and CG runs
    # each run's events say which attempt of the four they belong to; ``done`` is the request's
    runs = [(e.attempt, e.attempts) for e in events if e.stage == "selecting_parameters"]
    assert runs == [(1, 4), (2, 4), (3, 4), (4, 4)]
    attempts = [e.attempt for e in events[:-1]]
    assert None not in attempts and attempts == sorted(attempts)
    assert (events[-1].attempt, events[-1].attempts) == (None, None)


def test_an_edit_that_runs_once_reports_no_attempts():
    model, train = BUILDERS["mlp"](), make_data("mlp", N, 5)
    events = []
    _relabel_many(model, train, method="if", solver="cg", callback=events.append)
    assert events and all(e.attempt is None and e.attempts is None for e in events)


def test_a_head_edit_that_took_no_step_is_not_kept():
    """Unit test of ``head_first`` alone (stub runs): an unmoved head falls back without a check."""
    from gif import method_choice
    from gif.config import EditConfig

    def result(method: str, scale: float) -> EditResult:
        report = {
            "options": {"method": method, "solver": "minres", "selection": None},
            "newton_steps": [{"step": {"scale": scale}}],
            "metrics": {"before": {"validation": {"accuracy": 1.0}}, "after": {"objective": 1.0}},
            "work": {"gradients": 1, "hvps": 2, "forward_evaluations": 3},
            "timings": {"solve": 0.5, "features": 0.25} if method == "fif" else {"solve": 0.5},
        }
        return EditResult(nn.Linear(1, 1), torch.zeros(1), torch.zeros(1), report)

    def run(config):
        return result(config.method, 0.0)

    def check(config):
        raise AssertionError("no check for a head that did not move")

    choice: dict = {"fallback": "if"}
    head, fallback = EditConfig(method="fif", selection="head"), EditConfig(method="if")
    out = method_choice.head_first(run, check, head, fallback, choice)
    assert out.report["options"]["method"] == "if" and choice["chosen"] == "if"
    assert choice["head_first"] == {
        "tier": "head",
        "damping": pytest.approx(0.1),
        "objective": 1.0,
        "accepted": "objective",
        "threshold": pytest.approx(0.98),
        "moved": False,
        "kept": "if",
    }
    assert out.report["work"] == {"gradients": 2, "hvps": 4, "forward_evaluations": 6}
    # both runs' time, the head's features (computed once per request) once
    assert out.report["timings"] == {"solve": 1.0, "features": 0.25}


def _stub_result(method: str, damping: float, objective: float) -> EditResult:
    """An edit's report as ``head_first`` reads it: a moved edit with ``objective``."""
    report = {
        "options": {"method": method, "solver": "minres", "selection": "head", "damping": damping},
        "newton_steps": [{"step": {"scale": 1.0}}],
        "metrics": {"before": {"validation": {"accuracy": 1.0}}, "after": {"objective": objective}},
        "work": {"gradients": 1, "hvps": 2, "forward_evaluations": 3},
        "timings": {"solve": 0.5, "features": 0.25} if method == "fif" else {"solve": 0.5},
    }
    return EditResult(nn.Linear(1, 1), torch.zeros(1), torch.zeros(1), report)


def test_a_rejected_head_is_tried_again_at_the_next_damping_before_the_fallback():
    """``head_first`` with ``dampings``: a head attempt that falls short is retried at each
    damping in turn; the first kept one is returned with every attempt's work, and the verdicts
    of the rejected attempts are recorded under ``earlier``."""
    from gif import method_choice
    from gif.config import EditConfig

    ran, checked = [], []

    def run(config):
        ran.append((config.method, config.damping))
        return _stub_result(config.method, config.damping, 0.99 if config.damping == 0.3 else 0.9)

    def check(config):
        checked.append(config.damping)
        return {"edited": 0.97, "held_out": 0.95, "samples": [30, 10], "work": {"gradients": 0, "hvps": 1,
                "forward_evaluations": 1}, "timings": {"solve": 0.1}}  # fmt: skip

    choice: dict = {"fallback": "if"}
    head, fallback = EditConfig(method="fif", selection="head"), EditConfig(method="if")
    out = method_choice.head_first(run, check, head, fallback, choice, (0.3,))
    assert ran == [("fif", 0.1), ("fif", 0.3)] and checked == [0.3]  # no fallback run
    assert out.report["options"]["damping"] == 0.3 and choice["head_first"]["kept"] == "fif"
    assert choice["head_first"]["damping"] == pytest.approx(0.3)
    assert choice["head_first"]["held_out_check"]["gap"] == pytest.approx(0.02)
    (earlier,) = choice["head_first"]["earlier"]
    assert earlier["damping"] == pytest.approx(0.1) and earlier["accepted"] is None
    assert "held_out_check" not in earlier  # rejected on its objective: no check run
    # two head runs and the check
    assert out.report["work"] == {"gradients": 2, "hvps": 5, "forward_evaluations": 7}
    assert out.report["timings"] == {"solve": pytest.approx(1.1), "features": 0.25}

    # every damping rejected: the fallback, with every head attempt's work and both verdicts
    ran.clear()
    choice = {"fallback": "if"}
    out = method_choice.head_first(run, check, head, fallback, choice, (0.05,))
    assert ran == [("fif", 0.1), ("fif", 0.05), ("if", 0.03)]
    assert choice["chosen"] == "if" and choice["head_first"]["kept"] == "if"
    assert [choice["head_first"]["damping"], choice["head_first"]["earlier"][0]["damping"]] == [
        pytest.approx(0.05),
        pytest.approx(0.1),
    ]
    assert out.report["work"] == {"gradients": 3, "hvps": 6, "forward_evaluations": 9}


def test_the_last_layers_are_tried_after_the_head_their_check_first():
    """``head_first`` with ``last_layers`` (stub runs): tried once every head attempt is rejected;
    its held-out check runs first (giving up as the attempt does), and only where that passes
    does the attempt run, kept if it reaches the bar; every attempt's and check's work counts.
    Where it falls short, the fallback runs and the verdicts of all three are recorded."""
    from gif import method_choice
    from gif.config import EditConfig

    ran, checked = [], []
    figures = {"head": 0.9, "last": 0.99, "check": 0.975, "gap": 0.01}

    def run(config):
        tier = "last" if config.param_names else "head"
        ran.append(tier if config.method == "fif" else config.method)
        result = _stub_result(config.method, config.damping, figures.get(tier, 0.95))
        result.report["options"]["param_names"] = config.param_names
        return result

    def check(config):
        checked.append((config.param_names, config.give_up_objective))
        return {"edited": 0.97, "held_out": 0.97 - figures["gap"], "samples": [30, 10], "objective": figures["check"],
                "newton_steps": 2, "work": {"gradients": 0, "hvps": 1, "forward_evaluations": 1},
                "timings": {"solve": 0.1}}  # fmt: skip

    head, fallback = EditConfig(method="fif", selection="head"), EditConfig(method="if")
    last = method_choice.last_layers_config(EditConfig(method="auto", solver="auto"), ["4", "6"])

    def relabel() -> tuple[EditResult, dict]:
        ran.clear(), checked.clear()
        choice: dict = {"fallback": "if"}
        return method_choice.head_first(run, check, head, fallback, choice, (0.3,), last), choice

    out, choice = relabel()
    assert ran == ["head", "head", "last"]
    assert checked == [
        (("4.*", "6.*"), method_choice.LAST_LAYERS_GIVE_UP)
    ]  # the check gives up as the attempt
    assert (choice["chosen"], choice["param_names"], choice["head_first"]["kept"]) == (
        "fif",
        ["4.*", "6.*"],
        "fif",
    )
    verdict = choice["head_first"]
    assert (verdict["tier"], verdict["params"], verdict["ran"], verdict["accepted"]) == (
        "last_layers",
        ["4.*", "6.*"],
        True,
        "objective",
    )
    assert verdict["newton_steps"] == 1 and verdict["held_out_check"]["gap"] == pytest.approx(0.01)
    assert [v["tier"] for v in verdict["earlier"]] == ["head", "head"]
    assert out.report["work"] == {"gradients": 3, "hvps": 7, "forward_evaluations": 10}

    figures["last"] = 0.97  # the attempt below the bar: the fallback
    out, choice = relabel()
    assert ran == ["head", "head", "last", "if"] and len(checked) == 1
    assert (choice["chosen"], choice["head_first"]["kept"], choice["head_first"]["tier"]) == (
        "if",
        "if",
        "last_layers",
    )
    assert "param_names" not in choice and len(choice["head_first"]["earlier"]) == 2
    assert out.report["work"] == {"gradients": 4, "hvps": 9, "forward_evaluations": 13}

    # the check does not generalise, gives up, or falls more than the slack short of the bar
    for screened in (
        {"gap": 0.2},
        {"check": 0.5},
        {"check": 0.98 - method_choice.LAST_LAYERS_CHECK_SLACK - 1e-3},
    ):
        figures.update({"last": 0.99, "check": 0.975, "gap": 0.01, **screened})
        out, choice = relabel()
        assert ran == ["head", "head", "if"] and len(checked) == 1  # the attempt itself never ran
        assert choice["head_first"]["ran"] is False and choice["chosen"] == "if"
        assert out.report["work"] == {"gradients": 3, "hvps": 7, "forward_evaluations": 10}


def test_a_relabel_whose_head_is_rejected_tries_the_last_layers_on_their_features(monkeypatch):
    """A three-layer MLP whose head attempts are rejected: the relabel runs FIF over its last two
    layers (on their features), the same edit as that FIF asked for by name, and keeps it."""
    from gif import method_choice

    monkeypatch.setattr(
        method_choice,
        "accepted",
        lambda report: None if report["options"]["selection"] == "head" else "objective",
    )
    monkeypatch.setattr(method_choice, "MAX_GENERALISATION_GAP", 1.0)
    # a toy's objective: its check never gives up nor falls short of the bar
    monkeypatch.setattr(method_choice, "LAST_LAYERS_GIVE_UP", 0.0)
    monkeypatch.setattr(method_choice, "LAST_LAYERS_CHECK_SLACK", 1.0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    train = make_data("mlp", N, 5)
    events = []
    rows, out = _relabel_many(model, train, callback=events.append)
    choice = out.report["method_choice"]
    assert (choice["chosen"], choice["head_first"]["tier"], choice["param_names"]) == (
        "fif",
        "last_layers",
        ["2.*", "4.*"],
    )
    assert [v["tier"] for v in choice["head_first"]["earlier"]] == ["head", "head"]
    assert "held_out_check" in choice["head_first"]
    assert out.report["head_features"]["modules"] == ["2", "3", "4"]
    assert set() < changed(model, out.model) <= {"2.weight", "2.bias", "4.weight", "4.bias"}
    config = method_choice.last_layers_config(
        gif.EditConfig(method="auto", solver="auto", newton_steps=2), ["2", "4"]
    )
    explicit = gif.relabel(model, train, rows, (train[1][rows] + 1) % 3, config=config)
    assert torch.equal(out.delta, explicit.delta)
    # progress: two head attempts, the last layers', and the fallback's two runs at most
    assert {e.attempts for e in events[:-1]} == {5}
    assert [e.attempt for e in events if e.stage == "selecting_parameters"] == [1, 2, 3]


def test_a_further_relabel_whose_fallback_fit_is_cached_skips_the_last_layers(monkeypatch):
    """With the fallback's K-FAC fit in the cache (the first request fitted it), its solve is
    cheaper than an attempt over the last layers: a further request goes from the head to it."""
    from gif import method_choice

    monkeypatch.setattr(method_choice, "ACCEPT_OBJECTIVE", float("inf"))  # every attempt rejected
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x, y = make_data("mlp", N, 5)
    cache = gif.MemoryCache()
    rows, others = torch.arange(0, 72, 3), torch.arange(1, 73, 3)  # enough for the head-first default
    first = gif.relabel(model, (x, y), rows, (y[rows] + 1) % 3, newton_steps=1, cache=cache)
    choice = first.report["method_choice"]
    assert choice["head_first"]["tier"] == "last_layers" and "last_layers" not in choice
    assert first.report["solver_choice"]["guard"]["objectives"].keys() == {"kfac", "cg"}  # K-FAC fitted
    further = gif.relabel(model, (x, y), others, (y[others] + 1) % 3, newton_steps=1, cache=cache)
    choice = further.report["method_choice"]
    assert choice["last_layers"].startswith("not tried") and choice["head_first"]["tier"] == "head"
    assert further.report["cache"]["counts"]["kfac"]["hit"] >= 1


def test_the_last_layers_attempt_is_fif_over_them_with_the_if_presets_solve():
    from gif import method_choice
    from gif.config import EDIT_PRESETS, EditConfig

    config = method_choice.last_layers_config(EditConfig(method="auto", solver="auto"), ["3", "5"])
    solve = ("solver", "curvature", "damping", "max_iter", "correction_tol", "hvp_samples", "stop_objective",
             "stall_gain")  # fmt: skip
    assert {name: getattr(config, name) for name in solve} == {
        name: EDIT_PRESETS["if"][name] for name in solve
    }
    assert (config.method, config.ratio, config.param_names) == ("fif", 1.0, ("3.*", "5.*"))
    assert config.give_up_objective == method_choice.LAST_LAYERS_GIVE_UP
    assert config.hessian_samples == EDIT_PRESETS["fif"]["hessian_samples"]
    # what the request set is kept
    own = method_choice.last_layers_config(EditConfig(method="auto", solver="kfac", damping=0.2), ["3", "5"])
    assert (own.solver, own.damping) == ("kfac", 0.2)


def test_the_head_is_retried_only_where_the_request_left_damping_to_the_method():
    from gif import method_choice
    from gif.config import EditConfig

    assert method_choice.head_dampings(EditConfig()) == method_choice.HEAD_RETRY_DAMPINGS
    assert method_choice.head_dampings(EditConfig(damping=0.1)) == ()


def _metrics(objective, edited, val_before, val_after, source=VALIDATION_CARVED):
    """The parts of a relabel's report that ``accepted`` reads."""

    def state(obj, val, ed):
        return {"objective": obj, "validation": {"accuracy": val}, "edited_new_labels": {"accuracy": ed}}

    metrics = {"before": state(0.0, val_before, 0.0), "after": state(objective, val_after, edited)}
    return {"metrics": metrics, "validation_source": source}


def test_an_edit_is_accepted_on_its_objective_or_on_its_edited_samples_with_validation_kept():
    from gif.method_choice import accepted

    assert accepted(_metrics(0.985, 0.97, 1.0, 1.0)) == "objective"
    # validation with wrong labels (95.5% right before): F1 ≤ 0.977 whatever the edit does
    noisy = _metrics(0.970, 0.987, 0.955, 0.954)
    assert accepted(noisy) == "edited samples, validation kept"
    assert accepted(_metrics(0.955, 0.9525, 0.978, 0.959)) is None  # validation lost 1.9 points
    assert accepted(_metrics(0.968, 0.979, 0.955, 0.958)) is None  # edited samples short of the bar
    assert accepted(_metrics(0.970, 0.99, 0.955, 0.949)) is None  # lost more than the slack
    assert accepted({**noisy, "validation_source": VALIDATION_GIVEN}) is None  # held-out: the objective alone
    removal = {"before": {"objective": 0.0}, "after": {"objective": 0.97, "forget": {"accuracy": 0.0}}}
    assert accepted({"metrics": removal}) is None  # only the objective judges a removal


def test_the_edited_samples_rule_changes_nothing_where_validation_was_right_before():
    """Where at least 98.5% of the validation data was right before the edit, every edit the second
    rule accepts reaches the objective's bar already (an F1 is at least its smaller argument)."""
    from gif.method_choice import ACCEPT_OBJECTIVE, VALIDATION_SLACK, accepted
    from gif.metrics import f1

    grid = [i / 200 for i in range(150, 201)]
    for before in (v for v in grid if v >= ACCEPT_OBJECTIVE + VALIDATION_SLACK):
        for after in grid:
            for edited in grid:
                objective = f1(edited, after)
                if accepted(_metrics(objective, edited, before, after)) is not None:
                    assert objective >= ACCEPT_OBJECTIVE - 1e-12


def test_the_head_first_verdict_records_what_it_was_judged_on():
    model, train = BUILDERS["mlp"](), make_data("mlp", N, 5)
    _, out = _relabel_many(model, train)
    verdict = out.report["method_choice"]["head_first"]
    assert set(verdict) >= {"objective", "accepted", "edited", "validation", "threshold", "moved"}
    assert len(verdict["validation"]) == 2 and 0.0 <= verdict["edited"] <= 1.0
