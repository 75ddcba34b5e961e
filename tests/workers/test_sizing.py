"""A job's memory estimate before it runs (workers/sizing.py): the HVPs' cached graph is counted
where the job takes HVPs and the back end takes the graph, and only there; the budget it is
checked against, on the CPU and on a GPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gif.memory
from gif.errors import MemoryBudgetError
from jobs import ids, specs
from workers.loading import Loaded
from workers.sizing import GPU_SHARE, Budget, check_job_fits, job_budget, model_bytes

NO_CHECK = Budget(0, "no budget")


def _loaded() -> Loaded:
    """A convolution whose activations outweigh its parameters, on 600 training samples: every
    chunk's graph (gif/memory.py, ``graph_bytes``) is more than one differentiated chunk of 256."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 8 * 8, 10))
    x, y = torch.randn(600, 1, 8, 8), torch.arange(600) % 10
    return Loaded(model=model.eval(), num_classes=10, train=(x, y), queries=(x[:4], y[:4]))


def _spec(kind: str, **fields: object) -> specs.Spec:
    body: dict = {
        "type": kind, "model": {"arch": "lenet", "checkpoint": ids.new_id("artifact")},
        "train": ids.new_id("artifact"), **fields,
    }  # fmt: skip
    return specs.parse(body)


def test_an_hvp_solve_is_sized_with_its_graph_and_a_kronecker_fit_without():
    loaded = _loaded()
    queries = ids.new_id("artifact")
    p = sum(t.numel() for t in loaded.model.parameters())
    per_sample = (16 * 64 * 2 + 16 * 64 + 10) * 4  # conv, ReLU, Flatten, Linear outputs (float32)

    def activations(**options: object) -> int:
        spec = _spec("scores", queries=queries, options=options)
        return check_job_fits(spec, loaded, NO_CHECK)["activations"]

    graph = gif.memory.graph_bytes(per_sample, 600, p, 4, 3)  # scores' chunks: 256 samples
    chunk = gif.memory.FACTOR * 256 * per_sample
    assert graph > chunk
    assert activations(solver="cg") == graph  # the back end (auto; not a service option) takes the graph
    assert activations(solver="kfac") == activations(solver="ekfac") == chunk  # no HVP: no graph


def test_a_self_influence_job_is_sized_with_the_graph_only_where_it_fits_a_curvature():
    """The leave-one-out head (``auto`` on this model) takes no HVP; a low-rank fit of the network's
    curvature (``measure="loss"``, the self-influence default solver) takes them."""
    loaded = _loaded()
    p = sum(t.numel() for t in loaded.model.parameters())
    per_sample = (16 * 64 * 2 + 16 * 64 + 10) * 4

    def activations(measure: str) -> int:
        return check_job_fits(_spec("self_influence", measure=measure), loaded, NO_CHECK)["activations"]

    assert activations("auto") == activations("head") == gif.memory.FACTOR * 256 * per_sample
    assert activations("loss") == gif.memory.graph_bytes(per_sample, 600, p, 4, 3)


GIB = 2**30


def _gpu(free: int, total: int = 80 * GIB):
    """What ``torch.cuda.mem_get_info`` answers on a GPU with ``free`` bytes free."""
    return lambda device: (free, total)


def test_on_the_cpu_the_budget_is_the_setting():
    budget = job_budget(torch.device("cpu"), 100 * GIB, _gpu(1))
    assert budget == Budget(100 * GIB, "the budget (GIF_MAX_MEMORY_BYTES)")


def test_on_a_gpu_the_budget_is_at_most_a_share_of_its_free_memory():
    """The setting's default is a share of the host's memory: a GPU with less free is the limit."""
    cuda = torch.device("cuda:1")
    budget = job_budget(cuda, 100 * GIB, _gpu(10 * GIB))
    assert (
        budget.bytes == int(10 * GIB * GPU_SHARE) and "free memory of cuda:1 (80.0 GiB in all)" in budget.name
    )
    assert job_budget(cuda, 4 * GIB, _gpu(10 * GIB)).bytes == 4 * GIB  # a smaller setting holds
    assert job_budget(cuda, 0, _gpu(10 * GIB)).bytes == 0  # 0 turns the check off, on a GPU too
    # the job's model, already on the device, is part of the estimate: not taken twice
    assert job_budget(cuda, 100 * GIB, _gpu(9 * GIB), held=GIB).bytes == int(10 * GIB * GPU_SHARE)


def test_a_models_bytes_are_its_parameters_and_buffers():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).double()
    # Linear 3·4 + 4, BatchNorm weight, bias 4 + 4, running mean, var 4 + 4, batches tracked (int64)
    assert model_bytes(model) == (16 + 8 + 8) * 8 + 8


def test_a_job_over_the_gpus_free_memory_fails_naming_it():
    loaded, spec = _loaded(), _spec("scores", queries=ids.new_id("artifact"), options={"solver": "cg"})
    total = check_job_fits(spec, loaded, NO_CHECK)["total"]
    fits = job_budget(torch.device("cuda"), 100 * GIB, _gpu(2 * total))
    assert check_job_fits(spec, loaded, fits)["budget"] == fits.bytes
    tight = job_budget(torch.device("cuda"), 100 * GIB, _gpu(total))  # 90% of it: too little
    with pytest.raises(MemoryBudgetError, match=r"but 90% of the free memory of cuda"):
        check_job_fits(spec, loaded, tight)


def test_an_edit_job_is_sized_with_the_features_its_head_or_last_layers_hold():
    """A relabel at the defaults may edit the head on its input features (1,024 per sample here),
    held for every training sample and as much again for validation data; an IF edit of the
    whole network holds none. A budget the features overflow fails naming them."""
    loaded = _loaded()
    relabel = {"relabel": {"indices": list(range(30)), "labels": [1] * 30}}
    head = 2 * 16 * 64 * 4 * 600
    assert check_job_fits(_spec("relabel", **relabel), loaded, NO_CHECK)["features"] == head
    assert (
        check_job_fits(_spec("relabel", **relabel, options={"method": "if"}), loaded, NO_CHECK)["features"]
        == 0
    )
    sized = check_job_fits(_spec("relabel", **relabel), loaded, NO_CHECK)
    assert sized["total"] == sized["parameters"] + sized["activations"] + sized["data"] + head
    tight = Budget(sized["total"] - 1, "the budget")
    with pytest.raises(MemoryBudgetError, match=r"input features 0\.00.* but the budget"):
        check_job_fits(_spec("relabel", **relabel), loaded, tight)


def test_features_that_take_most_of_an_overflowing_estimate_are_named_as_what_to_change():
    estimate = gif.memory.Estimate(parameters=10, activations=10, data=10, chunk=1, features=100)
    with pytest.raises(MemoryBudgetError, match=r'name method "if" or "gif"'):
        gif.memory.check_fits(estimate, 50)
