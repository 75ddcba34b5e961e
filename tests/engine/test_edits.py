"""gif.remove / gif.relabel: exact Newton steps against dense algebra, reports, errors, quality."""

import pytest
import torch
from torch import nn

import gif
from gif.errors import Cancelled, IndexOutOfRangeError, InvalidArgumentError, UnknownClassError
from gif.params import ParamSpace

from .reference import dense_gauss_newton, dense_gradient, dense_hessian, reference_influence


def tiny_problem(n=40, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double().eval()
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=gen)
    val = (torch.randn(10, 4, generator=gen, dtype=torch.float64), torch.randint(0, 3, (10,), generator=gen))
    return model, (x, y), val


EXACT = {"step": "newton", "newton_steps": 1, "solver": "direct", "hessian_samples": 10_000}


@pytest.mark.parametrize("method", ["if", "fif", "gif", "sif"])
def test_removal_newton_step_matches_dense(method):
    model, (x, y), val = tiny_problem()
    forget = torch.tensor([3, 7, 8, 20])
    out = gif.remove(model, (x, y), forget, validation=val, method=method, damping=0.05, **EXACT)
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[forget] = False
    curvature = (
        dense_gauss_newton if gif.EditConfig(method=method).curvature == "gauss_newton" else dense_hessian
    )
    assert out.report["options"]["curvature"] == (
        "gauss_newton" if method == "if" else "hessian"
    )  # the presets
    h = curvature(model, x[keep], y[keep])
    g_new = -(len(forget) / (len(y) - len(forget))) * dense_gradient(model, x[forget], y[forget])
    h_u = len(forget) / (len(y) - len(forget)) * dense_hessian(model, x[forget], y[forget])
    expected = -reference_influence(method, h, g_new, out.params, 0.05, h_u, len(forget) / len(y))
    torch.testing.assert_close(out.delta[out.params], expected, rtol=1e-8, atol=1e-10)
    outside = torch.ones(len(out.delta), dtype=torch.bool)
    outside[out.params] = False
    assert bool((out.delta[outside] == 0).all())


def test_the_hvps_run_over_a_seeded_subset_of_the_hessian_sample_with_hvp_samples():
    """``hvp_samples``: the Newton step is the dense one on the subset's curvature (the gradient
    still over the whole sample); a subset as large as the sample, or a solver that takes no HVP
    (a Kronecker fit over the whole sample), is the edit without it."""
    from gif.edit_sets import product_subset

    model, (x, y), val = tiny_problem()
    forget = torch.tensor([3, 7, 8, 20])
    options = {"method": "if", "damping": 0.05, **EXACT}
    cache = gif.MemoryCache()  # shared: a solve over the subset must not serve the whole sample's
    out = gif.remove(model, (x, y), forget, validation=val, hvp_samples=12, cache=cache, **options)
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[forget] = False
    retained = torch.nonzero(keep).flatten()  # validation given: the Hessian sample is all of them
    assert (out.report["hessian_samples"], out.report["hvp_samples"]) == (len(retained), 12)
    subset = product_subset(retained, gif.EditConfig(hvp_samples=12, **options))
    assert subset is not None and len(subset) == 12 and bool(torch.isin(subset, retained).all())
    h = dense_gauss_newton(model, x[subset], y[subset])  # the if preset's curvature
    g_new = -(len(forget) / (len(y) - len(forget))) * dense_gradient(model, x[forget], y[forget])
    expected = -reference_influence("if", h, g_new, out.params, 0.05)
    torch.testing.assert_close(out.delta[out.params], expected, rtol=1e-8, atol=1e-10)
    whole = gif.remove(model, (x, y), forget, validation=val, cache=cache, **options)
    assert not torch.allclose(whole.delta, out.delta)
    same = gif.remove(model, (x, y), forget, validation=val, hvp_samples=len(retained), **options)
    assert torch.equal(same.delta, whole.delta) and same.report["hvp_samples"] == len(retained)
    kfac = {**options, "solver": "kfac"}
    fitted = gif.remove(model, (x, y), forget, validation=val, hvp_samples=12, **kfac)
    assert torch.equal(fitted.delta, gif.remove(model, (x, y), forget, validation=val, **kfac).delta)
    assert fitted.report["hvp_samples"] == fitted.report["hessian_samples"]  # the whole sample (pool "all")
    # the presets: IF's products over 512 of its 2,048 samples, every other method's over all of them
    presets = {m: gif.EditConfig(method=m).hvp_samples for m in ("gif", "fif", "if", "sif")}
    assert presets == {"gif": None, "fif": None, "if": 512, "sif": None}


def test_relabel_newton_step_matches_dense():
    model, (x, y), val = tiny_problem()
    idx = torch.tensor([1, 5, 9])
    new = (y[idx] + 1) % 3
    out = gif.relabel(model, (x, y), idx, new, validation=val, method="gif", damping=0.05, **EXACT)
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[idx] = False
    h = dense_hessian(model, x[keep], y[keep])
    g_new = (len(idx) / len(y)) * (dense_gradient(model, x[idx], new) - dense_gradient(model, x[idx], y[idx]))
    expected = -reference_influence("gif", h, g_new, out.params, 0.05)
    torch.testing.assert_close(out.delta[out.params], expected, rtol=1e-8, atol=1e-10)


def test_input_model_untouched_and_delta_consistent():
    model, train, val = tiny_problem()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = gif.remove(model, train, torch.tensor([0, 1]), validation=val, damping=0.1)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    space = ParamSpace(model)
    torch.testing.assert_close(space.vector(out.model) - space.vector(model), out.delta)
    assert out.model is not model


def test_class_removal_by_class_equals_indices():
    model, (x, y), val = tiny_problem()
    by_class = gif.remove(model, (x, y), {"class": 2}, validation=val, damping=0.1)
    by_index = gif.remove(model, (x, y), gif.class_indices(y, 2), validation=val, damping=0.1)
    torch.testing.assert_close(by_class.delta, by_index.delta)
    assert by_class.report["forget_class"] == by_index.report["forget_class"] == 2


def test_report_contents_and_progress_events():
    model, train, val = tiny_problem()
    events = []
    out = gif.remove(
        model,
        train,
        torch.tensor([4, 5, 6]),
        validation=val,
        damping=0.1,
        newton_steps=2,
        callback=events.append,
    )
    r = out.report
    for key in ("options", "selection", "solver", "newton_steps", "metrics", "delta_norm", "timings", "hvps"):
        assert key in r
    assert r["task"] == "remove" and r["n_edited"] == 3 and r["validation_source"] == "given"
    assert r["selection"]["total"] == out.params.numel()
    assert r["metrics"]["before"]["validation"]["n"] == 10
    assert r["metrics"]["after"]["objective"] >= r["metrics"]["before"]["objective"]
    assert r["delta_norm"] == pytest.approx(float(out.delta.norm()))
    stages = [e.stage for e in events]
    assert stages[0] == "selecting_parameters" and stages[-1] == "done"
    assert {"computing_gradients", "solving_ihvp", "step_search"} <= set(stages)


def test_validation_is_carved_from_retained_data_when_missing():
    model, (x, y), _ = tiny_problem(n=60)
    out = gif.remove(model, (x, y), {"class": 1}, damping=0.1, validation_fraction=0.2)
    r = out.report
    assert r["validation_source"] == "carved from retained training data"
    retained = int((y != 1).sum())
    assert r["validation_samples"] == int(0.2 * retained)
    assert r["hessian_samples"] == retained - r["validation_samples"]


def test_shared_hessian_pool_is_the_same_sample_whatever_is_edited():
    from gif.config import EditConfig
    from gif.edit_sets import split as _split

    opts = EditConfig(hessian_pool="all", hessian_samples=30, validation_fraction=0.2, seed=3)
    a = _split(60, torch.tensor([0, 1, 2]), True, opts, torch.Generator())
    b = _split(60, torch.tensor([10, 40, 59]), True, opts, torch.Generator())
    assert torch.equal(a.hessian, b.hessian) and a.hessian.numel() == 30
    for split, edited in ((a, {0, 1, 2}), (b, {10, 40, 59})):
        assert not set(split.val.tolist()) & edited  # validation: untouched samples only
        assert not set(split.val.tolist()) & set(split.hessian.tolist())
        # the retained loss's drift is estimated on the untouched part of the Hessian sample
        assert set(split.drift.tolist()) == set(split.hessian.tolist()) - edited
        assert 9 <= split.val.numel() <= 12  # 12 reserved, minus any edited among them
    other_seed = _split(
        60,
        torch.tensor([0]),
        True,
        EditConfig(hessian_pool="all", hessian_samples=30, seed=4),
        torch.Generator(),
    )
    assert not torch.equal(other_seed.hessian, a.hessian)
    # the default pool leaves edited samples out of the Hessian
    untouched = _split(60, torch.tensor([0, 1, 2]), True, EditConfig(hessian_samples=100), torch.Generator())
    assert not {0, 1, 2} & set(untouched.hessian.tolist())
    assert untouched.drift is untouched.hessian


def test_shared_pool_tops_validation_up_when_the_edited_samples_fill_its_head():
    """Samples drawn by the same seeded permutation as the split (a user's ``randperm`` with the
    edit's seed) fill the reserved head: validation comes from the far end instead of failing."""
    from gif.config import EditConfig
    from gif.edit_sets import split as _split

    opts = EditConfig(hessian_pool="all", hessian_samples=30, validation_fraction=0.2, seed=3)
    head = torch.randperm(60, generator=torch.Generator().manual_seed(3))[:12]
    most = _split(60, head[:10], True, opts, torch.Generator())  # 2 of 12 left: topped up
    every = _split(60, head, True, opts, torch.Generator())
    for split, edited in ((most, head[:10]), (every, head)):
        assert split.val.numel() == 12
        assert not set(split.val.tolist()) & set(edited.tolist())
        assert not set(split.val.tolist()) & set(split.hessian.tolist())
        assert split.hessian.numel() == 30  # n = 60 leaves room outside it: the same Hessian sample
    fewer = _split(60, head[:5], True, opts, torch.Generator())  # 7 of 12 untouched: as before
    assert fewer.val.numel() == 7 and torch.equal(fewer.hessian, most.hessian)
    model, (x, y), _ = tiny_problem(n=60)
    out = gif.relabel(
        model, (x, y), head, (y[head] + 1) % 3, hessian_pool="all", seed=3, validation_fraction=0.2
    )
    assert out.report["validation_samples"] == 12


def test_shared_pool_edits_with_several_newton_steps():
    model, (x, y), _ = tiny_problem(n=60)
    shared = gif.remove(model, (x, y), {"class": 1}, damping=0.1, newton_steps=3, hessian_pool="all")
    alone = gif.remove(model, (x, y), {"class": 1}, damping=0.1, newton_steps=3)
    assert shared.report["hessian_samples"] > alone.report["hessian_samples"]  # edited ones included
    assert shared.report["options"]["hessian_pool"] == "all"
    assert len(shared.report["newton_steps"]) >= 1 and torch.isfinite(shared.delta).all()


def test_deterministic_under_seed():
    model, train, _ = tiny_problem()
    a = gif.remove(model, train, torch.tensor([2, 3]), damping=0.1, seed=5, selection="random")
    b = gif.remove(model, train, torch.tensor([2, 3]), damping=0.1, seed=5, selection="random")
    assert torch.equal(a.delta, b.delta) and torch.equal(a.params, b.params)


def test_cancellation():
    model, train, val = tiny_problem()
    with pytest.raises(Cancelled):
        gif.remove(model, train, torch.tensor([2, 3]), validation=val, should_stop=lambda: True)


def test_bad_requests():
    model, (x, y), _ = tiny_problem()
    with pytest.raises(IndexOutOfRangeError, match="empty"):
        gif.remove(model, (x, y), torch.tensor([], dtype=torch.long))
    with pytest.raises(IndexOutOfRangeError, match="outside"):
        gif.remove(model, (x, y), torch.tensor([0, 40]))
    with pytest.raises(IndexOutOfRangeError, match="duplicated"):
        gif.remove(model, (x, y), torch.tensor([3, 3]))
    with pytest.raises(IndexOutOfRangeError, match="whole training set"):
        gif.remove(model, (x, y), torch.arange(40))
    with pytest.raises(UnknownClassError, match="does not exist"):
        gif.remove(model, (x, y), {"class": 3})
    with pytest.raises(UnknownClassError, match="no samples"):
        gif.remove(model, (x, torch.where(y == 2, 0, y)), {"class": 2})
    with pytest.raises(InvalidArgumentError, match="unknown option"):
        gif.remove(model, (x, y), [1], learning_rate=3)
    with pytest.raises(InvalidArgumentError, match="damping"):
        gif.remove(model, (x, y), [1], damping=-1)
    with pytest.raises(InvalidArgumentError, match="method"):
        gif.remove(model, (x, y), [1], method="xif")
    with pytest.raises(InvalidArgumentError, match="equals the current label"):
        gif.relabel(model, (x, y), [0, 1], [y[0], (y[1] + 1) % 3])
    with pytest.raises(UnknownClassError, match=r"\[0, 3\)"):
        gif.relabel(model, (x, y), [0], [7])
    with pytest.raises(InvalidArgumentError, match="one per index"):
        gif.relabel(model, (x, y), [0, 1], [1])
    for bad_model, message in (
        (None, r"`model` must be a torch\.nn\.Module"),
        (nn.Flatten(), "no trainable"),
    ):
        with pytest.raises(InvalidArgumentError, match=message):  # AttributeError / StopIteration before
            gif.remove(bad_model, (x, y), [1])
    # what torch cannot turn into a tensor (its TypeError / RuntimeError / ValueError escaped before)
    for bad in ("abc", None, [2**70], [1, "a"]):
        with pytest.raises(InvalidArgumentError, match="`forget` must be a 1-D tensor or list"):
            gif.remove(model, (x, y), bad)
        with pytest.raises(InvalidArgumentError, match="`indices` must be a 1-D tensor or list"):
            gif.relabel(model, (x, y), bad, [1])
        with pytest.raises(InvalidArgumentError, match="`new_labels` must be integer labels"):
            gif.relabel(model, (x, y), [0], bad)


def test_labels_the_default_loss_cannot_take_name_their_argument():
    """Training, validation or holdout labels outside the model's classes, of another dtype or
    shape, and an empty validation set, are refused up front (torch raised bare IndexError / RuntimeError /
    ValueError mid-edit; an empty validation set was silently accepted)."""
    model, (x, y), (vx, vy) = tiny_problem()
    for edit in (lambda train, **k: gif.remove(model, train, [1], **k),
                 lambda train, **k: gif.relabel(model, train, [1], [(int(y[1]) + 1) % 3], **k)):  # fmt: skip
        with pytest.raises(UnknownClassError, match=r"`train` has labels .* outside the model's \[0, 3\)"):
            edit((x, torch.where(y == 0, 5, y)))
        with pytest.raises(UnknownClassError, match="`train` has labels"):
            edit((x, y - 3))
        for bad in (y.float(), y.int(), y[:, None]):
            with pytest.raises(InvalidArgumentError, match="`train`: labels must be a 1-D int64 tensor"):
                edit((x, bad))
        with pytest.raises(UnknownClassError, match="`validation` has labels"):
            edit((x, y), validation=(vx, vy + 3))
        with pytest.raises(InvalidArgumentError, match="`validation`: labels must be"):
            edit((x, y), validation=(vx, vy.float()))
        with pytest.raises(InvalidArgumentError, match="`validation` is empty"):
            edit((x, y), validation=(vx[:0], vy[:0]))
        with pytest.raises(InvalidArgumentError, match="`holdout` is empty"):
            edit((x, y), holdout=(vx[:0], vy[:0]))
        with pytest.raises(UnknownClassError, match=r"`holdout` has labels .* outside the model's \[0, 3\)"):
            edit((x, y), holdout=(vx, vy + 3))
        with pytest.raises(InvalidArgumentError, match="`holdout`: labels must be a 1-D int64 tensor"):
            edit((x, y), holdout=(vx, vy.float()))


def test_hooks_that_are_not_callable_or_a_cache_name_their_argument():
    """A callback, stop check or loss that cannot be called, or a cache that is not one, is refused
    up front (a TypeError / AttributeError escaped mid-edit, at its first use)."""
    model, (x, y), _ = tiny_problem()
    for name in ("callback", "should_stop", "loss_fn"):
        with pytest.raises(InvalidArgumentError, match=f"`{name}` must be callable or None, got str"):
            gif.remove(model, (x, y), [1], **{name: "x"})
    with pytest.raises(InvalidArgumentError, match=r"`cache` must be a gif\.MemoryCache"):
        gif.relabel(model, (x, y), [1], [(int(y[1]) + 1) % 3], cache="folder")
    with pytest.raises(InvalidArgumentError, match="`loss_fn` must be callable"):
        gif.influence(model, (x, y), (x, y), loss_fn=3)
    with pytest.raises(InvalidArgumentError, match="`callback` must be callable"):
        gif.scores(model, (x, y), (x[:2], y[:2]), callback=[])
    with pytest.raises(InvalidArgumentError, match="`should_stop` must be callable"):
        gif.self_influence(model, (x, y), should_stop=True)
    with pytest.raises(InvalidArgumentError, match="`loss_fn` must be callable"):
        gif.select(model, (x, y), loss_fn="ce")
    with pytest.raises(InvalidArgumentError, match="`include_self_influence` must be True or False"):
        gif.scores_with_report(model, (x, y), (x[:2], y[:2]), include_self_influence="yes")


def test_inputs_the_model_cannot_run_on_name_their_argument():
    """Inputs of another feature size or dtype than the model takes are refused naming the
    argument they came in, before any work (the model's own RuntimeError escaped before)."""
    model, (x, y), (vx, vy) = tiny_problem()
    wide, ints = torch.cat([x, x], dim=1), x.long()
    with pytest.raises(InvalidArgumentError, match=r"the model cannot run on `train`: RuntimeError"):
        gif.remove(model, (wide, y), [1])
    with pytest.raises(InvalidArgumentError, match="the model cannot run on `train`"):
        gif.relabel(model, (ints, y), [1], [(int(y[1]) + 1) % 3])
    with pytest.raises(InvalidArgumentError, match="the model cannot run on `validation`"):
        gif.remove(model, (x, y), [1], validation=(torch.cat([vx, vx], dim=1), vy))
    with pytest.raises(InvalidArgumentError, match="the model cannot run on `holdout`"):
        gif.remove(model, (x, y), [1], holdout=(torch.cat([vx, vx], dim=1), vy))
    other = torch.nn.Sequential(torch.nn.Linear(2 * x.shape[1], 3))
    with pytest.raises(InvalidArgumentError, match="the model cannot run on `train, by `reference``"):
        gif.remove(model, (x, y), [1], reference=other)


def test_newton_steps_stop_at_the_objectives_maximum_and_only_there():
    from .test_cache import trained_problem

    model, train = trained_problem()
    # the Hessian's CG to convergence: an edit that reaches the objective's maximum at its first step
    options = {"method": "if", "curvature": "hessian", "max_iter": 100, "newton_steps": 4}
    reached = gif.remove(model, train, {"class": 1}, **options).report["newton_steps"]
    assert len(reached) == 1
    assert reached[0]["step"]["objective"] == 1.0 and reached[0]["step"]["scale"] > 0.0
    below = gif.remove(model, train, {"class": 1}, method="gif", newton_steps=4).report["newton_steps"]
    assert len(below) >= 2 and all(s["step"]["objective"] < 1.0 for s in below[:-1])


def test_newton_steps_stop_once_the_objective_reaches_stop_objective():
    """A step that reaches ``stop_objective`` is the last and every step before it is below; the
    ``if`` preset (a relabel's fallback CG, where each step costs its HVPs) stops at 0.98, the
    others at the objective's maximum, and a request's own value wins."""
    from .test_cache import trained_problem

    model, train = trained_problem()
    options = {"method": "gif", "newton_steps": 4}
    full = gif.remove(model, train, {"class": 1}, **options).report
    steps = full["newton_steps"]
    assert full["options"]["stop_objective"] == 1.0 and len(steps) >= 2
    bar = steps[0]["step"]["objective"]
    assert 0.0 < bar < 1.0
    stopped = gif.remove(model, train, {"class": 1}, stop_objective=bar, **options).report
    assert [s["step"] for s in stopped["newton_steps"]] == [steps[0]["step"]]
    assert stopped["metrics"]["after"]["objective"] == bar
    assert stopped["hvps"] < full["hvps"]
    presets = {m: gif.EditConfig(method=m).stop_objective for m in ("gif", "fif", "if", "sif")}
    assert presets == {"gif": 1.0, "fif": 1.0, "if": 0.98, "sif": 1.0}
    assert gif.EditConfig(method="if", stop_objective=1.0).stop_objective == 1.0
    for bad in (0.0, 1.5):
        with pytest.raises(InvalidArgumentError, match="stop_objective"):
            gif.EditConfig(method="if", stop_objective=bad)


def test_newton_steps_give_up_after_the_first_below_give_up_objective():
    """A first step whose objective is below ``give_up_objective`` is the only one (the edit is
    tentative: gif/method_choice.py replaces it); at or above it, or at 0, the loop goes on."""
    from .test_cache import trained_problem

    model, train = trained_problem()
    options = {"method": "gif", "newton_steps": 4}
    full = gif.remove(model, train, {"class": 1}, **options).report
    first = full["newton_steps"][0]["step"]
    assert len(full["newton_steps"]) >= 2 and full["options"]["give_up_objective"] == 0.0
    given_up = gif.remove(
        model, train, {"class": 1}, give_up_objective=first["objective"] + 1e-6, **options
    ).report
    assert [s["step"] for s in given_up["newton_steps"]] == [first]
    kept_on = gif.remove(model, train, {"class": 1}, give_up_objective=first["objective"], **options).report
    assert [s["step"] for s in kept_on["newton_steps"]] == [s["step"] for s in full["newton_steps"]]
    for bad in (-0.1, 1.5):
        with pytest.raises(InvalidArgumentError, match="give_up_objective"):
            gif.EditConfig(give_up_objective=bad)


def test_stalled_steps_are_steps_after_the_first_that_gain_less_than_stall_gain_in_a_row():
    from gif.newton import STALL_PATIENCE, stalled

    assert STALL_PATIENCE == 2
    # the digits CNN's relabel (docs/benchmarks.md): a step kept short, then large ones again
    digits = [0.0, 0.8685, 0.8727, 0.8952, 0.9154, 0.9233, 0.9438]
    assert not any(stalled(digits[: k + 1], 0.005) for k in range(1, len(digits)))
    lenet = [0.0, 0.9455, 0.9576, 0.9611, 0.9635, 0.9661]
    assert [stalled(lenet[: k + 1], 0.005) for k in range(1, len(lenet))] == [False, False, False, True, True]
    assert not stalled([0.0, 0.5], 0.6)  # the first step, from the unedited model, never counts
    assert not stalled([0.0, 0.5, 0.5001, 0.5002], 0.0)  # 0: never


def test_newton_steps_stop_after_steps_that_gain_less_than_stall_gain(monkeypatch):
    """The loop ends once :func:`gif.newton.stalled`; the ``if`` preset stalls below a gain of
    0.005, the others never (0), and a request's own value wins."""
    import gif.newton

    from .test_cache import trained_problem

    model, train = trained_problem()
    options = {"method": "fif", "newton_steps": 6}
    full = gif.remove(model, train, {"class": 1}, **options).report
    steps = [s["step"] for s in full["newton_steps"]]
    # two steps that move, then the probe that finds no step improving the objective
    assert [s["scale"] > 0 for s in steps] == [True, True, False] and full["stopped"] == "no step improves"
    assert full["options"]["stall_gain"] == 0.0
    gain = steps[1]["objective"] - steps[0]["objective"]
    assert gain > 0
    monkeypatch.setattr(gif.newton, "STALL_PATIENCE", 1)  # this problem has two moving steps
    stalled = gif.remove(model, train, {"class": 1}, stall_gain=gain + 1e-9, **options).report
    assert [s["step"] for s in stalled["newton_steps"]] == steps[:2]
    assert stalled["stopped"] == "stalled"
    assert stalled["metrics"]["after"] == full["metrics"]["after"]
    assert stalled["hvps"] < full["hvps"]
    gone_on = gif.remove(model, train, {"class": 1}, stall_gain=gain, **options).report
    assert [s["step"] for s in gone_on["newton_steps"]] == steps
    presets = {m: gif.EditConfig(method=m).stall_gain for m in ("gif", "fif", "if", "sif")}
    assert presets == {"gif": 0.0, "fif": 0.0, "if": 0.005, "sif": 0.0}
    for bad in (-0.1, 1.5):
        with pytest.raises(InvalidArgumentError, match="stall_gain"):
            gif.EditConfig(method="if", stall_gain=bad)


def test_later_newton_steps_start_their_products_on_the_back_end_the_first_solve_settled_on(monkeypatch):
    """Under ``hvp_backend="auto"`` the first solve's products decide (two plain products, then
    the linearisation where it was slow enough: gif/hessian.py); later Newton steps build their
    products' operator on that back end at once. The edit is the one plain products give."""
    import gif.hessian
    import gif.newton

    from .test_cache import trained_problem

    model, train = trained_problem()
    made: list[tuple[int, str]] = []

    class Recorded(gif.hessian.HessianOperator):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            made.append((self.num_samples, kwargs.get("backend", "func")))

    monkeypatch.setattr(gif.newton, "HessianOperator", Recorded)
    monkeypatch.setattr(gif.hessian, "LINEARIZE_AFTER_SECONDS", 1e-9)  # every product is slow
    options = {"method": "if", "newton_steps": 3, "stop_objective": 1.0, "stall_gain": 0.0,
               "hessian_samples": 40, "hvp_samples": 20}  # fmt: skip
    linearised = gif.remove(model, train, {"class": 1}, **options)
    products = [backend for samples, backend in made if samples == 20]
    assert len(products) == len(linearised.report["newton_steps"]) >= 2
    assert products[0] == "auto" and set(products[1:]) == {"linearized"}
    made.clear()
    plain = gif.remove(model, train, {"class": 1}, hvp_backend="func", **options)
    assert {backend for _, backend in made} == {"func"}
    assert [s["step"]["scale"] for s in linearised.report["newton_steps"]] == pytest.approx(
        [s["step"]["scale"] for s in plain.report["newton_steps"]], rel=1e-8
    )
    torch.testing.assert_close(linearised.delta, plain.delta, rtol=1e-8, atol=1e-10)


def test_newton_corrections_are_solved_to_correction_tol_and_the_first_step_to_tol():
    from .test_cache import trained_problem

    model, train = trained_problem()
    loose, tight = (
        gif.remove(model, train, {"class": 1}, method="gif", newton_steps=2, correction_tol=c).report[
            "newton_steps"
        ]
        for c in (0.5, 1e-6)
    )
    assert len(loose) == len(tight) == 2
    assert loose[0]["solver"] == {**tight[0]["solver"], "seconds": loose[0]["solver"]["seconds"]}
    assert loose[1]["solver"]["converged"] and loose[1]["solver"]["residual"] <= 0.5
    assert loose[1]["solver"]["iterations"] < tight[1]["solver"]["iterations"]


def test_the_step_search_evaluates_a_seeded_capped_sample_of_each_set():
    """Above ``EVAL_CAP`` samples the edited and validation sets are judged on a seeded subsample
    of that many (gif/edit_sets.py): the same one on every run."""
    from gif.edit_sets import EVAL_CAP

    model, _, _ = tiny_problem()
    gen = torch.Generator().manual_seed(5)
    n, edited = 3 * EVAL_CAP, EVAL_CAP + 200
    x = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=gen)
    val = (
        torch.randn(EVAL_CAP + 50, 4, generator=gen, dtype=torch.float64),
        torch.randint(0, 3, (EVAL_CAP + 50,)),
    )
    rows = torch.arange(edited)
    runs = [
        gif.relabel(model, (x, y), rows, (y[rows] + 1) % 3, validation=val, method="if", solver="cg",
                    newton_steps=1, hessian_samples=256)
        for _ in range(2)
    ]  # fmt: skip
    after = runs[0].report["metrics"]["after"]
    assert after["edited_new_labels"]["n"] == after["validation"]["n"] == EVAL_CAP
    assert runs[0].report["metrics"] == runs[1].report["metrics"]
