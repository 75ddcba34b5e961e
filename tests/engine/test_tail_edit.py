"""Edits of a model's tail on its features (gif/tail_edit.py) — the classifier head, or the last
children of an nn.Sequential: the same edit as on the whole network, where the shortcut applies,
and the whole network everywhere else."""

from __future__ import annotations

import pytest
import torch

import gif
from gif import tail_edit
from gif.config import EditConfig, resolve
from gif.edits import class_indices
from gif.hessian import cross_entropy
from gif.loo_head import named_head
from gif.method_choice import choose_method
from gif.newton import AuditInputs, Edit, Request, Task

from .conftest import BUILDERS, make_data

N = 90
HEADS = {"mlp": "2", "cnn": "5", "embed": "head"}


def whole_network_removal(model, train, cls: int, holdout=None, reference=None, **options):
    """The class removal on the whole network: gif.edits' own path, without the shortcut."""
    x, y = train
    index = class_indices(y, cls)
    task = Task(
        kind="remove", index=index, target=(x[index], y[index]), target_loss=cross_entropy,
        scale=-index.numel() / (len(y) - index.numel()), forget_class=cls,
    )  # fmt: skip
    opts, _ = choose_method(resolve("remove", EditConfig, None, options), named_head(model, x), task)
    audit = AuditInputs(holdout=holdout, reference=reference)
    return Edit(Request(model, train, task, cross_entropy, audit=audit), opts).run()


def whole_network_relabel(model, train, rows, new, **options):
    """The relabel on the whole network: an :class:`Edit` of the resolved options, without the shortcut."""
    x, y = train
    task = Task(
        kind="relabel", index=rows, target=(x[rows], torch.stack([y[rows], new], dim=1)),
        target_loss=gif.newton.relabel_loss(cross_entropy), scale=len(rows) / len(y), new_labels=new,
    )  # fmt: skip
    return Edit(
        Request(model, train, task, cross_entropy), resolve("relabel", EditConfig, None, options)
    ).run()


def leaves(tree, prefix=""):
    """A nested report as {"a.b.c": number}."""
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in leaves(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): tree}


def assert_same_edit(fast, whole):
    assert "head_features" in fast.report and "head_features" not in whole.report
    for (name, a), (_, b) in zip(
        fast.model.state_dict().items(), whole.model.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9, msg=name)
    torch.testing.assert_close(fast.delta, whole.delta, rtol=1e-7, atol=1e-9)
    assert torch.equal(fast.params, whole.params)
    assert leaves(fast.report["metrics"]) == pytest.approx(leaves(whole.report["metrics"]), rel=1e-6)


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_fif_on_the_head_is_the_whole_networks_edit(kind):
    model, train = BUILDERS[kind](), make_data(kind, N, 5)
    options = {"method": "fif", "ratio": 1.0, "param_names": [f"{HEADS[kind]}.*"], "newton_steps": 2}
    fast = gif.remove(model, train, {"class": 2}, **options)
    assert_same_edit(fast, whole_network_removal(model, train, 2, **options))
    changed = {n for n, p in fast.model.named_parameters() if not torch.equal(p, model.get_parameter(n))}
    assert changed and changed <= {f"{HEADS[kind]}.weight", f"{HEADS[kind]}.bias"}
    assert fast.report["head_features"]["layer"] == HEADS[kind]


def test_a_frozen_backbone_takes_any_method_on_the_head():
    model, train = BUILDERS["mlp"](), make_data("mlp", N, 3)
    model[0].requires_grad_(False)
    holdout = make_data("mlp", 40, 4)
    fast = gif.remove(model, train, {"class": 2}, holdout=holdout, ratio=0.5)  # GIF, the default method
    whole = whole_network_removal(model, train, 2, holdout=holdout, ratio=0.5)
    assert fast.report["newton_steps"][0]["step"]["scale"] > 0
    assert_same_edit(fast, whole)
    fast_audit, whole_audit = leaves(fast.report["audit"]), leaves(whole.report["audit"])
    numbers = {k: v for k, v in whole_audit.items() if isinstance(v, float)}
    assert numbers and {k: fast_audit[k] for k in numbers} == pytest.approx(numbers, rel=1e-6)


def test_a_relabel_of_a_frozen_backbone_is_the_same_on_the_head():
    model, train = BUILDERS["embed"](), make_data("embed", N, 3)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("head."))
    rows = torch.tensor([3, 7, 11])
    new = (train[1][rows] + 1) % 3
    fast = gif.relabel(model, train, rows, new, newton_steps=2)
    whole = whole_network_relabel(model, train, rows, new, method="if", newton_steps=2)
    assert_same_edit(fast, whole)


def deep_mlp() -> torch.nn.Module:
    torch.manual_seed(3)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)
    ).double()


@pytest.mark.parametrize(
    ("kind", "names", "modules", "data_seed", "cls"),
    [
        (
            "cnn",
            ["1.*", "5.*"],
            ["1", "2", "3", "4", "5"],
            5,
            2,
        ),  # BatchNorm's affine parameters and the head
        ("mlp", ["2.weight", "4.*"], ["2", "3", "4"], 1, 1),  # the deeper MLP below
    ],
)
def test_fif_on_the_last_children_of_a_sequential_is_the_whole_networks_edit(
    kind, names, modules, data_seed, cls
):
    """T over the last children: the edit runs on the input of the first that holds a named
    parameter, as computed (not flattened), and equals the whole network's edit."""
    model = deep_mlp() if kind == "mlp" else BUILDERS[kind]()
    train = make_data(kind, N, data_seed)
    options = {"method": "fif", "ratio": 1.0, "param_names": names, "newton_steps": 2}
    fast = gif.remove(model, train, {"class": cls}, **options)
    assert_same_edit(fast, whole_network_removal(model, train, cls, **options))
    assert fast.report["head_features"]["modules"] == modules
    assert fast.report["head_features"]["layer"] == modules[0]
    with torch.no_grad():
        computed = model[: int(modules[0])](train[0][:1])
    assert fast.report["head_features"]["features"] == computed[0].numel()
    changed = {n for n, p in fast.model.named_parameters() if not torch.equal(p, model.get_parameter(n))}
    assert changed and all(n.split(".")[0] in modules for n in changed)


def test_a_relabel_of_a_sequential_with_its_first_layer_frozen_runs_on_the_rest():
    """IF needs every trainable parameter's rows: with the first Linear frozen they all lie in the
    tail from the second, and the relabel is the whole network's."""
    model, train = deep_mlp(), make_data("mlp", N, 3)
    model[0].requires_grad_(False)
    rows = torch.tensor([3, 7, 11])
    new = (train[1][rows] + 1) % 3
    fast = gif.relabel(model, train, rows, new, method="if", newton_steps=2)
    whole = whole_network_relabel(model, train, rows, new, method="if", newton_steps=2)
    assert fast.report["newton_steps"][0]["step"]["scale"] > 0
    assert_same_edit(fast, whole)
    assert fast.report["head_features"]["modules"] == ["2", "3", "4"]


def test_a_sequential_with_a_forward_of_its_own_runs_on_its_traced_tail():
    """Its children are not its computation (the doubling): the tail is what its trace computes
    from the second Linear's input, doubling included."""

    class Doubled(torch.nn.Sequential):
        def forward(self, x):
            return super().forward(x) * 2.0

    torch.manual_seed(3)
    model = Doubled(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).double()
    train = make_data("mlp", N, 5)
    options = {"method": "fif", "ratio": 1.0, "param_names": ["2.*"], "newton_steps": 2}
    fast = gif.remove(model, train, {"class": 2}, **options)
    assert_same_edit(fast, whole_network_removal(model, train, 2, **options))
    assert fast.report["head_features"]["modules"] == ["2"]


class Residual(torch.nn.Module):
    """A CNN with a forward of its own: a stem, a residual convolution whose skip is its own
    input, and a head over the flattened maps (2-channel 5×5 images, 3 classes)."""

    def __init__(self, skip_from_input: bool = False) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.stem = torch.nn.Conv2d(2, 3, 3, padding=1)
        self.norm = torch.nn.BatchNorm2d(3)
        self.block = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.head = torch.nn.Linear(75, 3)
        self.skip = torch.nn.Linear(50, 3) if skip_from_input else None
        with torch.no_grad():
            self.norm.running_mean.uniform_(-0.5, 0.5)
            self.norm.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        h = torch.tanh(self.norm(self.stem(x)))
        h = h + torch.tanh(self.block(h))
        logits = self.head(h.flatten(1))
        return logits if self.skip is None else logits + self.skip(x.flatten(1))


def test_the_last_layers_of_a_model_with_its_own_forward_run_on_their_traced_features():
    """FIF over the residual convolution and the head: the tail is the trace from the block's
    input (the skip reads that input, so it crosses nothing), and the edit is the whole network's,
    for a removal and for IF's relabel with the stem frozen. The removal is damped enough for its
    MINRES to converge: truncated at 100 iterations on this indefinite Hessian it amplified the two
    paths' rounding to 10⁻³ on an AMD EPYC, where it had agreed on an Intel Xeon."""
    model, train = Residual().double().eval(), make_data("cnn", N, 5)
    options = {
        "method": "fif",
        "ratio": 1.0,
        "param_names": ["block.*", "head.*"],
        "newton_steps": 2,
        "damping": 2.0,
    }
    fast = gif.remove(model, train, {"class": 2}, **options)
    assert_same_edit(fast, whole_network_removal(model, train, 2, **options))
    assert (fast.report["head_features"]["layer"], fast.report["head_features"]["modules"]) == (
        "block",
        ["block", "head"],
    )
    assert fast.report["head_features"]["features"] == 3 * 5 * 5
    changed = {n for n, p in fast.model.named_parameters() if not torch.equal(p, model.get_parameter(n))}
    assert changed and changed <= {"block.weight", "block.bias", "head.weight", "head.bias"}
    for module in (model.stem, model.norm):
        module.requires_grad_(False)
    rows = torch.tensor([3, 7, 11])
    new = (train[1][rows] + 1) % 3
    fast = gif.relabel(model, train, rows, new, method="if", newton_steps=2)
    assert fast.report["newton_steps"][0]["step"]["scale"] > 0
    assert_same_edit(fast, whole_network_relabel(model, train, rows, new, method="if", newton_steps=2))


class Branching(torch.nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.first, self.mid, self.last = torch.nn.Linear(4, 6), torch.nn.Linear(6, 6), torch.nn.Linear(6, 3)

    def forward(self, x):
        h = torch.tanh(self.first(x))
        h = torch.tanh(self.mid(h if bool(h.sum() > -1e9) else -h))
        return self.last(h)


class Tied(torch.nn.Module):
    """The module the tail would start at is called twice."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(6)
        self.first, self.mid, self.last = torch.nn.Linear(4, 6), torch.nn.Linear(6, 6), torch.nn.Linear(6, 3)

    def forward(self, x):
        return self.last(torch.tanh(self.mid(torch.tanh(self.mid(torch.tanh(self.first(x)))))))


@pytest.mark.parametrize(
    ("build", "kind", "names"),
    [
        (lambda: Residual(skip_from_input=True), "cnn", ["block.*", "head.*"]),  # the input crosses the cut
        (Branching, "mlp", ["mid.*", "last.*"]),
        (Tied, "mlp", ["mid.*", "last.*"]),
    ],
)
def test_a_model_whose_trace_gives_no_clean_tail_keeps_the_whole_network(build, kind, names):
    model, (x, _) = build().double().eval(), make_data(kind, N, 5)
    config = EditConfig(method="fif", ratio=1.0, param_names=tuple(names))
    assert tail_edit.frozen_tail(model, named_head(model, x), config, whole_network=False) is None


def test_a_sequential_whose_skipped_children_hold_no_parameters_keeps_the_whole_network():
    """A Flatten before the first Linear is all there would be to skip: not worth a copy of the data."""
    torch.manual_seed(3)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)
    ).double()
    train = make_data("mlp", N, 5)
    edit = gif.remove(model, train, {"class": 2}, method="gif", ratio=0.5, newton_steps=1)
    assert "head_features" not in edit.report
    model[1].requires_grad_(False)  # now the frozen Linear is skipped: the edit runs on the head
    frozen = gif.remove(model, train, {"class": 2}, method="gif", ratio=0.5, newton_steps=1)
    assert frozen.report["head_features"]["modules"] == ["3"]


def test_a_tail_whose_features_exceed_the_cap_keeps_the_whole_network(monkeypatch):
    model, train = deep_mlp(), make_data("mlp", N, 5)
    options = {"method": "fif", "ratio": 1.0, "param_names": ["2.*", "4.*"], "newton_steps": 1}
    # 2 sets' worth of 6 float64 features per sample: the training data's alone fit at the cap
    monkeypatch.setattr(tail_edit, "TAIL_FEATURE_BYTES", 2 * 6 * 8 * N)
    assert "head_features" in gif.remove(model, train, {"class": 2}, **options).report
    monkeypatch.setattr(tail_edit, "TAIL_FEATURE_BYTES", 2 * 6 * 8 * N - 1)
    assert "head_features" not in gif.remove(model, train, {"class": 2}, **options).report


def test_a_further_edit_takes_a_tails_features_from_the_cache():
    model, train = BUILDERS["cnn"](), make_data("cnn", N, 5)
    options = {"method": "fif", "ratio": 1.0, "param_names": ["1.*", "5.*"], "newton_steps": 1}
    cache = gif.MemoryCache()
    first = gif.remove(model, train, {"class": 2}, cache=cache, **options)
    assert first.report["head_features"]["cache"]["counts"]["features"] == {"hit": 0, "wait": 0, "miss": 1}
    head_only = gif.remove(
        model, train, {"class": 2}, cache=cache, method="fif", selection="head", newton_steps=1
    )
    # the head's flattened features at another layer are another entry
    miss = {"hit": 0, "wait": 0, "miss": 1}
    assert head_only.report["head_features"]["cache"]["counts"]["features"] == miss
    further = gif.remove(model, train, {"class": 1}, cache=cache, **options)
    assert further.report["head_features"]["cache"]["counts"]["features"] == {"hit": 1, "wait": 0, "miss": 0}
    assert torch.equal(further.delta, gif.remove(model, train, {"class": 1}, **options).delta)


@pytest.mark.parametrize(
    "options",
    [
        {"method": "if", "param_names": ["2.*"]},  # IF's solve spans every trainable parameter
        {"method": "gif", "param_names": ["2.*"], "ratio": 0.5},  # so do GIF's rows
        {"method": "fif", "param_names": ["2.*", "0.bias"]},  # not the head alone
    ],
)
def test_everything_else_keeps_the_whole_network(options):
    model, train = BUILDERS["mlp"](), make_data("mlp", N, 3)
    assert "head_features" not in gif.remove(model, train, {"class": 1}, newton_steps=1, **options).report


def test_with_a_reference_the_audit_runs_on_the_whole_models():
    """The reference is a whole network: the edit still runs on the head's features, and the audit
    (figures, gaps to the reference) is the whole-network edit's."""
    model, train = BUILDERS["mlp"](), make_data("mlp", N, 3)
    holdout, reference = make_data("mlp", 40, 4), BUILDERS["mlp"]()
    options = {"method": "fif", "selection": "head", "newton_steps": 2}
    fast = gif.remove(model, train, {"class": 1}, holdout=holdout, reference=reference, **options)
    whole = whole_network_removal(model, train, 1, holdout=holdout, reference=reference, **options)
    assert_same_edit(fast, whole)
    fast_audit, whole_audit = leaves(fast.report["audit"]), leaves(whole.report["audit"])
    numbers = {k: v for k, v in whole_audit.items() if isinstance(v, float)}
    assert any(k.startswith("gap.") for k in numbers)
    assert {k: fast_audit[k] for k in numbers} == pytest.approx(numbers, rel=1e-6)


def test_a_further_edit_takes_the_features_from_the_cache():
    """The features are a cache entry: a second request on the same checkpoint and data (another
    class) runs no forward pass of the network, and gives the same edit as without a cache."""
    model, train = BUILDERS["mlp"](), make_data("mlp", N, 5)
    options = {"method": "fif", "ratio": 1.0, "param_names": ["2.*"]}
    cache = gif.MemoryCache()
    first = gif.remove(model, train, {"class": 2}, cache=cache, **options)
    assert first.report["head_features"]["cache"]["counts"]["features"] == {"hit": 0, "wait": 0, "miss": 1}
    calls = []
    handle = model[0].register_forward_hook(lambda module, args, out: calls.append(len(args[0])))
    further = gif.remove(model, train, {"class": 1}, cache=cache, **options)
    handle.remove()
    assert further.report["head_features"]["cache"]["counts"]["features"] == {"hit": 1, "wait": 0, "miss": 0}
    assert calls and set(calls) == {1}  # single samples (the class count, the head); no pass over the data
    plain = gif.remove(model, train, {"class": 1}, **options)
    assert torch.equal(further.delta, plain.delta)


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_the_head_selection_is_the_logits_layer(kind):
    model, train = BUILDERS[kind](), make_data(kind, N, 5)
    chosen = gif.select(model, train, strategy="head", ratio=0.05)  # the ratio does not apply
    space = gif.params.ParamSpace(model)
    slots = [space.slot(f"{HEADS[kind]}.weight"), space.slot(f"{HEADS[kind]}.bias")]
    assert torch.equal(chosen, torch.cat([torch.arange(s.offset, s.stop) for s in slots]))
    by_name = gif.remove(
        model, train, {"class": 2}, method="fif", ratio=1.0, param_names=[f"{HEADS[kind]}.*"]
    )
    by_selection = gif.remove(model, train, {"class": 2}, method="fif", selection="head")
    assert "head_features" in by_selection.report
    assert torch.equal(by_selection.delta, by_name.delta)


def test_the_head_selection_needs_a_linear_head():
    class Scaled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = BUILDERS["mlp"]()

        def forward(self, x):
            return self.body(x) * 2.0

    train = make_data("mlp", N, 5)
    with pytest.raises(gif.errors.InvalidArgumentError, match="last Linear layer"):
        gif.remove(Scaled(), train, {"class": 2}, method="fif", selection="head")
    gif_on_head = gif.remove(BUILDERS["mlp"](), train, {"class": 2}, selection="head")  # GIF: rows over all
    assert "head_features" not in gif_on_head.report
    assert set(gif_on_head.report["selection"]["counts"]) == {"2.weight", "2.bias"}


def test_a_model_that_is_its_head_is_edited_as_it_is():
    model = torch.nn.Linear(4, 3).double()
    x, y = make_data("mlp", N, 5)
    edit = gif.remove(model, (x, y), {"class": 2}, method="fif", selection="head")
    assert "head_features" not in edit.report
    assert set(edit.report["selection"]["counts"]) == {"weight", "bias"}


def test_a_job_is_sized_for_the_features_its_edit_may_hold(monkeypatch):
    """``most_feature_bytes``: a relabel at the defaults may hold the head's features (5 per
    sample on the deeper MLP) and the last two layers' (the second Linear's input, 6), a class
    removal the head's alone, FIF named on the last layers theirs, IF over everything none —
    each for every sample and as much again for validation data, float64; a tail over the cap
    is not taken, so not counted."""
    from gif.method_choice import most_feature_bytes

    model, (x, _) = deep_mlp(), make_data("mlp", N, 5)
    auto = EditConfig(method="auto", solver="auto")
    assert most_feature_bytes(model, x, N, auto, "relabel") == 2 * N * 8 * (5 + 6)
    assert most_feature_bytes(model, x, N, auto, "remove") == 2 * N * 8 * 5
    named = EditConfig(method="fif", ratio=1.0, param_names=("2.*", "4.*"))
    assert most_feature_bytes(model, x, N, named, "remove") == 2 * N * 8 * 6
    assert most_feature_bytes(model, x, N, EditConfig(method="if"), "relabel") == 0
    monkeypatch.setattr(tail_edit, "TAIL_FEATURE_BYTES", 2 * N * 8 * 6 - 1)
    assert most_feature_bytes(model, x, N, auto, "relabel") == 2 * N * 8 * 5
