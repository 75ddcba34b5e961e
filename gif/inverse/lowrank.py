"""The low-rank inverse: the top-k eigenpairs of H (:class:`gif.solvers.LowRankHessian`), fitted
once by Lanczos (~2k + 20 HVPs) and then applied in closed form, exactly for that model, at a few
k×p products per right-hand side."""

from __future__ import annotations

import torch

from ..errors import InvalidArgumentError
from ..hessian import HessianOperator
from ..solvers import LowRankHessian, Monitor, fit_lowrank
from .base import InverseHessian, Solution


class LowRankInverse(InverseHessian):
    name = "lowrank"

    def __init__(
        self, hessian: HessianOperator, damping: float, *, fit: LowRankHessian | None = None, rank: int = 64,
        seed: int = 0, steps: int | None = None,
    ) -> None:  # fmt: skip
        super().__init__(hessian, damping)
        if fit is not None and fit.size != hessian.size:
            raise InvalidArgumentError(
                f"the lowrank fit has {fit.size} parameters but the model has {hessian.size}"
            )
        self.fit = fit
        self.rank, self.seed, self.steps = rank, seed, steps
        self._unreported_hvps = 0  # fit HVPs not yet shown in a Solution's iterations
        self._pairs: tuple[torch.Tensor, torch.Tensor] | None = None

    def prepare(self, monitor: Monitor | None = None) -> None:
        if self.fit is not None:
            return
        self.fit = fit_lowrank(
            self.hessian.hvp, self.size, rank=self.rank, like=self.hessian.flat.theta, seed=self.seed,
            steps=self.steps, monitor=(monitor or Monitor()).fresh(stage="fitting_curvature"),
        )  # fmt: skip
        self._unreported_hvps = self.fit.hvps

    def _fitted(self, monitor: Monitor | None = None) -> LowRankHessian:
        """The fit (made first if needed)."""
        self.prepare(monitor)
        assert self.fit is not None
        return self.fit

    def solve(self, b: torch.Tensor, monitor: Monitor) -> Solution:
        return self._solution(self._fitted(monitor).solve_if(b, self.damping))

    def solve_restricted(self, b_t: torch.Tensor, index: torch.Tensor, monitor: Monitor) -> Solution:
        return self._solution(self._fitted(monitor).solve_fif(b_t, index, self.damping))

    def least_squares(self, g: torch.Tensor, index: torch.Tensor, monitor: Monitor) -> Solution:
        return self._solution(self._fitted(monitor).solve_gif(g, index, self.damping))

    def solve_rows(
        self, rows: torch.Tensor, monitor: Monitor, *, name: str = "query", offset: int = 0,
        total: int | None = None,
    ) -> tuple[torch.Tensor, list[Solution]]:  # fmt: skip
        """z = Vᵀ diag(1/(μ+λ)) V g + (g − VᵀV g)/λ for every row g, vectorised."""
        v, mu, c = self._coords(rows, monitor)
        out = (c / (mu + self.damping)) @ v
        if self.damping != 0.0:
            out = out + (rows - c @ v) / self.damping
        return out, self._row_solutions(rows)

    def bilinear(
        self, left: torch.Tensor, right: torch.Tensor, monitor: Monitor, *, offset: int = 0,
        total: int | None = None,
    ) -> tuple[torch.Tensor, list[Solution]]:  # fmt: skip
        """aᵀ z = Σ_k c_k d_k/(μ_k + λ) + aᵀ(b − Vᵀd)/λ with c = V a, d = V b (the last term for
        λ > 0 only): the flat complement of the fitted subspace."""
        v, mu, d = self._coords(right, monitor)
        c = d if left is right else left @ v.T
        out = (c * d / (mu + self.damping)).sum(dim=1)
        if self.damping != 0.0:
            out = out + (left * (right - d @ v)).sum(dim=1) / self.damping
        return out, self._row_solutions(right)

    def _coords(
        self, rows: torch.Tensor, monitor: Monitor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(V, μ) (cached) and c = V g per row, once fitted and unless cancelled."""
        fit = self._fitted(monitor)
        monitor.check_cancel()
        if self._pairs is None or self._pairs[0].dtype != rows.dtype:
            self._pairs = fit.pairs(rows)
        v, mu = self._pairs
        return v, mu, rows @ v.T  # c = V g per row, [m, k]

    def _solution(self, x: torch.Tensor) -> Solution:
        fit = self._fitted()
        residual = float(fit.residuals.max())
        iterations, self._unreported_hvps = self._unreported_hvps, 0
        note = f"rank {fit.rank}; max Ritz residual {residual:.2e}"
        return Solution(x, fit.converged(), iterations, residual, [], note)

    def _row_solutions(self, rows: torch.Tensor) -> list[Solution]:
        fit = self._fitted()
        return [Solution(rows[:0], fit.converged(), 0, float(fit.residuals.max())) for _ in range(len(rows))]
