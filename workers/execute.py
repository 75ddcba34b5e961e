"""A validated job spec → one engine call (``gif.remove`` / ``gif.relabel`` / ``gif.scores_with_report`` /
``gif.self_influence``).

A job's options are resolved into the engine's own configuration (``gif.EditConfig`` /
``gif.SolveConfig``) with the verb's defaults, and handed to the engine as ``config``; the
result carries that configuration (provenance, reports).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import torch

import gif
from gif.config import EditConfig, SolveConfig, resolve
from gif.errors import DatasetError, IndexOutOfRangeError
from gif.inputs import take
from gif.progress import ProgressCallback, StopCheck
from gif.scoring import CURVATURE_OPTIONS, self_influence_measure
from jobs.specs import RelabelJob, RemoveJob, ScoresJob, SelfInfluenceJob, Spec

from .cuda_memory import Shrink
from .loading import Loaded


@dataclass
class EditOutcome:
    result: gif.EditResult
    config: EditConfig


@dataclass
class ScoresOutcome:
    result: gif.ScoresResult
    top_k: dict
    config: SolveConfig


@dataclass
class SelfInfluenceOutcome:
    """Every training sample's self-influence and, with a validation set, its harm to it."""

    self_influence: torch.Tensor
    validation_harm: torch.Tensor | None
    top_k: dict
    config: SolveConfig
    exact: bool
    measure: str


Outcome = EditOutcome | ScoresOutcome | SelfInfluenceOutcome
C = TypeVar("C", bound=SolveConfig)

#: Validation samples a ``self_influence`` job's second ranking uses at most (a seeded draw above
#: it): the scores matrix is [queries, n_train].
MAX_VALIDATION_QUERIES = 256


def edit_config(spec: RemoveJob | RelabelJob) -> EditConfig:
    """The engine configuration of an edit job: its options over the verb's defaults.

    Raises:
        gif.errors.InvalidArgumentError: a combination of options the engine refuses.
    """
    options = spec.options.model_dump(exclude_none=True)
    if spec.params is not None:
        options["param_names"] = tuple(spec.params.names)
    return resolve(spec.type, EditConfig, None, options)


def scores_config(spec: ScoresJob) -> SolveConfig:
    """The engine configuration of a scores job (``scores``'s defaults; the method is always ``if``)."""
    return resolve("scores", SolveConfig, None, spec.options.model_dump(exclude_none=True))


def self_influence_config(spec: SelfInfluenceJob) -> SolveConfig:
    """The engine configuration of a self-influence job (``self_influence``'s defaults)."""
    return resolve("self_influence", SolveConfig, None, spec.options.model_dump(exclude_none=True))


def ranked(scores: torch.Tensor, k: int, ids: torch.Tensor | None = None) -> list[dict]:
    """The ``k`` highest scores, highest first (ties: lower index first): ``[{index, score}]``,
    each with the sample's ``id`` when the training set names its samples."""
    return gif.top_k(scores.reshape(1, -1), k, ids=ids)["queries"][0]["proponents"]


def rows_of(ids: list[int], train_ids: torch.Tensor | None, field: str = "forget.ids") -> torch.Tensor:
    """The training rows of the samples named by ``ids`` (the train dataset's ``sample_ids``), in
    the order of ``ids``.

    Raises:
        gif.errors.DatasetError: the training set names no samples.
        gif.errors.IndexOutOfRangeError: an id that is not in it (up to 10 named).
    """
    if train_ids is None:
        raise DatasetError(f"the train dataset has no `sample_ids`, so `{field}` names no sample")
    wanted = torch.tensor(ids, dtype=torch.long)
    order = torch.argsort(train_ids)
    sorted_ids = train_ids[order]
    at = torch.searchsorted(sorted_ids, wanted).clamp_max(len(sorted_ids) - 1)
    found = sorted_ids[at] == wanted
    if not bool(found.all()):
        missing = wanted[~found]
        raise IndexOutOfRangeError(
            f"{missing.numel()} id(s) of `{field}` are not in the train dataset's sample_ids: "
            f"{missing[:10].tolist()}",
            ids=missing[:10].tolist(),
        )
    return order[at]


def measure_of(spec: SelfInfluenceJob, loaded: Loaded) -> str:
    """The measure a self-influence job uses (``auto`` resolved as the engine does; an option that
    asks for a curvature rules out the leave-one-out head)."""
    curvature = any(name in CURVATURE_OPTIONS for name in spec.options.model_dump(exclude_none=True))
    return self_influence_measure(
        loaded.model, loaded.train, spec.measure, loss_fn=loaded.loss_fn, curvature=curvature
    )


def run_self_influence(
    spec: SelfInfluenceJob,
    loaded: Loaded,
    callback: ProgressCallback,
    should_stop: StopCheck,
    shrink: Shrink | None = None,
) -> SelfInfluenceOutcome:
    """Self-influence of every training sample on the job's ``measure`` (``head``: the leave-one-out
    head, no curvature, where ``auto`` finds one and no option but ``seed`` is given;
    ``solver="lowrank"``: the closed form of the low-rank fit; any other solver: one exact solve
    per sample), and with a validation set
    harm_i = −Σ_q ∇ℓ_qᵀ(H + λI)⁻¹∇ℓ_i over at most :data:`MAX_VALIDATION_QUERIES` of its samples
    (positive: removing sample i would lower the validation loss)."""
    config = _within(self_influence_config(spec), shrink)
    exact = config.solver != "lowrank"
    common: dict[str, Any] = {"loss_fn": loaded.loss_fn, "callback": callback, "should_stop": should_stop}
    measure = measure_of(spec, loaded)
    scores = gif.self_influence(
        loaded.model, loaded.train, config=config, exact=exact, measure=measure, **common
    )
    harm = None
    if loaded.validation is not None:
        vx, vy = loaded.validation
        pick = torch.arange(len(vy))
        if len(vy) > MAX_VALIDATION_QUERIES:
            gen = torch.Generator().manual_seed(config.seed)
            pick = torch.sort(torch.randperm(len(vy), generator=gen)[:MAX_VALIDATION_QUERIES]).values
        queries = (take(vx, pick), vy[pick])
        harm = -gif.scores(loaded.model, loaded.train, queries, config=config, **common).sum(dim=0)
    ids = loaded.train_ids
    top = {"k": min(spec.top_k, len(scores)), "self_influence": ranked(scores, spec.top_k, ids)}
    if harm is not None:
        top["validation_harm"] = ranked(harm, spec.top_k, ids)
    return SelfInfluenceOutcome(scores, harm, top, config, exact, measure)


def run_engine(
    spec: Spec,
    loaded: Loaded,
    callback: ProgressCallback,
    should_stop: StopCheck,
    cache: gif.cache.Cache | None = None,
    shrink: Shrink | None = None,
) -> Outcome:
    """Dispatch on the job's type; engine errors (``gif.errors.GifError``) propagate.

    ``cache`` (content-addressed gradients, selections, solves, curvature fits) serves the edits;
    ``shrink``: the smaller chunks of a run after a CUDA out-of-memory (workers/cuda_memory.py).
    """
    if isinstance(spec, SelfInfluenceJob):
        return run_self_influence(spec, loaded, callback, should_stop, shrink)
    if isinstance(spec, ScoresJob):
        assert loaded.queries is not None, "a scores job has a queries dataset"
        solve = _within(scores_config(spec), shrink)
        result = gif.scores_with_report(
            loaded.model,
            loaded.train,
            loaded.queries,
            config=solve,
            loss_fn=loaded.loss_fn,
            callback=callback,
            should_stop=should_stop,
            normalize=spec.normalize,
        )
        return ScoresOutcome(result, gif.top_k(result.scores, spec.top_k, ids=loaded.train_ids), solve)
    config = _within(edit_config(spec), shrink)
    if isinstance(spec, RemoveJob):
        forget = spec.forget
        target: torch.Tensor | dict[str, int]
        if forget.class_ is not None:
            target = {"class": forget.class_}
        elif forget.ids is not None:
            target = torch.sort(rows_of(forget.ids, loaded.train_ids)).values  # a set: any order
        else:
            target = torch.tensor(forget.indices, dtype=torch.long)
        edited = gif.remove(
            loaded.model, loaded.train, target, config=config, validation=loaded.validation,
            holdout=loaded.holdout, reference=loaded.reference, loss_fn=loaded.loss_fn, callback=callback,
            should_stop=should_stop, cache=cache,
        )  # fmt: skip
    else:
        relabel = spec.relabel
        labels = torch.tensor(relabel.labels, dtype=torch.long)
        if relabel.ids is not None:  # (row, label) pairs in row order, as if the rows were named
            rows, order = torch.sort(rows_of(relabel.ids, loaded.train_ids, "relabel.ids"))
            labels = labels[order]
        else:
            rows = torch.tensor(relabel.indices, dtype=torch.long)
        edited = gif.relabel(
            loaded.model, loaded.train, rows, labels,
            config=config, validation=loaded.validation, holdout=loaded.holdout, reference=loaded.reference,
            loss_fn=loaded.loss_fn, callback=callback, should_stop=should_stop, cache=cache,
        )  # fmt: skip
    return EditOutcome(edited, config)


def _within(config: C, shrink: Shrink | None) -> C:
    return config if shrink is None else shrink.apply(config)


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


def newton_steps(spec: Spec) -> int:
    """Outer Newton steps the edit will take at most (for progress fractions); 1 for scores."""
    return 1 if isinstance(spec, ScoresJob | SelfInfluenceJob) else edit_config(spec).newton_steps
