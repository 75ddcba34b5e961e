"""Hugging Face classifiers and named (dict) inputs in the engine, against dense float64 references.

The reference path never goes through the engine's input handling: it wraps the model in a plain
module that takes the dict positionally and returns ``.logits``, and differentiates that with
autograd (tests/engine/reference.py).
"""

from __future__ import annotations

import pytest
import torch
import transformers
from torch import nn

import gif
from gif.models import huggingface

from .reference import dense_gradient, dense_hessian, label_log_odds, reference_influence

VOCAB, LENGTH, SAMPLES = 10, 6, 24


def bert_config(attention: str = "eager", **extra) -> dict:
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=4, num_hidden_layers=1, num_attention_heads=2, intermediate_size=4,
        max_position_embeddings=8, type_vocab_size=1, num_labels=extra.pop("num_labels", 3),
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **extra,
    ).to_dict()  # fmt: skip
    config["_attn_implementation"] = attention
    return config


def tiny_bert(attention: str = "eager", seed: int = 0, **extra) -> nn.Module:
    torch.manual_seed(seed)
    return huggingface.build(bert_config(attention, **extra)).double()


def token_data(n: int = SAMPLES, classes: int = 3, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, LENGTH), generator=gen)
    mask = torch.ones(n, LENGTH, dtype=torch.long)
    mask[::3, -2:] = 0  # padding on every third sequence: the mask matters
    ids[mask == 0] = 0  # BERT's pad token: its embedding row has no gradient (`padding_idx`)
    return {"input_ids": ids, "attention_mask": mask}, torch.randint(0, classes, (n,), generator=gen)


class Positional(nn.Module):
    """The reference's view of a Hugging Face model: a dict in, ``.logits`` out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: dict) -> torch.Tensor:
        return self.model(**inputs).logits


def take(inputs: dict, index) -> dict:
    return {k: v[index] for k, v in inputs.items()}


def assert_rel_close(actual, expected, rel=1e-6):
    err = float(torch.linalg.norm(actual - expected) / torch.linalg.norm(expected))
    assert err <= rel, f"relative error {err:.2e}"


@pytest.fixture(scope="module")
def bert():
    model = tiny_bert()
    x, y = token_data()
    hdata, tdata = (take(x, slice(4, None)), y[4:]), (take(x, slice(0, 4)), y[:4])
    h = dense_hessian(Positional(model), *hdata)
    low = float(torch.linalg.eigvalsh(h).min())
    return model, hdata, tdata, h, max(0.05, -low + 0.05)


@pytest.mark.parametrize("method", ["if", "fif", "gif", "sif"])
@pytest.mark.parametrize("solver", ["minres", "lsqr", "direct"])
def test_every_method_and_solver_matches_the_dense_hessian(bert, method, solver):
    model, hdata, tdata, h, damping = bert
    index = torch.arange(1, h.shape[0], 3)
    g = dense_gradient(Positional(model), *tdata)
    h_target = dense_hessian(Positional(model), *tdata) if method == "sif" else None
    fraction = len(tdata[1]) / (len(tdata[1]) + len(hdata[1]))
    expected = reference_influence(method, h, g, index, damping, h_target, fraction)
    out = gif.influence(
        model, hdata, tdata, method=method, params=index, damping=damping, solver=solver, tol=1e-13,
        max_iter=3000,
    )  # fmt: skip
    assert out.converged, out.note
    assert_rel_close(out.vector, expected)


def test_influence_does_not_depend_on_the_attention_implementation(bert):
    model, hdata, tdata, _, damping = bert
    sdpa = tiny_bert("sdpa")
    sdpa.load_state_dict(model.state_dict())
    assert sdpa.config._attn_implementation == "sdpa"
    a = gif.influence(model, hdata, tdata, method="gif", damping=damping, tol=1e-12, max_iter=500)
    b = gif.influence(sdpa, hdata, tdata, method="gif", damping=damping, tol=1e-12, max_iter=500)
    assert_rel_close(b.vector, a.vector, rel=1e-9)


def test_a_model_that_cannot_be_linearised_takes_the_plain_product(bert):
    """BERT's attention mask reads a tensor's value while it is traced, so ``torch.func.linearize``
    fails on it: the ``linearized`` back end falls back to ``func``, with the dense Hessian's
    products all the same."""
    from gif.hessian import HessianOperator

    model, hdata, _, h, _ = bert
    op = HessianOperator(model, hdata, backend="linearized")
    v = torch.randn(op.size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert_rel_close(op.hvp(v), h @ v, rel=1e-9)
    assert (op.backend, op.linearize_failed) == ("func", True)
    assert_rel_close(op.hvp(2 * v), 2 * (h @ v), rel=1e-9)


def test_scores_and_self_influence_take_named_inputs(bert):
    model, hdata, tdata, h, damping = bert
    train = (take(hdata[0], slice(0, 6)), hdata[1][:6])
    inverse = torch.linalg.inv(h + damping * torch.eye(h.shape[0], dtype=h.dtype))
    ref = Positional(model)
    g_train = torch.stack([dense_gradient(ref, take(train[0], [i]), train[1][i : i + 1]) for i in range(6)])
    g_query = torch.stack([dense_gradient(ref, take(tdata[0], [i]), tdata[1][i : i + 1]) for i in range(4)])
    scores = gif.scores(model, train, tdata, hessian_data=hdata, damping=damping, solver="direct")
    assert_rel_close(scores, g_query @ inverse @ g_train.T)  # tests/engine/test_scores.py's reading
    exact = {"hessian_data": hdata, "damping": damping, "solver": "direct", "exact": True}
    own = gif.self_influence(model, train, measure="loss", **exact)
    assert_rel_close(own, torch.einsum("ip,pq,iq->i", g_train, inverse, g_train))
    g_margin = torch.stack(
        [dense_gradient(ref, take(train[0], [i]), train[1][i : i + 1], label_log_odds) for i in range(6)]
    )
    margin = gif.self_influence(model, train, **exact)  # auto: a single-label classifier
    assert_rel_close(margin, -torch.einsum("ip,pq,iq->i", g_margin, inverse, g_train))


def test_the_leave_one_out_head_refits_the_classifier_on_named_inputs(bert):
    """`auto` without a curvature refits the classifier (the Linear layer computing `.logits`) on
    the features BERT feeds it: the same scores as the closed form on those features."""
    from gif.loo_head import loo_margins
    from gif.scoring import self_influence_measure

    model, hdata, _, _, _ = bert
    assert self_influence_measure(model, hdata) == "head"
    seen = []
    handle = model.classifier.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    with torch.no_grad():
        model(**hdata[0])
    handle.remove()

    class Head(nn.Module):  # the classifier alone, on the captured features
        def __init__(self) -> None:
            super().__init__()
            self.classifier = model.classifier

        def forward(self, f: torch.Tensor) -> torch.Tensor:
            return self.classifier(f)

    expected = loo_margins(Head(), (seen[0], hdata[1]))
    torch.testing.assert_close(gif.self_influence(model, hdata), expected.double())
    torch.testing.assert_close(loo_margins(model, hdata, chunk_size=3), expected)


@pytest.mark.parametrize(
    ("problem", "labels", "targets"),
    [
        ("regression", 1, lambda n, g: torch.randn(n, generator=g, dtype=torch.float64)),
        ("multi_label_classification", 3, lambda n, g: (torch.rand(n, 3, generator=g) > 0.5).double()),
    ],
)
def test_problem_type_chooses_the_models_own_loss(problem, labels, targets):
    config = bert_config(num_labels=labels, problem_type=problem)
    torch.manual_seed(0)
    model = huggingface.build(config).double()
    loss = huggingface.loss_for(config)
    x, _ = token_data()
    y = targets(SAMPLES, torch.Generator().manual_seed(3))
    # the engine's loss is the one the model's forward computes from `labels`
    with torch.no_grad():
        assert float(loss(model(**x).logits, y)) == pytest.approx(float(model(**x, labels=y).loss), rel=1e-12)
    hdata, tdata = (take(x, slice(4, None)), y[4:]), (take(x, slice(0, 4)), y[:4])
    h = dense_hessian(Positional(model), *hdata, loss_fn=loss)
    g = dense_gradient(Positional(model), *tdata, loss_fn=loss)
    damping = max(0.05, -float(torch.linalg.eigvalsh(h).min()) + 0.05)
    index = torch.arange(0, h.shape[0], 2)
    out = gif.influence(
        model, hdata, tdata, method="fif", params=index, damping=damping, loss_fn=loss, solver="direct"
    )
    assert_rel_close(out.vector, reference_influence("fif", h, g, index, damping))


def test_a_removal_edits_a_hugging_face_model_through_named_inputs():
    torch.manual_seed(0)
    model = huggingface.build(
        {**bert_config(num_labels=3), "hidden_size": 16, "intermediate_size": 16}
    ).float()
    x, _ = token_data(90, seed=4)
    y = x["input_ids"][:, 0] % 3  # learnable: the first token decides the class
    optimiser = torch.optim.Adam(model.parameters(), lr=0.05)
    model.train()
    for _ in range(60):
        optimiser.zero_grad()
        model(**x, labels=y).loss.backward()
        optimiser.step()
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = gif.remove(model, (x, y), {"class": 2}, hessian_samples=40, newton_steps=2, ratio=0.3)
    assert result.report["solver"]["method"] == "gif"
    edited = result.model.state_dict()
    assert edited.keys() == before.keys()  # same names: save_pretrained works on the result
    changed = sum(int(not torch.equal(edited[k], before[k])) for k in before)
    assert changed > 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # input untouched
    with torch.no_grad():
        predicted = result.model(**x).logits.argmax(1)
    assert float((predicted[y == 2] == 2).double().mean()) < float(
        (model(**x).logits.argmax(1)[y == 2] == 2).double().mean()
    )


def test_an_edit_of_the_classifier_alone_runs_on_its_features_with_the_same_result():
    """FIF on `classifier.*` runs on the classifier's input features (gif/tail_edit.py); the
    same edit on the whole BERT gives the same weights."""
    from gif.config import EditConfig, resolve
    from gif.hessian import cross_entropy
    from gif.newton import Edit, Request, Task

    model = tiny_bert(seed=1)
    x, y = token_data(60, seed=5)
    options = {"method": "fif", "ratio": 1.0, "param_names": ["classifier.*"], "newton_steps": 2}
    fast = gif.remove(model, (x, y), [0, 1, 2, 3, 4, 5], **options)
    assert fast.report["head_features"]["layer"] == "classifier"
    index = torch.arange(6)
    task = Task(
        kind="remove", index=index, target=(take(x, index), y[index]), target_loss=cross_entropy,
        scale=-6 / 54,
    )  # fmt: skip
    opts = resolve("remove", EditConfig, None, options)
    whole = Edit(Request(model, (x, y), task, cross_entropy), opts).run()
    assert "head_features" not in whole.report
    assert all(step["step"]["scale"] > 0 for step in fast.report["newton_steps"])  # two steps taken
    for name, value in whole.model.state_dict().items():
        torch.testing.assert_close(fast.model.state_dict()[name], value, rtol=1e-7, atol=1e-9, msg=name)


def test_named_inputs_with_mismatched_lengths_are_a_clear_error(bert):
    model, hdata, tdata, _, _ = bert
    broken = dict(hdata[0])
    broken["attention_mask"] = broken["attention_mask"][:-1]
    with pytest.raises(gif.errors.InvalidArgumentError, match="attention_mask"):
        gif.influence(model, (broken, hdata[1]), tdata)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"auto_map": {"AutoModel": "evil.Model"}}, "custom code"),
        ({"model_type": "not-a-model"}, "not-a-model"),
        ({"architectures": ["BertForMaskedLM"]}, "BertForMaskedLM is not a sequence or image classifier"),
        ({"architectures": ["ViTForImageClassification"]}, "not a head for model_type 'bert'"),
        ({"problem_type": "ranking"}, "ranking"),
    ],
)
def test_configs_that_cannot_be_built_safely_are_refused(change, message):
    config = {**bert_config(), **change}
    with pytest.raises(huggingface.UnsupportedModelError, match=message) as info:
        huggingface.build(config)
    assert info.value.code == "unsupported_model"


def test_an_image_classifier_is_built_from_its_config():
    config = transformers.ViTConfig(
        image_size=8, patch_size=4, num_channels=1, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=8, num_labels=4,
    ).to_dict()  # fmt: skip
    config["architectures"] = ["ViTForImageClassification"]
    model = huggingface.build(config)
    assert type(model).__name__ == "ViTForImageClassification" and not model.training
    pixels = torch.randn(5, 1, 8, 8)
    out = gif.influence(
        model,
        ({"pixel_values": pixels}, torch.arange(5) % 4),
        ({"pixel_values": pixels[:2]}, torch.tensor([0, 1])),
        damping=0.1,
    )
    assert out.vector.numel() == sum(p.numel() for p in model.parameters()) and out.converged


class TwoInputs(nn.Module):
    """A plain module taking two named tensors and returning an object with `.logits`."""

    def __init__(self) -> None:
        super().__init__()
        self.left, self.right, self.head = nn.Linear(3, 8), nn.Linear(2, 8), nn.Linear(8, 3)

    def forward(self, image: torch.Tensor, extra: torch.Tensor):
        return transformers.modeling_outputs.SequenceClassifierOutput(
            logits=self.head(torch.tanh(self.left(image) + self.right(extra)))
        )


def test_a_warm_repeat_with_named_inputs_is_served_by_the_cache():
    torch.manual_seed(0)
    model = TwoInputs()
    gen = torch.Generator().manual_seed(2)
    x = {"image": torch.randn(80, 3, generator=gen), "extra": torch.randn(80, 2, generator=gen)}
    y = (x["image"][:, 0] > 0).long() + (x["extra"][:, 0] > 0).long()
    cache = gif.MemoryCache()
    cold = gif.remove(model, (x, y), torch.arange(6), cache=cache, newton_steps=2)
    warm = gif.remove(model, (x, y), torch.arange(6), cache=cache, newton_steps=2)
    assert warm.report["work"] == {"gradients": 0, "hvps": 0, "forward_evaluations": 0}
    assert torch.equal(warm.delta, cold.delta)
    # the names are part of the data's identity: the same tensors under other names are other data
    memo = gif.cache.Memo(cache)
    t, u = torch.zeros(4, 2), torch.ones(4, 2)
    assert memo.data({"a": t, "b": u}) != memo.data({"a": u, "b": t})
    assert memo.data({"a": t, "b": u}) == memo.data({"b": u, "a": t})  # order of insertion does not count


def test_a_model_without_attention_kernels_is_built_with_its_own_code():
    config = transformers.ConvNextConfig(
        num_labels=3, depths=[1, 1, 1, 1], hidden_sizes=[8, 8, 8, 8], num_channels=1
    ).to_dict()
    config["architectures"] = ["ConvNextForImageClassification"]
    model = huggingface.build(config)
    assert type(model).__name__ == "ConvNextForImageClassification"
    pixels = torch.randn(6, 1, 32, 32)
    out = gif.influence(
        model,
        ({"pixel_values": pixels}, torch.arange(6) % 3),
        ({"pixel_values": pixels[:2]}, torch.tensor([0, 1])),
        damping=0.1,
        max_iter=5,
    )
    assert torch.isfinite(out.vector).all()


FAMILIES = {
    "bert": lambda: transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=4, num_hidden_layers=1, num_attention_heads=2, intermediate_size=4,
        max_position_embeddings=8, type_vocab_size=2, num_labels=3),
    "distilbert": lambda: transformers.DistilBertConfig(
        vocab_size=VOCAB, dim=4, n_layers=1, n_heads=2, hidden_dim=4, max_position_embeddings=8, num_labels=3),
    "roberta": lambda: transformers.RobertaConfig(
        vocab_size=VOCAB, hidden_size=4, num_hidden_layers=1, num_attention_heads=2, intermediate_size=4,
        max_position_embeddings=LENGTH + 2, type_vocab_size=1, pad_token_id=0, num_labels=3),
    "gpt2": lambda: transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=4, n_layer=1, n_head=2, n_positions=8, pad_token_id=0, num_labels=3),
}  # fmt: skip


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_selection_takes_whole_embedding_coordinates_in_every_family(family):
    """Token (and position / segment) embeddings are layers like the others: each one that runs
    gives int(ratio · its size) entries, as whole columns (every token's coordinate j) plus part of
    one more, and an edit moves embedding entries only inside the selection."""
    torch.manual_seed(0)
    model = huggingface.build(FAMILIES[family]().to_dict()).double().eval()
    x, y = token_data()
    ratio = 0.3
    idx = gif.select(model, (x, y), strategy="highest_gradients", ratio=ratio)
    space = gif.params.ParamSpace(model)
    embeddings = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Embedding)]
    assert embeddings
    for name, module in embeddings:
        slot = space.slot(f"{name}.weight")
        rows, dim = module.weight.shape
        local = idx[(idx >= slot.offset) & (idx < slot.stop)] - slot.offset
        assert local.numel() == int(ratio * rows * dim), name
        counts = torch.bincount(local % dim, minlength=dim)
        whole, partial = int((counts == rows).sum()), counts[(counts > 0) & (counts < rows)]
        assert whole == int(ratio * rows * dim) // rows and partial.numel() <= 1, (name, counts.tolist())
    result = gif.remove(model, (x, y), torch.arange(4), selection="highest_gradients", ratio=ratio,
                        newton_steps=1, hessian_samples=16, step="newton", damping=1.0)  # fmt: skip
    moved = torch.nonzero(result.delta).flatten()
    assert moved.numel() > 0 and bool(torch.isin(moved, result.params).all())
    words = space.slot(f"{embeddings[0][0]}.weight")  # the token embeddings come first in every family
    assert bool(((moved >= words.offset) & (moved < words.stop)).any())  # they take part in the edit
