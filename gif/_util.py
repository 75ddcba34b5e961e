"""Small helpers shared across the engine."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from torch import nn

from .errors import InvalidArgumentError


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
