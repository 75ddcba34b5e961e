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
    request: dict[str, Any],
    loaded: Loaded,
    callback: ProgressCallback,
    should_stop: StopCheck,
    cache: gif.cache.Cache | None = None,
) -> Outcome:
    """Dispatch on ``request["type"]``; engine errors (``gif.errors.GifError``) propagate.

    ``cache`` (content-addressed gradients, selections, solves, curvature fits) serves the edits.
    """
    kind = request["type"]
    hooks = {"callback": callback, "should_stop": should_stop}
    edit_hooks = {**hooks, "cache": cache}
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
                **edit_hooks,
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
                **edit_hooks,
                **request.get("options", {}),
            )
        )
    if kind == "scores":
        assert loaded.queries is not None, "a scores job has a queries dataset"
        options = dict(request.get("options", {}))
        result = gif.scores_with_report(loaded.model, loaded.train, loaded.queries, **hooks, **options)
        return ScoresOutcome(result, gif.top_k(result.scores, int(request.get("top_k", 10))), options)
    raise ValueError(f"unknown job type {kind!r}")


def resolve_device(setting: str) -> torch.device:
    """``auto`` → the current CUDA device when there is one (initialising CUDA here, in the
    worker process that computes, never in a parent), else the CPU.

    Raises:
        RuntimeError: a CUDA device was asked for and this worker has none (the message names
        the setting, so the job's error says what to fix).
    """
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda":
        problem = device_problem(setting)
        if problem is None and not torch.cuda.is_available():
            problem = "no CUDA device is visible to this worker"
        if problem is None and (device.index or 0) >= torch.cuda.device_count():
            problem = f"this worker sees {torch.cuda.device_count()} CUDA device(s)"
        if problem is not None:
            raise RuntimeError(f"GIF_DEVICE={setting}, but {problem}")
    return device


def device_problem(setting: str) -> str | None:
    """What is wrong with ``setting`` that can be told without initialising CUDA (safe in a
    parent process that will fork): a CUDA device asked of a torch built without CUDA."""
    if setting.startswith("cuda") and torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is built without CUDA"
    return None


def peak_memory(device: torch.device) -> dict[str, Any]:
    """What the job used on ``device`` (CUDA: peak allocated bytes since the job started)."""
    if device.type != "cuda":
        return {"device": str(device)}
    return {"device": str(device), "name": torch.cuda.get_device_name(device),
            "peak_allocated_bytes": int(torch.cuda.max_memory_allocated(device))}  # fmt: skip


def newton_steps(request: dict[str, Any]) -> int:
    """Outer Newton steps the edit will take (for progress fractions)."""
    if request["type"] == "scores":
        return 1
    return int(request.get("options", {}).get("newton_steps") or gif.EditOptions().newton_steps)
