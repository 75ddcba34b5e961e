"""A Hugging Face model in a job body, checked without torch or transformers: the config's size,
its model type, remote code, labels that agree, the problem type; and the dataset checks made at
submit from recorded metadata (token ids beyond the vocabulary, sequences past the position
embeddings, labels beyond num_labels)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from jobs import huggingface, specs

CHECKPOINT, TRAIN = "art_01JD3Q7W8M6Z5K2R9T0V4X1YBC", "art_01JD3Q7W8M6Z5K2R9T0V4X1YBD"
CONFIG = {
    "model_type": "bert",
    "vocab_size": 24,
    "max_position_embeddings": 16,
    "type_vocab_size": 1,
    "num_labels": 3,
}


def _body(config: dict) -> dict:
    return {"type": "remove", "train": TRAIN, "forget": {"class": 1},
            "model": {"format": "huggingface", "config": config, "checkpoint": CHECKPOINT}}  # fmt: skip


def _refusal(config: dict) -> tuple[str, str]:
    with pytest.raises(ValidationError) as info:
        specs.parse(_body(config))
    (error,) = info.value.errors()
    assert error["loc"][-1] == "config"
    return error["type"], error["msg"]


def test_a_hugging_face_model_parses_and_names_its_classes():
    spec = specs.parse(_body(CONFIG))
    assert isinstance(spec.model, specs.HuggingFaceModel)
    assert spec.model.num_classes() == 3 and spec.model.artifacts() == {
        "checkpoint": ("checkpoint", "checkpoint")
    }
    assert specs.dump(spec)["model"] == {"format": "huggingface", "config": CONFIG, "checkpoint": CHECKPOINT}
    assert (
        specs.parse(_body({"model_type": "vit", "id2label": {"0": "a", "1": "b"}})).model.num_classes() == 2
    )
    assert specs.parse(_body({"model_type": "bert"})).model.num_classes() == 2  # transformers' default


@pytest.mark.parametrize(
    ("change", "code", "words"),
    [
        ({"auto_map": {"AutoModel": "evil.Model"}}, "remote_code", "`auto_map`"),
        ({"trust_remote_code": True}, "remote_code", "`trust_remote_code`"),
        ({"model_type": ""}, "invalid_config", "model_type"),
        ({"model_type": 3}, "invalid_config", "model_type"),
        ({"num_labels": 2, "id2label": {"0": "a", "1": "b", "2": "c"}}, "invalid_config", "num_labels` is 2"),
        ({"id2label": {"1": "a"}}, "invalid_config", "class ids"),
        ({"num_labels": 0}, "invalid_config", "num_labels"),
        ({"problem_type": "regression"}, "unsupported_model", "regression"),
        ({"padding": "x" * specs.MAX_HF_CONFIG_BYTES}, "config_too_large", "bytes of JSON"),
        ({"eps": float("nan")}, "invalid_config", "NaN"),
    ],
)
def test_configs_refused_at_submit_name_their_problem(change, code, words):
    found, msg = _refusal({**CONFIG, **change})
    assert found == code and words in msg


def test_a_config_without_model_type_is_refused():
    assert _refusal({"num_labels": 3})[0] == "invalid_config"


def _meta(max_id: int = 23, length: int = 8, label_max: int = 2) -> dict:
    return {
        "n_samples": 10, "label_max": label_max,
        "inputs": {"input_ids": {"shape": [length], "dtype": "int64", "min": 0, "max": max_id},
                   "attention_mask": {"shape": [length], "dtype": "int64", "min": 0, "max": 1}},
    }  # fmt: skip


def test_datasets_that_fit_the_config_raise_nothing():
    assert huggingface.dataset_problems(CONFIG, "train", _meta()) == []
    assert huggingface.tensor_names(_meta()) == ["attention_mask", "input_ids"]
    assert huggingface.tensor_names({"input_shape": [8]}) == ["inputs"]


@pytest.mark.parametrize(
    ("meta", "code", "words"),
    [
        (_meta(max_id=24), "token_out_of_range", "ids up to 24 but the model's vocab_size is 24"),
        (_meta(length=17), "shape_mismatch", "max_position_embeddings is 16"),
        (_meta(label_max=3), "label_out_of_range", "labels go up to 3"),
    ],
)
def test_datasets_that_do_not_fit_the_config_are_named(meta, code, words):
    (found,) = huggingface.dataset_problems(CONFIG, "queries", meta)
    assert found["loc"] == ["queries"] and found["type"] == code and words in found["msg"]


def test_the_inspectors_question_carries_names_and_shapes_only():
    checkpoint = {"tensors": [{"name": "a.weight", "shape": [2, 3], "dtype": "float32"}]}
    request = huggingface.inspection_request(CONFIG, checkpoint, {"train": _meta()})
    assert request == {"config": CONFIG, "checkpoint": [{"name": "a.weight", "shape": [2, 3]}],
                       "datasets": {"train": ["attention_mask", "input_ids"]}}  # fmt: skip
