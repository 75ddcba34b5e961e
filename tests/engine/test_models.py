"""Built-in architectures, the registry and entry-point discovery."""

from __future__ import annotations

import importlib.metadata

import pytest
import torch
from torch import nn

import gif.models
from gif.errors import InvalidArgumentError, ModelTooLargeError, UnknownArchitectureError
from gif.models import registry

# name -> (small config, input for a batch of 2, num_classes)
SMALL = {
    "mlp": (
        {"input_shape": [1, 4, 4], "hidden_sizes": [8, 8], "num_classes": 3, "dropout": 0.1},
        (2, 1, 4, 4),
        3,
    ),
    "tinynet": ({"image_size": 8, "num_classes": 4}, (2, 1, 8, 8), 4),
    "lenet": ({"image_size": 8, "in_channels": 3}, (2, 3, 8, 8), 10),
    "vgg11": ({"image_size": 8, "width": 8, "num_classes": 5}, (2, 3, 8, 8), 5),
    "resnet18": ({"width": 4, "num_classes": 7}, (2, 3, 8, 8), 7),
    "cnn1d": ({"length": 16, "channels": 4, "in_channels": 2}, (2, 2, 16), 10),
}
DEFAULT_INPUT = {
    "mlp": (2, 1, 8, 8),
    "tinynet": (2, 1, 28, 28),
    "lenet": (2, 1, 28, 28),
    "vgg11": (2, 3, 32, 32),
    "resnet18": (2, 3, 16, 16),  # global pooling: any size works, smaller is faster
    "cnn1d": (2, 1, 64),
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture
def clean_registry(monkeypatch):
    """Isolate registrations and entry-point state from other tests."""
    monkeypatch.setattr(registry, "_registry", dict(registry.BUILTINS))
    monkeypatch.setattr(registry, "_entry_points_loaded", False)


def test_available_lists_builtins():
    assert set(gif.models.BUILTINS) <= set(gif.models.available())
    assert {"mlp", "tinynet", "lenet", "vgg11", "resnet18", "cnn1d", "embed"} <= set(gif.models.available())


@pytest.mark.parametrize("name", sorted(DEFAULT_INPUT))
def test_builtin_default_config_forward(name):
    model = gif.models.build(name)
    assert model(torch.randn(DEFAULT_INPUT[name])).shape == (2, 10)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_builtin_small_config_forward(name):
    config, shape, classes = SMALL[name]
    model = gif.models.build(name, **config)
    assert model(torch.randn(shape)).shape == (2, classes)


def test_embed_forward_on_token_ids():
    model = gif.models.build("embed", vocab_size=20, embed_dim=4, num_classes=3, seq_len=6)
    assert model(torch.randint(0, 20, (5, 6))).shape == (5, 3)
    assert gif.models.build("embed")(torch.randint(0, 100, (2, 9))).shape == (2, 2)
    with pytest.raises(InvalidArgumentError, match="length 6"):
        model(torch.randint(0, 20, (5, 7)))


def test_tinynet_parameter_count_matches_paper():
    assert n_params(gif.models.build("tinynet", image_size=28)) == 398_090


def test_tinynet_and_lenet_work_on_tiny_images():
    for name in ("tinynet", "lenet"):
        assert gif.models.build(name, image_size=8)(torch.zeros(1, 1, 8, 8)).shape == (1, 10)


def test_lenet_rejects_images_too_small():
    with pytest.raises(InvalidArgumentError, match="image_size"):
        gif.models.build("lenet", image_size=2)


def test_sizes_the_allocator_refuses_are_a_model_too_large_error():
    """10¹² inputs × 10⁶ hidden units is 4·10¹⁸ bytes of weights: torch's allocator raised a bare
    RuntimeError."""
    with pytest.raises(ModelTooLargeError, match="architecture 'mlp': its parameters do not fit in memory"):
        gif.models.build("mlp", input_shape=[10**12], hidden_sizes=[10**6], num_classes=3)


def test_construction_is_deterministic_under_seed():
    torch.manual_seed(3)
    a = gif.models.build("lenet", image_size=8)
    torch.manual_seed(3)
    b = gif.models.build("lenet", image_size=8)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def test_mlp_structure():
    model = gif.models.build("mlp", input_shape=(2, 3), hidden_sizes=[5], num_classes=4, dropout=0.5)
    kinds = [type(m) for m in model]
    assert kinds == [nn.Flatten, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert model[1].in_features == 6
    linear = gif.models.build("mlp", input_shape=[3], hidden_sizes=[], num_classes=2)
    assert [type(m) for m in linear] == [nn.Flatten, nn.Linear]


def test_vgg_skips_pools_on_small_images():
    model = gif.models.build("vgg11", image_size=8, width=8)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 3
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 8


def test_unknown_architecture_names_known_ones(clean_registry):
    with pytest.raises(UnknownArchitectureError, match="tinynet") as info:
        gif.models.build("nope")
    assert "nope" in str(info.value) and info.value.code == "invalid_input"


@pytest.mark.parametrize(
    ("config", "argument"),
    [
        ({"bogus": 1}, "bogus"),
        ({"num_classes": "10"}, "num_classes"),
        ({"num_classes": 0}, "num_classes"),
        ({"image_size": 28.0}, "image_size"),
        ({"in_channels": True}, "in_channels"),
    ],
)
def test_bad_config_names_the_argument(config, argument):
    with pytest.raises(InvalidArgumentError, match=argument):
        gif.models.build("tinynet", **config)


def test_bad_mlp_config():
    with pytest.raises(InvalidArgumentError, match="dropout"):
        gif.models.build("mlp", dropout=1.0)
    with pytest.raises(InvalidArgumentError, match=r"input_shape\[1\]"):
        gif.models.build("mlp", input_shape=[1, -8, 8])
    with pytest.raises(InvalidArgumentError, match="hidden_sizes"):
        gif.models.build("mlp", hidden_sizes="64")


def test_factory_type_error_becomes_invalid_argument(clean_registry):
    def factory(**config):
        raise TypeError("width must be an int")

    gif.models.register("raises", factory)
    with pytest.raises(InvalidArgumentError, match="width must be an int"):
        gif.models.build("raises", width="x")


def test_register_function_and_decorator(clean_registry):
    gif.models.register("lin", lambda *, n=3: nn.Linear(n, 2))
    assert gif.models.build("lin", n=5).in_features == 5

    @gif.models.register("deco")
    def deco(*, hidden: int = 4) -> nn.Module:
        return nn.Linear(hidden, 2)

    assert deco(hidden=2).in_features == 2  # the decorator returns the function unchanged
    assert {"lin", "deco"} <= set(gif.models.available())
    with pytest.raises(InvalidArgumentError, match="already registered"):
        gif.models.register("lin", lambda: nn.Linear(1, 1))
    with pytest.raises(InvalidArgumentError, match="callable"):
        gif.models.register("x", 42)


def test_factory_must_return_a_module(clean_registry):
    gif.models.register("notamodule", lambda: "hello")
    with pytest.raises(InvalidArgumentError, match=r"nn\.Module"):
        gif.models.build("notamodule")


class FakeEntryPoint:
    def __init__(self, name, factory=None, error=None):
        self.name, self.value = name, f"fake_pkg:{name}"
        self._factory, self._error = factory, error

    def load(self):
        if self._error is not None:
            raise self._error
        return self._factory


def test_entry_points_register_lazily_and_broken_ones_only_warn(clean_registry, monkeypatch):
    calls = []

    def fake_entry_points(*, group):
        calls.append(group)
        return [
            FakeEntryPoint("plugin_net", factory=lambda *, k=2: nn.Linear(4, k)),
            FakeEntryPoint("broken_net", error=ImportError("no module named fake_pkg")),
            FakeEntryPoint("tinynet", factory=lambda: nn.Linear(1, 1)),
        ]

    monkeypatch.setattr(importlib.metadata, "entry_points", fake_entry_points)
    gif.models.build("mlp")
    assert calls == []  # built-ins never trigger discovery

    with pytest.warns(RuntimeWarning) as record:
        model = gif.models.build("plugin_net", k=3)
    assert calls == ["gif.models"] and model.out_features == 3
    messages = " ".join(str(w.message) for w in record)
    assert "broken_net" in messages and "no module named fake_pkg" in messages
    assert "shadow a built-in" in messages

    names = gif.models.available()
    assert "plugin_net" in names and "broken_net" not in names
    assert calls == ["gif.models"]  # scanned only once
    assert n_params(gif.models.build("tinynet")) == 398_090  # built-in not replaced
    with pytest.raises(UnknownArchitectureError):
        gif.models.build("broken_net")


def test_entry_point_listing_failure_only_warns(clean_registry, monkeypatch):
    def failing_entry_points(*, group):
        raise RuntimeError("corrupt metadata")

    monkeypatch.setattr(importlib.metadata, "entry_points", failing_entry_points)
    with pytest.warns(RuntimeWarning, match="corrupt metadata"):
        assert "mlp" in gif.models.available()


def test_reload_entry_points_rescans(clean_registry, monkeypatch):
    found = []
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda *, group: list(found))
    assert "late" not in gif.models.available()
    found.append(FakeEntryPoint("late", factory=lambda: nn.Linear(2, 2)))
    assert "late" not in gif.models.available()
    gif.models.reload_entry_points()
    assert "late" in gif.models.available()


def test_trainable_layers_order_and_kinds():
    model = gif.models.build("lenet", image_size=8)
    layers = gif.models.trainable_layers(model)
    assert [name for name, _ in layers] == ["0", "3", "7", "9", "11"]
    assert [type(m) for _, m in layers] == [nn.Conv2d, nn.Conv2d, nn.Linear, nn.Linear, nn.Linear]

    resnet = gif.models.build("resnet18", width=4)
    names = [name for name, _ in gif.models.trainable_layers(resnet)]
    assert names[:4] == ["0", "3.conv1", "3.conv2", "4.conv1"]
    assert "5.shortcut.0" in names and names[-1] == "13"
    assert len(names) == 1 + 16 + 3 + 1  # stem, 8 blocks x 2 convs, 3 shortcuts, head

    assert [type(m) for _, m in gif.models.trainable_layers(gif.models.build("cnn1d"))] == [
        nn.Conv1d,
        nn.Linear,
    ]
    assert [n for n, _ in gif.models.trainable_layers(gif.models.build("embed"))] == ["fc"]
