"""Gradients and Hessian-vector products of a mean loss, matrix-free.

For a model with flat trainable parameters θ ∈ R^p and data D split into chunks c of sizes
n_c (Σ n_c = N), the loss is

    L(θ) = Σ_c (n_c / N) · ℓ_c(θ),     ℓ_c = batch-mean loss on chunk c,

so ∇L and H·v = ∇²L(θ)·v are size-weighted sums over chunks and do not depend on how the data
was batched. Three HVP back ends:

* ``"func"`` — forward-over-reverse, ``jvp(grad(L))`` with torch.func. Memory is one chunk's
  activations at a time; each HVP redoes the chunk's forward pass.
* ``"graph"`` — the first-order gradient graph of every chunk is built once (``create_graph``)
  and each HVP is a single double-backward through it. Faster per HVP, but keeps all chunks'
  graphs alive, so it is for Hessian data that fits in memory.
* ``"linearized"`` — every chunk's product is linearised once at θ (``torch.func.linearize``:
  the tangent pass traced with the primal values it needs kept; for the Gauss–Newton matrix with
  the outputs' vjp kept too), so that each product replays the tangent and backward passes
  without the forward pass ``func`` redoes. The build costs about two plain products and holds
  every chunk's intermediates, as ``graph`` does; each product then costs ~1 gradient where
  ``func``'s costs 1.5–2.4 on CNNs (docs/benchmarks.md, "A linearised Gauss–Newton product").

The curvature need not be the Hessian. With ``curvature="gauss_newton"`` the products are with
the generalised Gauss–Newton matrix of the same loss, split at the model's outputs z = f(θ, x):

    G·v = Σ_c (n_c / N) · J_cᵀ H_z,c J_c v,     J_c = ∂z/∂θ on chunk c,   H_z,c = ∇²_z ℓ_c(z),

the Hessian without the term Σ (∂ℓ/∂z)·∇²z, which is what makes H indefinite away from a
minimum. For a loss convex in the outputs (cross-entropy, squared error) G is positive
semi-definite, so CG runs to its tolerance instead of stopping at negative curvature; where the
outputs are linear in θ (a Linear head), G = H. J v is a jvp of the outputs, Jᵀu a vjp, and
H_z w a forward-over-reverse product of the loss in the outputs alone: any loss, no per-loss code.
Computed one chunk at a time it costs 1.5–2.0 gradients on the CNNs measured, where the Hessian's
costs 2.6–2.8 (1.4–2.2 on its cached graphs), and its ``graph`` form (J v by a double backward)
is no faster; ``auto`` takes ``func`` for its first two products and, where every chunk's
linearisation fits the graph budget and the second took long enough for the build to pay,
``linearized`` for the rest (gif/memory.py, ``resolve_backend``).

A dense Hessian is only ever formed by :meth:`HessianOperator.dense`, for the ``direct`` solver
and for tests.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.func import grad, jvp, linearize, vjp

from . import inputs as inputs_
from .config import CURVATURES, HVP_BACKENDS, check_choice
from .data import Chunk, Chunks, DataLike, check_class_labels
from .errors import ModelTooLargeError, NumericalError
from .memory import (
    GRAPH_BUDGET_BYTES,
    LINEARIZE_AFTER_SECONDS,
    activation_bytes,
    fitting_chunk,
    graph_bytes,
    resolve_backend,
)
from .params import ParamSpace

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: Above this many parameters ``dense()`` refuses (p² float64 entries = 200 MB at 5000).
DENSE_MAX_PARAMS = 5000


@dataclass
class Work:
    """What a computation spent, shared by every operator of one call (a report's ``work``).

    ``gradients``: gradients of a mean loss (a per-sample gradient counts one); ``hvps``:
    Hessian-vector products (a dense Hessian counts p); ``forward_evaluations``: evaluations
    of the model on a labelled set (metrics, step-search points). Cached values cost nothing.
    """

    gradients: int = 0
    hvps: int = 0
    forward_evaluations: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Default loss: mean cross-entropy of logits against integer class targets."""
    return nn.functional.cross_entropy(outputs, targets)


class FlatModel:
    """A model seen as a pure function of its flat trainable parameter vector θ.

    Frozen parameters and buffers (e.g. BatchNorm running statistics) are held fixed, so the
    model must be in eval mode for BatchNorm and Dropout to be deterministic functions of θ.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn | None = None) -> None:
        self.model = model
        self.space = ParamSpace(model)
        self.loss_fn = loss_fn or cross_entropy
        trainable = set(self.space.names)
        self._fixed = {n: t.detach() for n, t in model.named_parameters() if n not in trainable}
        self._fixed.update(dict(model.named_buffers()))
        self.theta = self.space.vector(model).clone()
        self.unbatchable = False  # set when vmap over samples fails (gif/per_sample.py)
        self.by_layer: bool | None = None  # per-sample gradients by layer (gif/per_sample.py)
        self._outputs_checked = False
        if not bool(torch.isfinite(self.theta).all()):
            bad = [n for n, t in self.space.unflatten(self.theta).items() if not torch.isfinite(t).all()]
            raise NumericalError(f"model parameters contain NaN or Inf: {', '.join(bad[:5])}")

    def with_loss(self, loss_fn: LossFn) -> FlatModel:
        """The same model and θ (shared, not copied) under another loss."""
        other = object.__new__(FlatModel)
        other.__dict__.update(self.__dict__)
        other.loss_fn = loss_fn
        return other

    @property
    def device(self) -> torch.device:
        return self.theta.device

    @property
    def dtype(self) -> torch.dtype:
        return self.theta.dtype

    def outputs(self, theta: torch.Tensor, inputs: inputs_.Inputs) -> torch.Tensor:
        """The logits at θ = ``theta`` (attention on a differentiable kernel: gif/inputs.py)."""
        return inputs_.call_functional(self.model, (self.space.unflatten(theta), self._fixed), inputs)

    def loss(self, theta: torch.Tensor, inputs: inputs_.Inputs, targets: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self.outputs(theta, inputs), targets)

    def output_hvp(self, z: torch.Tensor, targets: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """H_z·w: the Hessian of the loss in the outputs ``z`` (not in θ), times ``w`` (z's shape)."""

        def loss(out: torch.Tensor) -> torch.Tensor:
            return self.loss_fn(out, targets)

        return jvp(grad(loss), (z,), (w,))[1]

    def per_sample_loss(self, theta: torch.Tensor, x: inputs_.Inputs, y: torch.Tensor) -> torch.Tensor:
        """Loss of one sample (no batch dimension), for vmap."""
        return self.loss(theta, inputs_.one_sample(x), y.unsqueeze(0))

    def margin(self, theta: torch.Tensor, inputs: inputs_.Inputs, targets: torch.Tensor) -> torch.Tensor:
        """Sum over the batch of each sample's label log-odds (:meth:`label_log_odds`)."""
        return self.label_log_odds(self.outputs(theta, inputs), targets).sum()

    @staticmethod
    def label_log_odds(z: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Each sample's label log-odds m = z_y − log Σ_{k≠y} exp z_k = log p_y − log(1 − p_y),
        from its logits z [B, k] and integer class y [B]: shape [B]."""
        is_label = torch.arange(z.shape[-1], device=z.device) == targets.unsqueeze(-1)
        others = torch.logsumexp(z.masked_fill(is_label, float("-inf")), dim=-1)
        return (z * is_label).sum(dim=-1) - others

    def per_sample_margin(self, theta: torch.Tensor, x: inputs_.Inputs, y: torch.Tensor) -> torch.Tensor:
        """Label log-odds of one sample (no batch dimension), for vmap."""
        return self.margin(theta, inputs_.one_sample(x), y.unsqueeze(0))

    def check_outputs(self, inputs: inputs_.Inputs, *, rtol: float = 1e-4) -> None:
        """Raise :class:`NumericalError` unless the functional evaluation the engine differentiates
        (parameters swapped in, attention on the MATH kernel) gives the model's own outputs. Only
        in eval mode (in training mode a forward may update BatchNorm buffers or draw dropout
        masks), and once per model: operators built on the same FlatModel share the verdict."""
        if self.model.training or self._outputs_checked:
            return
        with torch.no_grad():
            own = inputs_.call(self.model, inputs)
            ours = self.outputs(self.theta, inputs)
        scale = float(own.abs().max()) + 1e-12
        if own.shape != ours.shape or float((own - ours).abs().max()) > rtol * scale + 1e-6:
            raise NumericalError(
                "the model's outputs differ from its functional evaluation (parameters swapped in, "
                "attention on the MATH kernel): influence cannot be computed for this model"
            )
        self._outputs_checked = True

    def check_data(self, inputs: inputs_.Inputs, targets: torch.Tensor, what: str) -> None:
        """Raise :class:`InvalidArgumentError` naming ``what`` unless the model runs on the first
        sample of ``inputs`` and, under the default cross-entropy, ``targets`` are 1-D integer
        classes of its logits; a custom loss takes whatever targets it defines. In training mode
        the model is not run (a forward would update BatchNorm's running statistics): only the
        labels' type and shape are checked."""
        classes = None
        if not self.model.training:
            with torch.no_grad():
                one = inputs_.to(inputs_.take(inputs, slice(0, 1)), self.device)
                classes = int(inputs_.call_on(self.model, one, what).shape[-1])
        if self.loss_fn is cross_entropy:
            check_class_labels(targets, classes, what)

    def sample_bytes(self, inputs: inputs_.Inputs) -> int:
        """Bytes every leaf module outputs for the first sample of ``inputs`` (gif/memory.py)."""
        one = inputs_.take(inputs, slice(0, 1))
        return activation_bytes(self.model, lambda: self.outputs(self.theta, one), self.theta.element_size())


class HessianOperator:
    """H·v and ∇L for the mean loss over ``data``, counting every gradient and HVP.

    Args:
        model: the model at θ (evaluated in its current mode; callers use eval mode).
        data: ``(inputs, targets)`` or an iterable of batches.
        loss_fn: batch-mean loss ``loss_fn(outputs, targets)``; cross-entropy by default (or,
            when ``model`` is a :class:`FlatModel`, that model's loss).
        chunk_size: at most this many samples per forward pass.
        backend: ``"func"``, ``"graph"``, ``"linearized"`` (the module's docstring) or
            ``"auto"``: where the estimated memory of every chunk's graph fits
            ``graph_budget_bytes``, for the Hessian ``graph``, for the Gauss–Newton matrix
            ``linearized`` from the third product on when the second (``func``, as the first)
            took at least :data:`~gif.memory.LINEARIZE_AFTER_SECONDS`; else ``func``.
        curvature: ``"hessian"`` or ``"gauss_newton"``: what :meth:`hvp` and :meth:`dense`
            multiply by (the module's docstring); gradients and losses are the same either way.
        graph_budget_bytes: memory the ``graph`` back end may use under ``"auto"``.
        work: the call's shared counter; this operator's own are ``grads`` and ``hvps``.
        memory_budget: bytes one chunk may take while differentiated; chunks shrink below
            ``chunk_size`` to fit it (gif/memory.py). None: ``chunk_size`` alone.
        check: run :meth:`FlatModel.check_data` on ``data`` (named ``what`` in its errors); False
            where the caller has checked this data already (an edit checks its data once, at
            entry, and builds operators on it at every Newton step).
    """

    def __init__(
        self,
        model: nn.Module | FlatModel,
        data: DataLike,
        *,
        loss_fn: LossFn | None = None,
        chunk_size: int = 1024,
        backend: str = "func",
        what: str = "hessian_data",
        graph_budget_bytes: int = GRAPH_BUDGET_BYTES,
        work: Work | None = None,
        memory_budget: int | None = None,
        check: bool = True,
        curvature: str = "hessian",
    ) -> None:
        check_choice("backend", backend, HVP_BACKENDS)
        check_choice("curvature", curvature, CURVATURES)
        self.curvature = curvature
        if isinstance(model, FlatModel):
            self.flat = model if loss_fn is None else model.with_loss(loss_fn)
        else:
            self.flat = FlatModel(model, loss_fn)
        self.data = Chunks(data, chunk_size=chunk_size, device=self.flat.device, what=what)
        if check:
            self.flat.check_data(self.data.chunks[0].inputs, torch.cat([c.targets for c in self.data]), what)
        self.flat.check_outputs(inputs_.take(self.data.chunks[0].inputs, slice(0, 2)))
        self.chunk_size = chunk_size
        self._sample_bytes: int | None = None
        if memory_budget is not None:
            self.chunk_size = fitting_chunk(chunk_size, self.sample_bytes(), memory_budget)
            if max(len(c) for c in self.data) > self.chunk_size:
                self.data = Chunks(data, chunk_size=self.chunk_size, device=self.flat.device, what=what)
        self.size = self.flat.space.size
        self.backend = resolve_backend(
            backend, curvature, lambda: self.estimate_graph_bytes() <= graph_budget_bytes
        )
        self.hvps = 0
        self.grads = 0
        self.work = Work() if work is None else work
        self._graph: list[_ChunkGraph] | None = None
        self._linearized: list[_ChunkLinearization] | None = None
        self.linearize_failed = False  # ``linearized`` fell back to ``func``: the model cannot be traced
        # ``linearized`` chosen by ``auto``: linearise only after a first plain product this slow
        self._linearize_after = LINEARIZE_AFTER_SECONDS if backend == "auto" else 0.0

    @property
    def num_samples(self) -> int:
        return self.data.total

    def sample_bytes(self) -> int:
        """Bytes every leaf module outputs for one sample (measured once per operator)."""
        if self._sample_bytes is None:
            self._sample_bytes = self.flat.sample_bytes(self.data.chunks[0].inputs)
        return self._sample_bytes

    def estimate_graph_bytes(self) -> int:
        """Rough memory of what the ``graph`` or ``linearized`` back end holds for all chunks: the
        cached graphs for the Hessian, the linearisations for the Gauss–Newton matrix
        (gif/memory.py, ``graph_bytes``)."""
        element = self.flat.theta.element_size()
        chunks = len(self.data.chunks)
        return graph_bytes(self.sample_bytes(), self.data.total, self.size, element, chunks, self.curvature)

    def gradient(self) -> torch.Tensor:
        """∇L(θ), a flat vector of length p."""
        self.grads += 1
        self.work.gradients += 1
        return self._sum(lambda c: grad(self.flat.loss)(self.flat.theta, c.inputs, c.targets))

    def loss(self) -> float:
        with torch.no_grad():
            return float(
                sum(c.weight * self.flat.loss(self.flat.theta, c.inputs, c.targets) for c in self.data)
            )

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        """H·v (or G·v, by ``curvature``) for a flat vector v of length p."""
        self.hvps += 1
        self.work.hvps += 1
        if self.backend == "graph":
            return self._hvp_graph(v)
        if self.backend == "linearized":
            return self._hvp_linearized(v)
        return self._plain_hvp(v)

    def _sum(self, term: Callable[[Chunk], torch.Tensor], like: torch.Tensor | None = None) -> torch.Tensor:
        """Σ_c (n_c / N) · term(c) over the chunks, accumulated in order into zeros like ``like`` (θ)."""
        out = torch.zeros_like(self.flat.theta if like is None else like)
        for chunk in self.data:
            out += chunk.weight * term(chunk)
        return out

    def _chunk_hvp(self, v: torch.Tensor, c: Chunk) -> torch.Tensor:
        if self.curvature == "gauss_newton":
            return self._chunk_gnvp(v, c)
        return jvp(lambda t: grad(self.flat.loss)(t, c.inputs, c.targets), (self.flat.theta,), (v,))[1]

    def _chunk_gnvp(self, v: torch.Tensor, c: Chunk) -> torch.Tensor:
        """Jᵀ H_z J v on chunk ``c``: J v by a jvp of the outputs, Jᵀ(·) by a vjp."""

        def outputs(t: torch.Tensor) -> torch.Tensor:
            return self.flat.outputs(t, c.inputs)

        z, pull = vjp(outputs, self.flat.theta)[:2]
        jv = jvp(outputs, (self.flat.theta,), (v,))[1]
        return pull(self.flat.output_hvp(z.detach(), c.targets, jv))[0]

    def _plain_hvp(self, v: torch.Tensor) -> torch.Tensor:
        return self._sum(lambda c: self._chunk_hvp(v, c))

    def _block_hvp(self, basis: torch.Tensor) -> torch.Tensor | None:
        """H times each row of ``basis``, vmapped over the rows; None when vmap cannot batch this
        model (data-dependent branches, operations without a batching rule)."""
        try:
            return self._sum(lambda c: torch.func.vmap(lambda v: self._chunk_hvp(v, c))(basis), like=basis)
        except RuntimeError:
            return None

    def _agrees(self, block: torch.Tensor, basis: torch.Tensor) -> bool:
        """Whether a vmapped block equals plain HVPs, checked on the sum of its columns (one more
        HVP): vmap's batching rules for some operations (measured: a Hugging Face BERT's) give
        wrong second derivatives where the same HVP unbatched is right."""
        expected = self._plain_hvp(basis.sum(0))
        scale = float(expected.abs().max()) + 1e-30
        tol = 1e-8 if block.dtype == torch.float64 else 1e-3
        return float((block.sum(0) - expected).abs().max()) <= tol * scale

    def _hvp_graph(self, v: torch.Tensor) -> torch.Tensor:
        if self._graph is None:
            self._graph = [_ChunkGraph.build(self.flat, chunk, self.curvature) for chunk in self.data]
        out = torch.zeros_like(self.flat.theta)
        for graph in self._graph:
            out += graph.weight * graph.product(self.flat, v)
        return out

    def _hvp_linearized(self, v: torch.Tensor) -> torch.Tensor:
        """The product by every chunk's linearisation, built on the first call, or where ``auto``
        chose this back end on the third, after a second plain product that took at least
        :data:`~gif.memory.LINEARIZE_AFTER_SECONDS` (faster ones stay plain: the build would not
        pay; the first is not timed, since it may pay a process's one-time warm-ups)."""
        if self._linearized is None:
            if self._linearize_after > 0:
                return self._timed_plain_hvp(v)
            self._linearized = self._linearize()
            if self._linearized is None:
                self.backend = "func"
                return self._plain_hvp(v)
        out = torch.zeros_like(self.flat.theta)
        for chunk in self._linearized:
            out += chunk.weight * chunk.product(v)
        return out

    def _timed_plain_hvp(self, v: torch.Tensor) -> torch.Tensor:
        """A plain product while ``auto`` has not decided; the second decides (:meth:`_hvp_linearized`)."""
        start = time.perf_counter()
        out = self._plain_hvp(v)
        if out.is_cuda:  # the product's kernels run asynchronously: time them, not their launch
            torch.cuda.synchronize(out.device)
        if self.hvps >= 2:
            if time.perf_counter() - start < self._linearize_after:
                self.backend = "func"
            self._linearize_after = 0.0
        return out

    def _linearize(self) -> list[_ChunkLinearization] | None:
        """Every chunk's linearisation, or None where the model cannot be traced (data-dependent
        control flow, as in Hugging Face attention masks, or an operation tracing does not
        support: ``torch.func.linearize`` fails in many ways there, and the plain product
        computes the same thing). Running out of memory is not such a failure."""
        try:
            return [_ChunkLinearization.build(self.flat, chunk, self.curvature) for chunk in self.data]
        except torch.OutOfMemoryError:
            raise
        except Exception:  # noqa: BLE001 - any tracing failure: the plain product instead
            self.linearize_failed = True
            return None

    def release(self) -> None:
        """Free the cached gradient graphs and linearisations (``graph``, ``linearized``)."""
        self._graph = None
        self._linearized = None

    def dense(self, *, max_params: int = DENSE_MAX_PARAMS, block: int = 64) -> torch.Tensor:
        """The explicit p×p Hessian in float64, column block by column block (p HVPs).

        Raises:
            ModelTooLargeError: if p exceeds ``max_params``.
        """
        p = self.size
        if p > max_params:
            raise ModelTooLargeError(
                f"a dense Hessian of {p} parameters needs {p * p * 8 / 2**20:.0f} MiB; the limit is "
                f"{max_params} parameters. Use an iterative solver (cg, minres, lsqr) or lowrank."
            )
        eye = torch.eye(p, dtype=self.flat.dtype, device=self.flat.device)
        cols = []
        batched = True
        for start in range(0, p, block):
            basis = eye[start : start + block]
            acc = self._block_hvp(basis) if batched else None
            if acc is None or not self._agrees(acc, basis):
                batched = False  # vmap fails on, or miscomputes, this model: HVP by HVP from here on
                acc = torch.stack([self._plain_hvp(v) for v in basis])
            cols.append(acc)
        self.hvps += p
        self.work.hvps += p
        h = torch.cat(cols).to(torch.float64)
        return (h + h.T) / 2  # symmetric up to round-off; make it exactly so


@dataclass
class _ChunkGraph:
    """One chunk's differentiable graph, built once for the ``graph`` back end.

    Hessian: ``g`` = ∇ℓ_c(θ) with its graph; H v is one backward of ``g`` against v. Gauss–Newton:
    ``g`` = Jᵀu for a free u (``u``) with its graph, and ``z`` the outputs; J v is one backward of
    ``g`` in u against v, and Jᵀ H_z J v one backward of z against H_z J v: no forward pass per product.
    """

    theta: torch.Tensor
    g: torch.Tensor
    weight: float
    targets: torch.Tensor
    z: torch.Tensor | None = None
    u: torch.Tensor | None = None

    @classmethod
    def build(cls, flat: FlatModel, chunk: Chunk, curvature: str) -> _ChunkGraph:
        theta = flat.theta.detach().requires_grad_(True)
        if curvature == "hessian":
            (g,) = torch.autograd.grad(
                flat.loss(theta, chunk.inputs, chunk.targets), theta, create_graph=True
            )
            return cls(theta, g, chunk.weight, chunk.targets)
        z = flat.outputs(theta, chunk.inputs)
        u = torch.zeros_like(z, requires_grad=True)
        (g,) = torch.autograd.grad(z, theta, grad_outputs=u, create_graph=True)
        return cls(theta, g, chunk.weight, chunk.targets, z, u)

    def product(self, flat: FlatModel, v: torch.Tensor) -> torch.Tensor:
        if self.z is None or self.u is None:
            (hv,) = torch.autograd.grad(self.g, self.theta, grad_outputs=v, retain_graph=True)
            return hv
        (jv,) = torch.autograd.grad(self.g, self.u, grad_outputs=v, retain_graph=True)
        hz = flat.output_hvp(self.z.detach(), self.targets, jv)
        (gv,) = torch.autograd.grad(self.z, self.theta, grad_outputs=hz, retain_graph=True)
        return gv


@dataclass
class _ChunkLinearization:
    """One chunk's product at a fixed θ as a linear function, for the ``linearized`` back end.

    Hessian: H v = the linearisation of ∇ℓ_c at θ, applied to v. Gauss–Newton: J v by the
    linearisation of the outputs, H_z(J v) in the outputs, and Jᵀ(·) by the outputs' vjp, both
    kept: no forward pass per product.
    """

    weight: float
    product: Callable[[torch.Tensor], torch.Tensor]

    @classmethod
    def build(cls, flat: FlatModel, chunk: Chunk, curvature: str) -> _ChunkLinearization:
        with warnings.catch_warnings():
            # torch's constant folding of the traced tangent pass warns about its own graph
            warnings.filterwarnings(
                "ignore", message="Attempted to insert a get_attr Node", category=UserWarning
            )
            if curvature == "hessian":
                _, hvp = linearize(lambda t: grad(flat.loss)(t, chunk.inputs, chunk.targets), flat.theta)
                return cls(chunk.weight, hvp)

            def outputs(t: torch.Tensor) -> torch.Tensor:
                return flat.outputs(t, chunk.inputs)

            z, pull = vjp(outputs, flat.theta)[:2]
            z, targets = z.detach(), chunk.targets
            _, jv = linearize(outputs, flat.theta)
        return cls(chunk.weight, lambda v: pull(flat.output_hvp(z, targets, jv(v)))[0])
