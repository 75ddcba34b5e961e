"""Gradients and Hessian-vector products of a mean loss, matrix-free.

For a model with flat trainable parameters θ ∈ R^p and data D split into chunks c of sizes
n_c (Σ n_c = N), the loss is

    L(θ) = Σ_c (n_c / N) · ℓ_c(θ),     ℓ_c = batch-mean loss on chunk c,

so ∇L and H·v = ∇²L(θ)·v are size-weighted sums over chunks and do not depend on how the data
was batched. Two HVP back ends:

* ``"func"`` — forward-over-reverse, ``jvp(grad(L))`` with torch.func. Memory is one chunk's
  activations at a time; each HVP redoes the chunk's forward pass.
* ``"graph"`` — the first-order gradient graph of every chunk is built once (``create_graph``)
  and each HVP is a single double-backward through it. Faster per HVP, but keeps all chunks'
  graphs alive, so it is for Hessian data that fits in memory.

A dense Hessian is only ever formed by :meth:`HessianOperator.dense`, for the ``direct`` solver
and for tests.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, grad, jvp

from .data import Chunks, DataLike
from .errors import InvalidArgumentError, ModelTooLargeError
from .params import ParamSpace

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: Above this many parameters ``dense()`` refuses (p² float64 entries = 200 MB at 5000).
DENSE_MAX_PARAMS = 5000


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

    def outputs(self, theta: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        params = self.space.unflatten(theta)
        return functional_call(self.model, (params, self._fixed), (inputs,), strict=False)

    def loss(self, theta: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self.outputs(theta, inputs), targets)

    def per_sample_loss(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Loss of one sample (no batch dimension), for vmap."""
        return self.loss(theta, x.unsqueeze(0), y.unsqueeze(0))


class HessianOperator:
    """H·v and ∇L for the mean loss over ``data``, counting every gradient and HVP.

    Args:
        model: the model at θ (evaluated in its current mode; callers use eval mode).
        data: ``(inputs, targets)`` or an iterable of batches.
        loss_fn: batch-mean loss ``loss_fn(outputs, targets)``; cross-entropy by default (or,
            when ``model`` is a :class:`FlatModel`, that model's loss).
        chunk_size: at most this many samples per forward pass.
        backend: ``"func"`` (forward-over-reverse, bounded memory) or ``"graph"``
            (cached first-order graph, one double-backward per HVP).
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
    ) -> None:
        if backend not in ("func", "graph"):
            raise InvalidArgumentError(f"`backend` must be 'func' or 'graph', got {backend!r}")
        if isinstance(model, FlatModel):
            self.flat = model if loss_fn is None else model.with_loss(loss_fn)
        else:
            self.flat = FlatModel(model, loss_fn)
        self.data = Chunks(data, chunk_size=chunk_size, device=self.flat.device, what=what)
        self.backend = backend
        self.size = self.flat.space.size
        self.hvps = 0
        self.grads = 0
        self._graph: list[tuple[torch.Tensor, torch.Tensor, float]] | None = None

    @property
    def num_samples(self) -> int:
        return self.data.total

    def gradient(self) -> torch.Tensor:
        """∇L(θ), a flat vector of length p."""
        self.grads += 1
        g = torch.zeros_like(self.flat.theta)
        for chunk in self.data:
            g += chunk.weight * grad(self.flat.loss)(self.flat.theta, chunk.inputs, chunk.targets)
        return g

    def loss(self) -> float:
        with torch.no_grad():
            return float(sum(c.weight * self.flat.loss(self.flat.theta, c.inputs, c.targets) for c in self.data))

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        """H·v for a flat vector v of length p."""
        self.hvps += 1
        if self.backend == "graph":
            return self._hvp_graph(v)
        out = torch.zeros_like(self.flat.theta)
        for chunk in self.data:
            out += chunk.weight * self._chunk_hvp(v, chunk.inputs, chunk.targets)
        return out

    def _chunk_hvp(self, v: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        def g(theta: torch.Tensor) -> torch.Tensor:
            return grad(self.flat.loss)(theta, x, y)

        return jvp(g, (self.flat.theta,), (v,))[1]

    def _hvp_graph(self, v: torch.Tensor) -> torch.Tensor:
        if self._graph is None:
            self._graph = []
            for chunk in self.data:
                theta = self.flat.theta.detach().requires_grad_(True)
                (g,) = torch.autograd.grad(
                    self.flat.loss(theta, chunk.inputs, chunk.targets), theta, create_graph=True
                )
                self._graph.append((theta, g, chunk.weight))
        out = torch.zeros_like(self.flat.theta)
        for theta, g, weight in self._graph:
            (hv,) = torch.autograd.grad(g, theta, grad_outputs=v, retain_graph=True)
            out += weight * hv
        return out

    def release(self) -> None:
        """Free the cached gradient graphs (``graph`` back end)."""
        self._graph = None

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
        for start in range(0, p, block):
            basis = eye[start : start + block]
            acc = torch.zeros_like(basis)
            for chunk in self.data:
                acc += chunk.weight * torch.func.vmap(
                    lambda v, x=chunk.inputs, y=chunk.targets: self._chunk_hvp(v, x, y)
                )(basis)
            cols.append(acc)
        self.hvps += p
        h = torch.cat(cols).to(torch.float64)
        return (h + h.T) / 2  # symmetric up to round-off; make it exactly so
