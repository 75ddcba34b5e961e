"""Built-in classifier architectures.

Every factory takes keyword-only arguments with defaults, validates them (raising
:class:`~gif.errors.InvalidArgumentError` naming the argument) and returns a freshly initialised
``nn.Module`` that maps a batch of inputs to logits ``[batch, num_classes]``. Construction uses
only PyTorch's default initialisers, so it is deterministic under ``torch.manual_seed``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from numbers import Integral, Real

import torch
from torch import nn

from .._util import eval_mode
from ..errors import InvalidArgumentError

TRAINABLE_LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Linear)

_VGG11_PLAN: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


def _int(name: str, value: object) -> int:
    # bool is an Integral subclass, but `num_classes=True` is never what the caller meant.
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise InvalidArgumentError(f"`{name}` must be an integer, got {type(value).__name__} {value!r}")
    if value < 1:
        raise InvalidArgumentError(f"`{name}` must be >= 1, got {value}")
    return int(value)


def _ints(name: str, value: object, *, allow_empty: bool = False) -> tuple[int, ...]:
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise InvalidArgumentError(f"`{name}` must be a list or tuple of integers, got {value!r}")
    if not value and not allow_empty:
        raise InvalidArgumentError(f"`{name}` must not be empty")
    return tuple(_int(f"{name}[{i}]", v) for i, v in enumerate(value))


def _probability(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not 0.0 <= float(value) < 1.0:
        raise InvalidArgumentError(f"`{name}` must be a number in [0, 1), got {value!r}")
    return float(value)


@torch.no_grad()
def _flat_size(module: nn.Module, input_shape: tuple[int, ...], what: str) -> int:
    """Features per sample that ``module`` produces for one input of ``input_shape`` (a dry run)."""
    try:
        with eval_mode(module):  # eval mode: BatchNorm must not update its running statistics here
            out = module(torch.zeros(1, *input_shape))
    except RuntimeError as exc:
        raise InvalidArgumentError(f"{what} is too small for this architecture: {exc}") from None
    if out.numel() == 0:
        raise InvalidArgumentError(f"{what} is too small for this architecture")
    return out.numel()


def mlp(
    *,
    input_shape: Sequence[int] = (1, 8, 8),
    hidden_sizes: Sequence[int] = (64,),
    num_classes: int = 10,
    dropout: float = 0.0,
) -> nn.Module:
    """Multi-layer perceptron: Flatten -> [Linear -> ReLU (-> Dropout)]* -> Linear.

    Args:
        input_shape: Shape of one sample (without the batch dimension).
        hidden_sizes: Width of each hidden layer; empty for a linear (softmax-regression) model.
        num_classes: Number of output logits.
        dropout: Dropout probability after each hidden ReLU (0 disables it).
    """
    shape = _ints("input_shape", input_shape)
    hidden = _ints("hidden_sizes", hidden_sizes, allow_empty=True)
    classes, p = _int("num_classes", num_classes), _probability("dropout", dropout)
    features = math.prod(shape)
    layers: list[nn.Module] = [nn.Flatten()]
    for width in hidden:
        layers += [nn.Linear(features, width), nn.ReLU()]
        if p > 0:
            layers.append(nn.Dropout(p))
        features = width
    layers.append(nn.Linear(features, classes))
    return nn.Sequential(*layers)


def tinynet(*, in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> nn.Module:
    """TinyNet from the GIF paper: four 3x3 stride-2 convolutions (32-64-128-256) and a Linear.

    With ``image_size=28`` the spatial size goes 28 -> 14 -> 7 -> 4 -> 2, giving 1024 features and
    398,090 parameters for 10 classes.
    """
    channels = _int("in_channels", in_channels)
    classes, size = _int("num_classes", num_classes), _int("image_size", image_size)
    layers: list[nn.Module] = []
    for width in (32, 64, 128, 256):
        layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.ReLU()]
        channels = width
        size = (size + 1) // 2  # a 3x3 stride-2 conv with padding 1 gives ceil(size / 2)
    layers += [nn.Flatten(), nn.Linear(channels * size * size, classes)]
    return nn.Sequential(*layers)


def lenet(*, in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> nn.Module:
    """LeNet-5 style network: conv5x5(6) -> pool -> conv5x5(16) -> pool -> fc120 -> fc84 -> fc.

    The convolutions are padded to keep the spatial size, so any ``image_size >= 4`` works.
    """
    channels = _int("in_channels", in_channels)
    classes, size = _int("num_classes", num_classes), _int("image_size", image_size)
    features = nn.Sequential(
        nn.Conv2d(channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
    )  # fmt: skip
    n = _flat_size(features, (channels, size, size), f"image_size={size}")
    head = [nn.Linear(n, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, classes)]
    return nn.Sequential(*features, *head)


def vgg11(*, in_channels: int = 3, num_classes: int = 10, image_size: int = 32, width: int = 64) -> nn.Module:
    """VGG-11 with BatchNorm; channel counts scaled by ``width / 64``.

    Max-pools that would shrink the feature map below 1x1 are left out, so small images work.
    """
    channels = _int("in_channels", in_channels)
    classes, size, w = _int("num_classes", num_classes), _int("image_size", image_size), _int("width", width)
    layers: list[nn.Module] = []
    for step in _VGG11_PLAN:
        if step == "M":
            if size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            continue
        out = max(1, int(step) * w // 64)
        layers += [nn.Conv2d(channels, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
        channels = out
    layers += [nn.Flatten(), nn.Linear(channels * size * size, classes)]
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv+BN, with a 1x1 conv+BN shortcut when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


def resnet18(*, in_channels: int = 3, num_classes: int = 10, width: int = 64) -> nn.Module:
    """CIFAR-style ResNet-18: 3x3 stem, no max-pool, BasicBlocks [2, 2, 2, 2], global average pool."""
    channels = _int("in_channels", in_channels)
    classes, w = _int("num_classes", num_classes), _int("width", width)
    layers: list[nn.Module] = [nn.Conv2d(channels, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
    channels = w
    for stage, stride in enumerate((1, 2, 2, 2)):
        out = w * 2**stage
        layers += [BasicBlock(channels, out, stride), BasicBlock(out, out, 1)]
        channels = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes)]
    return nn.Sequential(*layers)


def cnn1d(*, in_channels: int = 1, length: int = 64, num_classes: int = 10, channels: int = 16) -> nn.Module:
    """Small 1-D convolutional classifier: Conv1d(k=3) -> ReLU -> global average pool -> Linear.

    ``length`` documents the expected sequence length; the global pool accepts any length.
    """
    cin = _int("in_channels", in_channels)
    _int("length", length)
    classes, c = _int("num_classes", num_classes), _int("channels", channels)
    return nn.Sequential(
        nn.Conv1d(cin, c, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(c, classes),
    )  # fmt: skip


class MeanEmbeddingClassifier(nn.Module):
    """Token ids ``[batch, seq]`` -> embedding -> mean over the sequence -> Linear."""

    def __init__(self, vocab_size: int, embed_dim: int, num_classes: int, seq_len: int | None) -> None:
        super().__init__()
        self.seq_len = seq_len
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.fc = nn.Linear(embed_dim, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.seq_len is not None and tokens.shape[-1] != self.seq_len:
            raise InvalidArgumentError(f"expected sequences of length {self.seq_len}, got {tokens.shape[-1]}")
        return self.fc(self.embedding(tokens).mean(dim=-2))


def embed(
    *, vocab_size: int = 100, embed_dim: int = 16, num_classes: int = 2, seq_len: int | None = None
) -> nn.Module:
    """Bag-of-embeddings text classifier over int64 token ids ``[batch, seq]``.

    Args:
        vocab_size: Number of distinct token ids.
        embed_dim: Embedding width.
        num_classes: Number of output logits.
        seq_len: If given, inputs must have exactly this sequence length.
    """
    length = None if seq_len is None else _int("seq_len", seq_len)
    return MeanEmbeddingClassifier(
        _int("vocab_size", vocab_size), _int("embed_dim", embed_dim), _int("num_classes", num_classes), length
    )


BUILTINS: dict[str, Callable[..., nn.Module]] = {
    f.__name__: f for f in (mlp, tinynet, lenet, vgg11, resnet18, cnn1d, embed)
}


def trainable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The Conv1d, Conv2d and Linear modules of ``model``, named, in ``named_modules()`` order.

    Example:
        >>> [name for name, _ in trainable_layers(tinynet())]
        ['0', '2', '4', '6', '9']
    """
    return [(name, m) for name, m in model.named_modules() if isinstance(m, TRAINABLE_LAYER_TYPES)]
