"""Options of an edit (remove / relabel), validated once and serialisable for provenance."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from ._util import check_positive_int
from .errors import InvalidArgumentError
from .influence import DEFAULT_RANK, METHODS
from .selection import STRATEGIES
from .solvers import SOLVERS

STEP_POLICIES = ("newton", "search")
HESSIAN_POOLS = ("auto", "untouched", "all")

#: The method used when a request names none, per task (measured: docs/benchmarks.md).
TASK_METHOD = {"remove": "gif", "relabel": "if"}

#: Settings that go with each method when a request leaves them out (measured on the digits
#: protocols, examples/). ``if``/``sif`` update every parameter; ``cg`` is used there because
#: its stop on negative curvature acts as a regulariser on these indefinite Hessians.
METHOD_DEFAULTS: dict[str, dict] = {
    "gif": {"selection": "highest_gradients", "ratio": 0.05, "damping": 0.01, "solver": "lsqr"},
    "fif": {"selection": "highest_gradients", "ratio": 0.2, "damping": 0.1, "solver": "minres"},
    "if": {"selection": "all_params", "ratio": 1.0, "damping": 0.03, "solver": "cg"},
    "sif": {"selection": "all_params", "ratio": 1.0, "damping": 0.03, "solver": "cg"},
}


@dataclass(frozen=True)
class EditOptions:
    """Every knob of :func:`gif.remove` / :func:`gif.relabel`; build with :meth:`for_task`.

    The defaults were picked by task quality on the digits protocols (docs/benchmarks.md):
    applying any influence update at its Newton scale wrecks a trained network, so the default
    step policy walks along the update and stops by validation metrics, and a few outer Newton
    steps (each re-estimating the gradient at the new point) close most of the remaining gap
    to retraining.
    """

    method: str = field(default="gif", metadata={"help": "if | fif | gif | sif"})
    selection: str = field(default="highest_outputs", metadata={"help": "gif.select strategy"})
    ratio: float = field(default=0.05, metadata={"help": "fraction of each Conv/Linear layer to update"})
    damping: float = field(default=0.01, metadata={"help": "λ ≥ 0 added to the curvature"})
    solver: str | None = field(default=None, metadata={"help": "None = the method's default"})
    tol: float = field(default=1e-4, metadata={"help": "relative residual tolerance"})
    max_iter: int = field(default=100, metadata={"help": "solver iteration cap"})
    rank: int = field(default=DEFAULT_RANK, metadata={"help": "eigenpairs for solver=lowrank"})
    hessian_samples: int = field(default=2048, metadata={"help": "training samples in the Hessian"})
    hessian_pool: str = field(
        default="auto",
        metadata={
            "help": "untouched (samples the edit leaves alone) | all (a seeded sample of the whole training "
            "set: the same for every edit, so one lowrank fit serves them all) | auto (all with "
            "solver=lowrank, else untouched)"
        },
    )
    validation_fraction: float = field(
        default=0.1, metadata={"help": "carved from retained data if none given"}
    )
    max_validation: int = field(default=2000, metadata={"help": "cap on carved validation samples"})
    step: str = field(default="search", metadata={"help": "newton | search"})
    newton_steps: int = field(
        default=10,
        metadata={
            "help": "outer Newton steps (gradient re-estimated at each); stops early when no step helps"
        },
    )
    min_step: float = field(default=1e-5, metadata={"help": "smallest searched step, as ‖Δθ_T‖ / ‖θ_T‖"})
    max_step: float = field(default=1.0, metadata={"help": "largest searched step, as ‖Δθ_T‖ / ‖θ_T‖"})
    growth: float = field(default=math.sqrt(2.0), metadata={"help": "ratio between successive steps"})
    patience: int = field(default=4, metadata={"help": "non-improving steps before the search stops"})
    chunk_size: int = field(default=512, metadata={"help": "samples per forward pass"})
    hvp_backend: str = field(default="auto", metadata={"help": "auto | func | graph (gif.hessian)"})
    seed: int = field(default=0, metadata={"help": "seeds selection and sub-sampling"})

    def __post_init__(self) -> None:
        _one_of("method", self.method, METHODS)
        _one_of("selection", self.selection, STRATEGIES)
        _one_of("step", self.step, STEP_POLICIES)
        _one_of("hessian_pool", self.hessian_pool, HESSIAN_POOLS)
        if self.solver is not None:
            _one_of("solver", self.solver, SOLVERS)
        _one_of("hvp_backend", self.hvp_backend, ("auto", "func", "graph"))
        _in_range("ratio", self.ratio, 0.0, 1.0, low_open=True)
        _in_range("damping", self.damping, 0.0, math.inf)
        _in_range("tol", self.tol, 0.0, 1.0, low_open=True)
        _in_range("validation_fraction", self.validation_fraction, 0.0, 0.5, low_open=True)
        _in_range("min_step", self.min_step, 0.0, math.inf, low_open=True)
        _in_range("max_step", self.max_step, self.min_step, math.inf)
        _in_range("growth", self.growth, 1.0, math.inf, low_open=True)
        for name in (
            "max_iter",
            "rank",
            "hessian_samples",
            "max_validation",
            "patience",
            "chunk_size",
            "newton_steps",
        ):
            check_positive_int(name, getattr(self, name))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise InvalidArgumentError(f"`seed` must be an integer, got {self.seed!r}")

    @classmethod
    def for_task(cls, task: str, **kwargs: object) -> EditOptions:
        """Options for ``task`` ("remove" | "relabel"): the user's values, then the defaults of the
        chosen method (:data:`METHOD_DEFAULTS`), then the field defaults."""
        method = kwargs.get("method", TASK_METHOD[task])
        preset = METHOD_DEFAULTS.get(method, {}) if isinstance(method, str) else {}
        return cls.from_kwargs(**{**preset, **kwargs, "method": method})

    @classmethod
    def from_kwargs(cls, **kwargs: object) -> EditOptions:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise InvalidArgumentError(
                f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**kwargs)  # type: ignore[arg-type]

    @property
    def pool(self) -> str:
        """The effective ``hessian_pool``: ``auto`` is ``all`` for the ``lowrank`` solver (its fit is
        then reused across edits, at the same measured quality) and ``untouched`` otherwise (an
        iterative solve pays ~3× the HVPs on the whole-set sample; docs/benchmarks.md)."""
        if self.hessian_pool != "auto":
            return self.hessian_pool
        return "all" if self.solver == "lowrank" else "untouched"

    def to_dict(self) -> dict:
        """The options as used (``hessian_pool`` resolved)."""
        return {**dataclasses.asdict(self), "hessian_pool": self.pool}


def _one_of(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InvalidArgumentError(f"`{name}` must be one of {', '.join(allowed)}; got {value!r}")


def _in_range(name: str, value: object, low: float, high: float, *, low_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high  # type: ignore[operator]
    if not ok:
        bracket = "(" if low_open else "["
        raise InvalidArgumentError(
            f"`{name}` must be a finite number in {bracket}{low}, {high}], got {value!r}"
        )
