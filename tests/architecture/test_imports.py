"""One-way dependencies, checked in fresh interpreters (transitive imports included)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(code: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]


#: The engine modules the service side may load: the configuration types (its request schema is
#: generated from them), the progress events and the error codes; each imports only the standard
#: library (``import gif`` loads these three and nothing else until an engine function is used).
ENGINE_LIGHT = ("gif", "gif.config", "gif.progress", "gif.errors")
_NO_HEAVY = (
    f"engine = sorted(m for m in sys.modules if m.split('.')[0] == 'gif'); "
    f"assert set(engine) <= set({ENGINE_LIGHT!r}), engine; "
    "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'safetensors', 'transformers')); "
    "assert not bad, bad"
)


def test_service_and_jobs_do_not_import_torch():
    """The service and job store read the engine's configuration and nothing heavier."""
    _run(
        "import sys, service, jobs, service.main, service.cli, jobs.submit, jobs.uploads, jobs.executor; "
        "service.main.create_app; import jobs.specs; jobs.specs.EditOptions.model_json_schema(); " + _NO_HEAVY
    )


def test_the_job_spec_reads_the_engine_configuration():
    _run("import sys, jobs.specs; assert {'gif', 'gif.config'} <= set(sys.modules); " + _NO_HEAVY)


def test_loading_the_embedded_executor_does_not_import_torch():
    _run("import sys, workers.local; " + _NO_HEAVY)


@pytest.mark.parametrize(
    "forbidden", ["fastapi", "starlette", "sqlalchemy", "celery", "pydantic", "jobs", "service"]
)
def test_engine_imports_no_service_stack(forbidden):
    _run(f"import sys, gif, gif.io, gif.models; assert {forbidden!r} not in sys.modules, sys.modules.keys()")


def test_the_engine_loads_transformers_only_to_build_a_hugging_face_model():
    _run(
        "import sys, gif, gif.models, gif.models.huggingface, gif.io; import torch; gif.influence; "
        "assert 'transformers' not in sys.modules; "
        "gif.models.huggingface.build({'model_type': 'bert', 'hidden_size': 4, 'num_attention_heads': 2, "
        "'intermediate_size': 4, 'num_hidden_layers': 1, 'vocab_size': 8}); assert 'transformers' in sys.modules"
    )


def test_workers_and_jobs_never_import_the_http_layer():
    _run(
        "import sys, jobs.submit, jobs.uploads, workers.runner, workers.local, workers.inspect_artifact; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('service', 'fastapi', 'starlette')); "
        "assert not bad, bad"
    )


def test_the_distributed_api_side_does_not_import_torch():
    """The API process of distributed mode loads the Celery app and the sweeper, never torch
    (and so never CUDA: a prefork parent that initialised it would break its children)."""
    _run("import sys, workers.celery_app, workers.distributed, workers.dispatch; " + _NO_HEAVY)


def test_after_preload_a_first_edit_imports_nothing_more():
    """What a worker imports at start (``gif._util.preload``) is everything an edit and a scores
    call import on first use, torch.func's lazy ``torch._dynamo`` included."""
    _run(
        "import sys, torch; from torch import nn; import gif; from gif._util import preload; preload(); "
        "before = set(sys.modules); "
        "m = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)); x = torch.randn(24, 1, 4, 4); "
        "y = torch.arange(24) % 3; "
        "gif.relabel(m, (x, y), torch.arange(4), (y[:4] + 1) % 3, method='if', hessian_samples=16, newton_steps=1); "
        "gif.scores(m, (x, y), (x[:2], y[:2])); "
        "new = sorted(k for k in set(sys.modules) - before if k.split('.')[0] in ('gif', 'torch')); "
        "assert not new, new"
    )
