"""Job request bodies (``POST /v1/jobs``): strict pydantic models, discriminated on ``type``.

A job's options are the engine's own configuration: :class:`EditOptions` and
:class:`ScoresOptions` are generated from the fields of ``gif.EditConfig`` / ``gif.SolveConfig``
that jobs may set (names, types, help, valid ranges and the service's caps all come from
``gif.config``), and the worker resolves them into that configuration. ``gif.config`` imports
only the standard library; the built-in architectures live with the models (torch), so their
names and keywords are mirrored below, and tests/service/test_spec_enums.py checks them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from gif.config import METHODS as METHODS
from gif.config import SERVICE_SOLVERS, EditConfig, SolveConfig
from gif.config import STRATEGIES as STRATEGIES

from . import ids

#: The solvers a job may name (the health document lists them): the engine-only ones are left out.
SOLVERS = SERVICE_SOLVERS

#: Longest index / label list accepted inline.
MAX_INDICES = 100_000
MAX_CLASSES = 100_000
MAX_TOP_K = 1_000

JOB_TYPES = ("remove", "relabel", "scores", "self_influence")

# Built-in architectures, mirrored from gif.models (torch; checked by tests/service/test_spec_enums.py).
ARCHS = ("cnn1d", "embed", "lenet", "mlp", "resnet18", "tinynet", "vgg11")
ArchName = Literal["cnn1d", "embed", "lenet", "mlp", "resnet18", "tinynet", "vgg11"]

#: Keyword arguments of each built-in architecture's factory, and its default class count.
ARCH_KEYWORDS: dict[str, tuple[str, ...]] = {
    "cnn1d": ("in_channels", "length", "num_classes", "channels"),
    "embed": ("vocab_size", "embed_dim", "num_classes", "seq_len"),
    "lenet": ("in_channels", "num_classes", "image_size"),
    "mlp": ("input_shape", "hidden_sizes", "num_classes", "dropout"),
    "resnet18": ("in_channels", "num_classes", "width"),
    "tinynet": ("in_channels", "num_classes", "image_size"),
    "vgg11": ("in_channels", "num_classes", "image_size", "width"),
}
ARCH_DEFAULT_NUM_CLASSES: dict[str, int] = dict.fromkeys(ARCHS, 10) | {"embed": 2}

#: The value type of each keyword: a positive integer, a list of positive integers, a probability.
_POSITIVE_INTS = {"num_classes", "in_channels", "image_size", "width", "length", "channels", "vocab_size",
                  "embed_dim", "seq_len"}  # fmt: skip
_INT_LISTS = {"input_shape", "hidden_sizes"}


def _check_keyword(name: str, value: Any) -> str | None:
    """Why ``value`` is not acceptable for keyword ``name`` (None when it is)."""
    if name in _POSITIVE_INTS and not (type(value) is int and value >= 1):
        return f"`{name}` must be a positive integer"
    if name in _INT_LISTS and not (isinstance(value, list) and all(type(v) is int and v >= 1 for v in value)):
        return f"`{name}` must be a list of positive integers"
    if name == "dropout" and not (type(value) in (int, float) and 0 <= value < 1):
        return "`dropout` must be a number in [0, 1)"
    return None


ArtifactId = Annotated[str, StringConstraints(pattern=ids.pattern("artifact"))]
ConfigKey = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
]
ConfigValue = (
    Annotated[int, Field(ge=-(2**31), le=2**31)]
    | float
    | bool
    | Annotated[str, StringConstraints(max_length=256)]
    | Annotated[list[Annotated[int, Field(ge=0, le=2**20)]], Field(max_length=64)]
)
Index = Annotated[int, Field(ge=0)]
#: A training sample's own id (a dataset's ``sample_ids``: int64)
SampleId = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
Label = Annotated[int, Field(ge=0, lt=MAX_CLASSES)]


class Strict(BaseModel):
    """Base of every request model: unknown fields, NaN and Inf are rejected."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True, populate_by_name=True)


#: The ways a job can name its model (``model.format``); a body without ``format`` is a registry model.
MODEL_FORMATS = ("registry", "torch.export", "huggingface")


class RegistryModel(Strict):
    """Which registered architecture to build, with what configuration, from which checkpoint."""

    format: Literal["registry"] = Field(
        "registry", exclude=True, description="Optional: a registered architecture (the default)."
    )
    arch: ArchName = Field(description="A server-side registered architecture.")
    config: dict[ConfigKey, ConfigValue] = Field(
        default_factory=dict, max_length=32, description="Keyword arguments of the architecture's factory."
    )
    checkpoint: ArtifactId = Field(description="Artifact id of a checkpoint (kind `checkpoint`).")

    @field_validator("config")
    @classmethod
    def _known_keywords(cls, config: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        arch = info.data.get("arch")
        if arch in ARCH_KEYWORDS:
            unknown = sorted(set(config) - set(ARCH_KEYWORDS[arch]))
            if unknown:
                raise ValueError(
                    f"unknown argument(s) {', '.join(unknown)} for {arch!r}; "
                    f"accepted: {', '.join(ARCH_KEYWORDS[arch])}"
                )
        problems = [p for p in (_check_keyword(k, v) for k, v in config.items()) if p]
        if problems:
            raise ValueError("; ".join(problems))
        return config

    def artifacts(self) -> dict[str, tuple[str, str]]:
        """The artifacts the model is made of: role -> (field, required kind)."""
        return {"checkpoint": ("checkpoint", "checkpoint")}

    def num_classes(self) -> int | None:
        """Classes of the configured model: ``config.num_classes`` or the architecture's default."""
        value = self.config.get("num_classes", ARCH_DEFAULT_NUM_CLASSES.get(self.arch))
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def input_shape(self) -> list[int] | None:
        """The sample shape the configuration names (None when it names none)."""
        shape = self.config.get("input_shape")
        return list(shape) if isinstance(shape, list) else None

    def record(self) -> dict[str, Any]:
        """What the job's ``inputs`` and the results' provenance record of the model."""
        return {"arch": self.arch, "config": dict(self.config)}


class ProgramModel(Strict):
    """An exported program: the `.pt2` file of `torch.export.save`, with a dynamic batch dimension."""

    format: Literal["torch.export"] = Field(description="An exported program (`torch.export`).")
    program: ArtifactId = Field(description="Artifact id of the `.pt2` file (kind `program`).")

    def artifacts(self) -> dict[str, tuple[str, str]]:
        """The artifacts the model is made of: role -> (field, required kind)."""
        return {"program": ("program", "program")}

    def num_classes(self) -> None:
        """Unknown from the body: read from the program artifact's metadata."""
        return None

    def input_shape(self) -> None:
        """Unknown from the body: read from the program artifact's metadata."""
        return None

    def record(self) -> dict[str, Any]:
        """What the job's ``inputs`` and the results' provenance record of the model."""
        return {"format": "torch.export"}


#: Largest ``config.json`` object a job may carry (as compact JSON); real ones are a few kB.
MAX_HF_CONFIG_BYTES = 64 * 1024
#: Keys of a Hugging Face config that would make ``transformers`` load code from elsewhere.
REMOTE_CODE_KEYS = ("auto_map", "trust_remote_code")
#: The loss, and so the labels, a Hugging Face config's ``problem_type`` asks for; jobs take
#: integer class labels, so only single-label classification runs through the service.
HF_PROBLEM_TYPES = ("single_label_classification",)
#: ``transformers``' number of labels when a config names neither ``num_labels`` nor ``id2label``.
HF_DEFAULT_NUM_LABELS = 2


class HuggingFaceModel(Strict):
    """A Hugging Face `*ForSequenceClassification` / `*ForImageClassification`: the object of its
    `config.json` and the `model.safetensors` that `save_pretrained` writes (docs/models.md)."""

    format: Literal["huggingface"] = Field(description="A Hugging Face classifier (`transformers`).")
    config: dict[str, Any] = Field(
        description="The object in `config.json` (`model_type` required; no `auto_map`: the server "
        "never runs remote code).",
    )
    checkpoint: ArtifactId = Field(
        description="Artifact id of the `model.safetensors` of `save_pretrained` (kind `checkpoint`)."
    )

    @field_validator("config")
    @classmethod
    def _checked_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        """What can be told without ``transformers``: size, ``model_type``, no remote code, labels
        that agree, a problem type the service's integer labels fit (the rest at submit, in the
        sandboxed inspector: jobs/submit.py)."""
        try:
            size = len(json.dumps(config, allow_nan=False, separators=(",", ":")))
        except ValueError:
            raise PydanticCustomError("invalid_config", "the config holds NaN or Infinity") from None
        if size > MAX_HF_CONFIG_BYTES:
            raise PydanticCustomError(
                "config_too_large", "the config is {size} bytes of JSON; at most {limit} are accepted",
                {"size": size, "limit": MAX_HF_CONFIG_BYTES},
            )  # fmt: skip
        found = [key for key in REMOTE_CODE_KEYS if key in config]
        if found:
            raise PydanticCustomError(
                "remote_code",
                "the config names custom code (`{keys}`); models are built only from classes that "
                "transformers ships, never with trust_remote_code",
                {"keys": "`, `".join(found)},
            )
        if not isinstance(config.get("model_type"), str) or not config["model_type"]:
            raise PydanticCustomError("invalid_config", "`model_type` must be a non-empty string")
        problem = config.get("problem_type") or HF_PROBLEM_TYPES[0]
        if problem not in HF_PROBLEM_TYPES:
            raise PydanticCustomError(
                "unsupported_model",
                "problem_type {problem} is not supported by jobs (their datasets hold integer class "
                "labels); use single_label_classification",
                {"problem": problem},
            )
        _hf_num_labels(config)
        return config

    def artifacts(self) -> dict[str, tuple[str, str]]:
        """The artifacts the model is made of: role -> (field, required kind)."""
        return {"checkpoint": ("checkpoint", "checkpoint")}

    def num_classes(self) -> int:
        """``num_labels``, else the size of ``id2label``, else transformers' default (2)."""
        return _hf_num_labels(self.config)

    def input_shape(self) -> None:
        """Hugging Face models take named tensors: their shapes are checked against the config."""
        return None

    def record(self) -> dict[str, Any]:
        """What the job's ``inputs`` and the results' provenance record of the model."""
        architectures = self.config.get("architectures")
        return {
            "format": "huggingface",
            "model_type": self.config["model_type"],
            "architecture": architectures[0] if isinstance(architectures, list) and architectures else None,
            "num_labels": self.num_classes(),
        }


def _hf_num_labels(config: dict[str, Any]) -> int:
    """The class count a config names; ``num_labels`` and ``id2label`` must agree."""
    num_labels, id2label = config.get("num_labels"), config.get("id2label")
    if num_labels is not None and not (type(num_labels) is int and 1 <= num_labels <= MAX_CLASSES):
        raise PydanticCustomError("invalid_config", "`num_labels` must be an integer in [1, {limit}]",
                                  {"limit": MAX_CLASSES})  # fmt: skip
    if id2label is not None:
        if not isinstance(id2label, dict) or not 1 <= len(id2label) <= MAX_CLASSES:
            raise PydanticCustomError("invalid_config", "`id2label` must be an object of class names")
        if sorted(id2label) != sorted(str(k) for k in range(len(id2label))):
            raise PydanticCustomError("invalid_config", "`id2label`'s keys must be the class ids 0..n-1")
        if num_labels is not None and num_labels != len(id2label):
            raise PydanticCustomError(
                "invalid_config", "`num_labels` is {n} but `id2label` names {m} classes",
                {"n": num_labels, "m": len(id2label)},
            )  # fmt: skip
        return len(id2label)
    return num_labels if num_labels is not None else HF_DEFAULT_NUM_LABELS


def _model_format(value: Any) -> str:
    """The variant of a ``model`` body: its ``format``, ``registry`` when it names none."""
    found = value.get("format", "registry") if isinstance(value, dict) else getattr(value, "format", None)
    return found if isinstance(found, str) else "registry"


#: The ``model`` of a job: a union discriminated on ``format`` (a new format is one more member
#: here, one more name in :data:`MODEL_FORMATS`, and its loader in workers/loading.py).
ModelSpec = Annotated[
    Annotated[RegistryModel, Tag("registry")]
    | Annotated[ProgramModel, Tag("torch.export")]
    | Annotated[HuggingFaceModel, Tag("huggingface")],
    Discriminator(
        _model_format,
        custom_error_type="model_format",
        custom_error_message=f"`format` must be one of {', '.join(MODEL_FORMATS)} (or left out)",
    ),
]
AnyModel = RegistryModel | ProgramModel | HuggingFaceModel


def service_fields(kind: type[SolveConfig], exclude: tuple[str, ...] = ()) -> list[dataclasses.Field]:
    """The fields of the engine configuration ``kind`` that a job may set, in declaration order."""
    return [f for f in dataclasses.fields(kind) if f.metadata.get("service") and f.name not in exclude]


def _options_model(
    name: str, kind: type[SolveConfig], doc: str, exclude: tuple[str, ...] = ()
) -> type[Strict]:
    """A strict request model of ``kind``'s service fields: each optional (None: the engine's
    default for the job's verb and method), typed, described and bounded as ``gif.config`` says."""
    hints = typing.get_type_hints(kind)
    fields: dict[str, Any] = {}
    for f in service_fields(kind, exclude):
        meta = f.metadata
        choices = meta.get("service_choices")
        kind_of_value = hints[f.name] if choices is None else Literal[choices]  # a subset jobs may name
        fields[f.name] = (
            kind_of_value | None,
            Field(None, description=meta["help"], **_bounds(meta)),
        )
    return create_model(name, __base__=Strict, __doc__=doc, __module__=__name__, **fields)


def _bounds(meta: typing.Mapping[str, Any]) -> dict[str, Any]:
    """pydantic bounds of a field: its engine range, capped by the service's maximum."""
    bounds: dict[str, Any] = {}
    if meta["low"] is not None:
        bounds["gt" if meta["low_open"] else "ge"] = meta["low"]
    caps = [c for c in (meta["high"], meta["service_max"]) if c is not None and math.isfinite(c)]
    if caps:
        bounds["le"] = min(caps)
    return bounds


if TYPE_CHECKING:  # generated below; statically, a strict model
    EditOptions = Strict
    ScoresOptions = Strict
else:
    EditOptions = _options_model(
        "EditOptions",
        EditConfig,
        "Options of `remove` / `relabel`: the fields of the engine's `gif.EditConfig` that jobs may set; "
        "unset = the engine's default for the job's type and method.",
    )
    ScoresOptions = _options_model(
        "ScoresOptions",
        SolveConfig,
        "Options of `scores`: the fields of the engine's `gif.SolveConfig` that jobs may set, except "
        "`method` (scores always use the influence-function inverse); unset = the engine's default.",
        exclude=("method",),
    )


def _distinct(what: str) -> Callable[[list[int] | None], list[int] | None]:
    """A validator refusing a list that names one ``what`` (index, id) twice."""

    def check(values: list[int] | None) -> list[int] | None:
        if values is not None and len(set(values)) != len(values):
            seen: set[int] = set()
            dup = next(v for v in values if v in seen or seen.add(v))  # type: ignore[func-returns-value]
            raise ValueError(f"duplicated {what} {dup}")
        return values

    return check


class Forget(Strict):
    """What to remove: a whole class ``{"class": c}``, training rows ``{"indices": [...]}``, or
    training samples by their own ids ``{"ids": [...]}`` (the train dataset's ``sample_ids``)."""

    class_: Label | None = Field(None, alias="class")
    indices: list[Index] | None = Field(None, min_length=1, max_length=MAX_INDICES)
    ids: list[SampleId] | None = Field(None, min_length=1, max_length=MAX_INDICES)

    _unique_indices = field_validator("indices")(_distinct("index"))
    _unique_sample_ids = field_validator("ids")(_distinct("id"))

    @model_validator(mode="after")
    def _exactly_one(self) -> Forget:
        if sum(v is not None for v in (self.class_, self.indices, self.ids)) != 1:
            raise ValueError('give exactly one of "class", "indices" or "ids"')
        return self


class Relabel(Strict):
    """Training sample ``indices[k]`` (or the sample whose ``sample_ids`` entry is ``ids[k]``)
    gets label ``labels[k]``."""

    indices: list[Index] | None = Field(None, min_length=1, max_length=MAX_INDICES)
    ids: list[SampleId] | None = Field(None, min_length=1, max_length=MAX_INDICES)
    labels: list[Label] = Field(min_length=1, max_length=MAX_INDICES)

    _unique_indices = field_validator("indices")(_distinct("index"))
    _unique_sample_ids = field_validator("ids")(_distinct("id"))

    @model_validator(mode="after")
    def _same_length(self) -> Relabel:
        if (self.indices is None) == (self.ids is None):
            raise ValueError('give exactly one of "indices" or "ids"')
        named = self.indices if self.indices is not None else self.ids
        assert named is not None
        if len(named) != len(self.labels):
            what = "indices" if self.indices is not None else "ids"
            raise ValueError(f"{len(named)} {what} but {len(self.labels)} labels")
        return self


WebhookEvent = Literal["completed", "progress"]


def _completed_only() -> list[WebhookEvent]:
    return ["completed"]


class Webhook(Strict):
    """Where to send signed notifications of the job's events (docs/service.md, "Webhooks").
    The URL's host is checked at submit (jobs/webhook_targets.py), not here: that resolves names."""

    url: str = Field(
        min_length=1,
        max_length=2048,
        description="An https:// (or http://) URL; its host must not be a loopback, private, link-local "
        "or reserved address unless the operator allows it (GIF_WEBHOOK_ALLOWED_HOSTS).",
        examples=["https://hooks.example.com/gif"],
    )
    events: list[WebhookEvent] = Field(
        default_factory=_completed_only,
        min_length=1,
        max_length=2,
        description="`completed`: the job ended (succeeded, failed or cancelled); `progress`: the job "
        "entered a new stage.",
    )

    @field_validator("events")
    @classmethod
    def _distinct(cls, events: list[WebhookEvent]) -> list[WebhookEvent]:
        return sorted(set(events))


#: An fnmatch pattern over parameter names as ``named_parameters()`` gives them (``*``, ``?``, ``[...]``).
ParamNamePattern = Annotated[
    str, StringConstraints(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.*?\[\]!-]+$")
]


class Params(Strict):
    """Which parameters an edit may change, by name (the engine's ``EditConfig.param_names``)."""

    names: list[ParamNamePattern] = Field(
        min_length=1,
        max_length=64,
        description="fnmatch patterns over the model's parameter names (`named_parameters()`), e.g. "
        "`classifier.*` (a Hugging Face head) or `*lora_*` (a LoRA adapter): the selection strategy and "
        "ratio then choose T among the matching parameters only; patterns that match no trainable "
        "parameter fail the job with `invalid_input`.",
        examples=[["classifier.*"], ["*lora_*"]],
    )


PARAMS_HELP = "Optional: restrict the parameters the edit may change to those whose names match."


class _Job(Strict):
    model: ModelSpec
    train: ArtifactId = Field(description="Artifact id of the training dataset (kind `dataset`).")
    webhook: Webhook | None = Field(
        None, description="Optional: signed HTTP callbacks when the job completes (and on progress)."
    )


HOLDOUT_HELP = (
    "Optional dataset of samples from the training distribution that the model never saw: turns on "
    "the forgetting audit (membership inference, accuracies, loss histograms; docs/audit.md)."
)
REFERENCE_HELP = (
    "Optional checkpoint (kind `checkpoint`) of the same model retrained without the edited samples: "
    "the audit then reports the gap to it."
)


class RemoveJob(_Job):
    """Unlearn training samples or a whole class; returns updated weights and a report."""

    type: Literal["remove"]
    forget: Forget
    validation: ArtifactId | None = Field(None, description="Optional validation dataset (step choice).")
    holdout: ArtifactId | None = Field(None, description=HOLDOUT_HELP)
    reference: ArtifactId | None = Field(None, description=REFERENCE_HELP)
    params: Params | None = Field(None, description=PARAMS_HELP)
    options: EditOptions = Field(default_factory=EditOptions)


class RelabelJob(_Job):
    """Fix the labels of training samples; returns updated weights and a report."""

    type: Literal["relabel"]
    relabel: Relabel
    validation: ArtifactId | None = Field(None, description="Optional validation dataset (step choice).")
    holdout: ArtifactId | None = Field(None, description=HOLDOUT_HELP)
    reference: ArtifactId | None = Field(None, description=REFERENCE_HELP)
    params: Params | None = Field(None, description=PARAMS_HELP)
    options: EditOptions = Field(default_factory=EditOptions)


class ScoresJob(_Job):
    """Influence of every training sample on every query sample; scores and top-k."""

    type: Literal["scores"]
    queries: ArtifactId = Field(description="Artifact id of the query dataset (kind `dataset`).")
    top_k: int = Field(10, ge=1, le=MAX_TOP_K)
    normalize: Literal["none", "relative", "cosine"] = Field(
        "none",
        description="`none`: raw scores ∇ℓ_qᵀ(H + λI)⁻¹∇ℓ_i (positive: sample i supports query q; removing "
        "it raises the query loss by about score/n). `relative`: divided by √ of sample i's self-influence, "
        "so outliers with huge gradients do not top every list. `cosine`: divided by √ of both "
        "self-influences, in [−1, 1]. The training self-influence costs one solve per sample with an "
        "iterative solver; use `lowrank`.",
    )
    options: ScoresOptions = Field(default_factory=ScoresOptions)


class SelfInfluenceJob(_Job):
    """Mislabel triage: every training sample's self-influence, most suspicious first; with a
    trusted ``validation`` set, a second ranking by harm to its loss."""

    type: Literal["self_influence"]
    top_k: int = Field(10, ge=1, le=MAX_TOP_K, description="How many of the highest-scoring samples to list.")
    measure: Literal["auto", "loss", "margin", "head"] = Field(
        "auto",
        description="What a sample's own influence is measured on: `loss` (∇ℓᵀ(H + λI)⁻¹∇ℓ, the classic "
        "self-influence), `margin` (−∇mᵀ(H + λI)⁻¹∇ℓ, m the log-odds of the sample's label: how much "
        "the model's belief in that label rests on the sample; single-label classifiers only), `head` "
        "(no curvature: the exact leave-one-out margin of a ridge head refitted on the model's "
        "penultimate features, positive when the head refitted without the sample gives it another "
        "class; single-label classifiers whose logits a last Linear layer computes) or `auto`: `head` "
        "where it applies and no option but `seed` is given, else `margin` where it applies, else "
        "`loss`. The report says which was used.",
    )
    validation: ArtifactId | None = Field(
        None,
        description="Optional trusted (clean) dataset: a second ranking by each training sample's influence "
        "on its loss, samples that raise it first.",
    )
    options: ScoresOptions = Field(
        default_factory=ScoresOptions,
        description="As for `scores`; `solver` other than `lowrank` solves per sample (slower, exact).",
    )


Spec = RemoveJob | RelabelJob | ScoresJob | SelfInfluenceJob
JobSpec = Annotated[Spec, Field(discriminator="type")]
JOB_SPEC = TypeAdapter(JobSpec)

EXAMPLES: dict[str, dict[str, Any]] = {
    "remove_class": {
        "summary": "Remove a class",
        "value": {
            "type": "remove",
            "model": {
                "arch": "mlp",
                "config": {"input_shape": [1, 8, 8], "hidden_sizes": [64], "num_classes": 10},
                "checkpoint": "art_01JD3Q7W8M6Z5K2R9T0V4X1YBC",
            },
            "train": "art_01JD3Q7W8M6Z5K2R9T0V4X1YBD",
            "forget": {"class": 3},
            "options": {"method": "gif", "selection": "highest_outputs", "ratio": 0.05},
        },
    },
    "relabel": {
        "summary": "Fix labels",
        "value": {
            "type": "relabel",
            "model": {
                "arch": "mlp",
                "config": {"num_classes": 10},
                "checkpoint": "art_01JD3Q7W8M6Z5K2R9T0V4X1YBC",
            },
            "train": "art_01JD3Q7W8M6Z5K2R9T0V4X1YBD",
            "relabel": {"indices": [17, 912], "labels": [3, 0]},
        },
    },
    "self_influence": {
        "summary": "Find mislabelled training samples",
        "value": {
            "type": "self_influence",
            "model": {
                "arch": "mlp",
                "config": {"num_classes": 10},
                "checkpoint": "art_01JD3Q7W8M6Z5K2R9T0V4X1YBC",
            },
            "train": "art_01JD3Q7W8M6Z5K2R9T0V4X1YBD",
            "top_k": 20,
        },
    },
    "scores": {
        "summary": "Influence scores",
        "value": {
            "type": "scores",
            "model": {
                "arch": "mlp",
                "config": {"num_classes": 10},
                "checkpoint": "art_01JD3Q7W8M6Z5K2R9T0V4X1YBC",
            },
            "train": "art_01JD3Q7W8M6Z5K2R9T0V4X1YBD",
            "queries": "art_01JD3Q7W8M6Z5K2R9T0V4X1YBE",
            "top_k": 5,
        },
    },
}


def dump(spec: Spec) -> dict[str, Any]:
    """The canonical JSON form of a validated spec (unset options left out)."""
    return spec.model_dump(mode="json", by_alias=True, exclude_none=True)


def parse(data: dict[str, Any]) -> Spec:
    """Validate a request body (raises pydantic.ValidationError)."""
    return JOB_SPEC.validate_python(data)


class StoredSpecInvalid(Exception):
    """A stored job request (``jobs.request_json``) that no longer parses as a job spec, e.g. one
    stored by a version of the service whose options this one does not know. The job fails with
    ``error.code`` = :attr:`code`; resubmitting it through the API says what to change."""

    code = "invalid_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def load(request_json: str) -> Spec:
    """The spec of a stored job, parsed as at submit (the worker computes from this, typed).

    Raises:
        StoredSpecInvalid: the stored text is not JSON, or not a valid spec any more.
    """
    try:
        return parse(json.loads(request_json))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise StoredSpecInvalid(f"the stored request is not a valid job spec any more: {problems}") from None
    except ValueError as exc:  # not JSON
        raise StoredSpecInvalid(f"the stored request is not JSON: {exc}") from None
