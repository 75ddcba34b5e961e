"""Checkpoint and dataset loading: round trips, validation messages and refusal of unsafe pickles."""

from __future__ import annotations

import builtins
import json
import pickle
import struct
import time
import zipfile
import zlib

import numpy as np
import pytest
import safetensors
import torch
from torch import nn

import gif.models
from gif import io
from gif.errors import (
    CheckpointError,
    DatasetError,
    InvalidArgumentError,
    NumericalError,
    UnsafeCheckpointError,
)
from tests import hostile


def small_model() -> nn.Module:
    return gif.models.build("lenet", image_size=8, num_classes=3)


def write_safetensors(path, header: dict, data: bytes, header_len: int | None = None) -> None:
    """Hand-craft a safetensors file: u64 LE header length, JSON header, data bytes."""
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if header_len is None else header_len) + raw + data)


class Canary:
    """Pickles to a call of ``open(path, "w")``: loading it with full pickle creates the file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


# ---------------------------------------------------------------------------------------------
# checkpoints: round trips


def test_safetensors_round_trip_with_metadata(tmp_path):
    state = {"w": torch.randn(3, 4), "b": torch.arange(5), "h": torch.randn(2, dtype=torch.float16)}
    io.save_checkpoint(state, tmp_path / "ck.safetensors", metadata={"arch": "x"})
    loaded = io.load_checkpoint(tmp_path / "ck.safetensors")
    assert loaded.keys() == state.keys()
    for k in state:
        assert torch.equal(loaded[k], state[k]) and loaded[k].dtype == state[k].dtype
    with safetensors.safe_open(str(tmp_path / "ck.safetensors"), framework="pt") as f:
        assert f.metadata() == {"arch": "x"}


def test_load_into_model_restores_weights(tmp_path):
    torch.manual_seed(0)
    source = gif.models.build("vgg11", image_size=8, width=8)
    io.save_checkpoint(source, tmp_path / "m.bin")  # extension is irrelevant
    torch.manual_seed(1)
    target = gif.models.build("vgg11", image_size=8, width=8)
    state = io.load_checkpoint(tmp_path / "m.bin", target)
    for k, v in source.state_dict().items():
        assert torch.equal(target.state_dict()[k], v)
        assert torch.equal(state[k], v)


def test_tied_and_view_tensors_are_saved(tmp_path):
    shared = torch.randn(3, 3)
    state = {
        "a": shared,
        "b": shared,
        "view": torch.arange(10.0)[2:5],
        "empty1": torch.zeros(0),
        "empty2": torch.zeros(0),
    }
    io.save_checkpoint(state, tmp_path / "tied.st")
    loaded = io.load_checkpoint(tmp_path / "tied.st")
    assert torch.equal(loaded["a"], shared) and torch.equal(loaded["b"], shared)
    assert loaded["view"].tolist() == [2.0, 3.0, 4.0]


def test_save_checkpoint_rejects_bad_arguments(tmp_path):
    with pytest.raises(InvalidArgumentError):
        io.save_checkpoint({"a": [1, 2]}, tmp_path / "x.st")
    with pytest.raises(InvalidArgumentError, match="metadata"):
        io.save_checkpoint({"a": torch.zeros(1)}, tmp_path / "x.st", metadata={"n": 1})


# ---------------------------------------------------------------------------------------------
# checkpoints: mismatches with the model


def test_unexpected_key_is_named(tmp_path):
    state = small_model().state_dict()
    state["extra.weight"] = torch.zeros(2)
    io.save_checkpoint(state, tmp_path / "ck.st")
    with pytest.raises(CheckpointError, match=r"unexpected key\(s\) 'extra.weight'"):
        io.load_checkpoint(tmp_path / "ck.st", small_model())


def test_missing_key_is_named_and_non_strict_tolerates_it(tmp_path):
    state = small_model().state_dict()
    del state["11.bias"]
    io.save_checkpoint(state, tmp_path / "ck.st")
    with pytest.raises(CheckpointError, match=r"missing key\(s\) '11.bias'") as info:
        io.load_checkpoint(tmp_path / "ck.st", small_model())
    assert info.value.code == "checkpoint_incompatible"
    assert "11.bias" not in io.load_checkpoint(tmp_path / "ck.st", small_model(), strict=False)


def test_wrong_shape_is_named(tmp_path):
    state = small_model().state_dict()
    state["11.weight"] = torch.zeros(3, 85)
    io.save_checkpoint(state, tmp_path / "ck.st")
    with pytest.raises(CheckpointError, match=r"'11.weight' expected \(3, 84\), got \(3, 85\)"):
        io.load_checkpoint(tmp_path / "ck.st", small_model())


def test_integer_weights_are_rejected(tmp_path):
    state = small_model().state_dict()
    state["0.bias"] = torch.zeros(6, dtype=torch.int64)
    io.save_checkpoint(state, tmp_path / "ck.st")
    with pytest.raises(CheckpointError, match=r"'0.bias' has dtype int64, expected float32"):
        io.load_checkpoint(tmp_path / "ck.st", small_model())


def test_integer_buffers_and_half_precision_weights_load(tmp_path):
    model = gif.models.build("resnet18", width=2)
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    io.save_checkpoint(state, tmp_path / "ck.st")
    io.load_checkpoint(tmp_path / "ck.st", gif.models.build("resnet18", width=2))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_raise_numerical_error(tmp_path, bad):
    state = small_model().state_dict()
    state["3.weight"][0, 0, 0, 0] = bad
    io.save_checkpoint(state, tmp_path / "ck.st")
    with pytest.raises(NumericalError, match=r"'3\.weight'") as info:
        io.load_checkpoint(tmp_path / "ck.st", small_model())
    assert info.value.code == "numerical_error"


# ---------------------------------------------------------------------------------------------
# checkpoints: malformed safetensors files


def test_truncated_file(tmp_path):
    io.save_checkpoint({"w": torch.randn(100)}, tmp_path / "ck.st")
    raw = (tmp_path / "ck.st").read_bytes()
    (tmp_path / "cut.st").write_bytes(raw[: len(raw) - 40])
    with pytest.raises(CheckpointError, match="truncated file: tensor 'w' needs bytes up to 400"):
        io.load_checkpoint(tmp_path / "cut.st")
    (tmp_path / "tiny.st").write_bytes(b"\x05\x00")
    with pytest.raises(CheckpointError, match="truncated file: 2 bytes"):
        io.load_checkpoint(tmp_path / "tiny.st")


def test_header_length_beyond_end_of_file(tmp_path):
    write_safetensors(tmp_path / "ck.st", {}, b"", header_len=10_000)
    with pytest.raises(CheckpointError, match="header length 10000 goes beyond the end of the file"):
        io.load_checkpoint(tmp_path / "ck.st")


def test_header_length_over_limit(tmp_path):
    write_safetensors(tmp_path / "ck.st", {}, b"", header_len=200 * 1024 * 1024)
    with pytest.raises(CheckpointError, match="exceeds the 104857600-byte limit"):
        io.load_checkpoint(tmp_path / "ck.st")


def test_overlapping_offsets(tmp_path):
    header = {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
    }
    write_safetensors(tmp_path / "ck.st", header, bytes(12))
    with pytest.raises(CheckpointError, match="'a' and 'b' have overlapping data_offsets"):
        io.load_checkpoint(tmp_path / "ck.st")


def test_offsets_not_matching_dtype_and_shape(tmp_path):
    write_safetensors(
        tmp_path / "ck.st", {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8)
    )
    with pytest.raises(CheckpointError, match=r"'a': data_offsets span 8 bytes but F32\[3\] needs 12"):
        io.load_checkpoint(tmp_path / "ck.st")


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}}, "invalid data_offsets"),
        ({"a": {"dtype": "XX", "shape": [1], "data_offsets": [0, 4]}}, "unsupported dtype 'XX'"),
        ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, "invalid shape"),
        ({"a": {"dtype": "F32", "shape": [1]}}, "needs dtype, shape and data_offsets"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, "gap in the data section"),
        ({"__metadata__": {"k": 1}}, "__metadata__"),
    ],
)
def test_malformed_headers(tmp_path, header, message):
    write_safetensors(tmp_path / "ck.st", header, bytes(8))
    with pytest.raises(CheckpointError, match=message):
        io.load_checkpoint(tmp_path / "ck.st")


def test_unrecognised_content_and_missing_file(tmp_path):
    (tmp_path / "junk").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00hello")
    with pytest.raises(CheckpointError, match="not JSON"):
        io.load_checkpoint(tmp_path / "junk")
    with pytest.raises(CheckpointError, match="cannot open"):
        io.load_checkpoint(tmp_path / "does-not-exist")


def test_a_path_or_model_of_the_wrong_type_is_named(tmp_path):
    """Not a path (None; an int, which open() would take as a file descriptor) or not a model: the
    argument is named (Python's TypeError / AttributeError escaped before)."""
    for bad in (None, 3, ["a"]):
        with pytest.raises(InvalidArgumentError, match="`path` must be a file path"):
            io.load_checkpoint(bad)
        with pytest.raises(InvalidArgumentError, match="`path` must be a file path"):
            io.load_dataset(bad)
    path = tmp_path / "w.safetensors"
    io.save_checkpoint(nn.Linear(2, 2), path)
    with pytest.raises(InvalidArgumentError, match=r"`model` must be a torch\.nn\.Module"):
        io.load_checkpoint(path, "model")


# ---------------------------------------------------------------------------------------------
# checkpoints: PyTorch files


@pytest.mark.parametrize("wrap", [None, "state_dict", "model"])
def test_torch_save_state_dicts_load(tmp_path, wrap):
    model = small_model()
    obj = model.state_dict() if wrap is None else {wrap: model.state_dict(), "epoch": 3}
    torch.save(obj, tmp_path / "ck.pt")
    target = small_model()
    io.load_checkpoint(tmp_path / "ck.pt", target)
    assert all(torch.equal(target.state_dict()[k], v) for k, v in model.state_dict().items())


def test_legacy_torch_format_loads(tmp_path):
    state = {"w": torch.randn(3)}
    torch.save(state, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    assert torch.equal(io.load_checkpoint(tmp_path / "old.pt")["w"], state["w"])


@pytest.mark.parametrize("obj", [[torch.zeros(1)], {"a": {"b": torch.zeros(1)}}, {"a": 1}, {}])
def test_torch_file_without_state_dict_is_rejected(tmp_path, obj):
    torch.save(obj, tmp_path / "ck.pt")
    with pytest.raises(CheckpointError) as info:
        io.load_checkpoint(tmp_path / "ck.pt")
    assert not isinstance(info.value, UnsafeCheckpointError)


def test_corrupt_zip_is_a_checkpoint_error(tmp_path):
    torch.save({"w": torch.randn(100)}, tmp_path / "ck.pt")
    raw = (tmp_path / "ck.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(raw[:200])
    with pytest.raises(CheckpointError, match="cannot read PyTorch checkpoint"):
        io.load_checkpoint(tmp_path / "cut.pt")


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_code_executing_pickle_is_refused_and_never_runs(tmp_path, writer):
    canary = tmp_path / "canary"
    path = tmp_path / "evil.safetensors"  # a misleading extension must not matter
    payload = {"weight": torch.zeros(2), "evil": Canary(canary)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(UnsafeCheckpointError, match="would execute code") as info:
        io.load_checkpoint(path, small_model())
    assert info.value.code == "checkpoint_unsafe"
    assert not canary.exists()
    pickle.loads(pickle.dumps(Canary(canary)))  # sanity check: a plain unpickle does create it
    assert canary.exists()


def test_old_torch_refuses_pickles(tmp_path, monkeypatch):
    torch.save({"w": torch.zeros(1)}, tmp_path / "ck.pt")
    monkeypatch.setattr(io.checkpoints, "_torch_version", lambda: torch.torch_version.TorchVersion("2.5.1"))
    with pytest.raises(UnsafeCheckpointError, match=r"2\.5\.1"):
        io.load_checkpoint(tmp_path / "ck.pt")
    io.save_checkpoint({"w": torch.zeros(1)}, tmp_path / "ck.st")
    assert "w" in io.load_checkpoint(tmp_path / "ck.st")  # safetensors needs no pickle


def test_describe_checkpoint():
    info = io.describe_checkpoint(gif.models.build("tinynet").state_dict())
    assert info["n_params"] == 398_090 and info["n_tensors"] == 10
    assert info["tensors"][0] == {"name": "0.weight", "shape": [32, 1, 3, 3], "dtype": "float32"}


# ---------------------------------------------------------------------------------------------
# datasets


def test_dataset_round_trip_safetensors(tmp_path):
    x, y = torch.randn(6, 1, 4, 4), torch.tensor([0, 1, 2, 1, 0, 2])
    io.save_dataset(x, y, tmp_path / "d.st")
    lx, ly = io.load_dataset(tmp_path / "d.st")
    assert torch.equal(lx, x) and torch.equal(ly, y) and ly.dtype == torch.int64


def test_dataset_round_trip_npz_with_conversions_and_extra_keys(tmp_path):
    x = np.random.rand(5, 3).astype(np.float16)
    y = np.array([0, 1, 1, 0, 3], dtype=np.int32)
    np.savez(tmp_path / "d.npz", inputs=x, labels=y, notes=np.array(["ignored"]))
    lx, ly = io.load_dataset(tmp_path / "d.npz")
    assert lx.dtype == torch.float32 and ly.dtype == torch.int64
    assert np.allclose(lx.numpy(), x) and ly.tolist() == [0, 1, 1, 0, 3]


def test_dataset_dtypes(tmp_path):
    np.savez(tmp_path / "f64.npz", inputs=np.zeros((2, 3)), labels=np.array([0, 1]))
    assert io.load_dataset(tmp_path / "f64.npz")[0].dtype == torch.float64
    io.save_dataset(
        torch.randint(0, 50, (4, 7), dtype=torch.int32), torch.tensor([0, 1, 0, 1]), tmp_path / "tok.st"
    )
    assert io.load_dataset(tmp_path / "tok.st")[0].dtype == torch.int64


def test_npz_object_arrays_are_rejected(tmp_path):
    np.savez(tmp_path / "d.npz", inputs=np.array([{"a": 1}, None], dtype=object), labels=np.array([0, 1]))
    with pytest.raises(DatasetError, match="object"):
        io.load_dataset(tmp_path / "d.npz")


@pytest.mark.parametrize("fmt", ["npz", "safetensors"])
def test_missing_labels(tmp_path, fmt):
    path = tmp_path / f"d.{fmt}"
    if fmt == "npz":
        np.savez(path, inputs=np.zeros((2, 3), dtype=np.float32))
    else:
        safetensors.torch.save_file({"inputs": torch.zeros(2, 3)}, str(path))
    with pytest.raises(DatasetError, match="no 'labels' array") as info:
        io.load_dataset(path)
    assert info.value.code == "dataset_incompatible"


@pytest.mark.parametrize(
    ("inputs", "labels", "error", "message"),
    [
        (np.zeros((3, 2), np.float32), np.array([0, 1]), DatasetError, "3 samples but labels have 2"),
        (np.zeros((2, 2), np.float32), np.array([0.0, 1.0]), DatasetError, "labels must be integers"),
        (np.zeros((2, 2), np.float32), np.array([0, -4]), DatasetError, "negative, e.g. -4"),
        (np.zeros((2, 2), np.float32), np.array([[0], [1]]), DatasetError, "labels must be 1-D"),
        (np.zeros((0, 2), np.float32), np.zeros(0, np.int64), DatasetError, "non-empty"),
        (np.zeros((2, 2), bool), np.array([0, 1]), DatasetError, "inputs must be floating or integer"),
        (np.array([[0.0, np.nan], [1.0, 2.0]], np.float32), np.array([0, 1]), NumericalError, "1 NaN/Inf"),
    ],
)
def test_invalid_datasets(tmp_path, inputs, labels, error, message):
    np.savez(tmp_path / "d.npz", inputs=inputs, labels=labels)
    with pytest.raises(error, match=message):
        io.load_dataset(tmp_path / "d.npz")


def test_single_npy_and_garbage_are_rejected(tmp_path):
    np.save(tmp_path / "d.npy", np.zeros(3))
    with pytest.raises(DatasetError, match=r"single \.npy"):
        io.load_dataset(tmp_path / "d.npy")
    (tmp_path / "bad.zip").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(DatasetError, match="cannot read npz"):
        io.load_dataset(tmp_path / "bad.zip")
    write_safetensors(tmp_path / "bad.st", {}, b"", header_len=999)
    with pytest.raises(DatasetError, match="beyond the end"):
        io.load_dataset(tmp_path / "bad.st")


def test_save_dataset_validates():
    with pytest.raises(DatasetError, match="labels must be integers"):
        io.save_dataset(torch.zeros(2, 2), torch.tensor([0.0, 1.0]), "unused.st")
    # what torch cannot make a tensor of is named (a bare TypeError / RuntimeError before)
    with pytest.raises(DatasetError, match="`inputs` must be a tensor or an array, got 'abc'"):
        io.save_dataset("abc", [0, 1], "unused.st")
    with pytest.raises(DatasetError, match="`labels` must be a tensor or an array of integers, got None"):
        io.save_dataset(torch.zeros(2, 2), None, "unused.st")
    with pytest.raises(DatasetError, match="input `ids` must be a tensor or an array"):
        io.save_dataset({"ids": ["a", "b"]}, [0, 1], "unused.st")
    with pytest.raises(DatasetError, match="`sample_ids` must be a tensor or an array of integers"):
        io.save_dataset(torch.zeros(2, 2), [0, 1], "unused.st", sample_ids=object())


def test_describe_dataset():
    info = io.describe_dataset(torch.zeros(5, 1, 8, 8), torch.tensor([0, 2, 2, 0, 2]))
    assert info == {
        "n_samples": 5,
        "input_shape": [1, 8, 8],
        "input_dtype": "float32",
        "num_classes_seen": 3,
        "label_counts": [2, 0, 3],
        "sample_ids": False,
    }
    assert (
        io.describe_dataset(torch.zeros(2, 3), torch.tensor([0, 1]), torch.tensor([7, 9]))["sample_ids"]
        is True
    )


def test_sample_ids_round_trip_and_are_never_an_input(tmp_path):
    x, y, ids = torch.randn(4, 3), torch.tensor([0, 1, 1, 0]), torch.tensor([1001, 7, -3, 2**40])
    io.save_dataset(x, y, tmp_path / "plain.st", sample_ids=ids)
    lx, ly = io.load_dataset(tmp_path / "plain.st")
    assert torch.equal(lx, x) and torch.equal(ly, y)
    assert io.load_sample_ids(tmp_path / "plain.st", 4).tolist() == ids.tolist()
    named = {"input_ids": torch.tensor([[1, 2], [3, 4], [5, 6], [7, 8]]), "attention_mask": torch.ones(4, 2)}
    io.save_dataset(named, y, tmp_path / "named.st", sample_ids=ids)
    nx, _ = io.load_dataset(tmp_path / "named.st")
    assert set(nx) == {"input_ids", "attention_mask"}  # not passed to the model as a keyword
    loaded = io.load_sample_ids(tmp_path / "named.st", 4)
    assert loaded.dtype == torch.int64 and loaded.tolist() == ids.tolist()
    np.savez(
        tmp_path / "d.npz", inputs=x.numpy(), labels=y.numpy(), sample_ids=np.array([5, 6, 7, 8], np.int32)
    )
    assert io.load_sample_ids(tmp_path / "d.npz", 4).tolist() == [5, 6, 7, 8]
    io.save_dataset(x, y, tmp_path / "none.st")
    assert io.load_sample_ids(tmp_path / "none.st", 4) is None


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        (np.array([3, 8, 3, 1]), r"must be distinct: 3 appears 2 times \(rows \[0, 2\]\)"),
        (np.array([1, 2, 3]), "holds 3 ids for 4 samples"),
        (np.array([1.0, 2.0, 3.0, 4.0]), "1-D integer array"),
        (np.array([[1, 2], [3, 4]]), "1-D integer array"),
    ],
)
def test_bad_sample_ids_are_dataset_errors(tmp_path, ids, message):
    np.savez(
        tmp_path / "d.npz", inputs=np.zeros((4, 2), np.float32), labels=np.zeros(4, np.int64), sample_ids=ids
    )
    io.load_dataset(tmp_path / "d.npz")  # the inputs and labels themselves are fine
    with pytest.raises(DatasetError, match=message):
        io.load_sample_ids(tmp_path / "d.npz", 4)
    with pytest.raises(DatasetError, match=message):
        io.save_dataset(
            torch.zeros(4, 2),
            torch.zeros(4, dtype=torch.long),
            tmp_path / "x.st",
            sample_ids=torch.as_tensor(ids),
        )


def test_check_labels():
    io.check_labels(torch.tensor([0, 1, 2]), 3)
    with pytest.raises(DatasetError, match=r"2 label\(s\) outside \[0, 3\): 7 \(x2\)") as info:
        io.check_labels(torch.tensor([0, 7, 1, 7]), 3)
    assert info.value.details["count"] == 2
    with pytest.raises(DatasetError, match=r"-1 \(x1\), 3 \(x1\)"):
        io.check_labels(torch.tensor([-1, 3]), 3)
    with pytest.raises(InvalidArgumentError, match="num_classes"):
        io.check_labels(torch.tensor([0]), 0)
    with pytest.raises(DatasetError, match="`labels` must be a tensor or an array of integers, got 'abc'"):
        io.check_labels("abc", 3)


def test_infer_num_classes_keeps_training_mode():
    model = gif.models.build("vgg11", image_size=8, width=8, num_classes=7)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert io.infer_num_classes(model, torch.randn(2, 3, 8, 8)) == 7
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN stats untouched


# -- denial of service: pickle and decompression bombs (tests/hostile.py builds them) ---------------


def test_pickle_bombs_are_refused_before_unpickling(tmp_path):
    start = time.monotonic()
    with pytest.raises(UnsafeCheckpointError, match="pickle bomb"):  # hashing the key: 2**64 steps
        io.load_checkpoint(hostile.hash_bomb_pickle(tmp_path / "hash.pt"))
    with pytest.raises(UnsafeCheckpointError, match="nests tuples more than 1000 deep"):  # a C stack overflow
        io.load_checkpoint(hostile.deep_tuple_pickle(tmp_path / "deep.pt"))
    with pytest.raises(CheckpointError, match="over the limit"):  # 3.5 GiB data.pkl from 3.7 MB
        io.load_checkpoint(hostile.pt_pickle_bomb(tmp_path / "big.pt"))
    assert time.monotonic() - start < 5
    members = [(hostile.STORED, b, zlib.crc32(b), len(b)) for b in (hostile.state_dict_pickle(3), bytes(12))]
    hostile.pt_zip(tmp_path / "ok.pt", *members)
    assert torch.equal(io.load_checkpoint(tmp_path / "ok.pt")["w"], torch.zeros(3))  # the builders are sound


def test_shared_and_nested_structures_of_real_checkpoints_pass_the_pickle_check(tmp_path):
    model = small_model()
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 1, 8, 8)).sum().backward()
    optimizer.step()
    shared = (1, (2, 3))
    extra = {"shape": shared, "again": shared, "nested": [[[shared]]] * 50, ("key", 1): "tuple key"}
    checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "extra": extra}
    torch.save(checkpoint, tmp_path / "a.pt")
    torch.save(model.state_dict(), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    for name in ("a.pt", "legacy.pt"):
        state = io.load_checkpoint(tmp_path / name)
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_npz_members_are_checked_before_they_are_inflated(tmp_path):
    with pytest.raises(DatasetError, match="compressed with bzip2; only stored or deflated"):
        io.load_dataset(hostile.npz_bz2_bomb(tmp_path / "bomb.npz"))  # 4 GiB from 3 KB
    np.savez(tmp_path / "d.npz", inputs=np.zeros((4, 2), np.float32), labels=np.arange(4))
    with zipfile.ZipFile(tmp_path / "d.npz") as src, zipfile.ZipFile(tmp_path / "short.npz", "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info.filename, data[:-8] if info.filename == "inputs.npy" else data)
    with pytest.raises(DatasetError, match=r"is corrupt: its header declares float32\[4, 2\] \(32 bytes\)"):
        io.load_dataset(tmp_path / "short.npz")
    np.savez_compressed(tmp_path / "c.npz", inputs=np.zeros((4, 2), np.float32), labels=np.arange(4))
    assert io.load_dataset(tmp_path / "c.npz")[0].shape == (4, 2)


def test_every_data_pkl_of_a_zip_is_checked(tmp_path):
    """torch reads the data.pkl in the folder of the archive's first entry: a benign decoy listed
    first in another folder does not hide the bomb."""
    bomb = hostile.hash_bomb_pickle(tmp_path / "bomb.pkl").read_bytes()
    decoy = hostile.state_dict_pickle(2)
    hostile.write_zip(tmp_path / "decoy.pt", [
        ("archive/version", hostile.STORED, b"3\n", zlib.crc32(b"3\n"), 2),
        ("decoy/data.pkl", hostile.STORED, decoy, zlib.crc32(decoy), len(decoy)),
        ("archive/data.pkl", hostile.STORED, bomb, zlib.crc32(bomb), len(bomb)),
    ])  # fmt: skip
    with pytest.raises(UnsafeCheckpointError, match="pickle bomb"):
        io.load_checkpoint(tmp_path / "decoy.pt")


def test_num_classes_are_read_on_the_models_device_whatever_the_samples():
    """Workers keep datasets in host memory and the model on its device (a GPU): the probe
    follows the model ("meta" stands in for a GPU on machines without one)."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).to("meta")
    assert gif.io.infer_num_classes(model, torch.randn(1, 2, 2)) == 3
