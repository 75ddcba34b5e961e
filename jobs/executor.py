"""The executor interface the API starts with its lifespan, loaded by name (no worker imports here)."""

from __future__ import annotations

import importlib
from typing import Protocol

from .config import Settings


class Executor(Protocol):
    """Runs queued jobs somewhere; the job table is its only channel with the API."""

    def start(self) -> None: ...

    def stop(self, timeout: float = 10.0) -> None: ...

    def health(self) -> dict: ...


def load_executor(settings: Settings) -> Executor | None:
    """Instantiate ``settings.executor`` ("module:Class"), or None for "none" or zero workers."""
    if settings.executor.lower() == "none" or settings.workers == 0:
        return None
    module_name, _, class_name = settings.executor.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(settings)
