"""The explicit inverse: H formed densely in float64 (p HVPs, models up to
:data:`gif.hessian.DENSE_MAX_PARAMS` parameters), the exact reference the tests check against.

Single right-hand sides go through :mod:`gif.solvers.direct` (minimum-norm least squares); many
(scores) through one eigendecomposition of H + λI and its pseudo-inverse (eigenvalues below
eps · p · max|e| dropped).
"""

from __future__ import annotations

from functools import cached_property

import torch

from ..solvers import Monitor
from ..solvers import direct as dense
from .base import InverseHessian, Solution


class DenseInverse(InverseHessian):
    name = "direct"

    _eig: tuple[torch.Tensor, torch.Tensor] | None = None

    def prepare(self, monitor: Monitor | None = None) -> None:
        _ = self.matrix

    @cached_property
    def matrix(self) -> torch.Tensor:
        """H, formed on first use."""
        return self.hessian.dense()

    def solve(self, b: torch.Tensor, monitor: Monitor) -> Solution:
        return Solution(dense.solve_symmetric(self.matrix, b, self.damping).to(b))

    def solve_restricted(self, b_t: torch.Tensor, index: torch.Tensor, monitor: Monitor) -> Solution:
        idx = index.cpu()
        return Solution(dense.solve_symmetric(self.matrix[idx][:, idx], b_t, self.damping).to(b_t))

    def least_squares(self, g: torch.Tensor, index: torch.Tensor, monitor: Monitor) -> Solution:
        return Solution(dense.solve_least_squares(self.matrix[:, index.cpu()], g, self.damping).to(g))

    def solve_rows(
        self, rows: torch.Tensor, monitor: Monitor, *, name: str = "query", offset: int = 0,
        total: int | None = None,
    ) -> tuple[torch.Tensor, list[Solution]]:  # fmt: skip
        monitor.check_cancel()
        u, inv = self._eigen(rows.device)
        out = (((rows.to(u.dtype) @ u) * inv) @ u.T).to(rows.dtype)
        return out, [Solution(rows[:0]) for _ in range(int(rows.shape[0]))]

    def bilinear(
        self, left: torch.Tensor, right: torch.Tensor, monitor: Monitor, *, offset: int = 0,
        total: int | None = None,
    ) -> tuple[torch.Tensor, list[Solution]]:  # fmt: skip
        monitor.check_cancel()
        u, inv = self._eigen(right.device)
        d = right.to(u.dtype) @ u
        c = d if left is right else left.to(u.dtype) @ u
        return (c * d * inv).sum(dim=1).to(right.dtype), [Solution(right[:0]) for _ in range(len(right))]

    def _eigen(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Eigenvectors of H + λI and the pseudo-inverse of its eigenvalues (float64)."""
        if self._eig is None:
            h = self.matrix
            e, u = torch.linalg.eigh(h + self.damping * torch.eye(h.shape[0], dtype=h.dtype, device=h.device))
            keep = e.abs() > torch.finfo(e.dtype).eps * e.numel() * e.abs().max()
            inv = torch.where(keep, 1.0 / torch.where(keep, e, torch.ones_like(e)), torch.zeros_like(e))
            self._eig = (u.to(device), inv.to(device))
        return self._eig
