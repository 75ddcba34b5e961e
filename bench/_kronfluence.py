"""kronfluence 1.0.1 as a peer in the benchmarks: a classifier's pairwise and self-influence
scores with its own defaults (damping: 0.1 × the mean eigenvalue; Fisher labels drawn from the
model's predictions, seeded here; measurement: the cross-entropy). Imported only when a benchmark
asks for it. Install it without its dependencies' resolution (:data:`INSTALL`): a plain ``pip
install kronfluence==1.0.1`` pulls the newest torchvision, which replaces the venv's torch with
another (CUDA) build; kronfluence does not import torchvision."""

from __future__ import annotations

import copy
import tempfile

import torch
from torch import nn

Batch = tuple[torch.Tensor, torch.Tensor]

#: How to install the peer into the project's venv.
INSTALL = "pip install --no-deps kronfluence==1.0.1 accelerate einops einconv opt-einsum"


def available() -> bool:
    try:
        import kronfluence  # noqa: F401
    except ImportError:
        return False
    return True


def _analyzer(model: nn.Module, train: Batch, strategy: str, seed: int, out: str):
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments
    from kronfluence.task import Task

    class Classification(Task):
        def compute_train_loss(self, batch, model, sample=False):
            x, y = batch
            logits = model(x)
            if sample:  # the true Fisher: labels drawn from the model's own predictions
                with torch.no_grad():
                    y = torch.multinomial(torch.softmax(logits.detach(), dim=-1), 1).flatten()
            return nn.functional.cross_entropy(logits, y, reduction="sum")

        def compute_measurement(self, batch, model):
            x, y = batch
            return nn.functional.cross_entropy(model(x), y, reduction="sum")

    torch.manual_seed(seed)  # the sampled labels of its Fisher draw on the global generator
    task = Classification()
    analyzer = Analyzer("bench", prepare_model(copy.deepcopy(model), task), task, cpu=True, disable_tqdm=True,
                        output_dir=out)  # fmt: skip
    analyzer.fit_all_factors(
        "factors", torch.utils.data.TensorDataset(*train), per_device_batch_size=256,
        factor_args=FactorArguments(strategy=strategy), overwrite_output_dir=True,
    )  # fmt: skip
    return analyzer


def pairwise_scores(
    model: nn.Module, train: Batch, queries: Batch, strategy: str = "ekfac", seed: int = 0
) -> torch.Tensor:
    """[queries, train] influence scores (positive: the training sample lowers the query's loss)."""
    from kronfluence.arguments import ScoreArguments

    with tempfile.TemporaryDirectory() as out:
        analyzer = _analyzer(model, train, strategy, seed, out)
        analyzer.compute_pairwise_scores(
            "scores", "factors", torch.utils.data.TensorDataset(*queries),
            torch.utils.data.TensorDataset(*train), per_device_query_batch_size=len(queries[1]),
            per_device_train_batch_size=256, score_args=ScoreArguments(damping_factor=None),
            overwrite_output_dir=True,
        )  # fmt: skip
        scores = analyzer.load_pairwise_scores("scores")
        assert scores is not None
        return scores["all_modules"].detach().cpu()


def self_scores(model: nn.Module, train: Batch, strategy: str = "ekfac", seed: int = 0) -> torch.Tensor:
    """[train] self-influence ∇ℓᵀ(H + λI)⁻¹∇ℓ of every training sample."""
    from kronfluence.arguments import ScoreArguments

    with tempfile.TemporaryDirectory() as out:
        analyzer = _analyzer(model, train, strategy, seed, out)
        analyzer.compute_self_scores(
            "self", "factors", torch.utils.data.TensorDataset(*train), per_device_train_batch_size=256,
            score_args=ScoreArguments(damping_factor=None), overwrite_output_dir=True,
        )  # fmt: skip
        scores = analyzer.load_self_scores("self")
        assert scores is not None
        return scores["all_modules"].detach().cpu()
