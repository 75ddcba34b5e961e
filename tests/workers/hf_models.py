"""Tiny Hugging Face classifiers for the service tests, built from local configs (no hub access):
a BERT on a generated token task and a ViT on generated images, each trained for a second or two.

The token task: sequences of ``LENGTH`` ids from a vocabulary of ``VOCAB``; the class is decided
by the first token (``id % 3``), the rest is noise, and the last two positions of every third
sequence are padding (mask 0, id 0), so the attention mask matters.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from torch import nn

VOCAB, LENGTH, CLASSES = 24, 8, 3


def bert_config(**changes: object) -> transformers.BertConfig:
    settings = dict(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
        max_position_embeddings=16, type_vocab_size=1, num_labels=CLASSES, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    settings.update(changes)
    return transformers.BertConfig(**settings)


def token_task(n: int, seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, LENGTH), generator=gen)
    mask = torch.ones(n, LENGTH, dtype=torch.long)
    mask[::3, -2:] = 0
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask}, ids[:, 0] % CLASSES


def vit_config(**changes: object) -> transformers.ViTConfig:
    settings = dict(
        image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16, num_labels=CLASSES, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    settings.update(changes)
    return transformers.ViTConfig(**settings)


def image_task(n: int, seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Images whose class is the quadrant that is bright."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % CLASSES
    pixels = 0.1 * torch.randn(n, 1, 8, 8, generator=gen)
    for c in range(CLASSES):
        row, col = divmod(c, 2)
        pixels[labels == c, :, 4 * row : 4 * row + 4, 4 * col : 4 * col + 4] += 1.0
    return {"pixel_values": pixels}, labels


def train(config: transformers.PretrainedConfig, x: dict[str, torch.Tensor], y: torch.Tensor,
          steps: int = 60, seed: int = 0) -> nn.Module:  # fmt: skip
    """Full-batch Adam from a seeded initialisation; returned in eval mode."""
    torch.manual_seed(seed)
    if isinstance(config, transformers.ViTConfig):
        model = transformers.AutoModelForImageClassification.from_config(config)
    else:
        model = transformers.AutoModelForSequenceClassification.from_config(config)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.05)
    model.train()
    for _ in range(steps):
        optimiser.zero_grad()
        model(**x, labels=y).loss.backward()
        optimiser.step()
    return model.eval()


def accuracy_per_class(model: nn.Module, x: dict[str, torch.Tensor], y: torch.Tensor) -> list[float]:
    with torch.no_grad():
        predicted = model(**x).logits.argmax(1)
    return [float((predicted[y == c] == c).double().mean()) for c in range(CLASSES)]


def save(model: nn.Module, folder: Path, **options: object) -> Path:
    """``save_pretrained`` into ``folder`` (safetensors)."""
    model.save_pretrained(folder, **options)
    return folder
