"""gif: edit trained classifiers with (generalized) influence functions — pure PyTorch.

Public API::

    gif.influence(model, hessian_data, target_data, method="gif", params=..., solver=...)
    gif.select(model, data, strategy="highest_outputs", ratio=0.05)
    gif.remove(model, (x, y), {"class": 3}) / gif.relabel(model, (x, y), indices, new_labels)
    gif.scores(model, (x, y), queries)  # [n_queries, n_train]
    gif.models.build("mlp", input_shape=[1, 8, 8], hidden_sizes=[64], num_classes=10)
    gif.io.load_checkpoint(path, model) / gif.io.load_dataset(path)
    gif.remove(..., cache=gif.DiskCache(folder))  # reuse gradients, solves and curvature fits
"""

from . import cache, errors, io, metrics, models
from .cache import Cache, DiskCache, MemoryCache
from .edits import EditResult, class_indices, relabel, remove
from .hessian import HessianOperator
from .influence import METHODS, InfluenceResult, influence
from .options import EditOptions
from .scores import ScoresResult, scores, scores_with_report, self_influence, top_k
from .selection import STRATEGIES, select, selection_summary
from .solvers import SOLVERS, LowRankHessian

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "SOLVERS",
    "STRATEGIES",
    "Cache",
    "DiskCache",
    "EditOptions",
    "EditResult",
    "HessianOperator",
    "InfluenceResult",
    "LowRankHessian",
    "MemoryCache",
    "ScoresResult",
    "cache",
    "class_indices",
    "errors",
    "influence",
    "io",
    "metrics",
    "models",
    "relabel",
    "remove",
    "scores",
    "scores_with_report",
    "select",
    "selection_summary",
    "self_influence",
    "top_k",
]
