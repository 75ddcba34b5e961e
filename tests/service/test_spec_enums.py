"""The names duplicated in jobs.specs (no torch there) match the engine's."""

from __future__ import annotations

import inspect
import typing

import gif
import gif.options
from gif.models import zoo
from jobs import specs


def _literal(tp) -> tuple:
    return typing.get_args(tp)


def test_enums_match_the_engine():
    assert _literal(specs.MethodName) == specs.METHODS == gif.METHODS
    assert _literal(specs.SolverName) == specs.SOLVERS == gif.SOLVERS
    assert _literal(specs.StrategyName) == specs.STRATEGIES == gif.STRATEGIES
    assert _literal(specs.StepPolicy) == specs.STEP_POLICIES == gif.options.STEP_POLICIES
    assert _literal(specs.HessianPool) == gif.options.HESSIAN_POOLS
    assert (
        set(_literal(specs.ArchName)) == set(specs.ARCHS) == set(zoo.BUILTINS) <= set(gif.models.available())
    )


def test_arch_keywords_and_defaults_match_the_factories():
    for name, factory in zoo.BUILTINS.items():
        params = inspect.signature(factory).parameters
        assert tuple(params) == specs.ARCH_KEYWORDS[name], name
        assert params["num_classes"].default == specs.ARCH_DEFAULT_NUM_CLASSES[name], name


def test_option_names_are_engine_option_names():
    edit_fields = {f.name for f in gif.options.EditOptions.__dataclass_fields__.values()}
    assert set(specs.EditOptions.model_fields) <= edit_fields
    scores_params = set(inspect.signature(gif.scores_with_report).parameters)
    assert set(specs.ScoresOptions.model_fields) <= scores_params
