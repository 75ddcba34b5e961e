"""``solver="auto"``: the Kronecker-factored curvature where it can stand for the model's, else a
solver that makes no assumption about it; for scores, a low-rank fit on small models of Linear
layers, where it attributes better than K-FAC at less than kronfluence's time."""

from __future__ import annotations

from typing import TypeVar

from torch import nn

from ..config import SolveConfig
from .kfac import unfactorable

Config = TypeVar("Config", bound=SolveConfig)

#: Scores' ``auto`` takes the Lanczos low-rank fit, not K-FAC, for a model whose trainable
#: parameters all sit in Linear layers and number at most this: on four MLPs of 4.8k–19k
#: parameters its LDS was 0.01–0.08 higher than K-FAC's, in less time than kronfluence's EK-FAC;
#: at 39k and 167k a rank-128 fit took 1.4–1.8× kronfluence's time (docs/benchmarks.md, "Scores:
#: LDS against retraining").
SMALL_LINEAR_PARAMS = 20_000
#: That fit's eigenpairs where the request leaves ``rank`` at its default (64 scored 0.02–0.07
#: lower on those MLPs).
SMALL_LINEAR_RANK = 128


def choose_solver(
    config: Config, model: nn.Module, loss_fn: object, fallback: str
) -> tuple[Config, dict | None]:
    """The configuration with a concrete solver and, for ``auto``, what was chosen and why.

    ``auto`` becomes ``kfac`` (fitted once, no HVP) where the model's curvature can be
    Kronecker-factored (gif/inverse/kfac.py, ``unfactorable``), else ``fallback`` (the verb's or
    the method's own solver). Any other solver is kept, with no choice to report."""
    if config.solver != "auto":
        return config, None
    reason = unfactorable(model, loss_fn)
    chosen = "kfac" if reason is None else fallback
    why = reason or "the model's curvature is Kronecker-factored (Linear / Conv layers, cross-entropy)"
    return config.replace(solver=chosen), {"requested": "auto", "chosen": chosen, "reason": why}


def choose_scores_solver(
    config: Config, model: nn.Module, loss_fn: object, fallback: str
) -> tuple[Config, dict | None]:
    """:func:`choose_solver` for scores, except that where ``auto`` would take K-FAC on a model of
    at most :data:`SMALL_LINEAR_PARAMS` trainable parameters, all in Linear layers, it takes
    ``lowrank`` (rank :data:`SMALL_LINEAR_RANK` unless the request sets another)."""
    if config.solver != "auto":
        return config, None
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    linear = sum(
        p.numel() for m in model.modules() if isinstance(m, nn.Linear) for p in m.parameters(recurse=False)
        if p.requires_grad
    )  # fmt: skip
    if linear != trainable or trainable > SMALL_LINEAR_PARAMS or unfactorable(model, loss_fn) is not None:
        return choose_solver(
            config, model, loss_fn, fallback
        )  # K-FAC, or where it does not apply the fallback
    default_rank = SolveConfig.__dataclass_fields__["rank"].default
    rank = SMALL_LINEAR_RANK if config.rank == default_rank else config.rank
    why = (
        f"a small model of Linear layers ({trainable:,} parameters): a rank-{rank} Lanczos fit attributes "
        "better than K-FAC there"
    )
    return config.replace(solver="lowrank", rank=rank), {
        "requested": "auto",
        "chosen": "lowrank",
        "reason": why,
    }
