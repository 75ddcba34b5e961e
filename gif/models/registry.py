"""Architecture registry: names -> factories, with built-ins and ``gif.models`` entry points.

Operators add architectures from their own packages through the entry-point group ``gif.models``;
each entry point loads to a factory callable taking keyword arguments and returning an
``nn.Module``. Entry points are loaded lazily (the first time an unknown name is looked up, or
by :func:`available`), and a broken one is skipped with a warning so that it cannot take the
built-ins down with it.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import warnings
from collections.abc import Callable
from typing import Any

from torch import nn

from ..errors import InvalidArgumentError, ModelTooLargeError, UnknownArchitectureError
from .zoo import BUILTINS

ENTRY_POINT_GROUP = "gif.models"

Factory = Callable[..., nn.Module]

_registry: dict[str, Factory] = dict(BUILTINS)
_entry_points_loaded = False


def register(name: str, factory: Factory | None = None, *, replace: bool = False) -> Any:
    """Register ``factory`` under ``name``; also usable as ``@register("name")``.

    Args:
        name: Architecture name used by :func:`build`.
        factory: Callable taking keyword arguments and returning an ``nn.Module``.
        replace: Allow overwriting an existing registration.

    Returns:
        ``factory`` when given, otherwise a decorator that registers and returns its argument.

    Raises:
        InvalidArgumentError: Empty name, non-callable factory, or a name already taken.
    """
    if not isinstance(name, str) or not name.strip():
        raise InvalidArgumentError(f"architecture `name` must be a non-empty string, got {name!r}")
    if factory is None:
        return lambda f: register(name, f, replace=replace)
    if not callable(factory):
        raise InvalidArgumentError(f"`factory` for architecture {name!r} must be callable, got {factory!r}")
    if name in _registry and not replace and _registry[name] is not factory:
        raise InvalidArgumentError(f"architecture {name!r} is already registered (pass replace=True)")
    _registry[name] = factory
    return factory


def available() -> list[str]:
    """Sorted names of every registered architecture, including those from entry points."""
    _load_entry_points()
    return sorted(_registry)


def build(name: str, **config: Any) -> nn.Module:
    """Build the architecture registered as ``name`` with keyword configuration ``config``.

    Raises:
        UnknownArchitectureError: ``name`` is not registered (the message lists the known ones).
        InvalidArgumentError: An unknown keyword or a bad value, naming the argument.
        ModelTooLargeError: sizes whose parameters the allocator cannot hold.
    """
    factory = _lookup(name)
    _check_keywords(name, factory, config)
    try:
        model = factory(**config)
    except InvalidArgumentError as exc:
        raise type(exc)(f"architecture {name!r}: {exc.message}", **exc.details) from exc
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"architecture {name!r} rejected its configuration: {exc}") from exc
    except (MemoryError, RuntimeError) as exc:  # torch's allocator refuses a size with a RuntimeError
        if isinstance(exc, RuntimeError) and "allocate" not in str(exc):
            raise
        raise ModelTooLargeError(
            f"architecture {name!r}: its parameters do not fit in memory ({exc})"
        ) from exc
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"factory for {name!r} returned {type(model).__name__}, not an nn.Module")
    return model


def reload_entry_points() -> None:
    """Forget which entry points were loaded, so the next lookup scans the group again."""
    global _entry_points_loaded
    _entry_points_loaded = False


def _lookup(name: str) -> Factory:
    if not isinstance(name, str):
        raise InvalidArgumentError(f"architecture name must be a string, got {type(name).__name__}")
    if name not in _registry:
        _load_entry_points()
    if name not in _registry:
        known = ", ".join(sorted(_registry))
        raise UnknownArchitectureError(f"unknown architecture {name!r}; known: {known}", name=name)
    return _registry[name]


def _check_keywords(name: str, factory: Factory, config: dict[str, Any]) -> None:
    """Name unknown keywords precisely, instead of relying on the factory's TypeError text."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return  # builtins and some C callables have no signature; the factory will complain
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    accepted = {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    unknown = sorted(set(config) - accepted)
    if unknown:
        raise InvalidArgumentError(
            f"architecture {name!r} got unknown argument(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(sorted(accepted)) or '(none)'}",
            argument=unknown[0],
        )


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    try:
        entry_points = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    except Exception as exc:  # noqa: BLE001 (a corrupt installed distribution must not break the built-ins)
        warnings.warn(
            f"could not list {ENTRY_POINT_GROUP!r} entry points: {exc}", RuntimeWarning, stacklevel=3
        )
        return
    for ep in entry_points:
        name: Any = getattr(ep, "name", None)  # unchecked: register() refuses a name that is not a string
        if name in BUILTINS:
            warnings.warn(
                f"entry point {name!r} ignored: it would shadow a built-in", RuntimeWarning, stacklevel=3
            )
            continue
        try:
            register(name, ep.load())
        except Exception as exc:  # noqa: BLE001 (any import-time failure in third-party code: skip, keep going)
            warnings.warn(
                f"skipping architecture entry point {name!r} ({getattr(ep, 'value', '?')}): "
                f"{type(exc).__name__}: {exc}",
                RuntimeWarning,
                stacklevel=3,
            )
