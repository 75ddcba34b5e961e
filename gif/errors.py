"""Exceptions raised by the engine, each with a stable machine-readable ``code`` (its base's
unless it sets one) that the job runner maps one-to-one onto a job's ``error.code``."""

from __future__ import annotations


class GifError(Exception):
    """Base class of every error the engine raises on purpose."""

    code = "invalid_input"

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message, self.details = message, details


class InvalidArgumentError(GifError, ValueError):
    """An argument has the wrong type, value or range (names the argument)."""


class IndexOutOfRangeError(InvalidArgumentError):
    """Sample indices that are negative, too large, duplicated or empty."""

    code = "index_out_of_range"


class UnknownClassError(InvalidArgumentError):
    """A class label that the model or the dataset does not have."""


class CheckpointError(GifError, ValueError):
    """A checkpoint that cannot be read or does not match the architecture."""

    code = "checkpoint_incompatible"


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint that would execute code or otherwise cannot be loaded safely."""

    code = "checkpoint_unsafe"


class DatasetError(GifError, ValueError):
    """A dataset with missing keys, wrong shapes or dtypes, or labels out of range."""

    code = "dataset_incompatible"


class NumericalError(GifError, ArithmeticError):
    """NaN or Inf in inputs, weights or intermediate results."""

    code = "numerical_error"


class ModelTooLargeError(InvalidArgumentError):
    """A request that would need more memory than allowed (e.g. a dense Hessian)."""


class MemoryBudgetError(GifError):
    """A computation sized, before it starts, over the memory it may use."""

    code = "memory_budget_exceeded"


class UnknownArchitectureError(InvalidArgumentError):
    """An architecture name that is not registered."""


class Cancelled(GifError):
    """Raised inside a computation when the caller's cancellation check returns True."""

    code = "cancelled"
