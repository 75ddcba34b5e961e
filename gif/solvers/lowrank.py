"""Low-rank curvature: the top-k eigenpairs of H, fitted once and reused by many requests.

Lanczos with full re-orthogonalisation on the HVP operator (m steps, one HVP each, default
2k + 20) gives H ≈ Vᵀ diag(μ) V, V ∈ R^{k×p} with orthonormal rows, μ the k eigenvalues of
largest magnitude (H is indefinite, so both ends of the spectrum count), and zero curvature
outside the fitted subspace. Each solve is *exact for that model* (pseudo-inverse when λ = 0):

* ``if``:   z = Vᵀ diag(1/(μ+λ)) V g + (g − VᵀV g)/λ                       (z restricted to T)
* ``fif``:  Woodbury on (V_Tᵀ Λ V_T + λI)⁻¹ g_T with V_T = V[:, T]:
            x = (g_T − V_Tᵀ y)/λ,  (λΛ⁻¹ + V_T V_Tᵀ) y = V_T g_T
* ``gif``:  x = argmin ‖Vᵀ Λ V_T x − g‖² + λ‖x‖² = Bᵀ (B Bᵀ + λI)⁺ V g,  B = Λ V_T

If the fitted subspace holds every non-zero eigenvalue (k ≥ rank(H)), the solves are exact (the
tests check them against dense algebra); with k ≪ p, damping λ sets how far the update moves
outside the subspace.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import InvalidArgumentError
from .base import MatVec, Monitor
from .direct import lstsq


@dataclass
class LowRankHessian:
    """Top-k eigenpairs of a Hessian, with the fit's diagnostics.

    Attributes:
        eigenvalues: μ, shape [k], sorted by decreasing magnitude.
        eigenvectors: V, shape [k, p], orthonormal rows.
        residuals: ‖H vᵢ − μᵢ vᵢ‖ / max|μ| from the Lanczos recurrence, shape [k].
        hvps: HVPs spent on the fit.
        meta: free-form provenance (checkpoint / data digests, loss, ...), set by callers.
    """

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    residuals: torch.Tensor
    hvps: int = 0
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def rank(self) -> int:
        return int(self.eigenvalues.numel())

    @property
    def size(self) -> int:
        return int(self.eigenvectors.shape[1])

    def converged(self, tol: float = 1e-3) -> bool:
        return bool((self.residuals <= tol).all())

    # -- solves -----------------------------------------------------------------------------------

    def solve_if(self, g: torch.Tensor, damping: float) -> torch.Tensor:
        v, mu = self.pairs(g)
        coords = v @ g
        inside = (coords / (mu + damping)) @ v
        if damping == 0.0:
            return inside
        return inside + (g - coords @ v) / damping

    def solve_fif(self, g_t: torch.Tensor, index: torch.Tensor, damping: float) -> torch.Tensor:
        v, mu = self.pairs(g_t)
        vt = v[:, index.to(v.device)]  # [k, |T|]
        gram = vt @ vt.T
        if damping == 0.0:  # pseudo-inverse of V_Tᵀ Λ V_T, in the row space of V_T
            return vt.T @ lstsq(gram @ torch.diag(mu) @ gram, vt @ g_t).to(g_t)
        return (g_t - vt.T @ lstsq(damping * torch.diag(1.0 / mu) + gram, vt @ g_t).to(g_t)) / damping

    def solve_gif(self, g: torch.Tensor, index: torch.Tensor, damping: float) -> torch.Tensor:
        v, mu = self.pairs(g)
        b = mu.unsqueeze(1) * v[:, index.to(v.device)]  # Λ V_T, [k, |T|]
        # Minimum-norm ridge solution in the row space of B: x = Bᵀ (B Bᵀ + λI)⁺ V g (k×k).
        y = lstsq(b @ b.T + damping * torch.eye(b.shape[0], dtype=b.dtype, device=b.device), v @ g).to(g)
        return b.T @ y

    def pairs(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(V, μ) on ``like``'s device/dtype, without numerically-zero eigenvalues.

        Pairs with |μ| ≤ 100·eps·max|μ| carry no curvature (they come from H's null space) and
        would make Λ⁻¹ blow up in the Woodbury solve; dropping them is the pseudo-inverse.
        """
        mu = self.eigenvalues.to(device=like.device, dtype=like.dtype)
        keep = mu.abs() > 100 * torch.finfo(like.dtype).eps * mu.abs().max()
        return self.eigenvectors.to(device=like.device, dtype=like.dtype)[keep], mu[keep]

    # -- persistence ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name).cpu().contiguous() for name in _TENSORS}

    def save(self, path: str) -> None:
        """Write to a safetensors file (tensors + string metadata)."""
        from safetensors.torch import save_file

        save_file(self.state_dict(), path, metadata={**self.meta, "hvps": str(self.hvps)})

    @classmethod
    def load(cls, path: str) -> LowRankHessian:
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            meta = dict(f.metadata() or {})
            eigenvalues, eigenvectors, residuals = (f.get_tensor(name) for name in _TENSORS)
        return cls(eigenvalues, eigenvectors, residuals, int(meta.pop("hvps", "0")), meta)


#: The fit's tensors, as saved.
_TENSORS = ("eigenvalues", "eigenvectors", "residuals")


def fit_lowrank(
    hvp: MatVec, size: int, *, rank: int, steps: int | None = None, like: torch.Tensor, seed: int = 0,
    monitor: Monitor | None = None,
) -> LowRankHessian:  # fmt: skip
    """Lanczos with full re-orthogonalisation; keeps the ``rank`` Ritz pairs of largest |μ|.

    Args:
        hvp: v ↦ H v for flat vectors of length ``size``.
        rank: k, number of eigenpairs kept (capped at ``size``).
        steps: Lanczos steps m (default min(size, 2k + 20)); one HVP each.
        like: a tensor giving the device and dtype of the vectors.
        seed: seeds the random start vector.
    """
    if rank < 1:
        raise InvalidArgumentError(f"`rank` must be >= 1, got {rank}")
    rank = min(rank, size)
    steps = min(size, steps or 2 * rank + 20)
    if steps < rank:
        raise InvalidArgumentError(f"`steps` ({steps}) must be >= `rank` ({rank})")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    q = torch.randn(size, generator=gen, dtype=torch.float64).to(device=like.device, dtype=like.dtype)
    q /= q.norm()
    basis = torch.empty(steps, size, dtype=like.dtype, device=like.device)
    alphas: list[float] = []
    betas: list[float] = []
    beta, q_prev = 0.0, torch.zeros_like(q)
    for j in range(steps):
        basis[j] = q
        w = hvp(q)
        alpha = float(q @ w)
        w = w - alpha * q - beta * q_prev
        for _ in range(2):  # twice is enough (Kahan–Parlett "twice is enough")
            w = w - basis[: j + 1].T @ (basis[: j + 1] @ w)
        alphas.append(alpha)
        beta = float(w.norm())
        if monitor is not None:
            monitor(j + 1, beta, steps)
        if j + 1 == steps or beta <= 1e-10 * max(1.0, abs(alpha)):
            break  # exhausted the space or found an invariant subspace
        betas.append(beta)
        q_prev, q = q, w / beta
    m = len(alphas)
    tri = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if m > 1:
        off = torch.tensor(betas[: m - 1], dtype=torch.float64)
        tri += torch.diag(off, 1) + torch.diag(off, -1)
    theta, s = torch.linalg.eigh(tri)
    keep = torch.argsort(theta.abs(), descending=True)[:rank]
    vectors = s[:, keep].T.to(basis) @ basis[:m]  # [k, p]
    # ‖H v − μ v‖ = |β_m s_{m,i}|, relative to the spectral scale max|μ|.
    ritz_res = (abs(beta) * s[m - 1, keep].abs()) / max(float(theta.abs().max()), 1e-300)
    return LowRankHessian(theta[keep].to(like.dtype), vectors, ritz_res, hvps=m)
