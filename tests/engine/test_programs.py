"""gif.io.programs: the static check of a ``.pt2`` archive, the pickle-free loader, the module the
engine edits (layers restored, torch.func transforms), and saving with new weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, jvp

import gif
from gif.io import programs
from tests import programs as P


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3, bias=False)).double().eval()


@pytest.fixture(scope="module")
def net() -> P.DigitsNet:
    torch.manual_seed(3)
    model = P.DigitsNet().eval()
    with torch.no_grad():
        model.features[1].running_mean.uniform_(-0.5, 0.5)
        model.scale.fill_(1.5)
    return model


@pytest.fixture(scope="module")
def pt2(tmp_path_factory, net) -> Path:
    return P.export(net, torch.randn(4, 1, 8, 8), tmp_path_factory.mktemp("pt2") / "net.pt2")


def test_the_check_describes_the_program_without_loading_it(pt2, net):
    info = programs.check_program(pt2)
    assert info.input_shape == [1, 8, 8] and info.input_dtype == "float32" and info.num_outputs == 10
    assert set(info.parameters) == {n for n, _ in net.named_parameters()}
    assert info.parameters["head.weight"] == [10, 256]
    assert set(info.buffers) == {n for n, _ in net.named_buffers()}


def test_the_module_computes_what_the_original_does_with_its_names_and_layers(pt2, net):
    module = programs.program_module(programs.load_program(pt2))
    module.eval()  # ExportedProgram.module() refuses eval(); ours accepts it (the graph is fixed)
    module.train(False)
    for batch in (1, 7):
        x = torch.randn(batch, 1, 8, 8)
        torch.testing.assert_close(module(x), net(x), rtol=0, atol=1e-6)
    assert list(module.state_dict()) == list(net.state_dict()) or set(module.state_dict()) == set(
        net.state_dict()
    )
    for name, tensor in net.state_dict().items():
        torch.testing.assert_close(module.state_dict()[name], tensor, rtol=0, atol=0)
    kinds = {name: type(m) for name, m in module.named_modules()}
    assert kinds["features.0"] is nn.Conv2d and kinds["head"] is nn.Linear


def test_layers_are_restored_for_linear_without_bias_and_conv1d(tmp_path):
    class Seq(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv1d(2, 3, 3, stride=2, padding=1, dilation=1, groups=1)
            self.head = nn.Linear(3 * 4, 2, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.relu(self.conv(x)).flatten(1))

    model = Seq().eval()
    path = P.export(model, torch.randn(3, 2, 8), tmp_path / "seq.pt2")
    module = programs.program_module(programs.load_program(path))
    conv, head = module.get_submodule("conv"), module.get_submodule("head")
    assert isinstance(conv, nn.Conv1d) and conv.stride == (2,) and conv.padding == (1,)
    assert isinstance(head, nn.Linear) and head.bias is None
    x = torch.randn(5, 2, 8)
    torch.testing.assert_close(module(x), model(x))


def test_torch_func_transforms_match_the_original(tmp_path):
    """The HVP back ends need functional_call, grad and forward-over-reverse jvp."""
    model = _tiny()
    module = programs.program_module(
        programs.load_program(P.export(model, torch.randn(3, 4).double(), tmp_path / "t.pt2"))
    )
    x, y = torch.randn(9, 4, dtype=torch.float64), torch.randint(0, 3, (9,))

    def hvp(m: nn.Module) -> dict[str, torch.Tensor]:
        params = {k: v.detach() for k, v in m.named_parameters()}
        tangent = {k: torch.ones_like(v) for k, v in params.items()}

        def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
            return nn.functional.cross_entropy(functional_call(m, p, (x,)), y)

        return jvp(grad(loss), (params,), (tangent,))[1]

    want, got = hvp(model), hvp(module)
    assert set(got) == set(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name])


def test_an_edit_of_the_program_equals_the_edit_of_the_module(tmp_path):
    model = _tiny()
    module = programs.program_module(
        programs.load_program(P.export(model, torch.randn(3, 4).double(), tmp_path / "t.pt2"))
    )
    torch.manual_seed(1)
    x = torch.randn(120, 4, dtype=torch.float64)
    y = model(x).argmax(1)
    want = gif.remove(model, (x, y), torch.arange(10), selection="highest_gradients", ratio=0.5)
    got = gif.remove(module, (x, y), torch.arange(10), selection="highest_gradients", ratio=0.5)
    torch.testing.assert_close(got.delta, want.delta)
    assert got.report["n_edited"] == want.report["n_edited"] == 10


def test_save_program_writes_the_new_weights_and_keeps_the_programs_own(pt2, net, tmp_path):
    program = programs.load_program(pt2)
    state = {k: v + 0.25 if v.is_floating_point() else v for k, v in net.state_dict().items()}
    programs.save_program(program, state, tmp_path / "new.pt2")
    edited = P.DigitsNet().eval()
    edited.load_state_dict(state)
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(torch.export.load(str(tmp_path / "new.pt2")).module()(x), edited(x))
    torch.testing.assert_close(program.module()(x), net(x))
    with pytest.raises(programs.ProgramError, match=r"head\.bias"):
        programs.save_program(
            program, {k: v for k, v in state.items() if k != "head.bias"}, tmp_path / "x.pt2"
        )


# -- refusals --------------------------------------------------------------------------------------


def test_a_fixed_batch_size_is_refused(tmp_path, net):
    path = P.export(net, torch.randn(4, 1, 8, 8), tmp_path / "static.pt2", dynamic=False)
    with pytest.raises(programs.StaticBatchError, match=r"fixed batch size \(4\).*Dim\(\"batch\"\)"):
        programs.check_program(path)


def test_a_program_exported_in_training_mode_is_refused(tmp_path):
    model = P.DigitsNet().train()
    path = P.export(model, torch.randn(4, 1, 8, 8), tmp_path / "train.pt2")
    with pytest.raises(programs.ProgramError, match=r"training mode.*model.eval\(\)"):
        programs.check_program(path)


def test_programs_of_two_inputs_or_two_outputs_are_refused(tmp_path):
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return self.fc(a + b)

    batch = torch.export.Dim("batch")
    ep = torch.export.export(
        Two(), (torch.randn(2, 3), torch.randn(2, 3)), dynamic_shapes=({0: batch}, {0: batch})
    )
    torch.export.save(ep, str(tmp_path / "two.pt2"))
    with pytest.raises(programs.ProgramError, match="takes 2 inputs"):
        programs.check_program(tmp_path / "two.pt2")


@pytest.mark.parametrize("content", [b"", b"not a zip at all", b"PK\x03\x04" + bytes(100)])
def test_garbage_is_refused(tmp_path, content):
    (tmp_path / "g.pt2").write_bytes(content)
    with pytest.raises(programs.ProgramError, match=r"not a \.pt2 archive"):
        programs.check_program(tmp_path / "g.pt2")


def test_a_checkpoint_zip_is_not_a_program(tmp_path, net):
    torch.save(net.state_dict(), tmp_path / "state.pt")
    with pytest.raises(programs.ProgramError):
        programs.check_program(tmp_path / "state.pt")


CANARY_CASES = {
    "pickled-weight": (P.pickled_weight, "use_pickle"),
    "pickled-sample-inputs": (P.pickled_sample_inputs, "sample inputs' pickle names 'io open'"),
    "guard-code": (P.guard_code, "guard code"),
    "sympy-expression": (P.sympy_expression, "sympy.sympify"),
}


@pytest.mark.parametrize("name", list(CANARY_CASES))
def test_archives_that_would_run_code_are_refused_before_anything_loads_them(pt2, tmp_path, name):
    build, message = CANARY_CASES[name]
    canary = tmp_path / "CANARY"
    path = build(pt2, tmp_path / f"{name}.pt2", canary)
    with pytest.raises(programs.UnsafeProgramError, match=message):
        programs.check_program(path)
    with pytest.raises(programs.UnsafeProgramError):
        programs.load_program(path)
    assert not canary.exists()


@pytest.mark.parametrize("name", list(CANARY_CASES))
def test_the_hostile_archives_are_real_torch_export_load_runs_them(pt2, tmp_path, name):
    """What the check prevents: torch's own loader (in this test process) creates the canary."""
    build, _ = CANARY_CASES[name]
    canary = tmp_path / "CANARY"
    path = build(pt2, tmp_path / f"{name}.pt2", canary)
    try:
        torch.export.load(str(path)).module()(torch.randn(2, 1, 8, 8))
    except Exception:  # the payload has run by the time anything fails
        pass
    assert canary.exists()


@pytest.mark.parametrize(
    "member, message",
    [
        ("data/aotinductor/model/model.so", "AOTInductor native code"),
        ("data/constants/custom_obj_0", "custom object"),
        ("data/constants/opaque_obj_0", "opaque object"),
        ("data/weights/model.pt", "legacy pickled weights"),
        ("xl_model_weights/model_param_config", "weights outside"),
    ],
)
def test_members_that_hold_code_or_pickles_are_refused(pt2, tmp_path, member, message):
    path = P.extra_member(pt2, tmp_path / "x.pt2", member)
    with pytest.raises(programs.UnsafeProgramError, match=message):
        programs.check_program(path)


@pytest.mark.parametrize("how", ["traversal", "absolute", "symlink", "deflated", "duplicate"])
def test_odd_zip_members_are_refused(pt2, tmp_path, how):
    path = P.odd_member(pt2, tmp_path / f"{how}.pt2", how)
    with pytest.raises(programs.UnsafeProgramError):
        programs.check_program(path)


@pytest.mark.parametrize("target", ["torch.os.system", "builtins.exec", "torch.ops.higher_order.cond"])
def test_graph_calls_outside_aten_are_refused(pt2, tmp_path, target):
    path = P.foreign_target(pt2, tmp_path / "t.pt2", target)
    with pytest.raises(programs.ProgramError, match="only ATen operators"):
        programs.check_program(path)


@pytest.mark.parametrize(
    "expression",
    ["Symbol('s77', positive=True, integer=True)", "2*s77 + 1", "FloorDiv(s0, 2)", "Max(s1, 3) - Mod(s0, 4)"],
)
def test_size_arithmetic_passes_the_expression_check(expression):
    programs._check_expression(expression)


@pytest.mark.parametrize(
    "expression",
    ["__import__('os')", "open('x', 'w')", "s0.__class__", "(lambda: 1)()", "Symbol('a b')", "s0[0]", "exec"],
)
def test_code_fails_the_expression_check(expression):
    with pytest.raises(programs.UnsafeProgramError):
        programs._check_expression(expression)
