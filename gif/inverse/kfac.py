"""Kronecker-factored curvature (K-FAC) and its eigenvalue-corrected form (EK-FAC).

The curvature is the Gauss-Newton matrix of the mean cross-entropy over the Hessian data,
G = (1/N) Σ_n J_nᵀ (diag(p_n) − p_n p_nᵀ) J_n (the Hessian without its second-derivative-of-the-
network term; equal to it for a linear model). For each Linear and Conv1d/Conv2d layer with
weight matrix W (bias as an extra input column; a convolution's kernel unfolded), the layer's
block is approximated by a Kronecker product of an input covariance A and an output-gradient
covariance S, both from one pass over the data:

    A = Σ_{n,l} a_{n,l} a_{n,l}ᵀ / (N L),    S = Σ_{n,c,l} s_{n,c,l} s_{n,c,l}ᵀ / N,

with a the layer's (unfolded, bias-augmented) inputs at position l, and s the gradients of the
layer's outputs along the C columns r_{n,c} of the square root diag(√p) − p √pᵀ of the softmax's
curvature (the exact expectation over labels, not a sampled label; C backward passes per chunk).
With A = Q_A diag(α) Q_Aᵀ and S = Q_S diag(σ) Q_Sᵀ, K-FAC's eigenvalues in the Kronecker
eigenbasis are σ αᵀ; EK-FAC replaces them by the data's own second moments there,

    Λ = (1/N) Σ_{n,c} (Q_Sᵀ (Σ_l s_{n,c,l} a_{n,l}ᵀ) Q_A)²,

which is exact on the diagonal of the block in that basis. (H + λI)⁻¹ b is then per layer
Q_S [(Q_Sᵀ B Q_A) / (Λ + λ)] Q_Aᵀ with B the layer's block of b. With ``layer_damping`` ρ > 0
each layer's λ is ρ · mean(Λ) instead (kronfluence's heuristic, ρ = 0.1: one absolute λ swamps
the layers whose curvature is small; docs/benchmarks.md, "Scores: LDS against retraining").
Parameters outside these layers (e.g. normalisation) get no curvature: b/λ (0 when λ = 0). The
restricted and least-squares systems (``fif``, ``gif``) are solved matrix-free on the factored
curvature (CG / LSQR, no HVP).

Both are exact for a single linear layer fitted on one sample (tests/engine/test_kfac.py).

The factors are summed and decomposed in float64, then kept (and cached) in the model's precision,
at least float32: every solve runs in the vectors' precision, so a float32 model's solves are
the same as with float64 factors, at half the memory and cache bytes (docs/benchmarks.md,
"Kronecker factors in the model's precision").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidArgumentError, NumericalError
from ..hessian import HessianOperator, cross_entropy
from ..inputs import call
from ..layers import LAYERS, Call, LayerBlock, layer_blocks, layer_inputs, layer_outputs, recorded_calls
from ..solvers import Monitor, Problem, solve
from .base import InverseHessian, Solution, columns_problem, finite_rows, restricted_problem

#: The share of the trainable parameters that factored layers must hold for ``solver="auto"`` to
#: pick K-FAC: the rest get no curvature (b/λ), fine for normalisation layers, not for embeddings.
MIN_FACTORED_SHARE = 0.9


def unfactorable(model: nn.Module, loss_fn: object) -> str | None:
    """Why K-FAC cannot stand for this model's curvature under ``loss_fn`` (None: it can): the
    loss must be the cross-entropy, no module may compute attention (queries times keys: the
    curvature of a product of two Linear layers' outputs is not one Kronecker product per layer;
    on a small ViT an IF + K-FAC class removal left 33% on the class, docs/benchmarks.md "A small
    Hugging Face ViT on MNIST-5k"), and Linear / Conv layers (ungrouped, explicit padding) must
    hold at least :data:`MIN_FACTORED_SHARE` of the trainable parameters."""
    if loss_fn not in (cross_entropy, F.cross_entropy):
        return "the loss is not the cross-entropy, which K-FAC models"
    attention = next((m for m in model.modules() if _computes_attention(m)), None)
    if attention is not None:
        return f"the model computes attention ({type(attention).__name__}), which K-FAC does not factor"
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    factored = sum(
        p.numel()
        for m in model.modules()
        if isinstance(m, LAYERS)
        and getattr(m, "groups", 1) == 1
        and not isinstance(getattr(m, "padding", 0), str)
        for p in m.parameters(recurse=False)
        if p.requires_grad
    )
    share = factored / max(total, 1)
    if share < MIN_FACTORED_SHARE:
        return (
            f"Linear / Conv layers hold {share:.0%} of the parameters (K-FAC needs {MIN_FACTORED_SHARE:.0%})"
        )
    return None


def _computes_attention(module: nn.Module) -> bool:
    """``nn.MultiheadAttention``, or a module named like Hugging Face's (``ViTSelfAttention``,
    ``BertAttention``, ...)."""
    return isinstance(module, nn.MultiheadAttention) or type(module).__name__.endswith("Attention")


@dataclass
class KroneckerFit:
    """A fitted Kronecker-factored curvature: per factored layer (by module name) Q_A, Q_S and the
    eigenvalues Λ in their basis. Fitted once per (θ, Hessian data, loss), it serves every later
    solve on that curvature — the next Newton steps of an edit and, through the cache, later
    requests on the same checkpoint — so those cost no pass over the data."""

    corrected: bool
    layers: tuple[str, ...]
    q_in: list[torch.Tensor]
    q_out: list[torch.Tensor]
    eigen: list[torch.Tensor]
    passes: int = 0  # backward passes the fit took

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {}
        for i, (a, s, e) in enumerate(zip(self.q_in, self.q_out, self.eigen, strict=True)):
            out.update({f"{i}.q_in": a, f"{i}.q_out": s, f"{i}.eigen": e})
        return out

    def meta(self) -> dict:
        return {"corrected": self.corrected, "layers": list(self.layers), "passes": self.passes}

    @classmethod
    def from_state(cls, tensors: Mapping[str, torch.Tensor], meta: Mapping) -> KroneckerFit:
        layers = tuple(meta["layers"])
        q_in, q_out, eigen = ([tensors[f"{i}.{name}"] for i in range(len(layers))] for name in _FACTORS)
        return cls(bool(meta["corrected"]), layers, q_in, q_out, eigen, int(meta.get("passes", 0)))


#: A fitted layer's tensors (:meth:`KroneckerFit.state_dict` names them ``{layer}.{name}``).
_FACTORS = ("q_in", "q_out", "eigen")


class KroneckerInverse(InverseHessian):
    """(G + λI)⁻¹ with G factored per layer (module docstring); ``corrected`` selects EK-FAC."""

    def __init__(
        self, hessian: HessianOperator, damping: float, *, corrected: bool, tol: float = 1e-6,
        max_iter: int = 100, fit: KroneckerFit | None = None, layer_damping: float = 0.0,
    ) -> None:  # fmt: skip
        super().__init__(hessian, damping)
        self.name = "ekfac" if corrected else "kfac"
        self.layer_damping = float(layer_damping)
        self.corrected, self.tol, self.max_iter = corrected, tol, max_iter
        if hessian.flat.loss_fn not in (cross_entropy, F.cross_entropy):
            raise InvalidArgumentError(
                f"solver {self.name!r} models the cross-entropy loss; use another solver"
            )
        self.blocks = layer_blocks(hessian.flat)
        if not self.blocks:
            raise InvalidArgumentError(
                f"solver {self.name!r} needs Linear or Conv layers with trainable weights"
            )
        covered = torch.zeros(hessian.size, dtype=torch.bool)
        for block in self.blocks:
            covered[block.weight] = True
            if block.bias is not None:
                covered[block.bias] = True
        self.uncovered = torch.nonzero(~covered).flatten().to(hessian.flat.device)
        self.fit: KroneckerFit | None = None
        if fit is not None:
            self._adopt(fit)

    def _adopt(self, fit: KroneckerFit) -> None:
        if fit.corrected != self.corrected or fit.layers != tuple(b.name for b in self.blocks):
            raise InvalidArgumentError(
                f"the given curvature fit ({'ekfac' if fit.corrected else 'kfac'}, layers {list(fit.layers)[:3]}…) "
                f"is not one of this model for solver {self.name!r}"
            )
        for block, a, s, e in zip(self.blocks, fit.q_in, fit.q_out, fit.eigen, strict=True):
            block.q_in, block.q_out, block.eigen = a, s, e
        self.fit = fit

    @property
    def fitted(self) -> KroneckerFit:
        """The fitted factors (fitting them first if needed)."""
        self.prepare()
        assert self.fit is not None
        return self.fit

    def prepare(self, monitor: Monitor | None = None) -> None:
        if self.fit is not None:
            return
        (monitor or Monitor()).check_cancel()
        passes = self.hessian.work.gradients
        inputs, outputs = _factors(self.hessian, self.blocks)
        for block, a, s in zip(self.blocks, inputs, outputs, strict=True):
            alpha, block.q_in = _eigh(a, block.name)
            sigma, block.q_out = _eigh(s, block.name)
            block.eigen = sigma.clamp_min(0).unsqueeze(1) * alpha.clamp_min(0).unsqueeze(0)
        if self.corrected:
            (monitor or Monitor()).check_cancel()
            for block, e in zip(self.blocks, _corrected_eigenvalues(self.hessian, self.blocks), strict=True):
                block.eigen = e
        stored = torch.promote_types(self.hessian.flat.theta.dtype, torch.float32)
        # decomposed in float64; kept in the precision solves use
        q_in = [b.q_in.to(stored) for b in self.blocks]  # type: ignore[union-attr]
        q_out = [b.q_out.to(stored) for b in self.blocks]  # type: ignore[union-attr]
        eigen = [b.eigen.to(stored) for b in self.blocks]  # type: ignore[union-attr]
        layers = tuple(b.name for b in self.blocks)
        self._adopt(
            KroneckerFit(self.corrected, layers, q_in, q_out, eigen, self.hessian.work.gradients - passes)
        )

    # -- the factored curvature and its inverse ---------------------------------------------------

    def _apply(self, b: torch.Tensor, transform, dampings: list[float] | None = None) -> torch.Tensor:
        """Per layer, Q_S transform(Q_Sᵀ B Q_A, Λ, λ_layer) Q_Aᵀ (``dampings``: λ per layer, else 0)."""
        self.prepare()
        out = torch.zeros_like(b)
        for i, block in enumerate(self.blocks):
            q_in, q_out = block.q_in.to(b), block.q_out.to(b)  # type: ignore[union-attr]
            rotated = q_out.T @ block.matrix(b) @ q_in
            changed = transform(rotated, block.eigen.to(b), 0.0 if dampings is None else dampings[i])  # type: ignore[union-attr]
            block.scatter(q_out @ changed @ q_in.T, out)
        return out

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """G·v with the factored G (zero curvature outside the covered layers)."""
        return self._apply(v, lambda rotated, eigen, _: rotated * eigen)

    def layer_dampings(self) -> list[float]:
        """Each factored layer's λ: ``layer_damping`` × its mean eigenvalue, or ``damping``."""
        self.prepare()
        if self.layer_damping == 0.0:
            return [self.damping] * len(self.blocks)
        return [self.layer_damping * float(b.eigen.double().mean()) for b in self.blocks]  # type: ignore[union-attr]

    def solve(self, b: torch.Tensor, monitor: Monitor) -> Solution:
        self.prepare(monitor)
        return Solution(self._inverse(b), note=self._note())

    def solve_rows(
        self, rows: torch.Tensor, monitor: Monitor, *, name: str = "query", offset: int = 0,
        total: int | None = None,
    ) -> tuple[torch.Tensor, list[Solution]]:  # fmt: skip
        """Every row at once: each layer's rotations act on the whole batch [m, out, in]."""
        self.prepare(monitor)
        monitor.check_cancel()
        out = finite_rows(self._inverse(rows), self.name)
        return out, [Solution(rows[:0], note=self._note()) for _ in range(int(rows.shape[0]))]

    def _note(self) -> str:
        return f"{self.name}: {len(self.blocks)} layers factored"

    def _inverse(self, b: torch.Tensor) -> torch.Tensor:
        """(G + λI)⁻¹ b for b of shape [p] or [m, p] (module docstring)."""

        def inverse(rotated: torch.Tensor, eigen: torch.Tensor, damping: float) -> torch.Tensor:
            total = eigen + damping
            if damping > 0.0:
                return rotated / total
            # undamped: a pseudo-inverse, numerically zero eigenvalues dropped. Not with damping:
            # this tolerance (~3% of the largest eigenvalue of a 256 × 1,153 layer) dropped the
            # directions a small per-layer λ keeps, and with them a quarter of the scores' LDS
            keep = total > torch.finfo(total.dtype).eps * total.numel() * total.max().clamp_min(1e-300)
            return torch.where(keep, rotated / torch.where(keep, total, torch.ones_like(total)), 0.0)

        x = self._apply(b, inverse, self.layer_dampings())
        if self.damping > 0.0:
            x[..., self.uncovered] = b[..., self.uncovered] / self.damping
        return x

    def solve_restricted(self, b_t: torch.Tensor, index: torch.Tensor, monitor: Monitor) -> Solution:
        return self._run(restricted_problem(self.matvec, b_t, index, self.size, self.damping), "cg", monitor)

    def least_squares(self, g: torch.Tensor, index: torch.Tensor, monitor: Monitor) -> Solution:
        return self._run(columns_problem(self.matvec, g, index, self.damping), "lsqr", monitor)

    def _run(self, problem: Problem, solver: str, monitor: Monitor) -> Solution:
        """Solve a restricted or least-squares system on the factored curvature (absolute λ only)."""
        if self.layer_damping > 0.0:
            raise InvalidArgumentError(
                "`layer_damping` damps (H + λI)⁻¹ (methods if / sif); the restricted and least-squares "
                "systems of fif / gif take `damping`"
            )
        self.prepare(monitor)
        return Solution.of(solve(problem, solver, tol=self.tol, max_iter=self.max_iter, monitor=monitor))


def _eigh(factor: torch.Tensor, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigendecomposition of a symmetric PSD factor; a factor LAPACK cannot decompose (eigenvalues
    spread over more than float64 resolves) is retried with a relative jitter of 1e-12."""
    if not bool(torch.isfinite(factor).all()):
        raise NumericalError(
            f"the Kronecker factors of layer {layer!r} contain NaN or Inf (the model's activations or "
            "output gradients overflow on the Hessian data)"
        )
    try:
        return torch.linalg.eigh(factor)
    except torch.linalg.LinAlgError:
        jitter = 1e-12 * float(factor.diagonal().abs().max().clamp_min(1e-300))
        eye = torch.eye(factor.shape[0], dtype=factor.dtype, device=factor.device)
        return torch.linalg.eigh(factor + jitter * eye)


def _passes(hessian: HessianOperator, blocks: list[LayerBlock]):
    """Per chunk and per column c of the softmax curvature's square root: (layer inputs, layer
    output gradients) for every block, and whether c is the chunk's first column."""
    with recorded_calls(blocks) as seen:
        for chunk in hessian.data:
            for calls in seen:
                calls.clear()
            with torch.enable_grad():
                logits = call(hessian.flat.model, chunk.inputs)
            p = torch.softmax(logits.detach(), dim=-1)
            root = p.sqrt()
            inputs = [layer_inputs(b, _input(b, calls)) for b, calls in zip(blocks, seen, strict=True)]
            outputs = [calls[-1][1] for calls in seen]
            for c in range(logits.shape[-1]):
                direction = -p * root[:, c : c + 1]
                direction[:, c] += root[:, c]
                grads = torch.autograd.grad((logits * direction).sum(), outputs, retain_graph=True)
                hessian.work.gradients += 1
                yield inputs, [layer_outputs(b, g) for b, g in zip(blocks, grads, strict=True)], c == 0


def _input(block: LayerBlock, calls: list[Call]) -> torch.Tensor:
    """The input of the layer's last call this chunk."""
    x = calls[-1][0]
    if x is None:
        raise InvalidArgumentError(f"layer {block.name!r} takes its input by keyword; K-FAC cannot record it")
    return x


def _factors(
    hessian: HessianOperator, blocks: list[LayerBlock]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    n = hessian.num_samples
    a_sum: list[torch.Tensor | None] = [None] * len(blocks)
    s_sum: list[torch.Tensor | None] = [None] * len(blocks)
    for inputs, outputs, first_column in _passes(hessian, blocks):
        for i, (a, s) in enumerate(zip(inputs, outputs, strict=True)):
            if first_column:
                term, prev = _gram(a) / (n * a.shape[1]), a_sum[i]
                a_sum[i] = term if prev is None else prev + term
            term, prev = _gram(s) / n, s_sum[i]
            s_sum[i] = term if prev is None else prev + term
    return [t for t in a_sum if t is not None], [t for t in s_sum if t is not None]


def _gram(x: torch.Tensor) -> torch.Tensor:
    """Σ_{b,l} x_{b,l} x_{b,l}ᵀ of a [batch, positions, d] tensor, in float64: one chunk's product
    in the activations' own precision (a float32 model's sums over ~10⁵ terms lose ~10⁻⁵
    relatively, far below the damping; float64 models stay exact), accumulated across chunks in
    float64. Half the time of a float64 product on the fit's largest factors."""
    flat = x.reshape(-1, x.shape[-1])
    return (flat.T @ flat).to(torch.float64)


#: Bytes of per-sample rotated gradients held at once by the EK-FAC correction.
_CORRECTION_BUDGET = 64 << 20


def _corrected_eigenvalues(hessian: HessianOperator, blocks: list[LayerBlock]) -> list[torch.Tensor]:
    """Λ = (1/N) Σ_{n,c} (Q_Sᵀ G_{n,c} Q_A)² with G_{n,c} = Σ_l s_{n,c,l} a_{n,l}ᵀ; in the rotated
    bases Q_Sᵀ G Q_A = Σ_l (s Q_S)_l ᵀ(a Q_A)_l, and with one position (a Linear layer on vectors)
    the square of that rank-1 matrix is the outer product of the squares: one matmul per chunk."""
    n = hessian.num_samples
    # shaped like K-FAC's eigenvalues σ αᵀ: float64, [out, in]
    sums = [torch.zeros_like(b.eigen) for b in blocks]  # type: ignore[arg-type]
    for inputs, outputs, _ in _passes(hessian, blocks):
        for i, (block, a, s) in enumerate(zip(blocks, inputs, outputs, strict=True)):
            # rotated in the activations' precision (as _gram), summed in float64; [B, L, ·]
            a_rot, s_rot = a @ block.q_in.to(a), s @ block.q_out.to(s)  # type: ignore[union-attr]
            if a.shape[1] == 1:
                sums[i] += ((s_rot[:, 0] ** 2).T @ (a_rot[:, 0] ** 2)).to(torch.float64) / n
                continue
            step = max(1, _CORRECTION_BUDGET // (a_rot.element_size() * a_rot.shape[2] * s_rot.shape[2]))
            for j in range(0, a_rot.shape[0], step):
                rotated = torch.einsum("blo,bli->boi", s_rot[j : j + step], a_rot[j : j + step])
                sums[i] += (rotated**2).sum(dim=0).to(torch.float64) / n
    return sums
