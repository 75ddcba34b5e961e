"""Options of every engine computation: :class:`SolveConfig` (:func:`gif.influence`,
:func:`gif.scores`, :func:`gif.self_influence`), :class:`EditConfig` (:func:`gif.remove`,
:func:`gif.relabel`) and the defaults of each verb (docs/engine.md, "Configuration").

Every field is declared once, here, with its type, default, help text and valid range; the
engine validates with it and the service generates its request schema from it. Where a verb's
defaults differ from the fields' own, the small tables below say so; ``python -m gif.config``
prints every verb's resolved defaults (docs/engine.md, "Defaults", which a test keeps equal).

This module imports nothing but the standard library, so the service can read it without torch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar, get_args, get_type_hints

from .errors import InvalidArgumentError

Method = Literal["if", "fif", "gif", "sif"]
#: An edit's method may also be ``auto``: chosen per request from the model and the task
#: (gif/method_choice.py, ``choose_method``).
EditMethod = Literal["auto", "if", "fif", "gif", "sif"]
#: ``auto``: K-FAC where the model's curvature can be Kronecker-factored, else the method's own
#: solver (gif/inverse/choice.py, ``choose_solver``).
Solver = Literal["cg", "minres", "lsqr", "neumann", "direct", "lowrank", "kfac", "ekfac", "auto"]
Strategy = Literal[
    "highest_outputs",
    "highest_gradients",
    "lowest_outputs",
    "lowest_gradients",
    "exclusive_outputs",
    "exclusive_gradients",
    "random",
    "threshold",
    "all",
    "all_params",
    "head",
]
StepPolicy = Literal["newton", "search"]
HessianPool = Literal["auto", "untouched", "all"]
HvpBackend = Literal["auto", "func", "graph", "linearized"]
#: What an HVP multiplies by: the loss's Hessian or its Gauss–Newton matrix (gif/hessian.py).
Curvature = Literal["hessian", "gauss_newton"]

METHODS: tuple[str, ...] = get_args(Method)
EDIT_METHODS: tuple[str, ...] = get_args(EditMethod)
SOLVERS: tuple[str, ...] = get_args(Solver)
#: The solvers a service job may name: all of them, the fitted ones cached per checkpoint
#: (docs/benchmarks.md, "Edit ÷ retraining").
SERVICE_SOLVERS: tuple[str, ...] = SOLVERS
#: Solvers whose curvature is fitted once (eigenpairs, Kronecker factors) and then reused by later
#: solves on the same θ and Hessian data: Newton steps of an edit, and cached requests.
FITTED_SOLVERS: tuple[str, ...] = ("lowrank", "kfac", "ekfac")
STRATEGIES: tuple[str, ...] = get_args(Strategy)
STEP_POLICIES: tuple[str, ...] = get_args(StepPolicy)
HESSIAN_POOLS: tuple[str, ...] = get_args(HessianPool)
HVP_BACKENDS: tuple[str, ...] = get_args(HvpBackend)
CURVATURES: tuple[str, ...] = get_args(Curvature)
VERBS = ("influence", "scores", "self_influence", "remove", "relabel")

#: Extra keyword options each solver accepts (``solver_options``).
SOLVER_OPTIONS: dict[str, tuple[str, ...]] = {"neumann": ("normalizer", "step"), "lowrank": ("steps",)}

#: The solver of a plain solve when none is named (bench/solvers.py; docs/benchmarks.md): LSQR for
#: the GIF least squares, MINRES for the symmetric, possibly indefinite systems.
SOLVE_SOLVER: dict[str, str] = {"if": "minres", "fif": "minres", "gif": "lsqr", "sif": "minres"}

#: The validation objective (gif/edit_sets.py) at which an edit is good enough: the relabel's guard
#: keeps it (gif/method_choice.py, which says why this bar) and ``if``'s Newton steps stop there.
ACCEPT_OBJECTIVE = 0.98
#: ``if``'s Newton steps also stop after two steps in a row (not counting the first) that each
#: raised the validation objective by less than this: each costs a solve and a step search, and an
#: edit that slow is kept for what it reached (gif/newton.py, ``stalled``; docs/benchmarks.md,
#: "Stopping a relabel whose steps stall").
STALL_GAIN = 0.005

#: What each method brings to an edit when the request leaves it out, measured on the digits
#: protocols: ``cg``'s stop on negative curvature regularises the indefinite Hessians of ``sif``;
#: ``if`` (a relabel's fallback) runs CG on the positive semi-definite Gauss–Newton matrix truncated
#: at 10 iterations, better relabels than the Hessian's CG at less cost (docs/benchmarks.md, "The
#: relabel's CG on the Gauss–Newton matrix, truncated"), its products over 512 of the 2,048
#: samples its K-FAC fit takes (docs/benchmarks.md, "The relabel's products over 512 samples"),
#: its Newton steps stopped at the guard's bar (docs/benchmarks.md, "Stopping a relabel at the
#: guard's bar"); GIF's loose corrections and 512 Hessian
#: samples cost it no quality (docs/benchmarks.md, "A cheaper step search, and choosing the
#: relabel default").
EDIT_PRESETS: dict[str, dict[str, Any]] = {
    "gif": {"selection": "highest_gradients", "ratio": 0.05, "damping": 0.01, "solver": "lsqr", "curvature": "hessian",
            "max_iter": 100, "correction_tol": 1e-2, "hessian_samples": 512, "hvp_samples": None,
            "stop_objective": 1.0, "stall_gain": 0.0},
    "fif": {"selection": "highest_gradients", "ratio": 0.2, "damping": 0.1, "solver": "minres", "curvature": "hessian",
            "max_iter": 100, "correction_tol": 1e-4, "hessian_samples": 2048, "hvp_samples": None,
            "stop_objective": 1.0, "stall_gain": 0.0},
    "if": {"selection": "all_params", "ratio": 1.0, "damping": 0.03, "solver": "cg", "curvature": "gauss_newton",
           "max_iter": 10, "correction_tol": 1e-4, "hessian_samples": 2048, "hvp_samples": 512,
           "stop_objective": ACCEPT_OBJECTIVE, "stall_gain": STALL_GAIN},
    "sif": {"selection": "all_params", "ratio": 1.0, "damping": 0.03, "solver": "cg", "curvature": "hessian",
            "max_iter": 100, "correction_tol": 1e-4, "hessian_samples": 2048, "hvp_samples": None,
            "stop_objective": 1.0, "stall_gain": 0.0},
}  # fmt: skip

#: Per verb, the defaults that differ from the configuration type's field defaults. Scores take
#: K-FAC with each layer damped by 0.01 × its mean eigenvalue where the model allows it, a low-rank
#: fit on models of Linear layers alone up to a size (gif/inverse/choice.py; docs/benchmarks.md,
#: "Scores: LDS against retraining", "A smaller damping per layer").
VERB_DEFAULTS: dict[str, dict[str, Any]] = {
    "influence": {},
    "scores": {"method": "if", "damping": 0.01, "chunk_size": 256, "solver": "auto", "layer_damping": 0.01},
    "self_influence": {"method": "if", "damping": 0.01, "chunk_size": 256, "solver": "lowrank"},
    # method and solver "auto": chosen per request (gif/method_choice.py, gif/inverse/choice.py)
    "remove": {"method": "auto"},
    "relabel": {"method": "auto", "solver": "auto"},
}


#: A configuration field's metadata besides its help text: the valid range [low, high]
#: (``low_open``: low excluded; no ``high``: an integer), the service's tighter cap, whether jobs
#: may set the field, and which of a choice field's values jobs may name (None: all).
_NO_LIMITS: dict[str, Any] = {"low": None, "high": None, "low_open": False, "service_max": None, "service": True,
                              "service_choices": None}  # fmt: skip
#: Seeds are 64-bit (torch.Generator.manual_seed).
SEED_LIMIT = 2**64
#: Ranges that real-valued fields share: [0, ∞), (0, ∞) and (0, 1].
_AT_LEAST_ZERO: dict[str, Any] = {"low": 0.0, "high": math.inf}
_POSITIVE: dict[str, Any] = {"low": 0.0, "high": math.inf, "low_open": True}
_FRACTION: dict[str, Any] = {"low": 0.0, "high": 1.0, "low_open": True}


def _field(default: Any, help: str, **limits: Any) -> Any:
    """A configuration field (a ``dataclasses.Field``: pyproject.toml tells ruff's RUF009 so) of
    ``default`` (a type: the factory of each instance's default), with ``help`` and
    :data:`_NO_LIMITS` updated by ``limits`` as its metadata."""
    assert set(limits) <= set(_NO_LIMITS), f"unknown field metadata {set(limits) - set(_NO_LIMITS)}"
    metadata = {"help": help, **_NO_LIMITS, **limits}
    if isinstance(default, type):
        return field(default_factory=default, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class SolveConfig:
    """How to apply (H + λI)⁻¹ or its restricted / least-squares variants (docs/engine.md)."""

    _METHODS: ClassVar[tuple[str, ...]] = METHODS

    method: Method = _field("gif", "if | fif | gif | sif (docs/method.md)")
    damping: float = _field(0.0, "λ ≥ 0 added to the curvature", **_AT_LEAST_ZERO, service_max=1e6)
    solver: Solver | None = _field(
        None,
        "cg | minres | lsqr | neumann | direct | lowrank | kfac | ekfac | auto (kfac where the model's "
        "curvature can be Kronecker-factored, else the method's); None: the method's",
        service_choices=SERVICE_SOLVERS,
    )
    layer_damping: float = _field(
        0.0,
        "kfac / ekfac with method if or sif: each factored layer is damped by this multiple of its mean "
        "curvature eigenvalue instead of by `damping` (kronfluence's heuristic: 0.1); 0: `damping` "
        "everywhere; other solvers ignore it",
        **_AT_LEAST_ZERO,
        service_max=1e6,
    )
    curvature: Curvature = _field(
        "hessian",
        "hessian | gauss_newton: the matrix the HVP-based solvers (cg, minres, lsqr, neumann, direct, "
        "lowrank) invert, the loss's Hessian or its Gauss–Newton matrix Jᵀ H_z J, positive "
        "semi-definite for cross-entropy (gif/hessian.py); kfac / ekfac approximate the latter either way",
    )
    tol: float = _field(1e-4, "relative residual at which an iterative solve stops", **_FRACTION)
    max_iter: int = _field(100, "iteration cap of an iterative solve", low=1, service_max=10_000)
    rank: int = _field(64, "eigenpairs of the lowrank curvature fit", low=1, service_max=1_024)
    seed: int = _field(0, "seeds selection, sub-sampling and the Lanczos start", low=0, service_max=2**31 - 1)
    chunk_size: int = _field(1024, "samples per forward pass", low=1, service=False)
    memory_budget: int | None = _field(
        2 << 30,
        "bytes one chunk may take while differentiated: chunks shrink below chunk_size to fit the "
        "model's measured activations (gif/memory.py); None: chunk_size alone",
        low=1,
        service=False,
    )
    hvp_backend: HvpBackend = _field(
        "auto", "auto | func | graph | linearized (gif/hessian.py)", service=False
    )
    solver_options: dict[str, float] = _field(
        dict, "neumann: normalizer, step; lowrank: steps (Lanczos steps)", service=False
    )

    def __post_init__(self) -> None:
        check_choice("method", self.method, self._METHODS)
        if self.solver is None and self.method != "auto":
            object.__setattr__(self, "solver", SOLVE_SOLVER[self.method])
        if self.solver is not None:
            check_choice("solver", self.solver, SOLVERS)
        check_choice("hvp_backend", self.hvp_backend, HVP_BACKENDS)
        if self.curvature is not None:  # None: an edit's method's, while the method is ``auto``
            check_choice("curvature", self.curvature, CURVATURES)
        for f in dataclasses.fields(self):
            _check_range(f, getattr(self, f.name), optional=f.name in _optional_fields(type(self)))
        if self.seed >= SEED_LIMIT:  # torch's generators refuse it with a bare ValueError
            raise InvalidArgumentError(f"`seed` must be an integer in [0, {SEED_LIMIT - 1}], got {self.seed}")
        _check_solver_options(self.solver, self.solver_options)
        if self.layer_damping > 0 and self.method in ("fif", "gif") and self.solver in ("kfac", "ekfac"):
            raise InvalidArgumentError(
                "`layer_damping` damps the (H + λI)⁻¹ of methods if / sif; fif and gif solve restricted "
                "and least-squares problems: use `damping`"
            )

    @property
    def solver_name(self) -> str:
        """The solver (None only while an edit's method is ``auto``: resolved before any solve)."""
        assert self.solver is not None
        return self.solver

    @property
    def curvature_name(self) -> str:
        """The curvature (None only while an edit's method is ``auto``, as :attr:`solver_name`)."""
        assert self.curvature is not None
        return self.curvature

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready (reports, provenance, cache keys)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {**fields, "solver_options": dict(self.solver_options)}

    def solve_config(self) -> SolveConfig:
        """The solve part of this configuration (every :class:`SolveConfig` field)."""
        return SolveConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(SolveConfig)})

    def replace(self, **changes: Any) -> Any:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class EditConfig(SolveConfig):
    """Every knob of :func:`gif.remove` / :func:`gif.relabel`.

    ``selection``, ``ratio``, ``damping``, ``solver``, ``curvature``, ``max_iter``, ``correction_tol``,
    ``hessian_samples``, ``hvp_samples`` and ``stop_objective`` left as None take the method's preset
    (:data:`EDIT_PRESETS`); with ``method="auto"`` they stay None until the edit chooses its
    method from the model and the task (gif/method_choice.py). An influence update at its Newton
    scale wrecks a trained network, so the default step policy walks along it and stops by
    validation metrics (docs/method.md, "Step size").
    """

    _METHODS: ClassVar[tuple[str, ...]] = EDIT_METHODS

    method: EditMethod = _field(  # type: ignore[assignment]
        "auto",
        "auto | if | fif | gif | sif (docs/method.md); auto: fif on the classifier's head where a "
        "Linear layer computes the logits, for a whole-class removal or a relabel whose head edit "
        "generalises to held-out relabelled samples; else gif (remove) / if (relabel)",
    )
    damping: float | None = _field(  # type: ignore[assignment]
        None, "λ ≥ 0 added to the curvature; None: the method's", **_AT_LEAST_ZERO, service_max=1e6
    )
    curvature: Curvature | None = _field(  # type: ignore[assignment]
        None,
        "hessian | gauss_newton: the matrix the HVP-based solvers invert (gif/hessian.py); None: the method's",
    )
    max_iter: int | None = _field(  # type: ignore[assignment]
        None, "iteration cap of an iterative solve; None: the method's", low=1, service_max=10_000
    )
    chunk_size: int = _field(512, "samples per forward pass", low=1, service=False)
    selection: Strategy | None = _field(None, "gif.select strategy; None: the method's")
    ratio: float | None = _field(
        None, "fraction of each Conv/Linear/Embedding layer to update; None: the method's", **_FRACTION
    )
    param_names: tuple[str, ...] | None = _field(
        None,
        "name patterns (fnmatch) restricting T to matching parameters, e.g. ('classifier.*',) or "
        "('*lora_*',); combined with the selection strategy and ratio; None: every parameter",
        service=False,
    )
    hessian_samples: int | None = _field(
        None, "training samples in the Hessian; None: the method's", low=1, service_max=1_000_000
    )
    hvp_samples: int | None = _field(
        None,
        "samples of the Hessian sample that each HVP runs over (a seeded subset; gradients and Kronecker "
        "fits take the whole sample); None: the method's (None there: all of it)",
        low=1,
        service_max=1_000_000,
    )
    hessian_pool: HessianPool = _field(
        "auto",
        "untouched (samples the edit leaves alone) | all (a seeded sample of the whole training set: the "
        "same for every edit, so one curvature fit serves them all) | auto (all with solver=lowrank, kfac or "
        "ekfac, else untouched)",
    )
    validation_fraction: float = _field(0.1, "share of the retained data carved for validation when none is given", low=0.0,
        high=0.5, low_open=True, service=False)  # fmt: skip
    max_validation: int = _field(2000, "cap on carved validation samples", low=1, service=False)
    step: StepPolicy = _field("search", "newton | search (gif/steps.py)")
    newton_steps: int = _field(10, "outer Newton steps (gradient re-estimated at each); stops early when no step helps",
        low=1, service_max=20)  # fmt: skip
    min_step: float = _field(1e-5, "smallest searched step, as ‖Δθ_T‖ / ‖θ_T‖", **_POSITIVE, service=False)
    max_step: float = _field(1.0, "largest searched step, as ‖Δθ_T‖ / ‖θ_T‖", **_POSITIVE, service=False)
    growth: float = _field(4.0, "ratio between successive searched steps (a golden-section search refines the best)",
        low=1.0, high=math.inf, low_open=True, service=False)  # fmt: skip
    patience: int = _field(2, "non-improving steps before the search stops", low=1, service=False)
    correction_tol: float | None = _field(
        None,
        "relative residual at which the solves of Newton steps after the first stop (inexact Newton: "
        "a correction needs no more accuracy than the step it corrects; never tighter than tol); None: "
        "the method's",
        **_FRACTION,
    )
    stop_objective: float | None = _field(
        None,
        "validation objective (in [0, 1], gif/edit_sets.py) at which the Newton loop stops: a step "
        "that reaches it is the last; 1: only at the objective's maximum; None: the method's",
        **_FRACTION,
    )
    stall_gain: float | None = _field(
        None,
        "rise of the validation objective below which a Newton step (after the first) counts as stalled: "
        "two such steps in a row end the loop (each costs a solve and a step search); 0: never; None: "
        "the method's",
        low=0.0,
        high=1.0,
    )
    give_up_objective: float = _field(
        0.0,
        "validation objective below which the Newton loop stops after its first step, for a tentative "
        "edit that a later one replaces when it falls short (gif/method_choice.py); 0: never",
        low=0.0,
        high=1.0,
        service=False,
    )

    def __post_init__(self) -> None:
        preset = EDIT_PRESETS.get(self.method, {}) if isinstance(self.method, str) else {}
        for name, value in preset.items():  # the method is checked below
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        super().__post_init__()
        if self.selection is not None:
            check_choice("selection", self.selection, STRATEGIES)
        check_choice("step", self.step, STEP_POLICIES)
        check_choice("hessian_pool", self.hessian_pool, HESSIAN_POOLS)
        if (names := self.param_names) is not None:
            if isinstance(names, str) or not names or not all(isinstance(n, str) and n for n in names):
                raise InvalidArgumentError(
                    f"`param_names` must be a non-empty list of name patterns, got {names!r}"
                )
            object.__setattr__(self, "param_names", tuple(names))
        if self.max_step < self.min_step:
            raise InvalidArgumentError(
                f"`max_step` ({self.max_step}) must be >= `min_step` ({self.min_step})"
            )

    @property
    def hessian_size(self) -> int:
        """``hessian_samples``, or while the method is ``auto`` the most any method takes."""
        if self.hessian_samples is not None:
            return self.hessian_samples
        return max(int(preset["hessian_samples"]) for preset in EDIT_PRESETS.values())

    @property
    def pool(self) -> str:
        """The effective ``hessian_pool``: ``auto`` is ``all`` for a fitted curvature, whose fit is
        then reused across edits, else ``untouched`` (docs/engine.md, "Edits")."""
        if self.hessian_pool != "auto" or self.solver in (None, "auto"):
            return self.hessian_pool  # ``auto`` solver: decided with the solver (gif/edits.py)
        return "all" if self.solver in FITTED_SOLVERS else "untouched"

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready, with ``hessian_pool`` as used (``auto`` resolved)."""
        return {**super().to_dict(), "hessian_pool": self.pool}


Config = TypeVar("Config", bound=SolveConfig)


def resolve(verb: str, kind: type[Config], config: Config | None, options: Mapping[str, Any]) -> Config:
    """The configuration of one call: ``config`` (or the verb's defaults) with the keyword
    ``options`` replacing its fields.

    Keyword names that are not fields go to ``solver_options`` when the solver takes them
    (e.g. ``normalizer`` for ``neumann``), else they are an error naming the known options.
    """
    if verb not in VERB_DEFAULTS:
        raise InvalidArgumentError(f"unknown verb {verb!r}")
    if config is not None and not isinstance(config, kind):
        raise InvalidArgumentError(f"`config` must be a {kind.__name__}, got {type(config).__name__}")
    known = {f.name for f in dataclasses.fields(kind)}
    fields = {k: v for k, v in options.items() if k in known}
    extras = {k: v for k, v in options.items() if k not in known}
    if config is None:
        resolved = kind(**{**VERB_DEFAULTS[verb], **fields})
    else:
        resolved = dataclasses.replace(config, **fields) if fields else config
    if not extras:
        return resolved
    allowed = SOLVER_OPTIONS.get(str(resolved.solver), ())
    unknown = sorted(set(extras) - set(allowed))
    if unknown:
        raise InvalidArgumentError(
            f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known | set(allowed)))}"
        )
    return dataclasses.replace(resolved, solver_options={**resolved.solver_options, **extras})


def defaults(verb: str) -> dict[str, Any]:
    """Every option of ``verb`` at its default, as :func:`resolve` fills it."""
    kind = EditConfig if verb in ("remove", "relabel") else SolveConfig
    return resolve(verb, kind, None, {}).to_dict()


def defaults_table() -> str:
    """The defaults of every verb, then what each edit method brings, as two Markdown tables
    (docs/engine.md holds this text). "method's": filled from the second table once the
    method is chosen."""
    columns = {verb: defaults(verb) for verb in VERBS}
    lines = ["| option | " + " | ".join(f"`{v}`" for v in VERBS) + " |", "|---" * (len(VERBS) + 1) + "|"]
    for name in columns["remove"]:
        cells = [_cell(columns[verb].get(name, "—"), preset=name in EDIT_PRESETS["gif"]) for verb in VERBS]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    lines += ["", "| edit method | " + " | ".join(f"`{n}`" for n in EDIT_PRESETS["gif"]) + " |"]
    lines.append("|---" * (len(EDIT_PRESETS["gif"]) + 1) + "|")
    for method, preset in EDIT_PRESETS.items():
        lines.append(f"| `{method}` | " + " | ".join(_cell(v) for v in preset.values()) + " |")
    return "\n".join(lines)


def _cell(value: Any, *, preset: bool = False) -> str:
    if value is None and preset:
        return "method's"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict):
        return "{}" if not value else ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    """Raise :class:`InvalidArgumentError` unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise InvalidArgumentError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")


_OPTIONAL: dict[type, frozenset[str]] = {}


def _optional_fields(cls: type) -> frozenset[str]:
    """The fields of ``cls`` whose annotation admits None (resolved once per class)."""
    if cls not in _OPTIONAL:
        hints = get_type_hints(cls)
        _OPTIONAL[cls] = frozenset(name for name, hint in hints.items() if type(None) in get_args(hint))
    return _OPTIONAL[cls]


def _check_range(f: dataclasses.Field, value: object, *, optional: bool) -> None:
    low, high, low_open = f.metadata["low"], f.metadata["high"], f.metadata["low_open"]
    if low is None or (value is None and optional):  # no range, or an optional field unset
        return
    if high is None:  # integers
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InvalidArgumentError(f"`{f.name}` must be an integer >= {low}, got {value!r}")
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not (ok and (value > low if low_open else value >= low) and value <= high):
        raise InvalidArgumentError(
            f"`{f.name}` must be a finite number in {'(' if low_open else '['}{low}, {high}], got {value!r}"
        )


def _check_solver_options(solver: str | None, options: Mapping[str, Any]) -> None:
    if not isinstance(options, Mapping):
        raise InvalidArgumentError(f"`solver_options` must be a mapping, got {type(options).__name__}")
    allowed = SOLVER_OPTIONS.get(str(solver), ())
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        tail = f"; it accepts {', '.join(allowed)}" if allowed else "; it takes no extra options"
        raise InvalidArgumentError(f"unknown option(s) {', '.join(unknown)} for solver {solver!r}" + tail)
    for name, value in options.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InvalidArgumentError(f"solver option `{name}` must be a finite number, got {value!r}")
        if value <= 0:  # neumann's starting c and its increment, lowrank's Lanczos steps
            raise InvalidArgumentError(f"solver option `{name}` must be > 0, got {value!r}")
        if name == "steps" and value != int(value):
            raise InvalidArgumentError(f"solver option `steps` must be a whole number, got {value!r}")


if __name__ == "__main__":
    print(defaults_table())
