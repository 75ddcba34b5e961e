"""The configuration types: one table of defaults, validation, keywords vs config objects, and
cache keys that hold every field."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch

import gif
from gif.cache import FIT_INDEPENDENT, fit_key, make_key, solve_key
from gif.config import EDIT_PRESETS, VERB_DEFAULTS, EditConfig, SolveConfig, defaults, defaults_table, resolve
from gif.errors import InvalidArgumentError

from .conftest import make_data, tiny_mlp

ROOT = Path(__file__).resolve().parents[2]

#: A second valid value for every field, to show that each one reaches a key.
OTHER = {
    "method": "fif",
    "damping": 0.5,
    "layer_damping": 0.1,
    "curvature": "gauss_newton",
    "solver": "cg",
    "tol": 1e-3,
    "max_iter": 7,
    "rank": 5,
    "seed": 9,
    "chunk_size": 3,
    "memory_budget": 12345,
    "hvp_backend": "func",
    "solver_options": {"normalizer": 2.0},
}


def test_docs_hold_the_generated_defaults_table():
    text = (ROOT / "docs" / "engine.md").read_text()
    assert defaults_table() in text, "regenerate with `python -m gif.config` and paste into docs/engine.md"


def test_each_verb_resolves_its_documented_defaults():
    assert defaults("influence")["damping"] == 0.0 and defaults("influence")["solver"] == "lsqr"
    assert defaults("scores")["method"] == "if" and defaults("scores")["solver"] == "auto"
    assert defaults("self_influence")["solver"] == "lowrank"
    relabel = defaults("relabel")  # the head first, else IF with K-FAC guarded (gif/method_choice.py)
    assert relabel["method"] == "auto" and relabel["solver"] == "auto"
    assert all(relabel[name] is None for name in EDIT_PRESETS["if"] if name != "solver")
    remove = defaults("remove")  # chosen per request (gif/method_choice.py): nothing filled yet
    assert remove["method"] == "auto" and all(remove[name] is None for name in EDIT_PRESETS["gif"])
    assert remove["hessian_pool"] == "auto"
    assert EditConfig(method="auto").hessian_size == max(p["hessian_samples"] for p in EDIT_PRESETS.values())
    assert set(VERB_DEFAULTS) == {"influence", "scores", "self_influence", "remove", "relabel"}


def test_a_named_option_beats_the_method_preset():
    # The old EditOptions default `selection="highest_outputs"` never took effect; now an unset
    # field takes the preset and a set one is kept, whichever method is chosen.
    assert EditConfig(method="gif").selection == "highest_gradients"
    assert EditConfig(method="gif", selection="highest_outputs").selection == "highest_outputs"
    assert EditConfig(method="fif", damping=0.0).damping == 0.0
    assert resolve("relabel", EditConfig, None, {"solver": "minres"}).solver == "minres"


def test_keywords_and_config_objects_are_the_same_call():
    config = resolve("influence", SolveConfig, None, {"method": "if", "damping": 0.1})
    assert config == SolveConfig(method="if", damping=0.1)
    assert resolve("influence", SolveConfig, config, {"tol": 1e-2}) == SolveConfig(
        method="if", damping=0.1, tol=1e-2
    )
    neumann = resolve("influence", SolveConfig, None, {"solver": "neumann", "normalizer": 3.0})
    assert neumann.solver_options == {"normalizer": 3.0}


def test_engine_entry_points_accept_a_config():
    torch.manual_seed(0)
    model = tiny_mlp().double()
    data = tuple(t.double() if t.is_floating_point() else t for t in make_data("mlp", 12, 0))
    a = gif.influence(model, data, data, config=gif.SolveConfig(method="if", damping=0.1, max_iter=5))
    b = gif.influence(model, data, data, method="if", damping=0.1, max_iter=5)
    assert torch.equal(a.vector, b.vector) and a.iterations == b.iterations


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"method": "xif"}, "unknown method"),
        ({"solver": "magic"}, "unknown solver"),
        ({"damping": -1.0}, "damping"),
        ({"damping": float("nan")}, "damping"),
        ({"tol": 0.0}, "tol"),
        ({"max_iter": 0}, "max_iter"),
        ({"rank": 1.5}, "rank"),
        ({"chunk_size": True}, "chunk_size"),
        ({"hvp_backend": "jax"}, "hvp_backend"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**64}, r"`seed` must be an integer in \[0, 18446744073709551615\]"),
        ({"seed": None}, "`seed` must be an integer"),  # None only where a field is optional
        ({"max_iter": None}, "`max_iter` must be an integer"),
        ({"tol": None}, "`tol` must be a finite number"),
        ({"layer_damping": None}, "`layer_damping` must be a finite number"),
        ({"solver": "cg", "solver_options": {"normalizer": 1.0}}, "normalizer"),
        ({"solver": "neumann", "solver_options": {"normalizer": float("inf")}}, "finite"),
        ({"solver": "neumann", "solver_options": {"normalizer": 0.0}}, "`normalizer` must be > 0"),
        ({"solver": "neumann", "solver_options": {"step": -0.5}}, "`step` must be > 0"),
        ({"solver": "lowrank", "solver_options": {"steps": 0}}, "`steps` must be > 0"),
        ({"solver": "lowrank", "solver_options": {"steps": 40.5}}, "`steps` must be a whole number"),
    ],
)
def test_invalid_solve_options_name_themselves(changes, needle):
    with pytest.raises(InvalidArgumentError, match=needle):
        SolveConfig(**changes)


def test_invalid_edit_options_and_unknown_keywords():
    with pytest.raises(InvalidArgumentError, match="ratio"):
        EditConfig(ratio=0.0)
    with pytest.raises(InvalidArgumentError, match="max_step"):
        EditConfig(min_step=0.5, max_step=0.1)
    with pytest.raises(InvalidArgumentError, match="`newton_steps` must be an integer"):
        EditConfig(newton_steps=None)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="`min_step` must be a finite number"):
        EditConfig(min_step=None)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="unknown method"):
        EditConfig(method=["gif"])  # type: ignore[arg-type]
    assert EditConfig(damping=None, memory_budget=None).memory_budget is None  # optional fields
    with pytest.raises(InvalidArgumentError, match="seed"):  # through the verb, not only the type
        resolve("remove", EditConfig, None, {"seed": 2**70})
    with pytest.raises(InvalidArgumentError, match="unknown option"):
        resolve("remove", EditConfig, None, {"newton_stepz": 3})
    with pytest.raises(InvalidArgumentError, match="EditConfig"):
        resolve("remove", EditConfig, SolveConfig(), {})  # type: ignore[arg-type]


def test_every_solve_field_reaches_the_solve_key():
    base = SolveConfig(method="gif", solver="neumann")
    key = make_key("ihvp", {"config": solve_key(base)})
    names = {f.name for f in dataclasses.fields(SolveConfig)}
    assert names == set(OTHER), "add the new field to OTHER (and check that it belongs in the key)"
    for name in names:
        changed = dataclasses.replace(base, **{name: OTHER[name]})
        if name == "solver":
            changed = dataclasses.replace(changed, solver_options={})
        assert make_key("ihvp", {"config": solve_key(changed)}) != key, name


def test_the_fit_key_holds_every_field_a_fit_depends_on():
    base = SolveConfig(method="gif", solver="lowrank")
    for f in dataclasses.fields(SolveConfig):
        value = OTHER[f.name] if f.name != "solver_options" else {"steps": 40}
        changed = dataclasses.replace(base, **{f.name: value})
        if f.name in FIT_INDEPENDENT:
            assert fit_key(changed) == fit_key(base), f.name
        else:
            assert fit_key(changed) != fit_key(base), f.name
    # the Kronecker factors approximate the Gauss-Newton matrix under either curvature
    for solver in ("kfac", "ekfac"):
        kronecker = SolveConfig(method="if", solver=solver)
        assert fit_key(kronecker.replace(curvature="gauss_newton")) == fit_key(kronecker)
        assert fit_key(kronecker.replace(seed=3)) != fit_key(kronecker)


def test_an_edit_key_is_the_solve_part_only():
    edit = EditConfig(method="gif", newton_steps=2)  # an edit solves once its method is chosen
    assert solve_key(edit) == solve_key(dataclasses.replace(edit, newton_steps=3, step="newton"))
    assert set(solve_key(edit)) == {f.name for f in dataclasses.fields(SolveConfig)}


def test_config_module_needs_no_torch():
    import subprocess
    import sys

    code = "import sys, gif.config, gif.progress; assert 'torch' not in sys.modules, 'torch loaded'"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr


def test_gif_exports_the_verbs_and_types_only():
    assert set(gif.__all__) == {
        "influence", "select", "remove", "relabel", "scores", "self_influence", "top_k",
        "SolveConfig", "EditConfig", "Progress", "InfluenceResult", "EditResult", "ScoresResult",
        "LowRankHessian", "DiskCache", "MemoryCache",
    }  # fmt: skip
    for name in gif.__all__:
        assert getattr(gif, name) is not None
    assert re.match(r"\d+\.\d+\.\d+", gif.__version__)
