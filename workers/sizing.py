"""Size a job before it computes: the engine's estimate against the worker's memory budget.

A job whose estimate (gif/memory.py: parameters and solver vectors, a low-rank fit's Lanczos
basis included; one chunk being differentiated, or the HVPs' cached graphs where they are taken;
the data held; an edit's features of its head or last layers for every sample) exceeds ``GIF_MAX_MEMORY_BYTES`` fails at once with ``memory_budget_exceeded`` and
a message naming what to change, instead of being killed by the operating system's OOM killer
half-way. On a GPU the job's tensors live in the device's memory, so the budget there is also at
most :data:`GPU_SHARE` of what the device has free when the job starts (:func:`job_budget`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

import gif.memory
from gif.config import SOLVE_SOLVER, SolveConfig
from gif.hessian import cross_entropy
from gif.inverse import choose_scores_solver
from gif.method_choice import most_feature_bytes, most_hessian_samples
from jobs.specs import ScoresJob, SelfInfluenceJob, Spec

from .execute import edit_config, measure_of, scores_config, self_influence_config
from .loading import Loaded

#: The fraction of a GPU's free memory a job may plan to hold: the rest is for the allocator's
#: rounding and fragmentation and for what the estimate leaves out (cuDNN / cuBLAS workspaces).
GPU_SHARE = 0.9


@dataclass(frozen=True)
class Budget:
    """The bytes a job may hold (0: no check), and what they are, for its error message."""

    bytes: int
    name: str

    @classmethod
    def setting(cls, configured: int) -> Budget:
        """``GIF_MAX_MEMORY_BYTES`` as a budget."""
        return cls(configured, "the budget (GIF_MAX_MEMORY_BYTES)")


def job_budget(
    device: torch.device,
    configured: int,
    free_memory: Callable[[torch.device], tuple[int, int]] = torch.cuda.mem_get_info,
    held: int = 0,
) -> Budget:
    """The budget of a job on ``device``: ``configured`` (``GIF_MAX_MEMORY_BYTES``, 0: no check);
    on a GPU also at most :data:`GPU_SHARE` of what ``free_memory(device)`` (free, total) says
    is free now plus the ``held`` bytes the job's own model already takes there (the estimate
    counts them) — the setting's default is a share of the host's memory, which a GPU's need not
    match, and other processes may hold part of the device."""
    setting = Budget.setting(configured)
    if device.type != "cuda" or configured == 0:
        return setting
    free, total = free_memory(device)
    free += held
    gpu = Budget(
        int(free * GPU_SHARE),
        f"{GPU_SHARE:.0%} of the free memory of {device} ({total / 2**30:.1f} GiB in all)",
    )
    return gpu if gpu.bytes < configured else setting


def model_bytes(model: torch.nn.Module) -> int:
    """The bytes ``model``'s parameters and buffers take."""
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def check_job_fits(spec: Spec, loaded: Loaded, budget: Budget) -> dict[str, Any]:
    """The job's estimate (for its provenance); raises :class:`gif.errors.MemoryBudgetError`
    when it exceeds the ``budget`` (none when its bytes are 0)."""
    inputs, labels = loaded.train
    n = int(labels.shape[0])
    p = sum(t.numel() for t in loaded.model.parameters() if t.requires_grad)
    solve: SolveConfig
    features = 0
    if isinstance(spec, ScoresJob):
        solve = scores_config(spec)  # solver auto resolved as gif.scores resolves it
        solve, _ = choose_scores_solver(
            solve, loaded.model, loaded.loss_fn or cross_entropy, SOLVE_SOLVER[solve.method]
        )
        samples, vectors, backend = n, gif.memory.solver_vectors(solve, p), gif.memory.solver_backend(solve)
    elif isinstance(spec, SelfInfluenceJob):
        solve = self_influence_config(spec)
        samples = n
        if measure_of(spec, loaded) == "head":  # the leave-one-out head: no curvature fit, no HVP
            vectors, backend = gif.memory.EDIT_VECTORS, "func"
        else:
            vectors, backend = gif.memory.solver_vectors(solve, p), gif.memory.solver_backend(solve)
    else:
        edit = edit_config(spec)
        solve, samples = edit, min(n, most_hessian_samples(edit, spec.type))
        vectors, backend = gif.memory.solver_vectors(solve, p), gif.memory.solver_backend(solve)
        features = most_feature_bytes(loaded.model, inputs, n, edit, spec.type)
    estimate = gif.memory.estimate(
        loaded.model, inputs, samples, chunk_size=solve.chunk_size, memory_budget=solve.memory_budget,
        vectors=vectors, hvp_backend=backend, curvature=solve.curvature, features=features,
    )  # fmt: skip
    if budget.bytes > 0:
        gif.memory.check_fits(estimate, budget.bytes, budget.name)
    return {**estimate.as_dict(), "budget": budget.bytes}
