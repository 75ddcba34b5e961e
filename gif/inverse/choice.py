"""``solver="auto"``: the Kronecker-factored curvature where it can stand for the model's, else a
solver that makes no assumption about it."""

from __future__ import annotations

from typing import TypeVar

from torch import nn

from ..config import SolveConfig
from .kfac import unfactorable

Config = TypeVar("Config", bound=SolveConfig)


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
