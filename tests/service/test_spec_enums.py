"""The job spec and the engine agree: the options are the engine configuration's own fields, and
the names still mirrored in jobs.specs (the built-in architectures: gif.models needs torch) match."""

from __future__ import annotations

import dataclasses
import inspect
import math
import typing

import pytest

import gif
import gif.config
from gif.models import zoo
from jobs import specs


def _service_fields(kind) -> list[str]:
    return [f.name for f in dataclasses.fields(kind) if f.metadata["service"]]


def test_the_option_fields_are_exactly_the_engine_configurations_service_fields():
    assert list(specs.EditOptions.model_fields) == _service_fields(gif.EditConfig)
    assert list(specs.ScoresOptions.model_fields) == [
        n for n in _service_fields(gif.SolveConfig) if n != "method"
    ]
    internal = {f.name for f in dataclasses.fields(gif.EditConfig) if not f.metadata["service"]}
    assert {"chunk_size", "hvp_backend", "solver_options", "validation_fraction"} <= internal
    assert not internal & (set(specs.EditOptions.model_fields) | set(specs.ScoresOptions.model_fields))


@pytest.mark.parametrize("model, kind", [("EditOptions", gif.EditConfig), ("ScoresOptions", gif.SolveConfig)])
def test_each_option_takes_the_engine_fields_type_help_and_range(model, kind):
    """Unset (None) is the engine's default; a value is one of the field's choices or inside its
    range, capped by the service's maximum."""
    options = getattr(specs, model)
    engine = {f.name: f for f in dataclasses.fields(kind)}
    hints = typing.get_type_hints(kind)
    for name, info in options.model_fields.items():
        f = engine[name]
        assert info.default is None and info.description == f.metadata["help"], name
        choices = [a for a in typing.get_args(hints[name] | None) if typing.get_origin(a) is typing.Literal]
        if choices:
            allowed = f.metadata["service_choices"] or typing.get_args(choices[0])
            assert set(allowed) <= set(typing.get_args(choices[0])), name
            assert typing.get_args(typing.get_args(info.annotation)[0]) == tuple(allowed), name
            continue
        low, high, cap = f.metadata["low"], f.metadata["high"], f.metadata["service_max"]
        upper = min(c for c in (high, cap, math.inf) if c is not None)
        schema = options.model_json_schema()["properties"][name]["anyOf"][0]
        assert schema.get("exclusiveMinimum" if f.metadata["low_open"] else "minimum") == low, name
        assert schema.get("maximum") == (None if math.isinf(upper) else upper), name


def test_option_values_are_checked_as_the_engine_checks_them():
    """Every value the spec accepts at its bounds builds the engine configuration."""
    edge = {"method": "sif", "damping": 1e6, "layer_damping": 1e6, "curvature": "gauss_newton", "solver": "neumann", "tol": 1.0, "max_iter": 10_000, "rank": 1_024,
            "seed": 2**31 - 1, "selection": "threshold", "ratio": 1.0, "hessian_samples": 1_000_000,
            "hessian_pool": "all", "step": "newton", "newton_steps": 20}  # fmt: skip
    options = specs.EditOptions.model_validate(edge).model_dump(exclude_none=True)
    config = gif.config.resolve("remove", gif.EditConfig, None, options)
    assert {k: v for k, v in config.to_dict().items() if k in edge} == edge
    scores = specs.ScoresOptions.model_validate({k: edge[k] for k in specs.ScoresOptions.model_fields})
    gif.config.resolve("scores", gif.SolveConfig, None, scores.model_dump(exclude_none=True))
    for name, bad in [
        ("tol", 0.0),
        ("ratio", 0.0),
        ("damping", -1.0),
        ("layer_damping", 1e7),
        ("newton_steps", 21),
        ("step", "jump"),
        ("curvature", "fisher"),
    ]:
        with pytest.raises(ValueError):
            specs.EditOptions.model_validate({name: bad})


def test_jobs_may_name_every_solver_including_the_kronecker_factored_ones():
    assert gif.config.SERVICE_SOLVERS == gif.config.SOLVERS
    for solver in ("kfac", "ekfac", "lowrank", "auto"):
        assert specs.EditOptions.model_validate({"solver": solver}).solver == solver
        assert specs.ScoresOptions.model_validate({"solver": solver}).solver == solver
    with pytest.raises(ValueError):
        specs.EditOptions.model_validate({"solver": "kronecker"})


def test_the_health_document_lists_the_engines_names():
    assert specs.METHODS == gif.config.METHODS and specs.SOLVERS == gif.config.SERVICE_SOLVERS
    assert specs.STRATEGIES == gif.config.STRATEGIES


def test_architectures_match_the_engine():
    assert set(typing.get_args(specs.ArchName)) == set(specs.ARCHS) == set(zoo.BUILTINS)
    assert set(specs.ARCHS) <= set(gif.models.available())


def test_arch_keywords_and_defaults_match_the_factories():
    for name, factory in zoo.BUILTINS.items():
        params = inspect.signature(factory).parameters
        assert tuple(params) == specs.ARCH_KEYWORDS[name], name
        assert params["num_classes"].default == specs.ARCH_DEFAULT_NUM_CLASSES[name], name
