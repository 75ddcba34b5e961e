"""Safe loading and saving of checkpoints and datasets.

Formats are recognised by content, never by file extension. Safetensors headers are validated
by hand before the library reads them, so that a malformed file fails with a precise message.
Pickle-based PyTorch files are only ever opened with ``torch.load(weights_only=True)``: a file
that would need arbitrary code to load is refused, not executed.
"""

from __future__ import annotations

from ._safetensors import MAX_HEADER_BYTES
from .checkpoints import MIN_TORCH_VERSION, describe_checkpoint, load_checkpoint, load_state, save_checkpoint
from .datasets import (
    check_labels,
    describe_dataset,
    infer_num_classes,
    load_dataset,
    load_sample_ids,
    save_dataset,
)

__all__ = [
    "MAX_HEADER_BYTES",
    "MIN_TORCH_VERSION",
    "check_labels",
    "describe_checkpoint",
    "describe_dataset",
    "infer_num_classes",
    "load_checkpoint",
    "load_dataset",
    "load_sample_ids",
    "load_state",
    "save_checkpoint",
    "save_dataset",
]
