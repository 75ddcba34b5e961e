"""gif: edit trained classifiers with (generalized) influence functions — pure PyTorch.

Public API::

    gif.influence(model, hessian_data, target_data, method="gif", params=..., solver=...)
    gif.select(model, data, strategy="highest_outputs", ratio=0.05)
    gif.remove(model, (x, y), {"class": 3}) / gif.relabel(model, (x, y), indices, new_labels)
    gif.scores(model, (x, y), queries)  # [n_queries, n_train]
    gif.self_influence(model, (x, y))  # [n_train]
    gif.models.build("mlp", input_shape=[1, 8, 8], hidden_sizes=[64], num_classes=10)
    gif.io.load_checkpoint(path, model) / gif.io.load_dataset(path)
    gif.remove(..., cache=gif.DiskCache(folder))  # reuse gradients, solves and curvature fits
    gif.remove(..., config=gif.EditConfig(method="fif"))  # options as one object (docs/engine.md)

Only the configuration types and progress events load eagerly: they import nothing but the
standard library, so the service reads them without torch. Everything else loads on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import EditConfig, SolveConfig
from .progress import Progress

if TYPE_CHECKING:
    from . import cache, errors, io, metrics, models  # noqa: F401
    from .cache import DiskCache, MemoryCache
    from .edits import EditResult, class_indices, relabel, remove  # noqa: F401
    from .methods import InfluenceResult, influence
    from .scoring import ScoresResult, scores, scores_with_report, self_influence, top_k  # noqa: F401
    from .selection import select
    from .solvers import LowRankHessian

__version__ = "0.1.0"

#: name → the module that defines it, imported on first access.
_LAZY = {
    name: module
    for module, names in {
        "methods": ("influence", "InfluenceResult"),
        "edits": ("remove", "relabel", "class_indices", "EditResult"),
        "scoring": ("scores", "scores_with_report", "self_influence", "top_k", "ScoresResult"),
        "selection": ("select",),
        "cache": ("DiskCache", "MemoryCache"),
        "solvers": ("LowRankHessian",),
    }.items()
    for name in names
}
_SUBMODULES = ("cache", "errors", "io", "metrics", "models")

__all__ = [
    "DiskCache",
    "EditConfig",
    "EditResult",
    "InfluenceResult",
    "LowRankHessian",
    "MemoryCache",
    "Progress",
    "ScoresResult",
    "SolveConfig",
    "influence",
    "relabel",
    "remove",
    "scores",
    "select",
    "self_influence",
    "top_k",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'gif' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, *_SUBMODULES})
