"""A job that runs out of CUDA memory is run again with smaller chunks before it fails.

A job is sized before it runs (workers/sizing.py), but the estimate is of the job alone: a GPU
shared with other processes, or a fragmented allocator cache, can still run out. The memory a run
holds besides the model and its vectors is what it differentiates at once: one chunk of samples
(at most ``chunk_size``, fewer where the memory budget and the model's measured activations say so,
gif/memory.py), or, where the HVPs take the cached graph (``hvp_backend="auto"`` when it fits),
every chunk's graph at once. So on ``torch.cuda.OutOfMemoryError`` the runner frees the CUDA
cache and runs the job again (from its inputs: nothing of the failed run is kept) with HVPs taken
one chunk at a time (``func``) and the chunk halved (``chunk_size``, which caps what the memory
budget allows), up to :data:`RETRIES` times; then the job fails with ``cuda_oom``, its message
naming the smallest chunk tried.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TypeVar

import torch

from gif.config import SolveConfig

#: Runs after the first, each with half the chunk of the one before.
RETRIES = 2

T = TypeVar("T")
C = TypeVar("C", bound=SolveConfig)


@dataclass(frozen=True)
class Shrink:
    """The limits of a run after a CUDA out-of-memory: at most ``chunk`` samples per forward
    pass, and HVPs one chunk at a time."""

    chunk: int
    hvp_backend: str = "func"

    def apply(self, config: C) -> C:
        """``config`` within these limits (its chunk never above what it asked for itself)."""
        chunk = min(config.chunk_size, self.chunk)
        return config.replace(chunk_size=chunk, hvp_backend=self.hvp_backend)

    def halved(self) -> Shrink:
        return Shrink(max(1, self.chunk // 2), self.hvp_backend)

    def as_dict(self) -> dict[str, int | str]:
        return asdict(self)


class OutOfCudaMemory(Exception):
    """Every run of a job ran out of CUDA memory; the message says what was tried."""

    def __init__(self, tried: list[Shrink]) -> None:
        runs = "its only run"
        if tried:
            runs = f"{len(tried) + 1} runs, the last with chunks of {tried[-1].chunk} samples and HVPs one chunk at a time"
        super().__init__(
            f"the GPU ran out of memory in {runs}: use a GPU with more free memory, or lower hessian_samples"
        )
        self.tried = tried


def run_shrinking(
    run: Callable[[Shrink | None], T],
    chunk: int,
    *,
    retries: int = RETRIES,
    on_retry: Callable[[Shrink], None] | None = None,
) -> tuple[T, list[Shrink]]:
    """``run(None)``; after each CUDA out-of-memory, ``run(shrink)`` with half the chunk of the
    run before (the first retry: half of ``chunk``, the samples the job's first run
    differentiated at once, workers/sizing.py), up to ``retries`` times, ``on_retry(shrink)``
    before each. Returns the result and the limits of every run after the first. Raises
    :class:`OutOfCudaMemory` when the last runs out too; any other error propagates at once."""
    tried: list[Shrink] = []
    while True:
        try:
            return run(tried[-1] if tried else None), tried
        except torch.cuda.OutOfMemoryError:
            pass  # out of the handler first: its traceback holds the failed run's tensors
        free_cuda_memory()
        if len(tried) == retries:
            raise OutOfCudaMemory(tried)
        tried.append((tried[-1] if tried else Shrink(max(1, chunk))).halved())
        if on_retry is not None:
            on_retry(tried[-1])


def free_cuda_memory() -> None:
    """Drop what the failed run left (reference cycles first) and give the cached blocks back."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
