import pytest
import torch

from gif.errors import InvalidArgumentError, ModelTooLargeError, NumericalError
from gif.hessian import HessianOperator

from .reference import dense_gradient, dense_hessian


@pytest.mark.parametrize("backend", ["func", "graph", "linearized"])
def test_hvp_matches_dense_hessian(tiny, backend):
    _, model, data, _ = tiny
    h = dense_hessian(model, *data)
    op = HessianOperator(model, data, backend=backend)
    v = torch.randn(op.size, dtype=torch.float64, generator=torch.Generator().manual_seed(3)).to(
        data[0].device
    )
    torch.testing.assert_close(op.hvp(v), h @ v, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(op.gradient(), dense_gradient(model, *data), rtol=1e-10, atol=1e-12)
    assert (op.hvps, op.grads) == (1, 1)


def test_dense_matches_reference(tiny):
    _, model, data, _ = tiny
    op = HessianOperator(model, data)
    torch.testing.assert_close(op.dense(), dense_hessian(model, *data), rtol=1e-10, atol=1e-12)
    assert op.hvps == op.size


def test_batching_and_chunking_do_not_change_results(tiny):
    _, model, (x, y), _ = tiny
    v = torch.randn(HessianOperator(model, (x, y)).size, dtype=torch.float64, device=x.device)
    whole = HessianOperator(model, (x, y))
    uneven = HessianOperator(model, [(x[:3], y[:3]), (x[3:17], y[3:17]), (x[17:], y[17:])], chunk_size=5)
    torch.testing.assert_close(uneven.hvp(v), whole.hvp(v), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(uneven.gradient(), whole.gradient(), rtol=1e-12, atol=1e-12)
    assert len(uneven.data.chunks) == 1 + 3 + 2  # 3 | 14 -> 5+5+4 | 7 -> 5+2
    assert uneven.loss() == pytest.approx(whole.loss(), rel=1e-12)


def test_dense_refuses_large_models():
    model = torch.nn.Linear(100, 60)
    op = HessianOperator(model, (torch.randn(4, 100), torch.randint(0, 60, (4,))))
    with pytest.raises(ModelTooLargeError, match="dense Hessian of 6060 parameters"):
        op.dense()


def test_bad_data_is_rejected():
    model = torch.nn.Linear(3, 2)
    with pytest.raises(InvalidArgumentError, match="same first dimension"):
        HessianOperator(model, (torch.randn(4, 3), torch.zeros(5, dtype=torch.long)))
    with pytest.raises(InvalidArgumentError, match="empty"):
        HessianOperator(model, (torch.randn(0, 3), torch.zeros(0, dtype=torch.long)))
    bad = torch.randn(4, 3)
    bad[1, 2] = float("nan")
    with pytest.raises(NumericalError, match="NaN"):
        HessianOperator(model, (bad, torch.zeros(4, dtype=torch.long)))
    with pytest.raises(InvalidArgumentError, match="backend"):
        HessianOperator(model, (torch.randn(4, 3), torch.zeros(4, dtype=torch.long)), backend="magic")


def test_frozen_parameters_are_excluded():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
    model[0].weight.requires_grad_(False)
    data = (torch.randn(6, 3, dtype=torch.float64), torch.randint(0, 2, (6,)))
    op = HessianOperator(model, data)
    assert op.size == 4 + 8 + 2
    torch.testing.assert_close(op.dense(), dense_hessian(model, *data), rtol=1e-10, atol=1e-12)


def test_auto_backend_picks_graph_when_it_fits_and_func_otherwise(tiny):
    _, model, data, _ = tiny
    small = HessianOperator(model, data, backend="auto")
    assert small.backend == "graph"
    assert 0 < small.estimate_graph_bytes() < 1 << 20
    tight = HessianOperator(model, data, backend="auto", graph_budget_bytes=1)
    assert tight.backend == "func"
    v = torch.randn(small.size, dtype=torch.float64, device=data[0].device)
    torch.testing.assert_close(small.hvp(v), tight.hvp(v), rtol=1e-10, atol=1e-12)


def test_building_an_operator_leaves_a_training_mode_model_untouched():
    """The output check is skipped in training mode: a forward there would update BatchNorm's
    running statistics."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    HessianOperator(model, (torch.randn(8, 3), torch.zeros(8, dtype=torch.long)))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # the labels' type is still checked there (not the class range: that needs a forward)
    with pytest.raises(InvalidArgumentError, match="`hessian_data`: labels must be a 1-D int64 tensor"):
        HessianOperator(model, (torch.randn(8, 3), torch.zeros(8)))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and model.training
