"""``save_pretrained`` folders on the client (gif_client/pretrained.py): the config read, sharded
safetensors merged into one file byte for byte, and folders without safetensors weights refused."""

from __future__ import annotations

import json

import pytest
import safetensors
import safetensors.torch
import torch
import transformers

from gif_client import pretrained


@pytest.fixture(scope="module")
def model():
    config = transformers.BertConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16,
        num_labels=3,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.AutoModelForSequenceClassification.from_config(config).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shards_merge_into_one_checkpoint_with_every_tensor(tmp_path, model, dtype):
    model.to(dtype).save_pretrained(tmp_path, max_shard_size="10KB")
    assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 1
    merged = pretrained.checkpoint_file(tmp_path, tmp_path / "merged.safetensors")
    state, expected = safetensors.torch.load_file(merged), model.state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) and state[k].dtype == dtype for k in expected)
    with safetensors.safe_open(str(merged), "pt") as f:
        assert f.metadata() == {"format": "pt"}
    assert pretrained.read_config(tmp_path)["model_type"] == "bert"
    model.float()


def test_a_single_file_is_used_as_it_is(tmp_path, model):
    model.save_pretrained(tmp_path)
    assert pretrained.checkpoint_file(tmp_path, tmp_path / "unused") == tmp_path / "model.safetensors"
    assert pretrained.is_pretrained_folder(tmp_path) and not pretrained.is_pretrained_folder(tmp_path / "x")


def test_folders_the_service_cannot_take_are_refused(tmp_path, model):
    model.save_pretrained(tmp_path, max_shard_size="10KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[0]
    (tmp_path / shard).unlink()
    with pytest.raises(ValueError, match="not a file beside it"):
        pretrained.checkpoint_file(tmp_path, tmp_path / "merged.safetensors")
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "../../etc/passwd"}})
    )
    with pytest.raises(ValueError, match="not a file beside it"):
        pretrained.checkpoint_file(tmp_path, tmp_path / "merged.safetensors")
    (tmp_path / "model.safetensors.index.json").unlink()
    with pytest.raises(ValueError, match="safe_serialization=True"):
        pretrained.checkpoint_file(tmp_path, tmp_path / "merged.safetensors")
    (tmp_path / "config.json").unlink()
    with pytest.raises(ValueError, match=r"no config\.json"):
        pretrained.read_config(tmp_path)
