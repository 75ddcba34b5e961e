"""Chunk sizes from a memory budget and the model's measured activation footprint.

Differentiating a chunk of c samples holds, at its peak, about ``FACTOR`` × c × a bytes, a being
the bytes every leaf module outputs for one sample (measured with forward hooks on one sample):
the forward activations, their tangents (forward-over-reverse) or first-order gradients, and the
intermediates of the second pass. A configuration's ``chunk_size`` is a cap; the chunk actually
used is the largest one whose estimate fits ``memory_budget`` (never below one sample), so a large
model gets small chunks and a small model keeps the cap (and its results, bit for bit).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ._util import forward_hooks
from .config import SolveConfig
from .errors import MemoryBudgetError
from .inputs import Inputs, call, named, take

#: Peak bytes while differentiating ≈ FACTOR × activation bytes (bench/memory.py measures 3–6×).
FACTOR = 6


def activation_bytes(model: nn.Module, forward: Callable[[], object], element_size: int) -> int:
    """Bytes every leaf module of ``model`` outputs during ``forward()`` (run without gradients)."""
    counted = [0]

    def count(_module: nn.Module, _inputs: object, output: object) -> None:
        for t in output if isinstance(output, tuple) else (output,):
            if isinstance(t, torch.Tensor):
                counted[0] += t.numel()

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    with forward_hooks((m, count) for m in leaves), torch.no_grad():
        forward()
    return counted[0] * element_size


#: Memory the cached-graph HVP back end may take under ``hvp_backend="auto"`` (gif/hessian.py).
GRAPH_BUDGET_BYTES = 1 << 30
#: Cached graph bytes ≈ this × the activation bytes per sample × the samples: the measured HVP
#: peaks of four CNNs were 0.42–0.50 of the estimate at 2,048 samples and 0.67–0.90 at 512, where
#: a fixed ~50 MiB weighs more (docs/benchmarks.md, "The graph back end's memory, measured").
GRAPH_MEMORY_FACTOR = 4


#: The same for the linearised Gauss–Newton product (the ``linearized`` back end), whose build —
#: the outputs' vjp, the traced tangent pass and its folded constants — peaks at 2.8–5.5 × the
#: activation bytes × the samples on the four CNNs measured (docs/benchmarks.md, "A linearised
#: Gauss–Newton product").
LINEARIZED_MEMORY_FACTOR = 6


def graph_bytes(
    per_sample_bytes: int,
    samples: int,
    params: int,
    element_size: int,
    chunks: int,
    curvature: str = "hessian",
) -> int:
    """Rough memory of what ``hvp_backend="auto"`` holds for every one of ``chunks`` chunks holding
    ``samples`` samples where it fits: for the Hessian the cached double-backward graphs (every
    sample's activations, their first-order gradients and the double backward's intermediates),
    for the Gauss–Newton matrix the linearised products; and two p-vectors per chunk."""
    factor = GRAPH_MEMORY_FACTOR if curvature == "hessian" else LINEARIZED_MEMORY_FACTOR
    return int(factor * per_sample_bytes * samples + params * element_size * 2 * chunks)


def per_sample_gradient_chunk(
    cap: int, per_sample_bytes: int, params: int, element_size: int, budget: int | None
) -> int:
    """The largest chunk ≤ ``cap`` of per-sample gradients ([chunk, p] entries, plus the vmapped
    pass's activations) that fits ``budget``; at least 1."""
    if budget is None:
        return cap
    return max(1, min(cap, budget // (params * element_size + FACTOR * per_sample_bytes)))


def fitting_chunk(cap: int, per_sample_bytes: int, budget: int | None) -> int:
    """The largest chunk ≤ ``cap`` whose estimated peak, FACTOR × chunk × per-sample bytes, fits
    ``budget`` (None: no budget); at least 1."""
    if budget is None or per_sample_bytes <= 0:
        return cap
    return max(1, min(cap, budget // (FACTOR * per_sample_bytes)))


#: p-length vectors an edit holds at once besides the model: θ and Δθ, the target gradient, a
#: Krylov solver's work vectors (LSQR: u, v, w, x), an HVP's result and its tangents.
EDIT_VECTORS = 12


@dataclass(frozen=True)
class Estimate:
    """What an edit or a scoring pass will hold at its peak, in bytes, before it starts."""

    parameters: int  # the model and EDIT_VECTORS p-vectors
    # one chunk being differentiated (FACTOR × chunk × per-sample bytes), or where the HVP back end
    # ``auto`` takes the cached graph, every chunk's graph (:func:`graph_bytes`) if that is more
    activations: int
    data: int  # the samples held on the device
    chunk: int  # the chunk that fits the configuration's memory budget
    features: int = 0  # an edit's tail features for every sample (gif/tail_edit.py)

    @property
    def total(self) -> int:
        return self.parameters + self.activations + self.data + self.features

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total}


#: Solvers that take no HVP (a Kronecker-factored fit is built chunk by chunk): no cached graph.
HVP_FREE_SOLVERS = frozenset({"kfac", "ekfac"})


def solver_backend(config: SolveConfig) -> str:
    """The HVP back end to size a solve under ``config`` for (:func:`estimate`'s ``hvp_backend``,
    resolved there with :func:`resolve_backend`): ``func``, one chunk at a time, for a solver that
    takes no HVP, else the configuration's."""
    return "func" if config.solver in HVP_FREE_SOLVERS else config.hvp_backend


#: Under ``hvp_backend="auto"`` the Gauss–Newton products are linearised (gif/hessian.py) only
#: after a second plain product at least this slow (the first may pay a process's one-time
#: warm-ups, and a timed warm-up made a tiny model's edit take another path): the build costs about two plain products and
#: each later product saves ~40% of one on CNNs at 28×28, where a product over the 8×8 digits
#: CNN (~35 ms) gains nothing from it (docs/benchmarks.md, "A linearised Gauss–Newton product").
LINEARIZE_AFTER_SECONDS = 0.05


#: The HVP back ends that hold every chunk's intermediates at once (gif/hessian.py): the cached
#: graphs, the linearisations.
HELD_BACKENDS = ("graph", "linearized")


def resolve_backend(backend: str, curvature: str, graph_fits: Callable[[], bool]) -> str:
    """The back end the HVPs run on: ``backend`` unless it is ``auto``, which where every chunk's
    intermediates fit their budget (``graph_fits()``) takes the cached graph for the Hessian and
    the linearised product for the Gauss–Newton matrix (whose cached-graph form is slower than
    ``func``: docs/benchmarks.md, "The Gauss–Newton product"; the operator linearises only after
    a slow second product, :data:`LINEARIZE_AFTER_SECONDS`), and ``func`` otherwise. One rule for
    the operator (gif/hessian.py) and for sizing a job before it runs (:func:`estimate`)."""
    if backend != "auto":
        return backend
    if not graph_fits():
        return "func"
    return "graph" if curvature == "hessian" else "linearized"


def solver_vectors(config: SolveConfig, parameters: int) -> int:
    """p-length vectors a solve under ``config`` holds at once: :data:`EDIT_VECTORS`, and for
    ``lowrank`` the Lanczos basis of its fit (one vector per step: 2·rank + 20 steps unless
    ``solver_options`` sets them, at most p; gif/solvers/lowrank.py)."""
    if config.solver != "lowrank":
        return EDIT_VECTORS
    steps = int(config.solver_options.get("steps") or 2 * config.rank + 20)
    return EDIT_VECTORS + min(parameters, steps)


def estimate(
    model: nn.Module,
    inputs: Inputs,
    samples: int,
    *,
    chunk_size: int,
    memory_budget: int | None,
    vectors: int = EDIT_VECTORS,
    hvp_backend: str = "func",
    curvature: str | None = "hessian",
    features: int = 0,
) -> Estimate:
    """The peak of a computation on ``model`` whose Hessian data holds ``samples`` samples like
    ``inputs`` (any number of them; one is evaluated to measure the activations) and which holds
    ``vectors`` p-length vectors besides the model (:func:`solver_vectors`). ``hvp_backend``:
    the configuration's; where it resolves to ``graph`` (:func:`resolve_backend`, the graph's
    budget :data:`GRAPH_BUDGET_BYTES`) the HVPs hold every chunk's graph at once. ``curvature``:
    the configuration's (None, an edit's method not chosen yet: sized as the Hessian, the larger).
    ``features``: the bytes of an edit's tail features (gif/method_choice.py, ``most_feature_bytes``)."""
    params = [p for p in model.parameters() if p.requires_grad]
    p = sum(t.numel() for t in params)
    element = params[0].element_size() if params else 4
    one = take(inputs, slice(0, 1))
    per_sample = activation_bytes(model, lambda: call(model, one), element)
    chunk = min(samples, fitting_chunk(chunk_size, per_sample, memory_budget))
    data = sum(t.element_size() * t.numel() for t in named(one).values()) * samples
    activations = FACTOR * chunk * per_sample
    graph = graph_bytes(per_sample, samples, p, element, -(-samples // chunk), curvature or "hessian")
    held = resolve_backend(hvp_backend, curvature or "hessian", lambda: graph <= GRAPH_BUDGET_BYTES)
    if held in HELD_BACKENDS:
        activations = max(activations, graph)
    return Estimate((vectors + 1) * p * element, activations, data, chunk, features)


def check_fits(estimate: Estimate, budget: int, budget_name: str = "the budget") -> None:
    """Raise :class:`gif.errors.MemoryBudgetError` naming what to change when ``estimate``
    exceeds ``budget`` bytes (``budget_name``: what that budget is, for the message)."""
    if estimate.total <= budget:
        return
    gib = 2**30
    parts = {
        "samples": estimate.data + estimate.activations, "parameters": estimate.parameters,
        "features": estimate.features,
    }  # fmt: skip
    advice = {
        "samples": "lower hessian_samples or use a smaller chunk (memory_budget)",
        "parameters": "the model's parameters alone do not fit: use a worker with more memory",
        "features": "the features an edit of the model's head or last layers holds for every training sample "
        'take most of it: name method "if" or "gif" (the whole network, without them) or use a worker with '
        "more memory",
    }[max(parts, key=lambda part: parts[part])]
    raise MemoryBudgetError(
        f"the job needs about {estimate.total / gib:.2f} GiB (parameters and solver vectors "
        f"{estimate.parameters / gib:.2f}, a chunk of {estimate.chunk} samples being differentiated "
        f"{estimate.activations / gib:.2f}, data {estimate.data / gib:.2f}"
        + (f", the edited layers' input features {estimate.features / gib:.2f}" if estimate.features else "")
        + f") but {budget_name} is "
        f"{budget / gib:.2f} GiB: {advice}"
    )
