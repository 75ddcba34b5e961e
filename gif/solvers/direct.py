"""Dense float64 solves on the explicit Hessian: the exact reference for small models.

Every variant reduces to one dense (least-squares) solve. ``torch.linalg.lstsq`` is used rather
than ``solve`` so that singular systems (λ = 0 and a rank-deficient H, common with ReLU nets)
give the minimum-norm solution instead of an error — the same limit the iterative solvers reach
from x₀ = 0.
"""

from __future__ import annotations

import torch


def lstsq(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Minimum-norm least-squares solution of a x = b (float64, on CPU for the gelsd driver)."""
    a64, b64 = a.to("cpu", torch.float64), b.to("cpu", torch.float64)
    return torch.linalg.lstsq(a64, b64.unsqueeze(-1), driver="gelsd").solution.squeeze(-1)


def solve_symmetric(h: torch.Tensor, b: torch.Tensor, damping: float) -> torch.Tensor:
    """(H + λI)⁻¹ b."""
    return lstsq(h + damping * torch.eye(h.shape[0], dtype=h.dtype, device=h.device), b)


def solve_least_squares(a: torch.Tensor, b: torch.Tensor, damping: float) -> torch.Tensor:
    """argmin ‖a x − b‖² + λ‖x‖², via the stacked system [a; √λ I] x ≈ [b; 0]."""
    if damping == 0.0:
        return lstsq(a, b)
    n = a.shape[1]
    stacked = torch.cat([a, damping**0.5 * torch.eye(n, dtype=a.dtype, device=a.device)])
    return lstsq(stacked, torch.cat([b, torch.zeros(n, dtype=b.dtype, device=b.device)]))
