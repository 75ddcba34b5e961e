"""Checks of a Hugging Face model job that need neither torch nor ``transformers``.

A dataset artifact's metadata (recorded at upload, gif/io/datasets.py ``describe_dataset``) names
its tensors, their per-sample shapes and the range of the integer ones; the model's config names
its vocabulary, its position limit and its class count. :func:`dataset_problems` compares the two
(token ids beyond the vocabulary, sequences longer than the position embeddings, labels beyond
``num_labels``). The API runs it at submit on the recorded metadata, the worker again on the
loaded tensors (workers/huggingface.py), so both refuse the same data with the same words.

What needs ``transformers`` (is ``model_type`` one it ships, is the head a classifier, do the
checkpoint's names and shapes fit, does ``forward`` take the dataset's tensor names) runs in the
sandboxed inspector at submit: :func:`inspection_request` builds its question.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: (tensor name, config key of the bound its values must stay under).
_ID_BOUNDS = (("input_ids", "vocab_size"), ("token_type_ids", "type_vocab_size"))

Problem = dict[str, Any]


def problem(loc: list[Any], msg: str, type_: str) -> Problem:
    """One entry of a 422's ``errors`` (``loc`` without the leading ``body``)."""
    return {"loc": loc, "msg": msg, "type": type_}


def dataset_problems(config: Mapping[str, Any], role: str, meta: Mapping[str, Any]) -> list[Problem]:
    """Why the dataset described by ``meta`` cannot go through the model ``config`` describes."""
    named = meta.get("inputs")
    found: list[Problem] = []
    if isinstance(named, Mapping):
        found += _id_problems(config, role, named)
        found += _length_problems(config, role, named)
    top = meta.get("label_max")
    num_labels = config.get("num_labels") or (
        len(config["id2label"]) if isinstance(config.get("id2label"), Mapping) else None
    )
    if type(top) is int and type(num_labels) is int and top >= num_labels:
        found.append(
            problem(
                [role], f"labels go up to {top} but the model has {num_labels} labels", "label_out_of_range"
            )
        )
    return found


def _id_problems(config: Mapping[str, Any], role: str, named: Mapping[str, Any]) -> list[Problem]:
    found = []
    for name, key in _ID_BOUNDS:
        entry, bound = named.get(name), config.get(key)
        if not isinstance(entry, Mapping) or type(bound) is not int:
            continue
        top = entry.get("max")
        if type(top) is int and top >= bound:
            found.append(
                problem(
                    [role],
                    f"`{name}` holds ids up to {top} but the model's {key} is {bound} (ids must be < {bound})",
                    "token_out_of_range",
                )
            )
    return found


def _length_problems(config: Mapping[str, Any], role: str, named: Mapping[str, Any]) -> list[Problem]:
    limit = config.get("max_position_embeddings")
    entry = named.get("input_ids")
    if type(limit) is not int or not isinstance(entry, Mapping):
        return []
    shape = entry.get("shape")
    if isinstance(shape, list) and shape and type(shape[-1]) is int and shape[-1] > limit:
        return [
            problem(
                [role],
                f"sequences are {shape[-1]} tokens long but the model's max_position_embeddings is {limit}",
                "shape_mismatch",
            )
        ]
    return []


def tensor_names(meta: Mapping[str, Any]) -> list[str]:
    """The tensors a dataset passes to the model (``inputs`` for a single positional tensor)."""
    named = meta.get("inputs")
    return sorted(named) if isinstance(named, Mapping) else ["inputs"]


def inspection_request(
    config: Mapping[str, Any], checkpoint: Mapping[str, Any], datasets: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """The sandboxed inspector's question (workers/huggingface.py ``inspect_request``): the config,
    the checkpoint's recorded tensors, and each dataset's tensor names by role."""
    tensors = checkpoint.get("tensors")
    return {
        "config": dict(config),
        "checkpoint": [
            {"name": t.get("name"), "shape": t.get("shape")}
            for t in (tensors if isinstance(tensors, list) else [])
            if isinstance(t, Mapping)
        ],
        "datasets": {role: tensor_names(meta) for role, meta in datasets.items()},
    }
