"""Engine outcome → result files (weights, report, plot, scores, top-k) and the job's summary.

Files are written under the blob store's ``tmp`` folder; the runner stages them into the store
and registers them as artifacts in the same transaction that marks the job ``succeeded``.
Every result carries provenance: input digests, code versions, the engine configuration the job
ran with (``config.to_dict()``: every option, the defaults filled in) and its seed.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import math
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

import gif
from gif.io import programs
from jobs.blobs import BlobStore
from jobs.specs import HuggingFaceModel, RegistryModel, Spec

from .execute import EditOutcome, Outcome, ScoresOutcome, SelfInfluenceOutcome
from .loading import Loaded

#: Longest per-query list copied into the inline summary.
SUMMARY_LIST_CAP = 100


@dataclass
class Output:
    """One result file, not yet in the store."""

    kind: str
    format: str
    path: Path
    filename: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Results:
    outputs: list[Output]
    summary: dict[str, Any]
    provenance: dict[str, Any]


def provenance(job_id: str, attempt: int, spec: Spec, request_sha256: str, loaded: Loaded) -> dict[str, Any]:
    """Where a result came from: inputs by digest, code versions, the request."""
    return {
        "job_id": job_id,
        "attempt": attempt,
        "service_version": _version("gif-service"),
        "gif_version": gif.__version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "input_digests": dict(loaded.digests),
        "request_sha256": request_sha256,
        **_model_provenance(spec),
    }


def _model_provenance(spec: Spec) -> dict[str, Any]:
    """A registry model's ``arch`` and ``arch_config``; another format's ``model`` record."""
    if isinstance(spec.model, RegistryModel):
        return {"arch": spec.model.arch, "arch_config": dict(spec.model.config)}
    return {"model": spec.model.record()}


def write_results(
    job_id: str,
    spec: Spec,
    loaded: Loaded,
    outcome: Outcome,
    blobs: BlobStore,
    prov: dict[str, Any],
) -> Results:
    if isinstance(outcome, EditOutcome):
        return _edit_results(job_id, spec, loaded, outcome, blobs, prov)
    if isinstance(outcome, SelfInfluenceOutcome):
        return _self_influence_results(job_id, loaded, outcome, blobs, prov)
    return _scores_results(job_id, loaded, outcome, blobs, prov)


# -- edits -----------------------------------------------------------------------------------------


def _edit_results(
    job_id: str, spec: Spec, loaded: Loaded, outcome: EditOutcome, blobs: BlobStore, prov: dict[str, Any]
) -> Results:
    # the options the edit ran with: ``method="auto"`` resolved (the report's ``method_choice``)
    edit = outcome.result
    options = edit.report["options"]
    prov = {**prov, "options": options, "seed": outcome.config.seed}
    if "cache" in edit.report:
        prov["cache"] = edit.report["cache"]
    on = "validation" if loaded.validation is not None else "train"
    x, y = loaded.validation if loaded.validation is not None else loaded.train
    per_class = {
        "data": on,
        "before": gif.metrics.per_class_accuracy(loaded.model, x, y, loaded.num_classes),
        "after": gif.metrics.per_class_accuracy(edit.model, x, y, loaded.num_classes),
    }
    weights = blobs.tmp_path(".safetensors")
    metadata = _weights_metadata(job_id, spec, options, prov)
    if isinstance(spec.model, HuggingFaceModel):
        metadata["format"] = "pt"  # what transformers' from_pretrained asks of a safetensors file
    gif.io.save_checkpoint(edit.model, weights, metadata=metadata)
    report = {
        "object": "report",
        "job_id": job_id,
        "type": spec.type,
        "report": edit.report,
        "per_class_accuracy": per_class,
        "provenance": prov,
    }
    outputs = [
        Output(
            "weights",
            "safetensors",
            weights,
            f"{job_id}-weights.safetensors",
            _model_provenance(spec),
        ),
        _json_output(blobs, "report", report, f"{job_id}-report.json"),
    ]
    if loaded.program is not None:
        outputs.append(_program_output(job_id, loaded.program, edit.model, blobs))
    plot = _plot(blobs, per_class, f"{spec.type} ({job_id})")
    if plot is not None:
        outputs.append(Output("plot", "png", plot, f"{job_id}-per-class-accuracy.png", {"data": on}))
    audit = edit.report.get("audit") or {}
    losses = (
        _audit_plot(blobs, audit["histograms"], f"{spec.type} ({job_id})") if "histograms" in audit else None
    )
    if losses is not None:
        outputs.append(
            Output("plot", "png", losses, f"{job_id}-audit-losses.png", {"figure": "audit_losses"})
        )
    summary = {
        "n_train": edit.report.get("n_train"),
        "n_edited": edit.report.get("n_edited"),
        "forget_class": edit.report.get("forget_class"),
        "solver": edit.report.get("solver"),
        "metrics": edit.report.get("metrics"),
        "delta_norm": edit.report.get("delta_norm"),
        "relative_delta_norm": edit.report.get("relative_delta_norm"),
        "per_class_accuracy": per_class,
        "audit": {k: v for k, v in audit.items() if k != "histograms"},
        "work": edit.report.get("work"),
    }
    return Results(outputs, clean(summary), clean(prov))


def _weights_metadata(
    job_id: str, spec: Spec, options: dict[str, Any], prov: dict[str, Any]
) -> dict[str, str]:
    return {
        "job_id": job_id,
        "source_checkpoint_sha256": prov["input_digests"].get("checkpoint", ""),
        "train_sha256": prov["input_digests"].get("train", ""),
        "job_type": spec.type,
        "method": str(options["method"]),
        **{
            k: v if isinstance(v, str) else json.dumps(v, sort_keys=True)
            for k, v in _model_provenance(spec).items()
        },
        "options": json.dumps(clean(options), sort_keys=True),
        "gif_version": prov["gif_version"],
        "torch_version": prov["torch_version"],
    }


def _program_output(
    job_id: str, program: torch.export.ExportedProgram, edited: torch.nn.Module, blobs: BlobStore
) -> Output:
    """The input program with the edited weights, as a ``.pt2`` (``torch.export.save``)."""
    path = blobs.tmp_path(".pt2")
    programs.save_program(program, edited.state_dict(), path)
    return Output("program", "pt2", path, f"{job_id}-program.pt2", {"format": "torch.export"})


def _pyplot() -> Any:
    """matplotlib's pyplot on the Agg back end, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _png(blobs: BlobStore, plt: Any, fig: Any) -> Path:
    """Write ``fig`` as a PNG under the store's tmp folder and close it."""
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    path = blobs.tmp_path(".png")
    path.write_bytes(buffer.getvalue())
    return path


def _audit_plot(blobs: BlobStore, histograms: dict[str, Any], title: str) -> Path | None:
    """The forgetting audit's loss histograms (gif/audit.py): forget vs holdout samples, before
    and after the edit, on shared bins (None when matplotlib is not installed)."""
    plt = _pyplot()
    if plt is None:
        return None
    edges = histograms["edges"]
    fig, axes = plt.subplots(1, 2, figsize=(8.0, 3.2), dpi=100, sharey=True)
    for ax, stage in zip(axes, ("before", "after"), strict=True):
        for series in ("holdout", "forget"):
            counts = histograms[stage][series]
            total = max(sum(counts), 1)
            ax.stairs([c / total for c in counts], edges, label=f"{series} ({sum(counts)})", fill=series == "holdout",
                      alpha=0.5 if series == "holdout" else 1.0)  # fmt: skip
        ax.set(title=f"{stage} the edit", xlabel="per-sample loss (last bin: larger)")
    axes[0].set_ylabel("fraction of samples")
    axes[1].legend(loc="upper right", frameon=False)
    fig.suptitle(f"forgetting audit: {title}", fontsize=10)
    return _png(blobs, plt, fig)


def _plot(blobs: BlobStore, per_class: dict[str, Any], title: str) -> Path | None:
    """Bar chart of per-class accuracy before/after (None when matplotlib is not installed)."""
    plt = _pyplot()
    if plt is None:
        return None
    before, after = per_class["before"], per_class["after"]
    classes = list(range(len(before)))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(classes) + 2), 3.2), dpi=100)
    width = 0.4
    ax.bar([c - width / 2 for c in classes], [_nan0(v) for v in before], width, label="before")
    ax.bar([c + width / 2 for c in classes], [_nan0(v) for v in after], width, label="after")
    ax.set(xlabel="class", ylabel=f"accuracy ({per_class['data']} data)", ylim=(0, 1.22), title=title)
    ax.set_xticks(classes)
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.legend(loc="upper right", ncol=2, frameon=False)
    return _png(blobs, plt, fig)


# -- scores ----------------------------------------------------------------------------------------


def _scores_results(
    job_id: str, loaded: Loaded, outcome: ScoresOutcome, blobs: BlobStore, prov: dict[str, Any]
) -> Results:
    prov = {**prov, "options": outcome.config.to_dict(), "seed": outcome.config.seed}
    diagnostics = outcome.result.diagnostics()
    scores_path = blobs.tmp_path(".safetensors")
    safetensors.torch.save_file(
        _with_sample_ids({"scores": outcome.result.scores}, loaded),
        str(scores_path),
        metadata={
            "job_id": job_id,
            "layout": "[n_queries, n_train]",
            "normalize": outcome.result.normalize,
            "train_sha256": prov["input_digests"].get("train", ""),
            "queries_sha256": prov["input_digests"].get("queries", ""),
        },
    )
    report = {
        "object": "report",
        "job_id": job_id,
        "type": "scores",
        "diagnostics": diagnostics,
        "provenance": prov,
    }
    outputs = [
        Output(
            "scores",
            "safetensors",
            scores_path,
            f"{job_id}-scores.safetensors",
            {"shape": list(outcome.result.scores.shape)},
        ),
        _json_output(blobs, "top_k", outcome.top_k, f"{job_id}-top-k.json"),
        _json_output(blobs, "report", report, f"{job_id}-report.json"),
    ]
    summary = {
        key: (value[:SUMMARY_LIST_CAP] if isinstance(value, list) else value)
        for key, value in diagnostics.items()
    }
    summary["top_k"] = outcome.top_k["k"]
    return Results(outputs, clean(summary), clean(prov))


# -- self-influence --------------------------------------------------------------------------------


def _self_influence_results(
    job_id: str, loaded: Loaded, outcome: SelfInfluenceOutcome, blobs: BlobStore, prov: dict[str, Any]
) -> Results:
    """``scores`` safetensors (``self_influence`` [n_train], ``validation_harm`` [n_train] with a
    validation set, ``sample_ids`` when the training set names its samples), ``top_k`` JSON and a
    report; the summary lists the top-k, highest first."""
    prov = {**prov, "options": outcome.config.to_dict(), "seed": outcome.config.seed}
    tensors = {"self_influence": outcome.self_influence}
    if outcome.validation_harm is not None:
        tensors["validation_harm"] = outcome.validation_harm
    path = blobs.tmp_path(".safetensors")
    safetensors.torch.save_file(
        _with_sample_ids(tensors, loaded),
        str(path),
        metadata={
            "job_id": job_id,
            "layout": "[n_train]",
            "train_sha256": prov["input_digests"].get("train", ""),
        },
    )
    n_train = len(outcome.self_influence)
    report = {
        "object": "report", "job_id": job_id, "type": "self_influence", "n_train": n_train,
        "exact": outcome.exact, "measure": outcome.measure, **_flagged(outcome), "top_k": outcome.top_k,
        "provenance": prov,
    }  # fmt: skip
    outputs = [
        Output(
            "scores",
            "safetensors",
            path,
            f"{job_id}-self-influence.safetensors",
            {"shape": [n_train], "tensors": sorted(tensors)},
        ),
        _json_output(blobs, "top_k", outcome.top_k, f"{job_id}-top-k.json"),
        _json_output(blobs, "report", report, f"{job_id}-report.json"),
    ]
    summary = {
        "n_train": n_train,
        "solver": outcome.config.solver,
        "exact": outcome.exact,
        "measure": outcome.measure,
        **_flagged(outcome),
        **{
            key: value[:SUMMARY_LIST_CAP] if isinstance(value, list) else value
            for key, value in outcome.top_k.items()
        },
    }
    return Results(outputs, clean(summary), clean(prov))


# -- helpers ---------------------------------------------------------------------------------------


def _flagged(outcome: SelfInfluenceOutcome) -> dict[str, int]:
    """``{"flagged": n}`` for the leave-one-out head: how many samples a head refitted without
    them would give another class (a positive score); nothing for the other measures, whose
    scores have no such threshold."""
    if outcome.measure != "head":
        return {}
    return {"flagged": int((outcome.self_influence > 0).sum())}


def _with_sample_ids(tensors: dict[str, torch.Tensor], loaded: Loaded) -> dict[str, torch.Tensor]:
    """A scores file's tensors, host-contiguous, with the training set's ``sample_ids`` (the
    column order) when it has them."""
    out = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    if loaded.train_ids is not None:
        out["sample_ids"] = loaded.train_ids.cpu().contiguous()
    return out


def _json_output(blobs: BlobStore, kind: str, document: dict[str, Any], filename: str) -> Output:
    path = blobs.tmp_path(".json")
    path.write_text(json.dumps(clean(document), indent=1, sort_keys=True))
    return Output(kind, "json", path, filename)


def clean(value: Any) -> Any:
    """JSON-safe copy: NaN/Inf → None, tuples → lists, tensors → lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, torch.Tensor):
        return clean(value.tolist())
    return value


def _nan0(value: float) -> float:
    return 0.0 if value is None or not math.isfinite(value) else value


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
