"""Request models: strict, bounded, discriminated on type."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from jobs import specs

CKPT, TRAIN = "art_01JD3Q7W8M6Z5K2R9T0V4X1YBC", "art_01JD3Q7W8M6Z5K2R9T0V4X1YBD"


def _body(**changes):
    body = {
        "type": "remove",
        "model": {"arch": "mlp", "checkpoint": CKPT},
        "train": TRAIN,
        "forget": {"class": 3},
    }
    body.update(changes)
    return body


def _locs(body) -> list[tuple]:
    with pytest.raises(ValidationError) as info:
        specs.parse(body)
    return [e["loc"] for e in info.value.errors()]


def test_valid_bodies_and_canonical_dump():
    spec = specs.parse(_body(options={"damping": 1, "newton_steps": 2}))
    assert specs.dump(spec) == {
        "type": "remove", "model": {"arch": "mlp", "config": {}, "checkpoint": CKPT}, "train": TRAIN,
        "forget": {"class": 3}, "options": {"damping": 1.0, "newton_steps": 2},
    }  # fmt: skip
    body = _body(type="relabel", relabel={"indices": [1, 2], "labels": [0, 1]})
    del body["forget"]
    relabel = specs.parse(body)
    assert relabel.relabel.labels == [0, 1]
    scores_body = {k: v for k, v in _body(type="scores", queries=TRAIN).items() if k != "forget"}
    scores = specs.parse(scores_body)
    assert scores.top_k == 10 and scores.normalize == "none"
    assert specs.parse({**scores_body, "normalize": "cosine"}).normalize == "cosine"
    with pytest.raises(ValueError):
        specs.parse({**scores_body, "normalize": "l2"})


@pytest.mark.parametrize(
    "changes",
    [
        {"extra": 1},
        {"type": "delete"},
        {"train": "art_bad"},
        {"forget": {"class": -1}},
        {"forget": {"indices": []}},
        {"forget": {"indices": [1, 1]}},
        {"forget": {"class": 1, "indices": [2]}},
        {"forget": {"indices": list(range(specs.MAX_INDICES + 1))}},
        {"options": {"damping": float("inf")}},
        {"options": {"tol": 1.5}},
        {"options": {"max_iter": 0}},
        {"options": {"method": "xif"}},
        {"options": {"newton_steps": True}},
        {"options": {"newton_steps": 21}},  # the service's cap (the engine takes any positive count)
        {"options": {"chunk_size": 64}},  # an engine option jobs may not set
        {"options": {"normalizer": 1.0}},  # solver extras neither
        {"model": {"arch": "mlp", "checkpoint": CKPT, "config": {"num_classes": "10"}}},
        {"model": {"arch": "mlp", "checkpoint": CKPT, "config": {"weights": [1, 2]}}},
        {"model": {"arch": "gpt", "checkpoint": CKPT}},
        {"model": {"arch": "mlp", "checkpoint": CKPT, "config": {"hidden_sizes": [0]}}},
        {"model": {"arch": "mlp", "checkpoint": CKPT, "config": {"dropout": 1.0}}},
    ],
)
def test_invalid_bodies(changes):
    assert _locs(_body(**changes))


def test_num_classes_from_config_or_arch_default():
    assert specs.parse(_body()).model.num_classes() == 10
    spec = specs.parse(_body(model={"arch": "mlp", "checkpoint": CKPT, "config": {"num_classes": 3}}))
    assert spec.model.num_classes() == 3
    assert specs.parse(_body(model={"arch": "embed", "checkpoint": CKPT})).model.num_classes() == 2


def test_params_names_are_bounded_fnmatch_patterns():
    spec = specs.parse(_body(params={"names": ["classifier.*", "*lora_[AB].weight"]}))
    assert spec.params is not None and spec.params.names == ["classifier.*", "*lora_[AB].weight"]
    assert specs.dump(spec)["params"] == {"names": ["classifier.*", "*lora_[AB].weight"]}
    assert specs.parse(_body()).params is None
    for bad in ([], ["a b"], ["x;rm -rf"], [""], ["x" * 201], ["p"] * 65):
        assert _locs(_body(params={"names": bad}))[0][:3] == ("remove", "params", "names"), bad
    assert _locs(_body(params={"names": ["fc.*"], "other": 1})) == [("remove", "params", "other")]
    scores = {
        k: v
        for k, v in _body(type="scores", queries=TRAIN, params={"names": ["fc.*"]}).items()
        if k != "forget"
    }
    assert ("scores", "params") in _locs(scores)  # edits only
