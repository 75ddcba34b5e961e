"""``solver="auto"``: the Kronecker-factored curvature where it can stand for the model's, else a
solver that makes no assumption about it; for scores, a low-rank fit on models of Linear layers
alone up to a size, where it attributes better than K-FAC at less than kronfluence's time."""

from __future__ import annotations

from typing import TypeVar

from torch import nn

from ..config import SolveConfig
from .kfac import unfactorable

Config = TypeVar("Config", bound=SolveConfig)

#: Scores' ``auto`` takes the Lanczos low-rank fit, not K-FAC, for a model whose trainable
#: parameters all sit in Linear layers, up to this many: on five MLPs of 4.8k–167k parameters it
#: attributed better than K-FAC and than kronfluence's EK-FAC (LDS +0.01 to +0.11) in less time
#: than the latter (docs/benchmarks.md, "Across architectures, and the default for small MLPs").
LINEAR_LOWRANK_PARAMS = 200_000
#: Up to this many parameters, the fit takes :data:`SMALL_LINEAR_RANK` eigenpairs where the
#: request leaves ``rank`` at its default (64 eigenpairs scored below K-FAC on a 9k MLP; 128 cost
#: 1.1–1.8× kronfluence's time above 20k).
SMALL_LINEAR_PARAMS = 20_000
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
    """:func:`choose_solver` for scores, except where ``auto`` would take K-FAC on a model of at
    most :data:`LINEAR_LOWRANK_PARAMS` trainable parameters, all in Linear layers: there it takes
    ``lowrank``, with :data:`SMALL_LINEAR_RANK` eigenpairs up to :data:`SMALL_LINEAR_PARAMS`
    parameters unless the request sets a rank other than the default (64)."""
    if config.solver != "auto":
        return config, None
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    linear = sum(
        p.numel() for m in model.modules() if isinstance(m, nn.Linear) for p in m.parameters(recurse=False)
        if p.requires_grad
    )  # fmt: skip
    if linear != trainable or trainable > LINEAR_LOWRANK_PARAMS or unfactorable(model, loss_fn) is not None:
        return choose_solver(config, model, loss_fn, fallback)  # K-FAC, else the fallback
    rank = config.rank
    if trainable <= SMALL_LINEAR_PARAMS and rank == SolveConfig().rank:
        rank = SMALL_LINEAR_RANK
    why = f"a model of Linear layers alone ({trainable:,} parameters): a rank-{rank} Lanczos fit attributes better"
    choice = {"requested": "auto", "chosen": "lowrank", "reason": why}
    return config.replace(solver="lowrank", rank=rank), choice
