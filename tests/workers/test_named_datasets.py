"""Datasets of named tensors (gif/io/datasets.py) as the upload inspector reads them: safetensors
and npz, loaded as a dict for the engine, described with each tensor's shape, dtype and id range;
clear refusals for tensors of different lengths, floating-point ids, negative ids, NaN/Inf and
names that cannot be keyword arguments."""

from __future__ import annotations

import numpy as np
import pytest
import safetensors.torch
import torch

import gif
from gif.errors import DatasetError, NumericalError
from workers.inspect_artifact import inspect_dataset

N = 6


def _tensors() -> dict[str, np.ndarray]:
    ids = np.arange(N * 4, dtype=np.int32).reshape(N, 4) % 11
    return {"input_ids": ids, "attention_mask": np.ones((N, 4), np.int64), "labels": np.arange(N) % 2}


@pytest.mark.parametrize("fmt", ["npz", "safetensors"])
def test_named_tensors_load_as_a_dict_and_are_described(tmp_path, fmt):
    path = tmp_path / f"data.{fmt}"
    if fmt == "npz":
        np.savez(path, **_tensors())
    else:
        safetensors.torch.save_file({k: torch.from_numpy(v) for k, v in _tensors().items()}, str(path))
    x, y = gif.io.load_dataset(path)
    assert isinstance(x, dict) and sorted(x) == ["attention_mask", "input_ids"]
    assert x["input_ids"].dtype == torch.int64 and y.tolist() == [0, 1, 0, 1, 0, 1]
    meta = inspect_dataset(path)["metadata"]
    assert meta["n_samples"] == N and "input_shape" not in meta
    assert meta["inputs"]["input_ids"] == {"shape": [4], "dtype": "int64", "min": 0, "max": 10}
    assert meta["label_counts"] == [3, 3] and meta["label_max"] == 1


def test_a_dataset_with_inputs_is_read_as_before(tmp_path):
    np.savez(
        tmp_path / "d.npz",
        inputs=np.zeros((N, 3), np.float32),
        labels=np.zeros(N, np.int64),
        extra=np.ones(2),
    )
    x, _ = gif.io.load_dataset(tmp_path / "d.npz")
    assert isinstance(x, torch.Tensor) and x.shape == (N, 3)
    assert inspect_dataset(tmp_path / "d.npz")["metadata"]["input_shape"] == [3]


def test_save_dataset_round_trips_named_tensors(tmp_path):
    x = {"pixel_values": torch.rand(N, 1, 2, 2)}
    gif.io.save_dataset(x, torch.arange(N) % 3, tmp_path / "d.safetensors")
    loaded, y = gif.io.load_dataset(tmp_path / "d.safetensors")
    assert torch.equal(loaded["pixel_values"], x["pixel_values"]) and y.tolist() == [0, 1, 2, 0, 1, 2]


@pytest.mark.parametrize(
    ("change", "error", "words"),
    [
        ({"attention_mask": np.ones((N - 1, 4))}, DatasetError, "attention_mask: 5"),
        ({"input_ids": np.ones((N, 4), np.float32)}, DatasetError, "token ids must be integers"),
        ({"input_ids": -np.ones((N, 4), np.int64)}, DatasetError, "negative ids"),
        ({"pixel_values": np.full((N, 2), np.inf, np.float32)}, NumericalError, "'pixel_values' holds"),
        ({"_private": np.ones((N, 1))}, DatasetError, "cannot be keyword arguments"),
        ({"labels": np.ones(N, np.float32)}, DatasetError, "labels must be integers"),
    ],
)
def test_bad_named_datasets_are_refused_with_a_reason(tmp_path, change, error, words):
    np.savez(tmp_path / "bad.npz", **{**_tensors(), **change})
    with pytest.raises(error, match=words):
        gif.io.load_dataset(tmp_path / "bad.npz")


def test_labels_alone_are_not_a_dataset(tmp_path):
    np.savez(tmp_path / "bad.npz", labels=np.zeros(N, np.int64))
    with pytest.raises(DatasetError, match="no inputs"):
        gif.io.load_dataset(tmp_path / "bad.npz")
