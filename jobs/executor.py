"""The executor interface the API starts with its lifespan, loaded by name (no worker imports here)."""

from __future__ import annotations

import importlib
from typing import Protocol

from .config import Settings
from .store import Lease


class Executor(Protocol):
    """Runs queued jobs somewhere; the job table is its only channel with the API."""

    def start(self) -> None: ...

    def stop(self, timeout: float = 10.0) -> None: ...

    def health(self) -> dict: ...

    def check_accepting(self) -> None:
        """Raise ``ServiceUnavailable`` when new jobs cannot be taken now."""
        ...

    def submitted(self, job_id: str) -> None:
        """A job was just created (in ``validating`` or ``queued``): hand it on, if the executor pushes."""
        ...

    def terminate(self, lease: Lease) -> int | None:
        """Kill the worker process holding ``lease`` (a job ignoring its cancellation) and finish
        the job ``cancelled``; the pid killed, or None when no process of this executor holds it."""
        ...


def load_executor(settings: Settings) -> Executor | None:
    """Instantiate ``settings.executor_path`` ("module:Class"); None for "none", or for zero embedded workers."""
    path = settings.executor_path
    if path.lower() == "none" or (settings.workers == 0 and not settings.distributed):
        return None
    module_name, _, class_name = path.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(settings)
