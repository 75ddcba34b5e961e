"""Tests of gif.selection: hand-built layers whose selections are known exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gif.errors import InvalidArgumentError, UnknownClassError
from gif.params import ParamSpace
from gif.selection import STRATEGIES, select, selection_summary

# --------------------------------------------------------------------------------------- helpers


def hand_mlp(inplace: bool = False) -> tuple[nn.Sequential, tuple[torch.Tensor, torch.Tensor]]:
    """Linear(3,4) -> ReLU -> Linear(4,2) with known per-neuron mean outputs.

    θ layout: 0..11 fc1.weight (neuron j = [3j, 3j+3)), 12..15 fc1.bias, 16..23 fc2.weight
    (neuron j = [16+4j, 20+4j)), 24..25 fc2.bias.

    Samples x1 = [1, 0, 0], x2 = [0, 1, 0]:
      fc1 outputs: n0 = [1, 0] -> mean 0.5; n1 = [-2, -4] -> -3; n2 = [2, 2] -> 2; n3 = [1, 1] -> 1
      |mean| = [0.5, 3, 2, 1]; after ReLU h1 = [1, 0, 2, 1], h2 = [0, 0, 2, 1]
      fc2 outputs: n0 = [4, 3] -> 3.5; n1 = [-3, -3] -> -3;  |mean| = [3.5, 3]
    """
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(inplace=inplace), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0, 0], [-2, -4, 0], [0, 0, 5], [1, 1, 1]]))
        model[0].bias.copy_(torch.tensor([0.0, 0, 2, 0]))
        model[2].weight.copy_(torch.tensor([[1.0, 1, 1, 1], [0, 0, -1, 0]]))
        model[2].bias.copy_(torch.tensor([0.0, -1]))
    x = torch.tensor([[1.0, 0, 0], [0, 1, 0]])
    y = torch.tensor([0, 1])
    return model, (x, y)


def block(w_off: int, b_off: int | None, w: int, neurons: list[int]) -> set[int]:
    out: set[int] = set()
    for j in neurons:
        out.update(range(w_off + j * w, w_off + (j + 1) * w))
        if b_off is not None:
            out.add(b_off + j)
    return out


def check_ranked(sel: set[int], w_off: int, b_off: int | None, w: int, n: int, order: list[int]) -> None:
    """The selection within one layer is the first n_full neurons of `order` whole plus
    `leftover` weights (no bias) of the next one."""
    per = w + (1 if b_off is not None else 0)
    n_full, leftover = divmod(n, per)
    full = block(w_off, b_off, w, order[:n_full])
    assert full <= sel
    rest = sel - full
    assert len(rest) == leftover
    if leftover:
        j = order[n_full]
        assert rest <= set(range(w_off + j * w, w_off + (j + 1) * w))


def in_range(idx: torch.Tensor, lo: int, hi: int) -> set[int]:
    return {int(i) for i in idx if lo <= int(i) < hi}


def random_mlp(seed: int = 0, inplace: bool = False) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4), nn.ReLU(inplace=inplace), nn.Linear(4, 3)
    )


def conv_bn_net() -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(2, 3, kernel_size=2),  # θ 0..23 weight (blocks of 8), 24..26 bias
        nn.BatchNorm2d(3),  # θ 27..29 weight, 30..32 bias
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(27, 4),  # θ 33..140 weight (blocks of 27), 141..144 bias
    )


# ----------------------------------------------------------------------------- exact rankings


@pytest.mark.parametrize("inplace", [False, True])
def test_highest_outputs_exact_indices(inplace: bool) -> None:
    # With ReLU(inplace=True) the score must still be the Linear's own (pre-ReLU) output.
    model, data = hand_mlp(inplace)
    idx = select(model, data, strategy="highest_outputs", ratio=9 / 16)  # fc1: n=9, fc2: n=5
    assert idx.dtype == torch.long and idx.device.type == "cpu"
    assert torch.equal(idx, torch.sort(idx).values) and idx.unique().numel() == idx.numel()
    sel = {int(i) for i in idx}
    # fc1: ranking [1, 2, 3, 0]; neurons 1 and 2 whole (3..8, biases 13, 14); one weight of neuron 3.
    fc1 = in_range(idx, 0, 16)
    assert len(fc1) == 9
    assert {3, 4, 5, 6, 7, 8, 13, 14} <= fc1
    partial = fc1 - {3, 4, 5, 6, 7, 8, 13, 14}
    assert len(partial) == 1 and partial <= {9, 10, 11}  # inside neuron 3's weights, not its bias 15
    # fc2: n=5 = w+1 -> neuron 0 whole.
    assert in_range(idx, 16, 26) == {16, 17, 18, 19, 24}
    assert len(sel) == 14


def test_lowest_outputs_exact_indices() -> None:
    model, data = hand_mlp()
    idx = select(model, data, strategy="lowest_outputs", ratio=9 / 16)
    fc1 = in_range(idx, 0, 16)
    whole = {0, 1, 2, 9, 10, 11, 12, 15}  # neurons 0 (0.5) and 3 (1.0)
    assert whole <= fc1
    partial = fc1 - whole
    assert len(partial) == 1 and partial <= {6, 7, 8}  # neuron 2, never its bias 14
    assert in_range(idx, 16, 26) == {20, 21, 22, 23, 25}


def test_ties_broken_by_index() -> None:
    model = nn.Linear(2, 4)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.tensor([1.0, 2.0, 2.0, 1.0]))
    data = (torch.zeros(3, 2), torch.zeros(3, dtype=torch.long))
    # n = int(0.25 * 12) = 3 = w + 1 -> one neuron.
    assert select(model, data, strategy="highest_outputs", ratio=0.25).tolist() == [2, 3, 9]
    assert select(model, data, strategy="lowest_outputs", ratio=0.25).tolist() == [0, 1, 8]


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("strategy", ["highest_gradients", "lowest_gradients"])
def test_gradient_scores_match_autograd(strategy: str, inplace: bool) -> None:
    model = random_mlp(3, inplace=inplace)
    gen = torch.Generator().manual_seed(7)
    x, y = torch.randn(10, 5, generator=gen), torch.randint(0, 3, (10,), generator=gen)
    ratio = 0.4
    idx = select(model, (x, y), strategy=strategy, ratio=ratio, seed=5)

    # Independent reference: gradients of the mean CE w.r.t. each layer's pre-activation output.
    ref = random_mlp(3)  # same weights, no in-place ops
    fc1, fc2, fc3 = ref[0], ref[2], ref[4]
    o1 = fc1(x)
    o2 = fc2(torch.tanh(o1))
    o3 = fc3(torch.relu(o2))
    grads = torch.autograd.grad(F.cross_entropy(o3, y), [o1, o2, o3])
    space = ParamSpace(ref)
    descending = strategy.startswith("highest")
    for g, name, layer in zip(grads, ["0", "2", "4"], [fc1, fc2, fc3]):
        score = g.mean(0).abs().tolist()
        order = sorted(range(len(score)), key=lambda j: (-score[j] if descending else score[j], j))
        w_off, b_off = space.slot(f"{name}.weight").offset, space.slot(f"{name}.bias").offset
        w = layer.in_features
        n = int(ratio * (layer.weight.numel() + layer.bias.numel()))
        sel = in_range(idx, w_off, w_off + layer.weight.numel()) | in_range(
            idx, b_off, b_off + layer.out_features
        )
        check_ranked(sel, w_off, b_off, w, n, order)
    assert all(p.grad is None for p in model.parameters())


def test_custom_loss_fn() -> None:
    model, data = hand_mlp()

    # loss = mean of output unit 1 only: d loss / d fc2 output is [0, 1/2] per sample -> ranks unit 1 first.
    def loss_fn(out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return out[:, 1].mean()

    idx = select(model, data, strategy="highest_gradients", ratio=0.5, loss_fn=loss_fn)
    assert in_range(idx, 16, 26) == {20, 21, 22, 23, 25}
    with pytest.raises(InvalidArgumentError, match="scalar"):
        select(model, data, strategy="highest_gradients", loss_fn=lambda o, t: o.sum(1))


# ------------------------------------------------------------------------------ conv and offsets


def test_conv2d_blocks_and_spatial_mean() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, kernel_size=2)
    x = torch.randn(4, 2, 5, 5)
    data = (x, torch.zeros(4, dtype=torch.long))
    score = F.conv2d(x, conv.weight, conv.bias).mean(dim=(0, 2, 3)).abs().tolist()
    order = sorted(range(3), key=lambda j: (-score[j], j))
    # numel 27, ratio 0.5 -> n = 13 = 1 * 9 + 4: one channel whole, four weights of the next.
    idx = select(conv, data, strategy="highest_outputs", ratio=0.5)
    check_ranked(set(idx.tolist()), 0, 24, 8, 13, order)
    # ratio 1: the whole layer.
    assert select(conv, data, strategy="highest_outputs", ratio=1.0).tolist() == list(range(27))


def test_depthwise_conv_and_conv1d_blocks() -> None:
    torch.manual_seed(0)
    dw = nn.Conv2d(4, 4, kernel_size=3, groups=4, bias=False)  # w = 9, no bias
    x = torch.randn(3, 4, 6, 6)
    score = F.conv2d(x, dw.weight, groups=4).mean(dim=(0, 2, 3)).abs().tolist()
    order = sorted(range(4), key=lambda j: (-score[j], j))
    idx = select(dw, (x, torch.zeros(3, dtype=torch.long)), strategy="highest_outputs", ratio=0.5)
    check_ranked(set(idx.tolist()), 0, None, 9, 18, order)

    c1 = nn.Conv1d(3, 2, kernel_size=2)
    x1 = torch.randn(5, 3, 7)
    s1 = F.conv1d(x1, c1.weight, c1.bias).mean(dim=(0, 2)).abs().tolist()
    top = 0 if s1[0] >= s1[1] else 1
    idx = select(c1, (x1, torch.zeros(5, dtype=torch.long)), strategy="highest_outputs", ratio=0.5)  # n = 7
    assert set(idx.tolist()) == block(0, 12, 6, [top])


def test_batchnorm_never_selected_and_offsets() -> None:
    model = conv_bn_net()
    space = ParamSpace(model)
    assert space.slot("1.weight").offset == 27 and space.slot("4.weight").offset == 33
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, 2, 4, 4, generator=gen)
    data = (x, torch.randint(0, 4, (6,), generator=gen))
    conv_and_linear = set(range(27)) | set(range(33, 145))
    for strategy in STRATEGIES:
        if strategy == "all_params":
            continue
        ratio = 0.5 if strategy.startswith("exclusive") else 0.3
        idx = set(select(model, data, strategy=strategy, ratio=ratio).tolist())
        assert idx <= conv_and_linear, strategy
        assert not idx & set(range(27, 33)), strategy
    assert select(model, data, strategy="highest_outputs", ratio=1.0).tolist() == sorted(conv_and_linear)
    assert select(model, data, strategy="all").tolist() == sorted(conv_and_linear)
    assert select(model, data, strategy="all_params").tolist() == list(range(145))

    # Scores use the conv's own output (before BN): compare with the functional conv.
    conv = model[0]
    score = F.conv2d(x, conv.weight, conv.bias).mean(dim=(0, 2, 3)).abs().tolist()
    order = sorted(range(3), key=lambda j: (-score[j], j))
    idx = select(model, data, strategy="highest_outputs", ratio=0.4)  # conv n = 10 = 1*9 + 1
    check_ranked(in_range(torch.tensor(sorted(idx.tolist())), 0, 27), 0, 24, 8, 10, order)


def test_offsets_by_name_with_own_and_frozen_params() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(5))  # θ 0..4, on a non-leaf module
            self.frozen = nn.Linear(3, 3)
            self.fc = nn.Linear(3, 2)  # θ 5..10 weight, 11..12 bias
            self.emb = nn.Embedding(4, 3)  # θ 13..24
            for p in self.frozen.parameters():
                p.requires_grad_(False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.frozen(x) * self.scale[:3])

    net = Net()
    data = (torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))
    assert select(net, data, strategy="all").tolist() == list(range(5, 25))  # the unused embedding too
    assert select(net, None, strategy="all_params").tolist() == list(range(25))
    idx = select(net, data, strategy="highest_gradients", ratio=1.0)
    assert idx.tolist() == list(range(5, 13))


# ----------------------------------------------------------------------------- batching, seeds


@pytest.mark.parametrize(
    "strategy", ["highest_outputs", "lowest_gradients", "exclusive_outputs", "threshold"]
)
def test_batching_invariance(strategy: str) -> None:
    model = conv_bn_net()
    gen = torch.Generator().manual_seed(11)
    x, y = torch.randn(10, 2, 4, 4, generator=gen), torch.randint(0, 4, (10,), generator=gen)
    whole = select(model, (x, y), strategy=strategy, ratio=0.3, seed=4, threshold=0.2)
    batches = [(x[:2], y[:2]), (x[2:7], y[2:7]), (x[7:], y[7:])]
    split = select(model, batches, strategy=strategy, ratio=0.3, seed=4, threshold=0.2)
    assert torch.equal(whole, split)


@pytest.mark.parametrize("strategy", ["highest_outputs", "highest_gradients"])
def test_scoring_forward_passes_hold_at_most_chunk_size_samples(strategy: str) -> None:
    """``chunk_size`` bounds what one scoring pass holds (an edit passes its configuration's:
    after a CUDA out-of-memory a job's rerun shrinks it), and leaves the selection as it was."""
    model = conv_bn_net()
    gen = torch.Generator().manual_seed(12)
    x, y = torch.randn(10, 2, 4, 4, generator=gen), torch.randint(0, 4, (10,), generator=gen)
    seen: list[int] = []
    handle = model.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    try:
        chunked = select(model, (x, y), strategy=strategy, ratio=0.3, chunk_size=3)
    finally:
        handle.remove()
    assert seen == [3, 3, 3, 1]
    assert torch.equal(chunked, select(model, (x, y), strategy=strategy, ratio=0.3))


def test_seed_determinism() -> None:
    model = conv_bn_net()
    data = (torch.randn(5, 2, 4, 4), torch.zeros(5, dtype=torch.long))
    for strategy in ["random", "exclusive_gradients", "threshold", "highest_outputs"]:
        a = select(model, data, strategy=strategy, ratio=0.2, seed=1)
        b = select(model, data, strategy=strategy, ratio=0.2, seed=1)
        assert torch.equal(a, b), strategy
    r = [select(model, None, strategy="random", ratio=0.2, seed=s) for s in range(3)]
    assert not torch.equal(r[0], r[1]) and not torch.equal(r[1], r[2])
    e = [select(model, data, strategy="exclusive_outputs", ratio=0.2, seed=s) for s in range(4)]
    assert any(not torch.equal(e[0], other) for other in e[1:])
    # Global RNG is neither used nor disturbed.
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    select(model, None, strategy="random", ratio=0.2, seed=9)
    assert torch.equal(torch.rand(1), before)


def test_random_counts_per_layer() -> None:
    model = conv_bn_net()
    ratio = 0.37
    idx = select(model, None, strategy="random", ratio=ratio, seed=2)
    summary = selection_summary(model, idx)
    assert summary["counts"] == {
        "0.weight": int(ratio * 24),
        "0.bias": int(ratio * 3),
        "4.weight": int(ratio * 108),
        "4.bias": int(ratio * 4),
    }
    assert summary["total"] == idx.numel() and summary["size"] == 145
    assert summary["fraction"] == pytest.approx(idx.numel() / 145)


def test_exclusive_never_contains_top_neurons() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 10)  # w = 4, per neuron 5, numel 50
    x = torch.randn(8, 4)
    data = (x, torch.zeros(8, dtype=torch.long))
    score = model(x).mean(0).abs().tolist()
    order = sorted(range(10), key=lambda j: (-score[j], j))
    ratio = 0.3  # n = 15 -> n_full 3, leftover 0
    top = block(0, 40, 4, order[:3])
    for seed in range(6):
        sel = set(select(model, data, strategy="exclusive_outputs", ratio=ratio, seed=seed).tolist())
        assert len(sel) == 15 and not sel & top
        chosen = {i // 4 for i in sel if i < 40}
        assert len(chosen) == 3 and sel == block(0, 40, 4, sorted(chosen))
    # With a leftover: n = int(0.34 * 50) = 17 -> 3 whole neurons + 2 weights of a fourth.
    sel = set(select(model, data, strategy="exclusive_outputs", ratio=0.34, seed=1).tolist())
    assert len(sel) == 17 and not sel & top
    assert len({i - 40 for i in sel if i >= 40}) == 3
    with pytest.raises(InvalidArgumentError, match=r"0\.5"):
        select(model, data, strategy="exclusive_outputs", ratio=0.6)


def test_threshold_lowered_and_reset_per_layer() -> None:
    # fc1 outputs = its bias [0.25, 0.1, -0.05, 0]; fc2 outputs = its bias [5, 0.5, -0.2].
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 3))
    with torch.no_grad():
        for layer, b in [(model[0], [0.25, 0.1, -0.05, 0.0]), (model[2], [5.0, 0.5, -0.2])]:
            layer.weight.zero_()
            layer.bias.copy_(torch.tensor(b))
    data = (torch.randn(3, 3), torch.zeros(3, dtype=torch.long))
    for seed in range(8):
        idx = select(model, data, strategy="threshold", ratio=0.25, seed=seed)
        # fc1: n = 4; threshold 1.0 lowered to 0.24 -> pool = neuron 0 exactly (weights 0..2, bias 12).
        assert in_range(idx, 0, 16) == {0, 1, 2, 12}
        # fc2 (θ 16..27 weight, 28..30 bias): n = 3; restarted at 1.0 -> pool = neuron 0 only.
        fc2 = in_range(idx, 16, 31)
        assert len(fc2) == 3 and fc2 <= {16, 17, 18, 19, 28}
    # A lower starting threshold admits neuron 1 of fc2 into the pool.
    seen = set()
    for seed in range(8):
        seen |= in_range(
            select(model, data, strategy="threshold", ratio=0.25, seed=seed, threshold=0.3), 16, 31
        )
    assert seen & {20, 21, 22, 23, 29}


def test_ratio_one_selects_every_conv_linear_param() -> None:
    model, data = hand_mlp()
    for strategy in ["highest_outputs", "highest_gradients", "lowest_outputs", "lowest_gradients", "all"]:
        assert select(model, data, strategy=strategy, ratio=1.0).tolist() == list(range(26)), strategy


# ------------------------------------------------------------------------------ hygiene, errors


def test_hooks_removed_training_restored_no_grad() -> None:
    model = conv_bn_net()
    model.train()
    model[1].eval()  # mixed flags must be restored individually
    data = (torch.randn(4, 2, 4, 4), torch.tensor([0, 1, 2, 3]))
    for strategy in ["highest_outputs", "highest_gradients", "threshold"]:
        select(model, data, strategy=strategy, ratio=0.2)
        assert all(len(m._forward_hooks) == 0 and len(m._backward_hooks) == 0 for m in model.modules())
        assert model.training and model[0].training and not model[1].training
        assert all(p.grad is None for p in model.parameters())
    # BN running statistics were not updated (eval mode during scoring).
    assert model[1].num_batches_tracked.item() == 0


def test_shared_module_rejected_and_hooks_removed() -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.fc(x)))

    model = Shared().train()
    data = (torch.randn(2, 3), torch.tensor([0, 1]))
    for strategy in ["highest_outputs", "highest_gradients"]:
        with pytest.raises(InvalidArgumentError, match="more than once"):
            select(model, data, strategy=strategy)
        assert len(model.fc._forward_hooks) == 0 and model.training
    assert select(model, data, strategy="random", ratio=0.5).numel() == 4 + 1  # no forward needed


def test_argument_errors() -> None:
    model, data = hand_mlp()
    # torch refuses the large ones with a ValueError and wraps -1 around; the configuration
    # refuses all three, and so does select
    for seed in (2**64, 2**70, -1):
        with pytest.raises(
            InvalidArgumentError, match=r"`seed` must be an integer in \[0, 18446744073709551615\]"
        ):
            select(model, data, strategy="random", ratio=0.5, seed=seed)
    for bad in [0, 0.0, -0.1, 1.5, float("nan"), True, "0.1"]:
        with pytest.raises(InvalidArgumentError, match="ratio"):
            select(model, data, ratio=bad)
    with pytest.raises(InvalidArgumentError) as err:
        select(model, data, strategy="TopNActivations")
    assert all(name in str(err.value) for name in STRATEGIES)
    with pytest.raises(InvalidArgumentError):
        select(model, (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)))
    with pytest.raises(InvalidArgumentError):
        select(model, [])
    with pytest.raises(InvalidArgumentError):
        select(model, None, strategy="highest_outputs")
    with pytest.raises(InvalidArgumentError, match="raise the ratio"):
        select(model, data, ratio=0.05)  # int(0.05 * 16) = int(0.05 * 10) = 0
    with pytest.raises(InvalidArgumentError, match="raise the ratio"):
        select(model, None, strategy="random", ratio=0.01)
    with pytest.raises(InvalidArgumentError, match="seed"):
        select(model, data, seed=1.5)
    with pytest.raises(InvalidArgumentError, match="Conv1d/Conv2d/Linear/Embedding"):
        select(nn.Sequential(nn.LayerNorm(4)), None, strategy="random")
    x, y = data  # gradient strategies under the default cross-entropy: the labels are classes
    with pytest.raises(UnknownClassError, match=r"`data` has labels .* outside the model's \[0, 2\)"):
        select(model, (x, y + 2), strategy="highest_gradients", ratio=0.5)
    with pytest.raises(InvalidArgumentError, match="`data`: labels must be a 1-D int64 tensor"):
        select(model, (x, y.float()), strategy="highest_gradients", ratio=0.5)


def test_selection_summary() -> None:
    model, data = hand_mlp()
    idx = select(model, data, strategy="highest_outputs", ratio=9 / 16)
    s = selection_summary(model, idx)
    assert s["counts"] == {"0.weight": 7, "0.bias": 2, "2.weight": 4, "2.bias": 1}
    assert s["total"] == 14 and s["size"] == 26 and s["fraction"] == pytest.approx(14 / 26)


def test_threshold_extreme_start_values() -> None:
    model, data = hand_mlp()
    # fc1 |mean| = [0.5, 3, 2, 1], n = 4 -> pool must hold one neuron: neuron 1 (score 3).
    for start in [1e20, 3.0, 2.999]:
        idx = select(model, data, strategy="threshold", ratio=0.25, threshold=start)
        assert in_range(idx, 0, 16) == {3, 4, 5, 13}, start
    # Below every score: the whole layer is the pool, n random parameters from it.
    idx = select(model, data, strategy="threshold", ratio=0.25, threshold=-1.0)
    assert len(in_range(idx, 0, 16)) == 4


def test_layer_that_never_runs_is_not_scored() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 2)  # θ 0..7
            self.unused = nn.Linear(3, 2)  # θ 8..15

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    net = Net()
    data = (torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))
    for strategy in ["highest_outputs", "lowest_gradients", "threshold"]:
        assert select(net, data, strategy=strategy, ratio=1.0).tolist() == list(range(8)), strategy
    assert select(net, data, strategy="all").tolist() == list(range(16))


# ------------------------------------------------------------------------------- name patterns


class Adapted(nn.Module):
    """A frozen-looking base layer with a LoRA-style adapter and a classifier head."""

    def __init__(self) -> None:
        super().__init__()
        self.base = nn.Linear(3, 4)
        self.lora_a = nn.Linear(3, 2, bias=False)
        self.lora_b = nn.Linear(2, 4, bias=False)
        self.classifier = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.relu(self.base(x) + self.lora_b(self.lora_a(x))))


def indices_of(model: nn.Module, *names: str) -> set[int]:
    space = ParamSpace(model)
    return {i for n in names for i in range(space.slot(n).offset, space.slot(n).stop)}


def test_name_patterns_restrict_all_params_to_the_matching_parameters():
    model = Adapted()
    head = select(model, None, strategy="all_params", names=["classifier.*"])
    assert set(head.tolist()) == indices_of(model, "classifier.weight", "classifier.bias")
    adapter = select(model, None, strategy="all_params", names=["*lora_*"])
    assert set(adapter.tolist()) == indices_of(model, "lora_a.weight", "lora_b.weight")
    assert torch.equal(adapter, torch.sort(adapter).values)


def test_name_patterns_combine_with_a_scoring_strategy_and_its_ratio():
    model = Adapted()
    data = (torch.randn(8, 3, generator=torch.Generator().manual_seed(0)), torch.arange(8) % 2)
    everything = select(model, data, strategy="highest_gradients", ratio=0.5)
    head = select(model, data, strategy="highest_gradients", ratio=0.5, names=["classifier.weight"])
    # the classifier's weight, scored and ranked as without patterns; its bias does not match
    allowed = indices_of(model, "classifier.weight")
    assert set(head.tolist()) == set(everything.tolist()) & allowed and head.numel() > 0
    # ratio per considered layer: half of the classifier's 10 parameters is one whole neuron (4
    # weights and its bias, which does not match the pattern)
    assert head.numel() == 4


@pytest.mark.parametrize(
    ("names", "message"),
    [(["nothing.*"], "no trainable parameter matches"), ([], "non-empty"), ("classifier.*", "non-empty")],
)
def test_name_patterns_that_match_nothing_are_a_clear_error(names, message):
    with pytest.raises(InvalidArgumentError, match=message):
        select(Adapted(), None, strategy="all_params", names=names)


def test_an_edit_changes_only_the_parameters_its_patterns_name():
    import gif

    torch.manual_seed(0)
    model = Adapted()
    x = torch.randn(60, 3, generator=torch.Generator().manual_seed(1))
    y = (x[:, 0] > 0).long()
    result = gif.remove(model, (x, y), torch.arange(5), param_names=["*lora_*"], selection="all", ratio=1.0)
    before, after = model.state_dict(), result.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= {"lora_a.weight", "lora_b.weight"}
    assert list(result.report["options"]["param_names"]) == ["*lora_*"]


@pytest.mark.parametrize("order", ["sorted", "shuffled"])
def test_writing_theta_at_indices_matches_the_flat_vector(order):
    """ParamSpace.set_ / add_ write θ[indices] whatever the indices' order (a sorted selection
    skips the sort): checked against the same write on the flat vector."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    space = ParamSpace(model)
    gen = torch.Generator().manual_seed(1)
    index = torch.sort(torch.randperm(space.size, generator=gen)[:20]).values
    if order == "shuffled":
        index = index[torch.randperm(20, generator=gen)]
    values = torch.randn(20, generator=gen)
    expected = space.vector(model).clone()
    expected[index] = values
    space.set_(model, index, values)
    assert torch.equal(space.vector(model), expected)
    expected[index] += values
    space.add_(model, index, values)
    assert torch.allclose(space.vector(model), expected)


# ----------------------------------------------------------------------------- embeddings


class _Bag(nn.Module):
    """Token ids → Embedding(7, 5) → mean over positions → Linear(5, 3)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(7, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(ids).mean(dim=1))


def _columns(idx: torch.Tensor, offset: int, rows: int, dim: int) -> dict[int, int]:
    """Selected entries per column of a [rows, dim] weight stored row-major at ``offset``."""
    local = idx[(idx >= offset) & (idx < offset + rows * dim)] - offset
    return {int(c): int((local % dim == c).sum()) for c in torch.unique(local % dim)}


@pytest.mark.parametrize("kind", ["outputs", "gradients"])
def test_an_embeddings_neurons_are_its_output_coordinates(kind):
    """Ranked by |mean| of the embedding's output (or its gradient) per coordinate, computed here
    with plain autograd: the top coordinates' columns whole, then a part of the next one."""
    model = _Bag()
    gen = torch.Generator().manual_seed(2)
    ids, y = torch.randint(0, 7, (12, 4), generator=gen), torch.randint(0, 3, (12,), generator=gen)
    out = model.emb(ids)
    out.retain_grad()
    F.cross_entropy(model.head(out.mean(dim=1)), y).backward()
    signal = out.grad if kind == "gradients" else out.detach()
    expected_order = torch.sort(-signal.sum(dim=(0, 1)).abs(), stable=True).indices
    idx = select(model, (ids, y), strategy=f"highest_{kind}", ratio=0.5)
    n = int(0.5 * 35)  # 17 = 2 whole columns of 7 rows + 3 entries of the next
    per_column = _columns(idx, ParamSpace(model).slot("emb.weight").offset, 7, 5)
    assert sum(per_column.values()) == n
    assert {c for c, k in per_column.items() if k == 7} == set(expected_order[:2].tolist())
    assert {c: k for c, k in per_column.items() if k < 7} == {int(expected_order[2]): 3}
    assert set(select(model, (ids, y), strategy="all").tolist()) == set(range(ParamSpace(model).size))
