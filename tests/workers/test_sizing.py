"""A job's memory estimate before it runs (workers/sizing.py): the HVPs' cached graph is counted
where the job takes HVPs and the back end takes the graph, and only there."""

from __future__ import annotations

import torch
from torch import nn

import gif.memory
from jobs import ids, specs
from workers.loading import Loaded
from workers.sizing import check_job_fits


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
        return check_job_fits(spec, loaded, 0)["activations"]

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
        return check_job_fits(_spec("self_influence", measure=measure), loaded, 0)["activations"]

    assert activations("auto") == activations("head") == gif.memory.FACTOR * 256 * per_sample
    assert activations("loss") == gif.memory.graph_bytes(per_sample, 600, p, 4, 3)
