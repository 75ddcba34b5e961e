"""One request's view of a cache (:class:`Memo`) and the wrapper at the inverse-Hessian
boundary (:class:`CachedSolves`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..config import SolveConfig
from ..inputs import Inputs
from ..inverse import FITTED_SOLVERS, CurvatureFit, KroneckerFit, inverse_for
from ..memory import HVP_FREE_SOLVERS
from ..methods import InfluenceResult, solve_influence
from ..solvers import LowRankHessian, Monitor
from .keys import check_key, make_key, model_digest, tensor_digest
from .store import Cache, Compute, Device, Entry, Value

if TYPE_CHECKING:
    from ..hessian import HessianOperator


# -- one request's view ---------------------------------------------------------------------------


@dataclass
class CacheStats:
    """Which entries one request found (``hits``, including ones it waited for while another
    process computed them) and which it computed (``misses``), as short ``{"kind", "key"}``
    records (the key's first 16 hex digits), one per lookup; ``counts`` totals them per kind
    as ``{"hit", "wait", "miss"}`` (the labels of a requests-by-result metric)."""

    hits: list[dict] = field(default_factory=list)
    misses: list[dict] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def record(self, key: str, status: str) -> None:
        kind, digest = check_key(key)
        item: dict[str, Any] = {"kind": kind, "key": digest[:16]}
        if status == "waited":
            item["waited"] = True
        (self.misses if status == "computed" else self.hits).append(item)
        result = {"hit": "hit", "waited": "wait", "computed": "miss"}[status]
        self.counts.setdefault(kind, {"hit": 0, "wait": 0, "miss": 0})[result] += 1

    def as_dict(self) -> dict:
        return asdict(self)  # copies, JSON-ready


class Memo:
    """Get-or-compute against a cache for one request, recording hits and misses.

    With no cache, or when ``disabled`` gives a reason, every lookup simply computes and the
    digest helpers return ``""`` so that uncached edits pay nothing for hashing.
    """

    def __init__(self, cache: Cache | None, *, disabled: str | None = None) -> None:
        self.cache = cache
        self.disabled = disabled
        self.stats = CacheStats()

    @property
    def enabled(self) -> bool:
        return self.cache is not None and self.disabled is None

    # digests (empty when disabled)

    def model(self, model: nn.Module) -> str:
        return model_digest(model) if self.enabled else ""

    def data(self, *tensors: Inputs) -> str:
        """Digest of tensors (named inputs: their names and tensors, in name order)."""
        if not self.enabled:
            return ""
        flat: list[torch.Tensor] = []
        names: list[str] = []
        for t in tensors:
            if isinstance(t, torch.Tensor):
                flat.append(t)
            else:
                names.extend(sorted(t))
                flat.extend(t[k] for k in sorted(t))
        digest = tensor_digest(*flat)
        return digest if not names else make_key("named", {"names": names, "tensors": digest})

    # lookups

    def fetch(self, kind: str, parts: Mapping[str, Any], compute: Compute, *, device: Device) -> Value:
        """(tensors, meta) of the entry for ``parts``, computed (once, under its lock) if absent."""
        if not self.enabled:
            tensors, meta = compute()
            return dict(tensors), dict(meta or {})
        return self.fetch_key(make_key(kind, parts), compute, device=device)

    def fetch_key(self, key: str, compute: Compute, *, device: Device) -> Value:
        """:meth:`fetch` by the entry's key (the cache must be enabled)."""
        assert self.cache is not None
        entry = self.cache.compute_once(key, compute, device=device)
        self.stats.record(entry.key, entry.status)
        return entry.tensors, entry.meta

    def peek(self, key: str, *, device: Device) -> Entry | None:
        """The entry under ``key`` if present (the cache must be enabled; nothing recorded)."""
        assert self.cache is not None
        return getattr(self.cache, "lookup", self.cache.get)(key, device=device)

    def tensor(
        self, kind: str, parts: Mapping[str, Any], compute: Callable[[], torch.Tensor], *, device: Device
    ) -> torch.Tensor:
        tensors, _ = self.fetch(kind, parts, lambda: ({"value": compute()}, {}), device=device)
        return tensors["value"]

    def meta(self, kind: str, parts: Mapping[str, Any], compute: Callable[[], dict]) -> dict:
        """A JSON-only value (no tensors), e.g. metrics."""
        return self.fetch(kind, parts, lambda: ({}, compute()), device=None)[1]

    def gradient(self, op: HessianOperator, *, model: str, data: str, loss: str) -> torch.Tensor:
        """``op.gradient()``: ∇ of the mean loss of ``op``'s data at ``op``'s θ.

        ``model``, ``data`` and ``loss`` identify the model, data and loss ``op`` was built on;
        the chunk sizes come from ``op`` (chunking changes the round-off).
        """
        parts = {"model": model, "data": data, "loss": loss, "chunks": [len(c) for c in op.data]}
        return self.tensor("gradient", parts, op.gradient, device=op.flat.device)

    def influence(
        self,
        parts: Mapping[str, Any],
        solve: Callable[[], InfluenceResult],
        *,
        index: torch.Tensor,
        device: Device,
    ) -> InfluenceResult:
        """An influence solve for ``parts``: its ``vector`` and the diagnostics of
        :data:`_INFLUENCE_META`. A cached result has no ``fit`` (the fit is an entry of its own)."""
        fresh: list[InfluenceResult] = []

        def compute() -> Value:
            fresh.append(solve())
            return {"vector": fresh[0].vector}, {name: getattr(fresh[0], name) for name in _INFLUENCE_META}

        tensors, meta = self.fetch("ihvp", parts, compute, device=device)
        if fresh:
            return fresh[0]
        fields = {name: meta[name] for name in _INFLUENCE_META}
        fields["history"] = list(fields["history"])
        return InfluenceResult(vector=tensors["vector"], params=index.cpu(), **fields)

    def report(self) -> dict:
        out = self.stats.as_dict()
        if self.disabled is not None:
            out["bypassed"] = self.disabled
        return out


# -- engine values <-> entries -------------------------------------------------------------------


#: The JSON part of a cached influence solve (its tensor is ``vector``).
_INFLUENCE_META = ("method", "solver", "converged", "iterations", "hvps", "grads", "residual", "history", "note",
                   "seconds")  # fmt: skip


def fit_entry(fit: CurvatureFit) -> Value:
    """A curvature fit as a cache entry: its tensors, with a ``lowrank`` fit's HVP count and meta
    or the Kronecker factors' layer names."""
    if isinstance(fit, LowRankHessian):
        return fit.state_dict(), {"hvps": fit.hvps, "meta": dict(fit.meta)}
    return fit.state_dict(), {"kronecker": fit.meta()}


def fit_from_entry(tensors: Mapping[str, torch.Tensor], meta: Mapping) -> CurvatureFit:
    if "kronecker" in meta:
        return KroneckerFit.from_state(tensors, meta["kronecker"])
    # the tensors are the three of LowRankHessian.state_dict: eigenvalues, eigenvectors, residuals
    return LowRankHessian(**tensors, hvps=int(meta.get("hvps", 0)), meta=dict(meta.get("meta", {})))


#: SolveConfig fields a curvature fit does not depend on; every other field is in its key, so a
#: field added later is keyed by default (a miss at worst, never a stale hit).
FIT_INDEPENDENT = frozenset({"method", "damping", "layer_damping", "solver", "tol", "max_iter"})
#: ... and a Kronecker-factored fit approximates the Gauss–Newton matrix whatever ``curvature``
#: says (gif/inverse/kfac.py), so a removal's fit serves a relabel's, whose ``if`` preset names it.
KRONECKER_INDEPENDENT = frozenset({"curvature"})


def solve_key(config: SolveConfig) -> dict[str, Any]:
    """What an ``ihvp`` entry's key holds of the configuration: every field of the solve."""
    return config.solve_config().to_dict()


def fit_key(config: SolveConfig) -> dict[str, Any]:
    """What a curvature fit's key holds of the configuration: every field but
    :data:`FIT_INDEPENDENT` (and for ``kfac`` / ``ekfac`` :data:`KRONECKER_INDEPENDENT`)."""
    kronecker = config.solver in HVP_FREE_SOLVERS
    skip = FIT_INDEPENDENT | KRONECKER_INDEPENDENT if kronecker else FIT_INDEPENDENT
    return {k: v for k, v in solve_key(config).items() if k not in skip}


class CachedSolves:
    """The influence solves of one edit through a :class:`Memo`: a wrapper at the
    inverse-Hessian boundary (docs/engine.md, "Where caching happens").

    Each solve is an ``ihvp`` entry keyed by :func:`solve_key`. A fitted curvature (``lowrank``,
    ``kfac``, ``ekfac``) is an entry of its own (kind: the solver, keyed by :func:`fit_key` at the
    first solve), so a related request reuses the fit even when its right-hand side differs. A
    fit given by the caller is identified by the digest of its tensors.
    """

    def __init__(self, memo: Memo, given: CurvatureFit | None) -> None:
        self.memo = memo
        self.fit = given
        self._id: str | None = None  # the fit's identity in ihvp keys
        self._key = ""  # its cache key when this edit derives it

    def solve(
        self,
        hessian: HessianOperator,
        g: torch.Tensor,
        index: torch.Tensor,
        config: SolveConfig,
        *,
        model: str,
        data: str,
        loss: str,
        extra: Mapping[str, Any],
        monitor: Monitor,
        target_hvp: Callable[[torch.Tensor], torch.Tensor] | None = None,
        group_fraction: float = 0.0,
    ) -> InfluenceResult:
        """``solve_influence(hessian, g, index, config, ...)``, from the cache when possible.

        ``model``/``data``/``loss`` identify θ, the Hessian data and the loss of ``hessian``;
        ``extra`` holds whatever else the solve depends on (e.g. the target of ``sif``). What is
        computed is counted in ``hessian.work``; a cached solve costs nothing.
        """
        fitted = config.solver_name in FITTED_SOLVERS
        common = _common_parts(hessian, model=model, data=data, loss=loss)
        if fitted and self.memo.enabled and self._id is None:  # identify the fit
            if self.fit is not None:
                self._id = "given:" + tensor_digest(*self.fit.state_dict().values())
            else:
                self._key = self._id = _fit_entry_key(common, config)
                found = self.memo.peek(self._key, device=hessian.flat.device)
                if found is not None:
                    self.memo.stats.record(self._key, "hit")
                    self.fit = fit_from_entry(found.tensors, found.meta)
        parts = {
            **common,
            "rhs": self.memo.data(g),
            "params": self.memo.data(index),
            "curvature": self._id,
            "config": solve_key(config),
            "group_fraction": group_fraction,
            "extra": dict(extra),
        }

        def run(fit: CurvatureFit | None) -> InfluenceResult:
            return solve_influence(
                hessian, g, index, config, target_hvp=target_hvp, group_fraction=group_fraction, fit=fit,
                monitor=monitor,
            )  # fmt: skip

        def compute() -> InfluenceResult:
            if fitted and self.fit is None and self._key:
                return self._solve_and_fit(hessian, run)
            return run(self.fit if fitted else None)

        result = self.memo.influence(parts, compute, index=index, device=g.device)
        if fitted and self.fit is None:  # a cached solve has no fit: this edit must still return one
            self.fit = result.fit if result.fit is not None else self._fit(hessian, config, monitor)
        return result

    def has_fit(
        self, hessian: HessianOperator, config: SolveConfig, *, model: str, data: str, loss: str
    ) -> bool:
        """Whether the curvature ``config``'s solver fits (lowrank, kfac, ekfac) on ``hessian`` is
        in the cache already (or was given), so that a solve would not fit it again."""
        if config.solver_name not in FITTED_SOLVERS:
            return False
        if self.fit is not None:
            return True
        if not self.memo.enabled:
            return False
        key = _fit_entry_key(_common_parts(hessian, model=model, data=data, loss=loss), config)
        return self.memo.peek(key, device=hessian.flat.device) is not None

    def _solve_and_fit(
        self, hessian: HessianOperator, run: Callable[[CurvatureFit | None], InfluenceResult]
    ) -> InfluenceResult:
        """The first solve fits the curvature (under the fit's lock); a fit that appeared in the
        meantime (another worker) is used instead."""
        fresh: list[InfluenceResult] = []

        def compute() -> Value:
            fresh.append(run(None))
            assert fresh[0].fit is not None
            return fit_entry(fresh[0].fit)

        tensors, meta = self.memo.fetch_key(self._key, compute, device=hessian.flat.device)
        if fresh:
            return fresh[0]
        self.fit = fit_from_entry(tensors, meta)
        return run(self.fit)

    def _fit(self, hessian: HessianOperator, config: SolveConfig, monitor: Monitor) -> CurvatureFit:
        def compute() -> Value:
            inverse = inverse_for(hessian, config)
            inverse.prepare(monitor)
            fit = getattr(inverse, "fit", None)
            assert fit is not None
            return fit_entry(fit)

        return fit_from_entry(*self.memo.fetch_key(self._key, compute, device=hessian.flat.device))


def _common_parts(hessian: HessianOperator, *, model: str, data: str, loss: str) -> dict[str, Any]:
    """What a solve's and a fit's keys share: θ, the Hessian data, the loss, how HVPs run."""
    return {"model": model, "data": data, "loss": loss, "backend": hessian.backend,
            "chunks": [len(c) for c in hessian.data]}  # fmt: skip


def _fit_entry_key(common: Mapping[str, Any], config: SolveConfig) -> str:
    parts = {**common, "config": fit_key(config)}
    if config.solver_name in HVP_FREE_SOLVERS:  # the Kronecker fits' passes take no HVP
        del parts["backend"]
    return make_key(config.solver_name, parts)
