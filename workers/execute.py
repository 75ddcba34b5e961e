"""A validated job spec → one engine call (``gif.remove`` / ``gif.relabel`` / ``gif.scores_with_report``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

import gif

from .loading import Loaded

ProgressCallback = Callable[[dict], None]
StopCheck = Callable[[], bool]


@dataclass
class EditOutcome:
    result: gif.EditResult


@dataclass
class ScoresOutcome:
    result: gif.ScoresResult
    top_k: dict
    options: dict


Outcome = EditOutcome | ScoresOutcome


def run_engine(
    request: dict[str, Any], loaded: Loaded, callback: ProgressCallback, should_stop: StopCheck
) -> Outcome:
    """Dispatch on ``request["type"]``; engine errors (``gif.errors.GifError``) propagate."""
    kind = request["type"]
    hooks = {"callback": callback, "should_stop": should_stop}
    if kind == "remove":
        forget = request["forget"]
        target = (
            {"class": forget["class"]}
            if "class" in forget
            else torch.tensor(forget["indices"], dtype=torch.long)
        )
        return EditOutcome(
            gif.remove(
                loaded.model,
                loaded.train,
                target,
                validation=loaded.validation,
                **hooks,
                **request.get("options", {}),
            )
        )
    if kind == "relabel":
        relabel = request["relabel"]
        return EditOutcome(
            gif.relabel(
                loaded.model,
                loaded.train,
                torch.tensor(relabel["indices"], dtype=torch.long),
                torch.tensor(relabel["labels"], dtype=torch.long),
                validation=loaded.validation,
                **hooks,
                **request.get("options", {}),
            )
        )
    if kind == "scores":
        assert loaded.queries is not None, "a scores job has a queries dataset"
        options = dict(request.get("options", {}))
        result = gif.scores_with_report(loaded.model, loaded.train, loaded.queries, **hooks, **options)
        return ScoresOutcome(result, gif.top_k(result.scores, int(request.get("top_k", 10))), options)
    raise ValueError(f"unknown job type {kind!r}")


def newton_steps(request: dict[str, Any]) -> int:
    """Outer Newton steps the edit will take (for progress fractions)."""
    if request["type"] == "scores":
        return 1
    return int(request.get("options", {}).get("newton_steps") or gif.EditOptions().newton_steps)
