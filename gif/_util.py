"""Small helpers shared across the engine."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from .errors import GifError, InvalidArgumentError


def check_callables(**given: object) -> None:
    """Raise :class:`InvalidArgumentError` naming each argument that is neither None nor callable
    (a progress callback, a stop check, a loss) before it is first called deep inside a run."""
    for name, value in given.items():
        if value is not None and not callable(value):
            raise InvalidArgumentError(f"`{name}` must be callable or None, got {type(value).__name__}")


def as_tensor(values: object, message: str, error: type[GifError] = InvalidArgumentError) -> torch.Tensor:
    """``values`` as a tensor; what torch cannot convert (strings, None, ints past int64) raises
    ``error`` saying ``message``."""
    try:
        return torch.as_tensor(values)
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
        raise error(f"{message}, got {values!r:.80}") from exc


#: A forward hook: (module, positional inputs, output) -> None.
ForwardHook = Callable[[nn.Module, tuple, Any], None]


@contextlib.contextmanager
def forward_hooks(hooks: Iterable[tuple[nn.Module, ForwardHook]]) -> Iterator[None]:
    """While open, each (module, hook) pair's hook sees that module's forward calls made by *this*
    thread. A model is often shared (a service's checkpoint, a notebook's model edited from two
    threads): a hook that also recorded the other thread's passes would mix its samples in."""
    owner = threading.get_ident()

    def mine(hook: ForwardHook) -> ForwardHook:
        def call(module: nn.Module, args: tuple, output: Any) -> None:
            if threading.get_ident() == owner:
                hook(module, args, output)

        return call

    handles = [module.register_forward_hook(mine(hook)) for module, hook in hooks]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Evaluate ``model`` in eval mode (BatchNorm uses running stats, Dropout is off), then restore."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


class Stopwatch:
    """Named wall-clock timings, for reports."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def check_positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgumentError(f"`{name}` must be an integer >= 1, got {value!r}")
    return value


def preload() -> None:
    """Import now what an engine call would import inside the first job of a process: the
    engine's own modules (``gif`` loads them on first use), and ``torch._dynamo`` and the jvp
    decompositions, which torch.func imports on its first transforms (docs/engine.md, "What an
    edit costs"). A long-lived worker calls this at start, so that a job's time is the job's."""
    import importlib

    import gif

    for module in sorted(set(gif._LAZY.values()) | set(gif._SUBMODULES)):
        importlib.import_module(f"gif.{module}")
    for module in ("torch._dynamo", "torch._decomp.decompositions_for_jvp"):
        importlib.import_module(module)
