"""A job that runs out of CUDA memory runs again with smaller chunks, then fails with ``cuda_oom``
(workers/cuda_memory.py).

The runner tests simulate a GPU that holds the graph of at most :data:`LIMIT` samples: a forward
pre-hook on the loaded model raises ``torch.cuda.OutOfMemoryError`` when a differentiated pass
sees more, and the real engine runs otherwise, so a retry succeeds only if its chunks are really
smaller."""

from __future__ import annotations

import json

import pytest
import torch

import gif
from jobs.states import JobStatus
from workers import cuda_memory, runner
from workers.cuda_memory import OutOfCudaMemory, Shrink, run_shrinking
from workers.runner import run_job

from .conftest import register_digits, submit
from .test_runner import _body, _job, _result_files


def _oom() -> torch.cuda.OutOfMemoryError:
    return torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


# -- the retry loop -------------------------------------------------------------------------------


def test_a_run_that_fits_runs_once():
    calls = []
    result, tried = run_shrinking(lambda shrink: calls.append(shrink) or "ok", 512)
    assert (result, tried, calls) == ("ok", [], [None])


def test_each_retry_halves_the_chunk_until_one_fits():
    calls, retried = [], []

    def run(shrink: Shrink | None) -> int:
        calls.append(shrink)
        if shrink is None or shrink.chunk > 150:
            raise _oom()
        return shrink.chunk

    result, tried = run_shrinking(run, 512, on_retry=retried.append)
    assert result == 128 and tried == retried == [Shrink(256), Shrink(128)]
    assert calls == [None, Shrink(256), Shrink(128)] and all(s.hvp_backend == "func" for s in tried)


def test_the_last_out_of_memory_fails_naming_the_smallest_chunk():
    calls = []

    def run(shrink: Shrink | None) -> None:
        calls.append(shrink)
        raise _oom()

    with pytest.raises(OutOfCudaMemory) as info:
        run_shrinking(run, 512, retries=2)
    assert len(calls) == 3 and info.value.tried == [Shrink(256), Shrink(128)]
    assert "3 runs, the last with chunks of 128 samples" in str(info.value)


def test_another_error_is_not_retried():
    calls = []

    def run(shrink: Shrink | None) -> None:
        calls.append(shrink)
        raise ValueError("not memory")

    with pytest.raises(ValueError, match="not memory"):
        run_shrinking(run, 512)
    assert calls == [None]


def test_a_chunk_never_shrinks_below_one_sample():
    assert Shrink(1).halved() == Shrink(1) and Shrink(3).halved() == Shrink(1)


def test_a_shrink_lowers_the_chunk_and_takes_hvps_one_chunk_at_a_time():
    config = gif.EditConfig(method="gif", chunk_size=1024, hvp_backend="auto")
    shrunk = Shrink(64).apply(config)
    assert (shrunk.chunk_size, shrunk.hvp_backend) == (64, "func")
    assert shrunk.replace(chunk_size=1024, hvp_backend="auto") == config  # nothing else changed
    assert Shrink(64).apply(config.replace(chunk_size=32)).chunk_size == 32  # never above the config's


# -- through the runner ---------------------------------------------------------------------------

#: the simulated GPU holds the graph of at most this many samples
LIMIT = 100


@pytest.fixture
def inputs(ctx, tmp_path, data, model):
    return register_digits(ctx, tmp_path / "files", data, model)


def _small_gpu(monkeypatch, limit: int) -> list[int]:
    """The runner's engine on a simulated GPU of ``limit`` samples; the batches it refused."""
    refused: list[int] = []
    real = runner.run_engine

    def hook(module, args):
        batch = args[0].shape[0] if args[0].dim() == 4 else 1  # under vmap a sample has no batch dim
        if torch.is_grad_enabled() and batch > limit:
            refused.append(batch)
            raise _oom()

    def run_engine(spec, loaded, *args, **kwargs):
        handle = loaded.model.register_forward_pre_hook(hook)
        try:
            return real(spec, loaded, *args, **kwargs)
        finally:
            handle.remove()

    monkeypatch.setattr(runner, "run_engine", run_engine)
    return refused


def _gif_removal(inputs):
    # GIF over the whole network, 256 Hessian samples: one chunk of 256 (its cached graph) at first
    return _body(inputs, options={"method": "gif", "newton_steps": 1, "hessian_samples": 256})


def test_a_job_that_runs_out_of_cuda_memory_succeeds_with_smaller_chunks(ctx, inputs, monkeypatch):
    refused = _small_gpu(monkeypatch, LIMIT)
    job_id = submit(ctx, _gif_removal(inputs))
    assert run_job(job_id, ctx.settings, ctx) is JobStatus.SUCCEEDED
    assert refused and min(refused) > LIMIT
    report = json.loads(_result_files(ctx, _job(ctx, job_id))["report"])
    compute = report["provenance"]["compute"]
    assert compute["estimate"]["chunk"] == 256
    assert compute["cuda_oom_retries"] == [
        {"chunk": 128, "hvp_backend": "func"},
        {"chunk": 64, "hvp_backend": "func"},
    ]
    options = report["provenance"]["options"]
    assert (options["chunk_size"], options["hvp_backend"]) == (64, "func")  # what the kept run used


def test_a_job_that_runs_out_in_every_run_fails_with_cuda_oom(ctx, inputs, monkeypatch):
    refused = _small_gpu(monkeypatch, 10)
    job_id = submit(ctx, _gif_removal(inputs))
    assert run_job(job_id, ctx.settings, ctx) is JobStatus.FAILED
    assert len(refused) == 1 + cuda_memory.RETRIES
    error = json.loads(_job(ctx, job_id).error_json)
    assert error["code"] == "cuda_oom" and "chunks of 64 samples" in error["message"]
    assert json.loads(_job(ctx, job_id).result_json or "null") is None


def test_without_retries_one_out_of_memory_fails_at_once():
    with pytest.raises(OutOfCudaMemory, match="in its only run") as info:
        run_shrinking(lambda shrink: (_ for _ in ()).throw(_oom()), 512, retries=0)
    assert info.value.tried == []
